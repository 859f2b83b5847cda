"""Train-time augmentation presets, seeded per image and view (torch-free; numpy RNG, Pillow, OpenCV).

``train --augment PRESET`` extracts backbone features on augmented views so the head learns invariance to delivery.
Each view of each image draws its parameters from ``numpy.random.default_rng([seed, view, image_key])`` (image_key:
the first 64 bits of the sha256 of its bytes), so a view is reproducible and its features cacheable per
(preset, seed, view, image content).

Presets (operations in this order; each applied with its probability):

* ``paper`` — the paper's training set (clip-cues): random resized crop to 512×512 (area scale U(0.5, 1), aspect
  ratio log-uniform in [3/4, 4/3], torchvision's 10-attempt sampling with a centre-crop fallback, Pillow bilinear),
  horizontal flip (p 0.5), JPEG at quality U{65..100} (p 1).
* ``delivery`` — ``paper`` plus Gaussian blur σ U(0.1, 2) (p 0.5, before JPEG) and a resize round trip by
  U(0.25, 1) (p 0.5, OpenCV INTER_AREA down, INTER_CUBIC back up, before JPEG).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

from sid_edge.robustness.sources import PerturbedImage


@dataclass(frozen=True)
class AugmentPreset:
    """Parameters of an augmentation preset (module docstring). Probabilities in [0, 1]; ranges inclusive."""

    name: str
    crop_size: int = 512
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jpeg_p: float = 1.0
    jpeg_quality: tuple[int, int] = (65, 100)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    resize_p: float = 0.0
    resize_factor: tuple[float, float] = (0.25, 1.0)

    def identity(self) -> dict:
        return {**asdict(self), "version": 1}

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """One augmented view of an RGB image, drawing every parameter from ``rng``."""
        image = _random_resized_crop(image, rng, self.crop_scale, self.crop_ratio, self.crop_size)
        if rng.random() < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.blur_p:
            sigma = float(rng.uniform(*self.blur_sigma))
            image = Image.fromarray(cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=sigma, sigmaY=sigma))
        if rng.random() < self.resize_p:
            f = float(rng.uniform(*self.resize_factor))
            w, h = image.size
            small = cv2.resize(np.asarray(image), (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
            image = Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
        if rng.random() < self.jpeg_p:
            q = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=q)
            buf.seek(0)
            with Image.open(buf) as im:
                image = im.convert("RGB")
        return image


def _random_resized_crop(image: Image.Image, rng: np.random.Generator, scale, ratio, size: int) -> Image.Image:
    """torchvision ``RandomResizedCrop.get_params`` (10 attempts, then a centre crop at the clamped ratio), drawn
    from ``rng``; the crop resized to size×size with Pillow bilinear."""
    w, h = image.size
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        in_ratio = w / h
        if in_ratio < min(ratio):
            cw, ch = w, int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = h, int(round(h * max(ratio)))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
        box = (left, top, left + cw, top + ch)
    return image.crop(box).resize((size, size), Image.Resampling.BILINEAR)  # torchvision resized_crop: crop, then resize


PRESETS = {
    "paper": AugmentPreset("paper"),
    "delivery": AugmentPreset("delivery", blur_p=0.5, resize_p=0.5),
}


def preset(name: str) -> AugmentPreset:
    """The named preset. Raises ValueError listing the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


class _Augmentation:
    """Adapter so :class:`PerturbedImage` (decoding with the runtime's rules) can apply a seeded random view."""

    def __init__(self, p: AugmentPreset, seed: list[int]):
        self.preset, self.seed = p, seed
        self.name = f"augment:{p.name}"

    def apply(self, image: Image.Image) -> Image.Image:
        return self.preset.apply(image, np.random.default_rng(self.seed))


def augmented_view(source, p: AugmentPreset, seed: int, view: int, content_sha256: str) -> PerturbedImage:
    """A lazy input for the runtime's decoder pipeline: view ``view`` of ``source`` under preset ``p`` and ``seed``
    (the RNG seed is [seed, view, first 64 bits of the content hash])."""
    key = int(content_sha256[:16], 16) if all(c in "0123456789abcdef" for c in content_sha256[:16]) else 0
    return PerturbedImage(source, _Augmentation(p, [int(seed), int(view), key]))
