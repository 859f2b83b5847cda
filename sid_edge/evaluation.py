"""Detection metrics, per-generator AP, cross-dataset matrices, threshold choice, plots and reports.

AP and precision-recall curves come from scikit-learn (``average_precision_score``, ``precision_recall_curve``);
plots from matplotlib (Agg backend, no display). Scores are p_synthetic (or logits: AP depends only on order).
Labels: 0 real, 1 synthetic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


@dataclass
class DetectionMetrics:
    """Metrics of one (detector, dataset) pair.

    ``ap``: average precision with synthetic as the positive class; ``accuracy`` and ``balanced_accuracy`` at
    ``threshold`` (predict synthetic when score >= threshold); ``real_accuracy`` (true-negative rate) and
    ``synthetic_accuracy`` (true-positive rate) separately; ``per_generator_ap``: for each synthetic ``source``, AP
    of that generator's images against all real images of the same split. NaN where a class is absent.
    """

    n: int
    n_real: int
    n_synthetic: int
    threshold: float
    ap: float
    accuracy: float
    balanced_accuracy: float
    real_accuracy: float
    synthetic_accuracy: float
    per_generator_ap: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(v):
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, dict):
        return {k: _json_float(x) for k, x in v.items()}
    return v


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """sklearn ``average_precision_score`` (synthetic = positive); NaN unless both classes are present."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if labels.size == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores, dtype=np.float64)))


def detection_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float,
                      sources: Sequence[str] | None = None) -> DetectionMetrics:
    """Compute :class:`DetectionMetrics` for labels [N] in {0,1} and scores [N] (p_synthetic).

    Raises ValueError when lengths differ or a label is not 0/1.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    pred = (s >= threshold).astype(np.int64)
    real, synth = y == 0, y == 1
    real_acc = float((pred[real] == 0).mean()) if real.any() else float("nan")
    synth_acc = float((pred[synth] == 1).mean()) if synth.any() else float("nan")
    per_gen = {}
    if sources is not None:
        src = np.asarray(sources, dtype=object)
        for gen in sorted({str(x) for x in src[synth]}):
            mask = real | (synth & (src == gen))
            per_gen[gen] = average_precision(y[mask], s[mask])
    return DetectionMetrics(
        n=int(y.size), n_real=int(real.sum()), n_synthetic=int(synth.sum()), threshold=float(threshold),
        ap=average_precision(y, s), accuracy=float((pred == y).mean()) if y.size else float("nan"),
        balanced_accuracy=float(np.nanmean([real_acc, synth_acc])) if y.size else float("nan"),
        real_accuracy=real_acc, synthetic_accuracy=synth_acc, per_generator_ap=per_gen,
    )


def threshold_at_fpr(real_scores: Sequence[float], target_fpr: float) -> float:
    """The smallest threshold t such that the share of real images with score >= t is at most ``target_fpr``.

    Moderation teams set thresholds this way: "flag at most 1 % of genuine photos". Ties are respected (a threshold
    never splits equal scores). Returns a value in (0, 1] for p_synthetic scores; ``nextafter(max, inf)`` when even
    the top real score must not be flagged. Raises ValueError for an empty set or target outside [0, 1].
    """
    s = np.sort(np.asarray(real_scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("threshold_at_fpr needs at least one real image")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} is not in [0, 1]")
    allowed = math.floor(target_fpr * s.size + 1e-9)  # real images we may flag
    if allowed >= s.size:
        return float(s[0])
    # Flag scores >= t; everything strictly above s[n - allowed - 1] may be flagged.
    t = float(np.nextafter(s[s.size - allowed - 1], np.inf))
    return t


def cross_dataset_matrix(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str],
                         cols: Sequence[str]) -> np.ndarray:
    """AP matrix [len(rows), len(cols)]: rows = detectors (train sets), cols = test datasets; NaN where missing."""
    m = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in results:
                m[i, j] = results[(r, c)].ap
    return m


# ------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, path: str | os.PathLike) -> Path:
    """Precision-recall curves, one per name -> (labels, scores), AP in the legend. Writes a PNG."""
    from sklearn.metrics import precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, s) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision(y, s):.3f})")
    ax.set(xlabel="recall (synthetic)", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float, title: str,
                         path: str | os.PathLike) -> Path:
    """Histogram of p_synthetic for real vs synthetic images with the threshold marked. Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="real", color="tab:blue")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="synthetic", color="tab:red")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="p_synthetic", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def plot_cross_matrix(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | os.PathLike) -> Path:
    """Heat map of the train-by-test AP matrix with values written in the cells. Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 1.2 + 0.8 * len(rows)))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="test dataset", ylabel="detector (trained on)", title="AP, train × test")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = matrix[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if not np.isnan(v) and v < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ------------------------------------------------------------------------------------------------- reports
def markdown_report(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str], cols: Sequence[str]) -> str:
    """A markdown report: the cross-dataset AP matrix, then one metrics table per detector with per-generator AP."""
    def f(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["# sid-edge evaluation", "", "## AP, detector × dataset", "",
             "| detector | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    matrix = cross_dataset_matrix(results, rows, cols)
    for i, r in enumerate(rows):
        lines.append(f"| {r} | " + " | ".join(f(v) for v in matrix[i]) + " |")
    for r in rows:
        lines += ["", f"## {r}", "", "| dataset | n | AP | accuracy | balanced acc. | real acc. | synthetic acc. | threshold |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in cols:
            m = results.get((r, c))
            if m:
                lines.append(f"| {c} | {m.n} | {f(m.ap)} | {f(m.accuracy)} | {f(m.balanced_accuracy)} | "
                             f"{f(m.real_accuracy)} | {f(m.synthetic_accuracy)} | {m.threshold:.4g} |")
        gens = [(c, g, v) for c in cols if (r, c) in results for g, v in results[(r, c)].per_generator_ap.items()]
        if gens:
            lines += ["", "| dataset | generator | AP vs real |", "|---|---|---|"]
            lines += [f"| {c} | {g} | {f(v)} |" for c, g, v in gens]
    return "\n".join(lines) + "\n"


def json_report(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str], cols: Sequence[str]) -> dict:
    """The same content as :func:`markdown_report` for programs: detectors, datasets, ap_matrix, results list."""
    matrix = cross_dataset_matrix(results, rows, cols)
    return {
        "detectors": list(rows),
        "datasets": list(cols),
        "ap_matrix": [[_json_float(float(v)) for v in row] for row in matrix],
        "results": [{"detector": r, "dataset": c, **m.to_dict()} for (r, c), m in results.items()],
    }


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path
