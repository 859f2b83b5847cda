"""Deterministic image perturbations that model delivery: re-encoding, resizing, cropping, screenshots (torch-free).

Each perturbation maps a decoded RGB image (PIL, mode "RGB", already upright by its EXIF orientation) to another
RGB image, with Pillow or OpenCV and no randomness, so the same image and spec always give the same pixels (for a
given Pillow/libjpeg/libwebp and OpenCV build: :func:`library_versions` goes into every cache key).

Specs (``FAMILY`` or ``FAMILY:PARAM``):

===================  ==========================================================================================
``jpeg:Q``           Pillow JPEG encode at quality Q (1..100, 4:2:0 chroma subsampling, no optimisation) + decode
``webp:Q``           Pillow lossy WebP encode at quality Q (1..100, method 4) + decode
``resize:F``         scale both sides by F (0.05..4; OpenCV INTER_AREA when shrinking, INTER_CUBIC when growing);
                     the result keeps its new size (the detector's own preprocessing resamples it)
``thumbnail:N``      thumbnail round trip: longer side down to N px (Pillow ``thumbnail``, bicubic, aspect kept),
                     then back up to the original size (Pillow bicubic)
``crop:F``           centre crop keeping a fraction F (0.1..1) of each side (offsets rounded down)
``gray``             ITU-R 601-2 luma (Pillow ``convert("L")``) copied to the three channels
``blur:S``           Gaussian blur with sigma S px (0.1..20; OpenCV ``GaussianBlur``, kernel from sigma, reflect-101)
``screenshot[:F]``   an image shown at scale F (default 0.75) and captured: bilinear down to F (OpenCV
                     INTER_LINEAR, as browsers draw), PNG encode + decode (drops all metadata), bilinear back up
===================  ==========================================================================================

``strength`` orders specs of one family from mild to strong for plots (e.g. JPEG: 100 − Q; resize: 1/F).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
import PIL
from PIL import Image

from sid_edge.runtime.images import DEFAULT_MAX_PIXELS

__all__ = ["Perturbation", "parse_perturbation", "parse_perturbations", "FAMILIES", "library_versions",
           "DEFAULT_PERTURBATIONS"]

#: family -> (parameter name, default, lower bound, upper bound, integer?) ; None: no parameter.
FAMILIES: dict[str, tuple[str, float, float, float, bool] | None] = {
    "jpeg": ("quality", None, 1, 100, True),
    "webp": ("quality", None, 1, 100, True),
    "resize": ("factor", None, 0.05, 4.0, False),
    "thumbnail": ("longer side px", None, 8, 4096, True),
    "crop": ("kept fraction", None, 0.1, 1.0, False),
    "gray": None,
    "blur": ("sigma px", None, 0.1, 20.0, False),
    "screenshot": ("display scale", 0.75, 0.1, 1.0, False),
}

#: What ``evaluate --perturb`` means without arguments: the cases of the issue, mild to strong.
DEFAULT_PERTURBATIONS = ("jpeg:90", "jpeg:75", "jpeg:40", "webp:80", "resize:0.5", "resize:0.25", "thumbnail:128",
                         "crop:0.8", "gray", "blur:1.0", "screenshot")

#: Most pixels a perturbation may produce (resize up is bounded like a decoded image: the decoder's bomb limit).
MAX_PIXELS = DEFAULT_MAX_PIXELS


def library_versions() -> dict[str, str]:
    """Versions whose codecs and resamplers decide the perturbed pixels (for cache keys and reports)."""
    from PIL import features

    return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg")), "libwebp": str(features.version("webp")),
            "opencv": cv2.__version__}


@dataclass(frozen=True)
class Perturbation:
    """One deterministic transform: ``family`` (a key of :data:`FAMILIES`) and ``param`` (None for ``gray``).

    ``name`` is the canonical spec (``jpeg:40``, ``resize:0.5``, ``gray``). Build with :func:`parse_perturbation`."""

    family: str
    param: float | None = None

    @property
    def name(self) -> str:
        if self.param is None:
            return self.family
        p = self.param
        return f"{self.family}:{int(p) if float(p).is_integer() else f'{p:g}'}"

    def __str__(self) -> str:
        return self.name

    @property
    def strength(self) -> float:
        """Larger is harsher, comparable within a family only (x axis of the report's plots)."""
        f, p = self.family, self.param
        if f in ("jpeg", "webp"):
            return 100.0 - p
        if f in ("resize", "crop", "screenshot"):
            return 1.0 / p
        if f == "thumbnail":
            return 1.0 / p
        if f == "blur":
            return p
        return 1.0

    def apply(self, image: Image.Image) -> Image.Image:
        """The perturbed image, mode "RGB". ``image`` must be mode "RGB" (what the runtime decoder returns).

        Raises ValueError for another mode or when the result would have more than :data:`MAX_PIXELS` pixels."""
        if image.mode != "RGB":
            raise ValueError(f"{self.name}: expected an RGB image, got mode {image.mode}")
        w, h = image.size
        f, p = self.family, self.param
        if f == "jpeg":
            return _reencode(image, "JPEG", quality=int(p), subsampling="4:2:0", optimize=False)
        if f == "webp":
            return _reencode(image, "WEBP", quality=int(p), method=4, lossless=False)
        if f == "resize":
            size = _scaled(w, h, p, self.name)
            interp = cv2.INTER_AREA if p < 1 else cv2.INTER_CUBIC
            return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=interp))
        if f == "thumbnail":
            small = image.copy()
            small.thumbnail((int(p), int(p)), Image.Resampling.BICUBIC, reducing_gap=None)
            return small.resize((w, h), Image.Resampling.BICUBIC)
        if f == "crop":
            cw, ch = max(1, int(w * p)), max(1, int(h * p))
            left, top = (w - cw) // 2, (h - ch) // 2
            return image.crop((left, top, left + cw, top + ch))
        if f == "gray":
            return image.convert("L").convert("RGB")
        if f == "blur":
            return Image.fromarray(cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=p, sigmaY=p,
                                                    borderType=cv2.BORDER_REFLECT_101))
        if f == "screenshot":
            size = _scaled(w, h, p, self.name)
            shown = cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR)
            captured = _reencode(Image.fromarray(shown), "PNG")
            return Image.fromarray(cv2.resize(np.asarray(captured), (w, h), interpolation=cv2.INTER_LINEAR))
        raise ValueError(f"unknown perturbation family {f!r}")  # unreachable after parse_perturbation

    def identity(self) -> dict:
        """What determines the output pixels: the spec and the codec/resampler versions (cache keys)."""
        return {"perturbation": self.name, "libraries": library_versions(), "version": 1}


def _scaled(w: int, h: int, factor: float, name: str) -> tuple[int, int]:
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    if nw * nh > MAX_PIXELS:
        raise ValueError(f"{name}: a {w}x{h} image would become {nw}x{nh}, more than {MAX_PIXELS} pixels")
    return nw, nh


def _reencode(image: Image.Image, fmt: str, **options) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def parse_perturbation(spec: str) -> Perturbation:
    """``"jpeg:40"`` -> Perturbation("jpeg", 40.0). Case-insensitive, surrounding spaces ignored.

    Raises ValueError naming the spec and the accepted forms: unknown family, missing/extra/non-numeric parameter,
    a parameter out of its range (see :data:`FAMILIES`)."""
    text = str(spec).strip().lower()
    family, sep, raw = text.partition(":")
    if family not in FAMILIES:
        raise ValueError(f"perturbation {spec!r}: unknown kind {family!r}; use one of "
                         + ", ".join(f"{k}:{v[0].split()[0].upper()}" if v and v[1] is None else k
                                     for k, v in FAMILIES.items()))
    rule = FAMILIES[family]
    if rule is None:
        if sep:
            raise ValueError(f"perturbation {spec!r}: {family} takes no parameter")
        return Perturbation(family)
    what, default, lo, hi, integer = rule
    if not sep or not raw:
        if default is None:
            raise ValueError(f"perturbation {spec!r}: {family} needs a {what}, e.g. {family}:{_example(family)}")
        return Perturbation(family, float(default))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"perturbation {spec!r}: {what} {raw!r} is not a number") from None
    if not math.isfinite(value) or not lo <= value <= hi or (integer and not value.is_integer()):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"perturbation {spec!r}: {what} must be {kind} in [{lo:g}, {hi:g}], got {raw}")
    return Perturbation(family, value)


def _example(family: str) -> str:
    return {"jpeg": "75", "webp": "80", "resize": "0.5", "thumbnail": "128", "crop": "0.8", "blur": "1.0"}.get(family, "1")


def parse_perturbations(specs) -> list[Perturbation]:
    """Parse several specs (duplicates, by canonical name, removed; order kept). Raises ValueError as
    :func:`parse_perturbation`."""
    out: list[Perturbation] = []
    for s in specs:
        p = parse_perturbation(s)
        if p not in out:
            out.append(p)
    return out
