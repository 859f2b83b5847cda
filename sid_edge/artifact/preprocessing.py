"""The preprocessing rule an artifact records: how an image becomes the graph's ``pixel_values`` (numpy-only).

The rule is part of the artifact contract (written by export, read by the runtime); the arithmetic that applies it
lives in :mod:`sid_edge.runtime.images`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Resampling filters the runtime implements (PIL names).
INTERPOLATIONS = ("bicubic", "bilinear")
#: Centre-crop offset rules: ``"round"`` = torchvision ``CenterCrop`` (``int(round((h - size) / 2))``, Python's
#: round half to even), ``"floor"`` = Hugging Face ``CLIPImageProcessor`` (``(h - size) // 2``).
CROP_OFFSETS = ("round", "floor")
_RESIZE_MODES = ("shortest", "squash")
_COLOUR_ORDERS = ("RGB",)
# Keys to_dict writes that describe the fixed part of the rule; from_dict accepts them only with these values.
# rgb_conversion: the runtime decodes every file to RGB before resizing (clip-cues' `.convert("RGB")` loaders and
# Hugging Face's processor do the same; open_clip resizes in the source mode, which differs only for non-RGB input).
_FIXED_KEYS = {"crop": "center", "value_range": "0-1 then (x-mean)/std", "layout": "NCHW float32",
               "rgb_conversion": "before resize"}

#: CLIP's normalisation (OpenAI): open_clip ``OPENAI_DATASET_MEAN/STD`` = transformers ``OPENAI_CLIP_MEAN/STD``,
#: which clip-cues reads from ``CLIPImageProcessor``.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Named preprocessing pipelines: the original code path each reproduces -> (interpolation, crop_offset).
#:
#: * ``clip-cues``: the paper's orthogonal/linear heads (github.com/marco-willi/clip-cues,
#:   ``src/clip_cues/feature_extractor.py`` ``CLIPLargePatch14.get_transforms()``): ``.convert("RGB")``, then
#:   torchvision ``Resize(336)`` at its default interpolation (BILINEAR, antialiased on PIL images),
#:   ``CenterCrop(336)``, ``ToTensor``, ``Normalize(CLIP mean/std)``.
#: * ``hf-clip``: the paper's concept model (``scripts/extract_clip_projected_embeddings.py``, ``AutoProcessor`` =
#:   transformers' PIL ``CLIPImageProcessor``; ``CLIPImageProcessorPil`` in transformers 5): convert RGB, PIL
#:   BICUBIC shortest-edge resize, centre crop at ``(h - size) // 2``, ``x * (1/255)``, normalise.
#: * ``open_clip``: open_clip's OpenAI inference transform (``image_transform(is_train=False)``): torchvision
#:   ``Resize(size, BICUBIC)`` + ``CenterCrop``; what sid-edge served before heads recorded their rule.
PIPELINES: dict[str, tuple[str, str]] = {
    "clip-cues": ("bilinear", "round"),
    "hf-clip": ("bicubic", "floor"),
    "open_clip": ("bicubic", "round"),
}


def _check_triple(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"Preprocessing.{name}: expected 3 numbers, got {value!r}")
    items = list(value)
    if len(items) != 3:
        raise ValueError(f"Preprocessing.{name}: expected 3 numbers (R, G, B), got {len(items)}: {items!r}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise ValueError(f"Preprocessing.{name}: expected finite numbers, got {items!r}")
        if positive and v <= 0:
            raise ValueError(f"Preprocessing.{name}: values must be > 0, got {items!r}")
        out.append(float(v))
    return (out[0], out[1], out[2])


@dataclass(frozen=True)
class Preprocessing:
    """The runtime's preprocessing rule, written to the artifact manifest.

    Reproduces, per :data:`PIPELINES`, clip-cues' torchvision transform, Hugging Face's ``CLIPImageProcessor`` or
    open_clip's inference ``image_transform``: shortest-side resize on a PIL image -> centre crop -> ``/255`` ->
    ``Normalize(mean, std)``. See :func:`sid_edge.runtime.images.preprocess` for the exact arithmetic. Manifests
    written before ``crop_offset`` existed read as ``"round"`` (what the runtime did then).

    Fields:
        size: side of the square network input in pixels, e.g. 336 for ViT-L/14-336.
        mean, std: per-channel normalisation in R, G, B order, on the 0..1 scale (e.g. open_clip's
            ``OPENAI_DATASET_MEAN``/``OPENAI_DATASET_STD``).
        interpolation: ``"bicubic"`` or ``"bilinear"``, PIL resampling (which antialiases when downscaling, as
            torchvision does on PIL images; OpenCV's INTER_CUBIC does not).
        crop_offset: ``"round"`` (torchvision ``CenterCrop``: ``int(round((h - size) / 2))``) or ``"floor"``
            (Hugging Face ``CLIPImageProcessor``: ``(h - size) // 2``); the two differ by one pixel when the
            resized long side minus ``size`` is odd and its half rounds up (e.g. 775x513 -> 507x336: 86 vs 85).
        resize_mode: ``"shortest"`` (shortest side -> size keeping the aspect ratio, then centre crop to
            size x size) or ``"squash"`` (resize to size x size, aspect not kept, no crop).
        colour_order: channel order of the network input; only ``"RGB"``.

    Raises ValueError naming the field for an invalid value.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    colour_order: str = "RGB"
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size <= 0:
            raise ValueError(f"Preprocessing.size: expected a positive int, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", _check_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_triple("std", self.std, positive=True))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing.interpolation: unknown value {self.interpolation!r} (expected one of {list(INTERPOLATIONS)})"
            )
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"Preprocessing.resize_mode: unknown value {self.resize_mode!r} (expected one of {list(_RESIZE_MODES)})"
            )
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(
                f"Preprocessing.crop_offset: unknown value {self.crop_offset!r} (expected one of {list(CROP_OFFSETS)})"
            )
        if self.colour_order not in _COLOUR_ORDERS:
            raise ValueError(
                f"Preprocessing.colour_order: unknown value {self.colour_order!r} (expected one of {list(_COLOUR_ORDERS)})"
            )

    @property
    def pipeline(self) -> str:
        """Name of the original pipeline this rule reproduces (a key of :data:`PIPELINES`), or ``"custom"``.

        Needs a shortest-side resize; mean/std are not part of the name (they are recorded beside it)."""
        if self.resize_mode == "shortest":
            for name, rule in PIPELINES.items():
                if rule == (self.interpolation, self.crop_offset):
                    return name
        return "custom"

    def describe(self) -> str:
        """One line a person reads, e.g. ``clip-cues: shortest side -> 336 bilinear (PIL, antialiased), centre crop
        offset round((d)/2)``."""
        crop = "round(d/2)" if self.crop_offset == "round" else "d//2"
        resize = "shortest side" if self.resize_mode == "shortest" else "squash"
        return (f"{self.pipeline}: {resize} -> {self.size} {self.interpolation} (PIL, antialiased), centre crop offset "
                f"{crop}, RGB before resize")

    def to_dict(self) -> dict:
        """JSON-serialisable dict of all fields, the pipeline's name (informative, checked on read) and the fixed
        parts of the rule (crop, value_range, layout, rgb_conversion)."""
        return {
            "pipeline": self.pipeline,
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "crop_offset": self.crop_offset,
            "colour_order": self.colour_order,
            **_FIXED_KEYS,
        }

    @classmethod
    def for_pipeline(cls, name: str, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> "Preprocessing":
        """The rule of a named pipeline (:data:`PIPELINES`) at ``size`` with ``mean``/``std`` (CLIP's by default).

        Raises ValueError naming the known pipelines for another name."""
        if name not in PIPELINES:
            raise ValueError(f"unknown preprocessing pipeline {name!r} (expected one of {list(PIPELINES)})")
        interpolation, crop_offset = PIPELINES[name]
        return cls(size=size, mean=mean, std=std, interpolation=interpolation, resize_mode="shortest",
                   crop_offset=crop_offset)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`.

        Raises ValueError naming the field for: a missing ``size``/``mean``/``std``; an unknown ``resize_mode``,
        ``interpolation`` or ``colour_order``; ``mean``/``std`` not of length 3; a ``crop``/``value_range``/
        ``layout``/``rgb_conversion`` other than what this runtime implements; a ``pipeline`` name that does not
        match the fields; an unknown key (a rule this runtime cannot honour). A missing ``crop_offset`` reads as
        ``"round"`` (manifests written before it existed).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"Preprocessing.from_dict: expected a mapping, got {type(d).__name__}")
        fields = ("size", "mean", "std", "interpolation", "resize_mode", "colour_order", "crop_offset")
        unknown = sorted(set(d) - set(fields) - set(_FIXED_KEYS) - {"pipeline"})
        if unknown:
            raise ValueError(f"Preprocessing: unknown field(s) {unknown}")
        for key, expected in _FIXED_KEYS.items():
            if key in d and d[key] != expected:
                raise ValueError(f"Preprocessing.{key}: unsupported value {d[key]!r} (this runtime implements {expected!r})")
        for key in ("size", "mean", "std"):
            if key not in d:
                raise ValueError(f"Preprocessing.{key}: missing")
        rule = cls(**{k: d[k] for k in fields if k in d})
        if "pipeline" in d and d["pipeline"] != rule.pipeline:
            raise ValueError(f"Preprocessing.pipeline: {d['pipeline']!r} does not match the recorded rule "
                             f"({rule.interpolation}, crop offset {rule.crop_offset}, resize {rule.resize_mode}: "
                             f"{rule.pipeline!r})")
        return rule
