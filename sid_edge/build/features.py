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
) -> Features:
    """Run the frozen backbone over ``paths`` with a progress bar, reading/writing the feature cache.

    ``paths``: image files, encoded bytes, or dataset references (:class:`sid_edge.tools.datasets.ImageRef`).

    Images that fail to decode are skipped and reported in ``Features.errors`` (index -> reason); they never
    stop the run. The cache stores the result for the exact (backbone identity, preprocessing rule, image contents)
    triple; ``backbone.preprocessing`` is the rule applied (set it to train on another pipeline).
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    digest = hashlib.sha256(backbone.identity.key.encode())
    # Features depend on the preprocessing pipeline too (bilinear vs bicubic, crop offset): key on the whole rule.
    digest.update(json.dumps(backbone.preprocessing.to_dict(), sort_keys=True).encode())
    for p in paths:
        digest.update(_content_hash(p).encode())
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
