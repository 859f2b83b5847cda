"""Evaluation under perturbation: metrics, flip rate and |Δp| per detector × dataset × perturbation (torch-free).

``evaluate --perturb SPEC…`` scores every dataset once as it is and once per perturbation
(:mod:`sid_edge.robustness.perturbations`; perturbed values are cached like unperturbed ones, in a namespace keyed by
the unperturbed one and the perturbation with its codec versions). For each (detector, dataset, perturbation):

* AP, mAP, accuracy and balanced accuracy of the perturbed scores at the detector's threshold
  (:func:`sid_edge.tools.evaluation.metrics.detection_metrics`);
* against the unperturbed scores of the same images (paired by key; images that failed either way are left out):
  flip rate, real→synthetic / synthetic→real flips, mean and max |Δp| (:func:`sid_edge.robustness.flip_stats`).

Per detector, the uncertain band (:func:`sid_edge.robustness.derive_band`) over every dataset and perturbation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sid_edge.robustness import Band, FlipStats, Perturbation, derive_band, flip_stats, library_versions
from sid_edge.tools.evaluation.metrics import DetectionMetrics, _pyplot, _save, detection_metrics

BAND_METHOD = ("unperturbed p_synthetic of images whose verdict flipped under the measured perturbations: "
               "low = (1-coverage) quantile below the threshold, high = coverage quantile above it, each widened by "
               "1e-5 (the edge images themselves stay inside when the runtime's graph scores them)")
#: The written band is widened by this on each side: evaluation scores FP32 heads from shared features, which can
#: differ from the runtime graph's p_synthetic in the last float32 bits; an edge image must not fall out of its band.
BAND_MARGIN = 1e-5


@dataclass
class PerturbedResult:
    """One (detector, dataset, perturbation): ``metrics`` of the perturbed scores, ``flips`` against the
    unperturbed ones, ``failed`` images that could not be perturbed/decoded, and the paired scores ``p0``/``p1``
    float32 [n] (for the band)."""

    detector: str
    dataset: str
    perturbation: Perturbation
    metrics: DetectionMetrics
    flips: FlipStats
    failed: int
    p0: np.ndarray
    p1: np.ndarray
    threshold: float
    computed: int = 0
    cached: int = 0

    def to_dict(self) -> dict:
        m = self.metrics
        out = {"detector": self.detector, "dataset": self.dataset, "perturbation": self.perturbation.name,
               "family": self.perturbation.family, "param": self.perturbation.param,
               "strength": self.perturbation.strength, "n": m.n, "ap": m.ap, "map": m.map, "accuracy": m.accuracy,
               "balanced_accuracy": m.balanced_accuracy, "failed_images": self.failed, "computed": self.computed,
               "cached": self.cached, **self.flips.to_dict()}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def compare(unperturbed, perturbed, perturbation: Perturbation, threshold: float, pairing: str) -> PerturbedResult:
    """A :class:`PerturbedResult` from two ScoredDataset-like objects (``keys``, ``labels``, ``p_synthetic``,
    ``sources``, ``failed``, ``computed``, ``cached``) of the same detector and dataset."""
    metrics = detection_metrics(perturbed.labels, perturbed.p_synthetic, threshold, perturbed.sources, pairing)
    where = {k: i for i, k in enumerate(unperturbed.keys)}
    pairs = [(where[k], j) for j, k in enumerate(perturbed.keys) if k in where]
    i0 = np.array([a for a, _ in pairs], dtype=np.int64)
    i1 = np.array([b for _, b in pairs], dtype=np.int64)
    p0 = np.asarray(unperturbed.p_synthetic, np.float32)[i0]
    p1 = np.asarray(perturbed.p_synthetic, np.float32)[i1]
    return PerturbedResult(perturbed.detector, perturbed.dataset, perturbation, metrics,
                           flip_stats(p0, p1, threshold), max(0, len(perturbed.failed) - len(unperturbed.failed)), p0, p1,
                           threshold, perturbed.computed, perturbed.cached)


def bands(results: Sequence[PerturbedResult], coverage: float = 1.0) -> dict[str, Band]:
    """Per detector, the uncertain band over all its (dataset, perturbation) results."""
    out = {}
    for det in dict.fromkeys(r.detector for r in results):
        rs = [r for r in results if r.detector == det]
        p0 = np.concatenate([r.p0 for r in rs]).astype(np.float64)
        p1 = np.concatenate([r.p1 for r in rs]).astype(np.float64)
        t = rs[0].threshold
        out[det] = derive_band(p0, (p0 >= t) != (p1 >= t), t, coverage)
    return out


def band_record(band: Band, results: Sequence[PerturbedResult], data: Sequence[str]) -> dict:
    """What ``manifest["uncertain_band"]`` stores (:class:`sid_edge.artifact.manifest.UncertainBand`): the band
    widened by :data:`BAND_MARGIN` on each non-empty side, within [0, 1]."""
    low = max(0.0, band.low - BAND_MARGIN) if band.low < band.threshold else band.low
    high = min(1.0, band.high + BAND_MARGIN) if band.high > band.threshold else band.high
    return {"low": low, "high": high, "threshold": band.threshold, "method": BAND_METHOD,
            "coverage": band.coverage, "perturbations": list(dict.fromkeys(r.perturbation.name for r in results)),
            "data": list(data), "pairs": band.pairs, "flips": band.flips, "libraries": library_versions()}


def _f(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(results: Sequence[PerturbedResult], unperturbed: Mapping[tuple[str, str], DetectionMetrics],
             band_by_detector: Mapping[str, Band], p0_by_detector: Mapping[str, np.ndarray]) -> str:
    """The report's "Under perturbation" section (markdown)."""
    md = ("\n## Under perturbation\n\nFlip: the verdict (p ≥ threshold) differs from the unperturbed image's. "
          "|Δp|: |p_perturbed − p_unperturbed| on the same image. Codecs: "
          + ", ".join(f"{k} {v}" for k, v in library_versions().items()) + ".\n\n"
          "| detector | dataset | perturbation | n | AP | ΔAP | mAP | acc. | flip rate | real→synth. | synth.→real | "
          "mean abs Δp | max abs Δp | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        base = unperturbed.get((r.detector, r.dataset))
        dap = r.metrics.ap - base.ap if base is not None else float("nan")
        md += (f"| {r.detector} | {r.dataset} | {r.perturbation.name} | {r.metrics.n} | {_f(r.metrics.ap)} | "
               f"{'–' if math.isnan(dap) else f'{dap:+.3f}'} | {_f(r.metrics.map)} | {_f(r.metrics.accuracy)} | "
               f"{_f(r.flips.flip_rate)} | {r.flips.real_to_synthetic} | {r.flips.synthetic_to_real} | "
               f"{_f(r.flips.mean_abs_dp, 4)} | {_f(r.flips.max_abs_dp, 4)} | {r.failed} |\n")
    if band_by_detector:
        md += ("\n### Uncertain band (p_synthetic within which measured perturbations flipped verdicts)\n\n"
               "| detector | threshold | low | high | coverage | flips / pairs | unperturbed images inside |\n"
               "|---|---|---|---|---|---|---|\n")
        for det, b in band_by_detector.items():
            p0 = p0_by_detector.get(det, np.zeros(0))
            inside = float(np.mean((p0 >= b.low) & (p0 <= b.high))) if p0.size and not b.empty else 0.0
            md += (f"| {det} | {b.threshold:.6g} | {b.low:.6g} | {b.high:.6g} | {b.coverage:g} | {b.flips} / {b.pairs} | "
                   f"{inside:.3f} |\n")
    return md


def plot(results: Sequence[PerturbedResult], unperturbed: Mapping[tuple[str, str], DetectionMetrics], detector: str,
         path: str | Path) -> Path:
    """AP (top row) and flip rate (bottom row) against perturbation strength, one column per family, one line per
    dataset; the unperturbed AP dotted. Writes a PNG and returns its path."""
    plt = _pyplot()
    rs = [r for r in results if r.detector == detector]
    families = list(dict.fromkeys(r.perturbation.family for r in rs))
    datasets = list(dict.fromkeys(r.dataset for r in rs))
    fig, axes = plt.subplots(2, max(1, len(families)), figsize=(2.6 * max(1, len(families)) + 1, 5.2), squeeze=False)
    for j, fam in enumerate(families):
        for k, ds in enumerate(datasets):
            pts = sorted((r for r in rs if r.perturbation.family == fam and r.dataset == ds),
                         key=lambda r: r.perturbation.strength)
            x = list(range(len(pts)))
            color = f"C{k}"
            axes[0, j].plot(x, [r.metrics.ap for r in pts], "o-", color=color, label=ds)
            base = unperturbed.get((detector, ds))
            if base is not None:
                axes[0, j].axhline(base.ap, color=color, linestyle=":", linewidth=1)
            axes[1, j].plot(x, [r.flips.flip_rate for r in pts], "s--", color=color, label=ds)
            for ax in axes[:, j]:
                ax.set_xticks(x, [r.perturbation.name.partition(":")[2] or fam for r in pts])
        axes[0, j].set(title=fam, ylim=(0, 1.02))
        axes[1, j].set(xlabel="milder → harsher", ylim=(0, 1.02))
    axes[0, 0].set_ylabel("AP (dotted: unperturbed)")
    axes[1, 0].set_ylabel("flip rate")
    if datasets:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{detector}: AP and flip rate under perturbation")
    return _save(fig, path)


def write_band(directory: str | Path, band: Band, results: Sequence[PerturbedResult], data: Sequence[str]) -> Path:
    """Store ``band`` as the artifact's ``manifest["uncertain_band"]``. Raises ManifestError when the band was derived
    at another threshold than the manifest's or is empty (no verdict flipped: nothing to mark uncertain)."""
    from sid_edge.artifact.manifest import MANIFEST_NAME, ManifestError, set_uncertain_band

    if band.empty:
        raise ManifestError(f"{Path(directory) / MANIFEST_NAME}: no measured perturbation flipped a verdict; no band "
                            f"to write")
    return set_uncertain_band(directory, band_record(band, results, data))
