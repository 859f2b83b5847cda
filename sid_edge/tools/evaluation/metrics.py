"""Detection metrics, per-generator AP, cross-dataset matrices, threshold choice, plots and reports (torch-free).

AP and precision-recall curves come from scikit-learn (``average_precision_score``, ``precision_recall_curve``);
plots from matplotlib (Agg backend, no display). Scores are p_synthetic; labels 0 real, 1 synthetic.

Two AP figures, because the literature uses both (source: clip-cues ``clip_cues_research/analysis/metrics.py``,
"Convention A", and the initial submission's definition of mAP):

* ``ap`` — pooled AP over the whole split (prevalence-sensitive);
* ``map`` — the paper's mAP: the mean over generators of each generator's AP, each computed on that generator's
  synthetic images plus real images. Real pairing: ``shared`` (every generator against all real images of the
  split; SynthCLIC, SynthBuster+) or ``matched`` (against the real images with the same ``source``; CNNSpot, whose
  ``source`` tags both halves of each generator's real/fake pair). ``auto`` picks ``matched`` when real images carry
  generator names as their source (some generator has real images of its own), else ``shared``; under ``matched``
  a generator without real images of its own has no AP and is left out of the mean, as in the paper's code. A
  dataset without sources is one generator, so its ``map`` equals ``ap``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PAIRINGS = ("auto", "shared", "matched")
#: What the cross-dataset matrix shows by default: the paper's mAP.
DEFAULT_MATRIX_METRIC = "map"
METRIC_NAMES = {"map": "mAP (mean per-generator AP)", "ap": "AP (pooled)"}


@dataclass
class GeneratorMetrics:
    """One generator: its AP against the paired real images, the counts, and its synthetic images' accuracy
    (true-positive rate) at the threshold."""

    ap: float
    n_synthetic: int
    n_real: int
    synthetic_accuracy: float


@dataclass
class DetectionMetrics:
    """Metrics of one (detector, dataset) pair.

    ``ap``: pooled average precision with synthetic as the positive class; ``map``: mean of ``per_generator`` AP
    (see the module docstring; NaN generators skipped); ``accuracy`` and ``balanced_accuracy`` at ``threshold``
    (predict synthetic when p_synthetic >= threshold); ``real_accuracy`` (true-negative rate) and
    ``synthetic_accuracy`` (true-positive rate) separately; ``pairing``: the real pairing used for
    ``per_generator`` ("shared" or "matched"). NaN where a class is absent.
    """

    n: int
    n_real: int
    n_synthetic: int
    threshold: float
    ap: float
    map: float
    accuracy: float
    balanced_accuracy: float
    real_accuracy: float
    synthetic_accuracy: float
    pairing: str = "shared"
    per_generator: dict[str, GeneratorMetrics] = field(default_factory=dict)

    @property
    def per_generator_ap(self) -> dict[str, float]:
        """generator -> AP against its paired real images."""
        return {g: m.ap for g, m in self.per_generator.items()}

    def metric(self, name: str) -> float:
        """``ap`` or ``map`` by name (what :func:`cross_dataset_matrix` reads)."""
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return _json_float(asdict(self))


def _json_float(v):
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, dict):
        return {k: _json_float(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_float(x) for x in v]
    return v


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """sklearn ``average_precision_score`` (synthetic = positive); NaN unless both classes are present."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if labels.size == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores, dtype=np.float64)))


def resolve_pairing(labels: np.ndarray, sources: np.ndarray, pairing: str = "auto") -> str:
    """"shared" or "matched" for ``pairing`` "auto" (see the module docstring); other values pass through.

    Raises ValueError for an unknown pairing."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown real pairing {pairing!r}; expected one of {', '.join(PAIRINGS)}")
    if pairing != "auto":
        return pairing
    y, src = np.asarray(labels), np.asarray([str(s) for s in sources], dtype=object)
    return "matched" if set(src[y == 1]) & set(src[y == 0]) else "shared"


def generator_groups(labels: Sequence[int], sources: Sequence[str], pairing: str) -> dict[str, np.ndarray]:
    """generator -> boolean mask [N] of its synthetic images plus its paired real images (``pairing`` "shared":
    all real images; "matched": real images with the same source). Generators in sorted order."""
    y = np.asarray(labels)
    src = np.asarray([str(s) for s in sources], dtype=object)
    real = y == 0
    groups = {}
    for gen in sorted(set(src[y == 1])):
        reals = real if pairing == "shared" else real & (src == gen)
        groups[gen] = reals | ((y == 1) & (src == gen))
    return groups


def detection_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float,
                      sources: Sequence[str] | None = None, pairing: str = "auto") -> DetectionMetrics:
    """Compute :class:`DetectionMetrics` for labels [N] in {0,1} and scores [N] (p_synthetic).

    ``sources`` [N]: generator names (None: all synthetic images are one generator, "unknown"). ``pairing``:
    "auto", "shared" or "matched" (module docstring).

    Raises ValueError when lengths differ, a label is not 0/1, or the pairing is unknown.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-d and of the same length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    src = np.asarray(["unknown"] * y.size if sources is None else [str(x) for x in sources], dtype=object)
    if src.shape != y.shape:
        raise ValueError(f"sources ({src.size}) and labels ({y.size}) differ in length")
    pairing = resolve_pairing(y, src, pairing)
    pred = (s >= threshold).astype(np.int64)
    real, synth = y == 0, y == 1
    real_acc = float((pred[real] == 0).mean()) if real.any() else float("nan")
    synth_acc = float((pred[synth] == 1).mean()) if synth.any() else float("nan")
    per_gen = {}
    for gen, mask in generator_groups(y, src, pairing).items():
        own = synth & (src == gen)
        per_gen[gen] = GeneratorMetrics(ap=average_precision(y[mask], s[mask]), n_synthetic=int(own.sum()),
                                        n_real=int((mask & real).sum()), synthetic_accuracy=float(pred[own].mean()))
    gen_aps = [m.ap for m in per_gen.values() if not math.isnan(m.ap)]
    present = [a for a in (real_acc, synth_acc) if not math.isnan(a)]
    return DetectionMetrics(
        n=int(y.size), n_real=int(real.sum()), n_synthetic=int(synth.sum()), threshold=float(threshold),
        ap=average_precision(y, s), map=float(np.mean(gen_aps)) if gen_aps else float("nan"),
        accuracy=float((pred == y).mean()) if y.size else float("nan"),
        balanced_accuracy=float(np.mean(present)) if present else float("nan"),
        real_accuracy=real_acc, synthetic_accuracy=synth_acc, pairing=pairing, per_generator=per_gen,
    )


# ------------------------------------------------------------------------------------------------- thresholds
def threshold_at_fpr(real_scores: Sequence[float], target_fpr: float) -> float:
    """The smallest threshold t such that the share of real images with score >= t is at most ``target_fpr``.

    Moderation teams set thresholds this way: "flag at most 1 % of genuine photos". Scores are p_synthetic as the
    graph gives them (float32), and t is taken on the float32 grid (the next float32 above the highest real score
    that must stay unflagged), so the same FPR holds whether p >= t is compared in float32 or float64. Ties are
    respected (a threshold never splits equal scores), so the FPR reached can be below the target. When every real
    image may be flagged, t is the lowest real score; when none may, t lies above the highest (for a score of
    exactly 1.0 that is just above 1: nothing is flagged).

    Raises ValueError for an empty set or a target outside [0, 1].
    """
    s = np.sort(np.asarray(real_scores, dtype=np.float32).ravel())
    if s.size == 0:
        raise ValueError("threshold_at_fpr needs at least one real image")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} is not in [0, 1]")
    allowed = math.floor(target_fpr * s.size + 1e-9)  # real images we may flag
    if allowed >= s.size:
        return float(s[0])
    # Flag scores >= t: every real score above s[n - allowed - 1] may be flagged, that one and below must not.
    return float(np.nextafter(s[s.size - allowed - 1], np.float32(np.inf)))


def rates_at_threshold(labels: Sequence[int], scores: Sequence[float], threshold: float) -> tuple[float, float]:
    """(false-positive rate on real images, true-positive rate on synthetic images) when p >= ``threshold`` is
    flagged; NaN for a class that is absent."""
    y = np.asarray(labels)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    fpr = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    tpr = float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")
    return fpr, tpr


def cross_dataset_matrix(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str],
                         cols: Sequence[str], metric: str = DEFAULT_MATRIX_METRIC) -> np.ndarray:
    """``metric`` ("map" or "ap") matrix [len(rows), len(cols)]: rows = detectors (train sets), cols = test
    datasets; NaN where a pair is missing or undefined."""
    m = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in results:
                m[i, j] = results[(r, c)].metric(metric)
    return m


# ------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, path: str | os.PathLike,
                   thresholds: Mapping[str, float] | None = None) -> Path:
    """Precision-recall curves (sklearn ``precision_recall_curve``), one per name -> (labels [N], scores [N]),
    with its AP in the legend; curves without both classes are left out. ``thresholds`` (name -> threshold on
    p_synthetic) marks each curve's operating point (precision and recall at that threshold). Writes a PNG and
    returns its path."""
    from sklearn.metrics import precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, s) in curves.items():
        y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
        if len(np.unique(y)) < 2:
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        line, = ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision(y, s):.3f})")
        t = (thresholds or {}).get(name)
        if t is not None:
            flagged = s >= t
            tp = int((flagged & (y == 1)).sum())
            op_recall = tp / max(int((y == 1).sum()), 1)
            op_precision = tp / max(int(flagged.sum()), 1) if flagged.any() else 1.0
            ax.plot([op_recall], [op_precision], "o", color=line.get_color(), markersize=7, markeredgecolor="black",
                    label=f"{name} at threshold {t:.3g}")
    ax.set(xlabel="recall (synthetic)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=10, wrap=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float, title: str,
                         path: str | os.PathLike) -> Path:
    """Histogram of p_synthetic (40 bins over [0,1]) for real vs synthetic images with the threshold marked.
    Writes a PNG and returns its path."""
    plt = _pyplot()
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label=f"real ({int((y == 0).sum())})", color="tab:blue")
    ax.hist(s[y == 1], bins=bins, alpha=0.6, label=f"synthetic ({int((y == 1).sum())})", color="tab:red")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="p_synthetic", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def plot_cross_matrix(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | os.PathLike,
                      title: str = "mAP, detector × test dataset") -> Path:
    """Heat map of a detector-by-dataset matrix (values in [0,1]) with values written in the cells. Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 + 1.3 * len(cols)), 1.8 + 0.6 * len(rows)))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="test dataset", ylabel="detector (trained on)")
    ax.set_title(title, fontsize=10, wrap=True)
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
def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def matrix_markdown(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str], cols: Sequence[str],
                    metric: str = DEFAULT_MATRIX_METRIC) -> list[str]:
    """The detector × dataset table of ``metric`` as markdown lines."""
    matrix = cross_dataset_matrix(results, rows, cols, metric)
    lines = ["| detector | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r} | " + " | ".join(_fmt(float(v)) for v in matrix[i]) + " |" for i, r in enumerate(rows)]
    return lines


def markdown_report(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str], cols: Sequence[str],
                    notes: Mapping[tuple[str, str], Sequence[str]] | None = None) -> str:
    """A markdown report: the cross-dataset mAP and AP matrices, then per detector a metrics table per dataset and
    its per-generator AP. ``notes[(detector, dataset)]``: lines listed under that detector (exclusions, failures)."""
    lines = ["# sid-edge evaluation", "",
             "mAP = mean over generators of each generator's AP against its paired real images (the paper's "
             "convention); AP = pooled over the whole split. Accuracies at each detector's threshold "
             "(synthetic when p_synthetic >= threshold).", ""]
    for metric in ("map", "ap"):
        lines += [f"## {METRIC_NAMES[metric]}, detector × dataset", "", *matrix_markdown(results, rows, cols, metric), ""]
    for r in rows:
        lines += [f"## {r}", "",
                  "| dataset | n | real | synthetic | mAP | AP | accuracy | balanced acc. | real acc. | synthetic acc. | threshold |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cols:
            m = results.get((r, c))
            if m:
                lines.append(f"| {c} | {m.n} | {m.n_real} | {m.n_synthetic} | {_fmt(m.map)} | {_fmt(m.ap)} | "
                             f"{_fmt(m.accuracy)} | {_fmt(m.balanced_accuracy)} | {_fmt(m.real_accuracy)} | "
                             f"{_fmt(m.synthetic_accuracy)} | {m.threshold:.4g} |")
        gens = [(c, g, results[(r, c)]) for c in cols if (r, c) in results for g in results[(r, c)].per_generator]
        if gens:
            lines += ["", "| dataset | generator | AP vs real | synthetic | real (pairing) | synthetic acc. |",
                      "|---|---|---|---|---|---|"]
            for c, g, m in gens:
                gm = m.per_generator[g]
                lines.append(f"| {c} | {g} | {_fmt(gm.ap)} | {gm.n_synthetic} | {gm.n_real} ({m.pairing}) | "
                             f"{_fmt(gm.synthetic_accuracy)} |")
        extra = [f"- {c}: {line}" for c in cols for line in (notes or {}).get((r, c), [])]
        if extra:
            lines += ["", *extra]
        lines.append("")
    return "\n".join(lines)


def json_report(results: Mapping[tuple[str, str], DetectionMetrics], rows: Sequence[str], cols: Sequence[str],
                extra: Mapping[tuple[str, str], dict] | None = None) -> dict:
    """The same content as :func:`markdown_report` for programs: ``detectors``, ``datasets``, ``map_matrix`` and
    ``ap_matrix`` (rows = detectors, None where undefined), and ``results``: one dict per pair with every
    :class:`DetectionMetrics` field plus ``extra[(detector, dataset)]``."""
    return {
        "detectors": list(rows),
        "datasets": list(cols),
        "map_matrix": _json_float(cross_dataset_matrix(results, rows, cols, "map").tolist()),
        "ap_matrix": _json_float(cross_dataset_matrix(results, rows, cols, "ap").tolist()),
        "results": [{"detector": r, "dataset": c, **m.to_dict(), **(extra or {}).get((r, c), {})}
                    for (r, c), m in results.items()],
    }


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented UTF-8 JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path
