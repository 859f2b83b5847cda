"""A per-image cache of arrays, keyed by what computed them and by the sha256 of each image's bytes (torch-free).

Evaluation computes, for every image, either backbone features or a detector's scores; both are expensive for
ViT-L/14-336 and never change for the same image bytes and the same model. Entries live in a *namespace* (one
folder named by a hash of the model identity) as ``.npz`` shards, each holding the sha256 of its images, one array
per field (row i belongs to image i) and the images that failed to decode with their reason. A renamed file hits,
an edited one misses, and a run that needs only a few new images computes and stores only those.

Layout: ``<root>/<namespace>/<shard>.npz`` and ``<root>/<namespace>/about.json`` (what the namespace holds, for
people). Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sid_edge.artifact.files import atomic_write, sha256_stream, write_text_atomic
from sid_edge.artifact.locations import cache_root
from sid_edge.runtime.images import ImageDecodeError, open_image_source

_HASHES, _ERROR_HASHES, _ERROR_REASONS = "__hashes__", "__error_hashes__", "__error_reasons__"


def default_cache_root() -> Path:
    """The evaluation cache: :func:`cache_root` + ``/evaluation``."""
    return cache_root() / "evaluation"


def content_sha256(source) -> str:
    """sha256 (hex) of an image's encoded bytes: a file path, bytes, or a dataset reference (``resolve_image()``).

    Raises OSError/ValueError when the bytes cannot be read (a missing file, a dataset cell without an image).
    """
    if hasattr(source, "resolve_image"):
        source = source.resolve_image()
    # The decoder's opener: a FIFO, device or oversized file is refused instead of read (or waited on) forever.
    try:
        _, fp, _ = open_image_source(source)
    except ImageDecodeError as e:
        raise OSError(f"{e.path or 'image'}: {e.reason}") from None
    with fp:
        return sha256_stream(fp)


class ImageArrayCache:
    """Arrays per image in one namespace.

    Args:
        namespace: folder name (a hash of what computes the values, see :func:`namespace_for`).
        fields: field name -> per-image shape (``()`` for a scalar), all stored as float32.
        root: cache root (default :func:`default_cache_root`).
        about: a JSON-able description written once to ``about.json``.
    """

    def __init__(self, namespace: str, fields: Mapping[str, tuple[int, ...]], root: str | os.PathLike | None = None,
                 about: dict | None = None):
        self.directory = Path(root) if root else default_cache_root()
        self.directory = self.directory / namespace
        self.fields = {k: tuple(v) for k, v in fields.items()}
        self.about = about or {}

    def load(self, hashes: Sequence[str | None]) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, str]]:
        """Look up images by sha256 (None: no lookup).

        Returns (values {field: float32 [N, *shape]}, found bool [N], errors {index: reason}). Rows that are
        neither found nor errors hold NaN. Shards whose fields differ from this cache's are ignored.
        """
        n = len(hashes)
        values = {k: np.full((n, *shape), np.nan, np.float32) for k, shape in self.fields.items()}
        found = np.zeros(n, dtype=bool)
        errors: dict[int, str] = {}
        wanted: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            if h is not None:
                wanted.setdefault(h, []).append(i)
        if not wanted or not self.directory.is_dir():
            return values, found, errors
        for shard in sorted(self.directory.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    if any(k not in z.files or z[k].shape[1:] != shape for k, shape in self.fields.items()):
                        continue
                    rows = {str(h): r for r, h in enumerate(z[_HASHES])}
                    hits = [(i, rows[h]) for h, idx in wanted.items() if h in rows for i in idx]
                    if hits:
                        dst, src = np.array([i for i, _ in hits]), np.array([r for _, r in hits])
                        for k in self.fields:
                            values[k][dst] = z[k][src]
                        found[dst] = True
                    for h, reason in zip(z[_ERROR_HASHES], z[_ERROR_REASONS]):
                        for i in wanted.get(str(h), []):
                            if not found[i]:
                                errors[i] = str(reason)
            except (OSError, ValueError, KeyError):  # a damaged shard is a cache miss, never a failure
                continue
        for i in list(errors):
            if found[i]:
                del errors[i]
        return values, found, errors

    def store(self, hashes: Sequence[str], values: Mapping[str, np.ndarray], errors: Mapping[str, str]) -> Path | None:
        """Write one shard: rows ``values[field][i]`` for image ``hashes[i]``, plus ``errors`` {sha256: reason}.

        Returns the shard path (None when there is nothing to store). Raises ValueError when a field is missing or
        its shape does not match.
        """
        if not len(hashes) and not errors:
            return None
        arrays = {}
        for k, shape in self.fields.items():
            a = np.asarray(values[k], dtype=np.float32).reshape((len(hashes), *shape)) if k in values else None
            if a is None:
                raise ValueError(f"cache store: field {k!r} missing")
            arrays[k] = a
        self.directory.mkdir(parents=True, exist_ok=True)
        about = self.directory / "about.json"
        if self.about and not about.is_file():
            write_text_atomic(about, json.dumps(self.about, indent=2) + "\n")
        digest = hashlib.sha256("\n".join([*hashes, "#", *sorted(errors)]).encode()).hexdigest()[:24]
        path = self.directory / f"{digest}.npz"
        with atomic_write(path) as f:  # a killed run never leaves a half-written shard
            np.savez(f, **arrays, **{_HASHES: np.asarray(list(hashes), dtype="U64"),
                                     _ERROR_HASHES: np.asarray(list(errors), dtype="U64"),
                                     _ERROR_REASONS: np.asarray(list(errors.values()), dtype=str)})
        return path


def namespace_for(kind: str, identity: dict) -> str:
    """``<kind>-<24 hex>``: a stable name for the values ``identity`` (a JSON-able dict) computes."""
    text = json.dumps({"kind": kind, **identity}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"
