"""``scan --stability N``: re-score N perturbed versions of each image (torch-free).

:class:`StabilityChecker` is the ``Detector.stability_checker`` interface: given an input and its Prediction, it
decodes the input again (the runtime's rules), applies the first N perturbations of :data:`STABILITY_SET`, scores
them in one batch through the same graph and backend, and returns::

    {"n": N, "perturbations": [...], "p": [p per version], "p_min", "p_max",
     "spread": max - min over the image and its N versions, "flips": versions whose verdict differs}

Verdicts here are binary (p >= threshold), whatever the band: a flip is what the band is meant to catch.
"""

from __future__ import annotations

import numpy as np

from sid_edge.runtime.detector import Detector, Prediction
from sid_edge.runtime.images import preprocess
from sid_edge.robustness.perturbations import Perturbation, parse_perturbations
from sid_edge.robustness.sources import PerturbedImage

#: Versions ``--stability N`` takes the first N of: mild, common deliveries first.
STABILITY_SET = ("jpeg:75", "resize:0.5", "webp:80", "crop:0.9", "jpeg:50", "blur:1.0", "thumbnail:256",
                 "screenshot", "gray", "resize:0.25")


class StabilityChecker:
    """Scores ``perturbations`` of each image with ``detector`` (see module docstring).

    Raises ValueError for an empty list of perturbations."""

    def __init__(self, detector: Detector, perturbations: list[Perturbation]):
        if not perturbations:
            raise ValueError("stability needs at least one perturbation")
        self.detector, self.perturbations = detector, list(perturbations)

    def __call__(self, source, pred: Prediction) -> dict:
        det = self.detector
        # Decode-once would be cheaper; decoding per version keeps the runtime's rules in one place (PerturbedImage).
        pixels = np.stack([preprocess(PerturbedImage(source, p).resolve_image(), det.preprocessing)
                           for p in self.perturbations])
        p = det.run(pixels)["p_synthetic"].astype(np.float64)
        allp = np.concatenate([[pred.p_synthetic], p])
        base = pred.p_synthetic >= det.threshold
        return {"n": len(p), "perturbations": [x.name for x in self.perturbations], "p": [float(v) for v in p],
                "p_min": float(allp.min()), "p_max": float(allp.max()), "spread": float(allp.max() - allp.min()),
                "flips": int(((p >= det.threshold) != base).sum())}


def attach_stability(detector: Detector, n: int) -> StabilityChecker:
    """Install a checker of the first ``n`` perturbations of :data:`STABILITY_SET` on ``detector``.

    Raises ValueError when n is not in 1..len(STABILITY_SET)."""
    if not 1 <= n <= len(STABILITY_SET):
        raise ValueError(f"--stability {n}: must be between 1 and {len(STABILITY_SET)} "
                         f"(versions: {', '.join(STABILITY_SET)})")
    checker = StabilityChecker(detector, parse_perturbations(STABILITY_SET[:n]))
    detector.stability_checker = checker
    return checker
