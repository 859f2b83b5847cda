"""Per-image limits of the detection service, and the decode step that enforces them (torch-free).

Two bounds apply to every image before any large allocation, both the runtime's own rules:

* **source pixels** (width x height from the header, before decoding): :func:`sid_edge.runtime.images.decode_image`'s
  decompression-bomb limit, ``max_pixels``;
* **resize work**: the ``"shortest"`` rule sends the SHORT side to the model's size S, so a 20000x1 strip would
  become a 1,280,000x64 intermediate at S=64 (about 0.8 GB peak for a 143-byte PNG). The runtime's
  :func:`~sid_edge.runtime.images.check_resize_work` refuses aspect ratios above
  :data:`~sid_edge.runtime.images.MAX_ASPECT_RATIO` before the resize runs; :func:`prepare_image` applies it to
  every input (bytes, paths, PIL images and arrays alike).

Refusals raise :class:`ImageRefused` with a human ``reason`` and a ``category`` from :data:`ERROR_CATEGORIES` (a
fixed set, so the Prometheus label ``reason`` has bounded cardinality).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, check_resize_work, decode_image, preprocess

__all__ = [
    "ERROR_CATEGORIES",
    "ImageLimits",
    "ImageRefused",
    "error_category",
    "prepare_image",
]

#: Values of :attr:`ImageRefused.category` and of the ``reason`` label of ``sid_edge_image_errors_total``.
ERROR_CATEGORIES = ("empty", "not_an_image", "header_only", "truncated", "too_many_pixels", "resize_work",
                    "corrupt", "unsupported")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one image (the aspect-ratio bound is the runtime's fixed rule, see the module docstring).

    Attributes:
        max_pixels: source width x height above which the header alone refuses the image (decompression bomb).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        v = self.max_pixels
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"ImageLimits.max_pixels: expected a positive int, got {v!r}")


class ImageRefused(Exception):
    """An image the service will not score. ``reason``: human text; ``category``: one of :data:`ERROR_CATEGORIES`."""

    def __init__(self, reason: str, category: str):
        super().__init__(reason, category)
        self.reason = reason
        self.category = category

    def __str__(self) -> str:
        return self.reason


def error_category(reason: str) -> str:
    """Map a decoder reason (:class:`~sid_edge.runtime.images.ImageDecodeError`) to one of :data:`ERROR_CATEGORIES`."""
    r = reason.lower()
    if r.startswith("empty"):
        return "empty"
    if r.startswith("not an image"):
        return "not_an_image"
    if "header only" in r:
        return "header_only"
    if "truncated" in r:
        return "truncated"
    if "decompression bomb" in r:
        return "too_many_pixels"
    if r.startswith("aspect ratio"):
        return "resize_work"
    if r.startswith("cannot convert mode"):
        return "unsupported"
    return "corrupt"


def prepare_image(source, spec: Preprocessing, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode and preprocess one image within ``limits``: float32 ``[3, S, S]``, as
    :func:`sid_edge.runtime.images.load_and_preprocess` computes it (same decoder, same arithmetic).

    Args:
        source: encoded bytes (``bytes``/``bytearray``/``memoryview``), a path (``str``/``os.PathLike``; in-process
            callers only: the HTTP service passes bytes), a PIL image or an HxWx3 uint8 RGB array.

    Raises:
        ImageRefused: not decodable, too many source pixels, or an aspect ratio whose resize would be too much work
            (the reason names the sizes and the limit).
        TypeError: another type of source.
    """
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        try:
            image = decode_image(source, max_pixels=limits.max_pixels)
        except ImageDecodeError as e:
            raise ImageRefused(e.reason, error_category(e.reason)) from None
        except (OSError, ValueError, MemoryError) as e:  # last line of defence: a codec error with no reason yet
            raise ImageRefused(f"corrupt image ({type(e).__name__}: {e})", "corrupt") from None
        width, height = image.size
    elif isinstance(source, Image.Image):
        # Our own copy: Pillow objects are not thread-safe and the caller may pass the same object twice.
        image = source.copy()
        width, height = image.size
    elif isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ImageRefused(f"expected an (H, W, 3) uint8 RGB array, got shape {source.shape} dtype {source.dtype}",
                               "unsupported")
        image = source
        height, width = source.shape[:2]
    else:
        raise TypeError(f"prepare_image: expected bytes, a path, a PIL image or an HxWx3 uint8 array, "
                        f"got {type(source).__name__}")
    if width <= 0 or height <= 0:
        raise ImageRefused(f"empty image ({width}x{height})", "empty")
    if width * height > limits.max_pixels:
        raise ImageRefused(f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of "
                           f"{limits.max_pixels}", "too_many_pixels")
    try:
        check_resize_work(width, height, spec)  # before preprocess resizes (it checks again; cheap)
        return preprocess(image, spec)
    except ImageDecodeError as e:
        raise ImageRefused(e.reason, error_category(e.reason)) from None
    except (ValueError, OSError, MemoryError) as e:
        raise ImageRefused(f"cannot preprocess ({type(e).__name__}: {e})", "unsupported") from None


def source_name(source) -> str | None:
    """A short printable name for a source (the file name of a path; None for in-memory inputs)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(os.fsdecode(source)).name
    return None
