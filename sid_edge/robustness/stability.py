"""Verdict stability: flip rate, |Δp| and the "uncertain" band around a threshold (numpy only, torch-free).

Definitions (all on p_synthetic; a verdict is "synthetic" when p >= threshold, the runtime's rule):

* **flip rate** of a perturbation: the share of images scored both unperturbed (p0) and perturbed (p1) whose
  verdict differs, ``mean((p0 >= t) != (p1 >= t))``.
* **|Δp|**: ``mean(|p1 - p0|)`` and ``max(|p1 - p0|)`` over the same images.
* **uncertain band** ``[low, high]`` (:func:`derive_band`): from every (image, perturbation) pair whose verdict
  flipped, the unperturbed scores p0. Below the threshold, ``low`` is the ``1 - coverage`` quantile of those p0
  (with coverage 1: the lowest p0 that still flipped); above it, ``high`` is the ``coverage`` quantile (the highest
  that flipped). A side without flips stays at the threshold. So the band holds (at least) ``coverage`` of the
  measured flips on each side: outside it, no measured perturbation (at coverage 1) changed a verdict.
  Quantiles use numpy's "linear" method (Hyndman & Fan type 7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FlipStats", "flip_stats", "Band", "derive_band", "in_band", "verdicts"]


def verdicts(p: np.ndarray, threshold: float) -> np.ndarray:
    """bool [N]: p >= threshold (the runtime's "synthetic")."""
    return np.asarray(p, dtype=np.float64) >= threshold


@dataclass
class FlipStats:
    """Stability of verdicts under one perturbation: ``n`` paired images, ``flips`` (count), ``flip_rate``,
    ``real_to_synthetic`` / ``synthetic_to_real`` (counts by unperturbed verdict), ``mean_abs_dp`` / ``max_abs_dp``
    (|p1 − p0|, NaN when n is 0)."""

    n: int
    flips: int
    flip_rate: float
    real_to_synthetic: int
    synthetic_to_real: int
    mean_abs_dp: float
    max_abs_dp: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def flip_stats(p0: np.ndarray, p1: np.ndarray, threshold: float) -> FlipStats:
    """Flip rate and |Δp| between paired scores ``p0`` (unperturbed) and ``p1`` (perturbed), float [N] each.

    Raises ValueError when the shapes differ."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    if p0.shape != p1.shape:
        raise ValueError(f"paired scores differ in shape: {p0.shape} vs {p1.shape}")
    n = int(p0.size)
    if n == 0:
        return FlipStats(0, 0, float("nan"), 0, 0, float("nan"), float("nan"))
    v0, v1 = verdicts(p0, threshold), verdicts(p1, threshold)
    flipped = v0 != v1
    d = np.abs(p1 - p0)
    return FlipStats(n, int(flipped.sum()), float(flipped.mean()), int((flipped & ~v0).sum()),
                     int((flipped & v0).sum()), float(d.mean()), float(d.max()))


@dataclass
class Band:
    """An uncertain band ``[low, high]`` around ``threshold`` on p_synthetic, derived from ``flips`` flipped pairs
    out of ``pairs`` (image, perturbation) pairs; ``coverage``: the share of flips each side covers."""

    low: float
    high: float
    threshold: float
    coverage: float
    pairs: int
    flips: int

    @property
    def empty(self) -> bool:
        return self.low == self.high


def derive_band(p0: np.ndarray, flipped: np.ndarray, threshold: float, coverage: float = 1.0) -> Band:
    """The band of the module docstring from unperturbed scores ``p0`` float [M] and ``flipped`` bool [M] (one entry
    per (image, perturbation) pair; an image appears once per perturbation).

    Raises ValueError for coverage outside (0, 1] or mismatched shapes."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage {coverage}: must be in (0, 1]")
    p0, flipped = np.asarray(p0, np.float64), np.asarray(flipped, bool)
    if p0.shape != flipped.shape:
        raise ValueError(f"p0 {p0.shape} and flipped {flipped.shape} differ in shape")
    below = p0[flipped & (p0 < threshold)]
    above = p0[flipped & (p0 >= threshold)]
    low = float(np.quantile(below, 1.0 - coverage)) if below.size else float(threshold)
    high = float(np.quantile(above, coverage)) if above.size else float(threshold)
    return Band(min(low, threshold), max(high, threshold), float(threshold), float(coverage), int(p0.size),
                int(flipped.sum()))


def in_band(p: np.ndarray | float, low: float, high: float) -> np.ndarray | bool:
    """True where low <= p <= high (the band is closed)."""
    p = np.asarray(p, np.float64)
    out = (p >= low) & (p <= high)
    return bool(out) if out.ndim == 0 else out
