"""Calibration sets: a stratified draw from a dataset's train split, preprocessed exactly as the runtime does,
cached on disk as ``.npy`` and reused when the same set is asked for again (torch-free).

The cache key is the sha256 of the preprocessing rule and of every chosen image's key and version stamp (file
size and mtime, or the dataset fingerprint), so an edited dataset or another input size misses the cache while a
repeated export hits it. Cache files: ``<cache>/calibration/<key>.npy`` (float32 [N,3,S,S]) and ``<key>.json``
(the chosen images: key, image_id, label, source, split; images that failed to decode).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sid_edge.artifact.files import write_text_atomic
from sid_edge.calibration.selection import select_stratified
from sid_edge.tools.datasets import LabelledImage, dataset_location, read_labelled_images
from sid_edge.tools.caches import cache_root, content_sha256
from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.runtime.batching import iter_batches

#: ``progress(description, total) -> advance(n)``, e.g. from :func:`sid_edge.runtime.progress.progress_tasks`.
TaskFactory = Callable[[str, int], Callable[[int], None]]

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: records carry the image's sha256
#: Calibration images when a CUDA or TensorRT provider calibrates (the usual PTQ set size).
GPU_CALIBRATION_SIZE = 512
#: On a CPU a ViT-L/14-336 calibration pass costs ~40 s an image (plus ~4 min fixed): 32 images keep an INT8 export
#: near 25 minutes there while still drawing from every stratum of a typical dataset.
CPU_CALIBRATION_SIZE = 32


def default_calibration_size(providers: Sequence[str] | None = None) -> int:
    """512 images when ONNX Runtime offers CUDA or TensorRT (where calibration is fast), else 32.

    ``providers``: ONNX Runtime provider names (default: ``onnxruntime.get_available_providers()``).
    """
    if providers is None:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers)
    return GPU_CALIBRATION_SIZE if gpu else CPU_CALIBRATION_SIZE


def default_cache_dir() -> Path:
    """``$SID_EDGE_CACHE`` or the user cache dir (platformdirs) + ``/calibration``."""
    return cache_root() / "calibration"


def image_record(item: LabelledImage) -> dict:
    """The JSON record of one image: key, image_id, label, source, split, and the sha256 of its bytes (what
    evaluation excludes it by, whatever the spelling of the dataset's path)."""
    try:
        digest = content_sha256(item.image)
    except (OSError, ValueError):
        digest = None
    return {"key": item.key, "image_id": item.image_id, "label": item.label, "source": item.source, "split": item.split,
            "sha256": digest}


@dataclass
class CalibrationSet:
    """Preprocessed calibration images.

    Attributes:
        pixel_values: float32 [N,3,S,S], memory-mapped from the cache file when cached.
        records: one :func:`image_record` per row of ``pixel_values``, in order.
        skipped: images drawn but not decodable: {"key", "reason"}.
        description: how the set was drawn: data, split, size asked, seed, preprocessing.
        cache_file: the ``.npy`` file (None when not cached).
        from_cache: True when it was read from the cache rather than computed.
    """

    pixel_values: np.ndarray
    records: list[dict]
    skipped: list[dict] = field(default_factory=list)
    description: dict = field(default_factory=dict)
    cache_file: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[str]:
        """``image_id`` of every calibration image (drawn ones that failed to decode included), for exclusion."""
        return [r["image_id"] for r in self.records] + [s["image_id"] for s in self.skipped]

    def summary(self) -> dict:
        """What the manifest records: the description, counts per label and source, and every image id."""
        by_label = {"real": sum(r["label"] == 0 for r in self.records), "synthetic": sum(r["label"] == 1 for r in self.records)}
        by_source: dict[str, int] = {}
        for r in self.records:
            by_source[r["source"]] = by_source.get(r["source"], 0) + 1
        return {**self.description, "images": len(self.records), "by_label": by_label, "by_source": by_source,
                "skipped": self.skipped, "image_ids": sorted(set(self.image_ids)),
                "image_sha256": sorted({r["sha256"] for r in self.records if r.get("sha256")})}


def _stamp(item: LabelledImage) -> str:
    img = item.image
    if isinstance(img, bytes):
        return hashlib.sha256(img).hexdigest()
    if isinstance(img, Path):
        try:
            st = img.stat()
            return f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return "missing"
    return img.stamp()


def cache_key(items: Sequence[LabelledImage], preprocessing: Preprocessing) -> str:
    """sha256 (hex) of the preprocessing rule and each item's key and version stamp."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "preprocessing": preprocessing.to_dict()}, sort_keys=True).encode())
    for it in items:
        h.update(f"\n{it.key}\t{_stamp(it)}".encode())
    return h.hexdigest()


def preprocess_items(
    items: Sequence[LabelledImage], preprocessing: Preprocessing, *, description: str = "Preprocessing",
    progress: TaskFactory | None = None, out: Path | None = None, batch_size: int = 16,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode and preprocess ``items`` with the runtime's pipeline (worker threads; a progress task when
    ``progress`` is given).

    Returns (pixel_values float32 [n_ok,3,S,S], indices of the items that decoded, [(index, reason)] of those
    that did not). With ``out``, the array is written there as ``.npy`` and returned memory-mapped.
    """
    s = preprocessing.size
    tmp = None
    if out is not None:
        tmp = out.with_name(out.name + ".tmp.npy")
        buf = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(items), 3, s, s))
    else:
        buf = np.empty((len(items), 3, s, s), np.float32)
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    advance = progress(description, len(items)) if progress else (lambda n: None)
    for batch in iter_batches([it.image for it in items], preprocessing, batch_size):
        for item in batch.items:
            if item.error is None:
                buf[len(ok)] = item.pixels
                ok.append(item.index)
            else:
                failed.append((item.index, item.error))
        advance(len(batch.items))
    if out is None:
        return buf[: len(ok)], ok, failed
    buf.flush()
    del buf
    if len(ok) < len(items):  # rewrite without the rows of images that failed to decode
        full = np.load(tmp, mmap_mode="r")
        np.save(out, np.ascontiguousarray(full[: len(ok)]))
        del full
        os.remove(tmp)
    else:
        os.replace(tmp, out)  # atomic: a killed run never leaves a half-written cache file
    return np.load(out, mmap_mode="r"), ok, failed


def build_calibration_set(
    data: str | os.PathLike,
    preprocessing: Preprocessing,
    *,
    size: int | None = None,
    seed: int = 0,
    split: str = "train",
    items: Sequence[LabelledImage] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: TaskFactory | None = None,
) -> CalibrationSet:
    """Draw (see :func:`sid_edge.calibration.selection.select_stratified`), preprocess and cache a calibration set.

    Args:
        data: any dataset form :func:`sid_edge.tools.datasets.read_labelled_images` accepts.
        preprocessing: the artifact's rule (manifest ``preprocessing``), so calibration sees what the runtime feeds.
        size: images to draw (default :func:`default_calibration_size`).
        seed: the draw's seed; the same data, size and seed give the same images.
        split: the split to draw from (ignored by datasets without splits).
        items: the already-read items of ``data``'s split (skips reading ``data`` again).
        cache_dir: cache folder (default :func:`default_cache_dir`); ``use_cache=False`` neither reads nor writes.
        progress: task factory for a progress bar while preprocessing.

    Raises:
        FileNotFoundError / ValueError: from the dataset reader (missing data, split, column, bad label).
        ValueError: no drawn image could be decoded.
    """
    size = size or default_calibration_size()
    pool = list(items) if items is not None else read_labelled_images(data, split=split)
    chosen = select_stratified(pool, size, seed)
    # `location` (absolute) lets evaluation recognise the calibration data from any working directory.
    description = {"data": str(data), "location": dataset_location(data),
                   "split": split if any(it.split for it in pool) else None,
                   "size_requested": size, "seed": seed, "selection": "stratified by label, then source"}
    key = cache_key(chosen, preprocessing)[:32]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    npy, meta = cache / f"{key}.npy", cache / f"{key}.json"
    if use_cache and npy.is_file() and meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        log.info("calibration cache hit: %s", npy)
        return CalibrationSet(np.load(npy, mmap_mode="r"), m["records"], m["skipped"], description, npy, True)

    out = None
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
        out = npy
    pixels, ok, failed = preprocess_items(chosen, preprocessing, description="Calibration images", progress=progress, out=out)
    skipped = [{**image_record(chosen[i]), "reason": reason} for i, reason in failed]
    for s in skipped:
        log.warning("calibration image %s skipped: %s", s["key"], s["reason"])
    if not ok:
        if out is not None:
            npy.unlink(missing_ok=True)
        raise ValueError(f"{data}: none of the {len(chosen)} calibration images could be decoded")
    records = [image_record(chosen[i]) for i in ok]
    if use_cache:
        write_text_atomic(meta, json.dumps({"records": records, "skipped": skipped, "description": description}))
    return CalibrationSet(pixels, records, skipped, description, npy if use_cache else None, False)
