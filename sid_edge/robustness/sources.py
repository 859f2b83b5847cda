"""Perturbed inputs the runtime's decoder pipeline understands (torch-free).

:class:`PerturbedImage` wraps any input the runtime reads (path, bytes, dataset reference, PIL image, HxWx3 uint8
RGB array) and, in the decoder thread, decodes it with the runtime's own rules (:func:`decode_image`: EXIF
orientation, 16-bit scaling, bomb limits) and applies a :class:`Perturbation`. The runtime's
:func:`sid_edge.runtime.batching.iter_batches` calls ``resolve_image()`` and preprocesses the PIL image it returns,
so a perturbed image is scored exactly as an unperturbed one, from its pixels.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from sid_edge.robustness.perturbations import Perturbation

ENCODED = (str, os.PathLike, bytes, bytearray, memoryview)


class PerturbedImage:
    """``perturbation`` applied to ``source`` when the decoder thread resolves it.

    ``resolve_image()`` returns a mode-"RGB" PIL image; raises ImageDecodeError (the runtime reports it as the
    item's error) when the source cannot be decoded or the perturbation fails on it."""

    def __init__(self, source, perturbation: Perturbation, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.source, self.perturbation, self.max_pixels = source, perturbation, max_pixels

    def resolve_image(self) -> Image.Image:
        src = self.source.resolve_image() if hasattr(self.source, "resolve_image") else self.source
        if isinstance(src, ENCODED):
            image = decode_image(src, max_pixels=self.max_pixels)
        elif isinstance(src, Image.Image):
            image = src if src.mode == "RGB" else src.convert("RGB")
        elif isinstance(src, np.ndarray) and src.ndim == 3 and src.shape[2] == 3 and src.dtype == np.uint8:
            image = Image.fromarray(src)
        else:
            raise ImageDecodeError(None, f"unsupported input type {type(src).__name__} for a perturbation")
        try:
            return self.perturbation.apply(image)
        except (ValueError, cv2.error, OSError, MemoryError) as e:
            where = os.fsdecode(src) if isinstance(src, (str, os.PathLike)) else None
            raise ImageDecodeError(where, f"{self.perturbation.name} failed ({type(e).__name__}: {e})") from None

    def __str__(self) -> str:
        return f"{self.source} [{self.perturbation.name}]"
