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
_RESIZE_MODES = ("shortest", "squash")
_COLOUR_ORDERS = ("RGB",)
# Keys to_dict writes that describe the fixed part of the rule; from_dict accepts them only with these values.
_FIXED_KEYS = {"crop": "center", "value_range": "0-1 then (x-mean)/std", "layout": "NCHW float32"}


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

    Reproduces open_clip's ``image_transform(size, is_train=False, mean, std, resize_mode, interpolation)`` for
    inference, i.e. torchvision ``Resize(size)`` on a PIL image -> ``CenterCrop(size)`` -> ``ToTensor`` ->
    ``Normalize(mean, std)``. See :func:`preprocess` for the exact arithmetic.

    Fields:
        size: side of the square network input in pixels, e.g. 336 for ViT-L/14-336.
        mean, std: per-channel normalisation in R, G, B order, on the 0..1 scale (e.g. open_clip's
            ``OPENAI_DATASET_MEAN``/``OPENAI_DATASET_STD``).
        interpolation: ``"bicubic"`` or ``"bilinear"``, PIL resampling (which antialiases when downscaling, as
            torchvision does on PIL images; OpenCV's INTER_CUBIC does not).
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
        if self.colour_order not in _COLOUR_ORDERS:
            raise ValueError(
                f"Preprocessing.colour_order: unknown value {self.colour_order!r} (expected one of {list(_COLOUR_ORDERS)})"
            )

    def to_dict(self) -> dict:
        """JSON-serialisable dict of all fields plus the fixed parts of the rule (crop, value_range, layout)."""
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "colour_order": self.colour_order,
            **_FIXED_KEYS,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`.

        Raises ValueError naming the field for: a missing ``size``/``mean``/``std``; an unknown ``resize_mode``,
        ``interpolation`` or ``colour_order``; ``mean``/``std`` not of length 3; a ``crop``/``value_range``/
        ``layout`` other than what this runtime implements; an unknown key (a rule this runtime cannot honour).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"Preprocessing.from_dict: expected a mapping, got {type(d).__name__}")
        fields = ("size", "mean", "std", "interpolation", "resize_mode", "colour_order")
        unknown = sorted(set(d) - set(fields) - set(_FIXED_KEYS))
        if unknown:
            raise ValueError(f"Preprocessing: unknown field(s) {unknown}")
        for key, expected in _FIXED_KEYS.items():
            if key in d and d[key] != expected:
                raise ValueError(f"Preprocessing.{key}: unsupported value {d[key]!r} (this runtime implements {expected!r})")
        for key in ("size", "mean", "std"):
            if key not in d:
                raise ValueError(f"Preprocessing.{key}: missing")
        return cls(**{k: d[k] for k in fields if k in d})
