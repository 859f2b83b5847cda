"""Verdicts that survive delivery: deterministic perturbations (JPEG, WebP, resize, thumbnail, crop, gray, blur,
screenshot), flip rate and |Δp|, the "uncertain" band, scan-time stability checks, train-time augmentation and
format/metadata bias checks. Torch-free; sits between tools and runtime (imported by tools, build and cli, never
by runtime or artifact)."""

from sid_edge.robustness.perturbations import (
    DEFAULT_PERTURBATIONS,
    FAMILIES,
    Perturbation,
    library_versions,
    parse_perturbation,
    parse_perturbations,
)
from sid_edge.robustness.sources import PerturbedImage
from sid_edge.robustness.stability import Band, FlipStats, derive_band, flip_stats, in_band
from sid_edge.robustness.checker import STABILITY_SET, StabilityChecker, attach_stability

__all__ = ["DEFAULT_PERTURBATIONS", "FAMILIES", "Perturbation", "library_versions", "parse_perturbation",
           "parse_perturbations", "PerturbedImage", "Band", "FlipStats", "derive_band", "flip_stats", "in_band",
           "STABILITY_SET", "StabilityChecker", "attach_stability"]
