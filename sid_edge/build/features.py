"""Extract backbone features once per (backbone, image content) and cache them on disk.

Needs torch (the ``train`` extra). The cache is a folder of ``.npz`` shards, one per extraction request, named by
a hash of the backbone identity and the sha256 of every image's bytes, so a renamed file still hits and an edited
one misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sid_edge.artifact.files import atomic_write
from sid_edge.build.backbone import Backbone
from sid_edge.tools.caches import cache_root, content_sha256
from sid_edge.runtime.batching import iter_batches
from sid_edge.runtime.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Features of the images that decoded: ``pooled`` [N,D] float32, ``embedding`` [N,E] float32 (L2-normalised),
    ``kept`` [N] indices into the requested list; ``errors`` maps skipped indices to their reason."""

    pooled: np.ndarray
    embedding: np.ndarray
    kept: np.ndarray
    errors: dict[int, str]


def default_cache_dir() -> Path:
    """The feature cache: :func:`sid_edge.tools.caches.cache_root` + ``/features``."""
    return cache_root() / "features"


def _content_hash(source) -> str:
    """sha256 of an image's encoded bytes (:func:`sid_edge.tools.caches.content_sha256`); an unreadable source gets
    a placeholder so it still has a place in the shard key (the pipeline reports its error)."""
    try:
        return content_sha256(source)
    except (OSError, ValueError) as e:
        return f"unreadable:{type(e).__name__}"


def extract_features(
    backbone: Backbone,
    paths: Sequence,
    *,
    batch_size: int = 16,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    description: str = "Extracting features",
    augment=None,
    seed: int = 0,
    view: int = 0,
) -> Features:
    """Run the frozen backbone over ``paths`` with a progress bar, reading/writing the feature cache.

    ``paths``: image files, encoded bytes, or dataset references (:class:`sid_edge.tools.datasets.ImageRef`).

    Images that fail to decode are skipped and reported in ``Features.errors`` (index -> reason); they never
    stop the run. The cache stores the result for the exact (backbone identity, preprocessing rule, image contents)
    triple; ``backbone.preprocessing`` is the rule applied (set it to train on another pipeline).

    ``augment``: a :class:`sid_edge.robustness.augment.AugmentPreset`; features are then those of augmented view
    ``view`` of each image under ``seed`` (:func:`sid_edge.robustness.augment.augmented_view`), cached per
    (preset, seed, view, image contents).
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    digest = hashlib.sha256(backbone.identity.key.encode())
    # Features depend on the preprocessing pipeline too (bilinear vs bicubic, crop offset): key on the whole rule.
    digest.update(json.dumps(backbone.preprocessing.to_dict(), sort_keys=True).encode())
    if augment is not None:
        digest.update(json.dumps({"augment": augment.identity(), "seed": seed, "view": view}, sort_keys=True).encode())
    hashes = [_content_hash(p) for p in paths]
    for h in hashes:
        digest.update(h.encode())
    shard = cache / backbone.identity.key / f"{digest.hexdigest()[:32]}.npz"
    if use_cache and shard.is_file():
        with np.load(shard, allow_pickle=False) as z:
            errors = {int(i): str(r) for i, r in zip(z["error_index"], z["error_reason"])}
            log.info("feature cache hit: %s", shard)
            return Features(z["pooled"], z["embedding"], z["kept"], errors)

    pooled, embedding, kept, errors = [], [], [], {}
    device = next(backbone.parameters()).device
    with progress_bar(description, total=len(paths), unit="img") as advance, torch.inference_mode():
        sources = [str(p) if isinstance(p, os.PathLike) else p for p in paths]
        if augment is not None:
            from sid_edge.robustness.augment import augmented_view

            sources = [augmented_view(src, augment, seed, view, h) for src, h in zip(sources, hashes)]
        for batch in iter_batches(sources, backbone.preprocessing, batch_size, workers=workers):
            for item in batch.items:
                if item.error is not None:
                    errors[item.index] = item.error
            pixels = batch.pixel_values
            if pixels is not None:
                p, e = backbone(torch.from_numpy(pixels).to(device))
                pooled.append(p.float().cpu().numpy())
                embedding.append(e.float().cpu().numpy())
                kept.extend(it.index for it in batch.ok)
            advance(len(batch.items))
    result = Features(
        np.concatenate(pooled) if pooled else np.zeros((0, backbone.feature_dim), np.float32),
        np.concatenate(embedding) if embedding else np.zeros((0, backbone.embed_dim), np.float32),
        np.asarray(kept, dtype=np.int64),
        errors,
    )
    if use_cache:
        shard.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(shard) as f:  # a killed run never leaves a half-written shard
            np.savez(
                f,
                pooled=result.pooled,
                embedding=result.embedding,
                kept=result.kept,
                error_index=np.asarray(list(errors), dtype=np.int64),
                error_reason=np.asarray(list(errors.values()), dtype=str),
            )
    return result


def augmented_training_set(backbone: Backbone, items: Sequence, clean: Features, preset_name: str, *, views: int = 2,
                           seed: int = 0, val_fraction: float = 0.2, feature: str = "pooled",
                           **extract) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Training features on augmented views, validation on unaugmented images (no view of a validation image is
    trained on).

    ``items``: labelled images (``.image``, ``.label``); ``clean``: their unaugmented :class:`Features`. The images
    that decoded are split by :func:`sid_edge.build.training.stratified_split` (``val_fraction``, ``seed``); each
    training image contributes ``views`` augmented views (:mod:`sid_edge.robustness.augment`, cached per view and
    seed). ``feature``: "pooled" (orthogonal/linear heads) or "embedding" (concept model). Returns (x_train
    [V·n_train', D] float32, y_train int64, (x_val [n_val, D], y_val)). Views that fail to decode are left out.
    Raises ValueError for an unknown preset or feature, or a single class."""
    from sid_edge.build.training import stratified_split
    from sid_edge.robustness.augment import preset

    p = preset(preset_name)
    if feature not in ("pooled", "embedding"):
        raise ValueError(f"feature {feature!r}: expected 'pooled' or 'embedding'")
    labels = np.asarray([items[i].label for i in clean.kept], dtype=np.int64)
    tr, va = stratified_split(labels, val_fraction, seed)
    train_items = [items[int(clean.kept[i])] for i in tr]
    xs, ys = [], []
    for v in range(views):
        f = extract_features(backbone, [it.image for it in train_items], augment=p, seed=seed, view=v,
                             description=f"Features of augmented view {v + 1}/{views}", **extract)
        xs.append(getattr(f, feature))
        ys.append(np.asarray([train_items[i].label for i in f.kept], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), (getattr(clean, feature)[va], labels[va])
