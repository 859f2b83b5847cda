"""Decode and preprocess images in worker threads, in order, in batches (torch-free).

Pillow releases the GIL while decoding and resampling, and ONNX Runtime / torch release it while computing, so a
small thread pool keeps decoding of the next batches running while the current one is inferred.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from sid_edge.runtime.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    _bomb_reason,
    load_and_preprocess,
    open_image_source,
    preprocess,
)
from sid_edge.artifact.preprocessing import Preprocessing


@dataclass
class Item:
    """One input after preprocessing: ``pixels`` float32 [3,S,S], or ``error`` (a reason) when it failed.

    ``source`` is the input for paths and lazy dataset references, and the input's position (an int) for
    in-memory inputs (images, arrays, bytes), so results never keep frames alive."""

    index: int
    source: object
    pixels: np.ndarray | None
    error: str | None


@dataclass
class Batch:
    """Consecutive items; ``pixel_values`` stacks the good ones as float32 [n_ok,3,S,S] (None if none are good)."""

    items: list[Item]

    @property
    def ok(self) -> list[Item]:
        return [it for it in self.items if it.error is None]

    @property
    def pixel_values(self) -> np.ndarray | None:
        good = self.ok
        return np.stack([it.pixels for it in good]) if good else None


def default_workers() -> int:
    """Decoder threads: one per core, at least 2 so decoding overlaps inference even on small machines."""
    return max(2, os.cpu_count() or 2)


ENCODED = (str, os.PathLike, bytes, bytearray, memoryview)


def result_source(index: int, source) -> object:
    """What a result keeps of its input: paths and lazy dataset references as given, else the input's index."""
    return source if isinstance(source, (str, os.PathLike)) or hasattr(source, "resolve_image") else index


def own_copy(source, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Make an input safe to hand to a decoder thread, in the caller's thread.

    PIL images are not thread-safe (the same object passed twice would be decoded by two threads at once): each
    gets a private, loaded copy, upright by its EXIF orientation as a file passed by path would be. File objects
    are read here (their position belongs to the caller). Raises ImageDecodeError for a PIL image that cannot load
    or has more than ``max_pixels`` pixels (checked before loading: an image from ``Image.open`` is still lazy).
    """
    if isinstance(source, Image.Image):
        # An image from Image.open is still lazy: check its header size before loading, as decode_image does.
        if max_pixels is not None and source.width * source.height > max_pixels:
            raise ImageDecodeError(None, _bomb_reason(source.width, source.height, max_pixels))
        try:
            return ImageOps.exif_transpose(source)  # a new, loaded image (a copy when there is nothing to turn)
        except Exception as e:
            raise ImageDecodeError(None, f"cannot load the PIL image ({type(e).__name__}: {e})") from None
    if hasattr(source, "read") and not isinstance(source, ENCODED):
        _, fp, _ = open_image_source(source)
        return fp.getvalue()
    return source


def _load(index: int, source, spec: Preprocessing, max_pixels: int) -> Item:
    kept = result_source(index, source)
    try:
        if isinstance(source, ImageDecodeError):  # own_copy failed in the caller's thread
            raise source
        # A lazy reference into a parquet/arrow dataset (sid_edge.tools.datasets.ImageRef): read its bytes here, in the
        # worker thread, so that reading overlaps inference like decoding does.
        encoded = source.resolve_image() if hasattr(source, "resolve_image") else source
        if isinstance(encoded, ENCODED):
            pixels = load_and_preprocess(encoded, spec, max_pixels=max_pixels)
        elif isinstance(encoded, (Image.Image, np.ndarray)):  # an in-memory image (PIL or HxWx3 uint8 RGB array)
            pixels = preprocess(encoded, spec)
        else:
            raise TypeError(f"unsupported input type {type(encoded).__name__} (expected a path, bytes, a binary file "
                            f"object, a PIL image or an HxWx3 uint8 RGB array)")
        return Item(index, kept, pixels, None)
    except ImageDecodeError as e:
        return Item(index, kept, None, e.reason)
    except (ValueError, OSError, MemoryError, TypeError) as e:  # last line of defence: one bad input never stops a run
        return Item(index, kept, None, f"{type(e).__name__}: {e}")


def iter_batches(
    sources: Iterable,
    spec: Preprocessing,
    batch_size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prefetch_batches: int = 2,
) -> Iterator[Batch]:
    """Yield batches of preprocessed items in input order, decoding ahead in ``workers`` threads.

    Args:
        sources: paths (str/PathLike), encoded bytes, lazy dataset references (anything with ``resolve_image()``
            returning bytes or a path, see :class:`sid_edge.tools.datasets.ImageRef`), or in-memory images (PIL.Image
            or HxWx3 uint8 RGB ndarray).
        spec: the preprocessing rule (from the artifact manifest or the backbone).
        batch_size: items per batch (the last one may be shorter), >= 1.
        workers: decoder threads (default :func:`default_workers`).
        max_pixels: decompression-bomb limit passed to the decoder.
        prefetch_batches: how many batches are decoded ahead of the consumer (bounds memory).

    Errors never escape for a single image: they come back as ``Item.error``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = batch_size * (prefetch_batches + 1)
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="sid-decode") as pool:
        pending: deque = deque()
        it = iter(enumerate(sources))
        exhausted = False
        batch: list[Item] = []
        while True:
            while not exhausted and len(pending) < window:
                try:
                    i, src = next(it)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    src = own_copy(src, max_pixels)
                except ImageDecodeError as e:
                    src = e
                except (ValueError, OSError, TypeError, UnicodeError) as e:  # e.g. a closed or text-mode file object
                    src = ImageDecodeError(None, f"cannot read the input ({type(e).__name__}: {e})")
                pending.append(pool.submit(_load, i, src, spec, max_pixels))
            if not pending:
                break
            batch.append(pending.popleft().result())
            if len(batch) == batch_size:
                yield Batch(batch)
                batch = []
        if batch:
            yield Batch(batch)
