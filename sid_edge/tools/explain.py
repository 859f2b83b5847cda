"""``sid-edge explain``: the head's directions in words, how orthogonal they are, and the concepts that pushed given
images' scores up or down — a markdown report with PNG charts (torch-free: numpy, matplotlib, ONNX Runtime).

Reads the artifact's ``explanation.npz`` (written at export, verified by sha256) and, for images, runs the
artifact's own graph. Method:

* **Head directions** (orthogonal or linear heads): the k rows w_j of the head's first layer act on the pooled
  feature h (D-d). They are carried into the joint image-text space through the visual projection P [D,E] the
  same way a feature is, u_j = Pᵀ w_j (TextSpan-style: Gandelsman et al., 2024), oriented by the sign of the
  direction's logit weight v_j so that "aligned" always means "towards synthetic", and compared by cosine with
  the unit concept directions d_c: cos(sign(v_j)·u_j, d_c). The most aligned concepts push the logit up along
  that direction, the most opposed push it down. ``text-visible share`` = ‖Q Qᵀ w_j‖² / ‖w_j‖² (Q an orthonormal
  basis of P's column space): the part of the direction that the projection, and hence text, can see at all.
* **Orthogonality**: cosine Gram matrices of the directions, in the pooled space (w_j) and the joint space (u_j).
* **Images**: the exact split of the logit over directions, logit = Σ_j v_j·a_j + b (a_j = head_activations).
  Concept pushes: with a concept model, its exact ``concept_contributions`` (they sum, plus a bias, to
  concept_logit); otherwise ``concept_scores[c] × cos(u_eff, d_c)`` with u_eff = Pᵀ Σ_j v_j w_j, the logit's
  text-visible direction — how strongly the image expresses concept c times how much the head rewards it. That
  product ranks concepts; unlike contributions it is not a decomposition of the logit.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sid_edge.artifact.manifest import Manifest, ManifestError, artifact_path, read_manifest, verify_files
from sid_edge.runtime.concept_ranking import concept_names
from sid_edge.runtime.scan import path_text

DEFAULT_TOP = 8
REPORT_NAME = "report.md"
JSON_NAME = "report.json"


@dataclass
class DirectionExplanation:
    """One head direction: 1-based ``index``, its logit weight ``to_logit``, ``text_visible_share`` in [0,1],
    the ``aligned`` / ``opposed`` concepts as (name, cosine) pairs (most extreme first), and its ``chart`` file."""

    index: int
    to_logit: float
    text_visible_share: float
    aligned: list[tuple[str, float]]
    opposed: list[tuple[str, float]]
    chart: str

    @property
    def name(self) -> str:
        """A readable name: the number and the concept most aligned with it (towards synthetic)."""
        return f"{self.index}: {self.aligned[0][0]}" if self.aligned else str(self.index)


@dataclass
class ImageExplanation:
    """One image: its scores, the per-direction logit terms v_j·a_j (empty for a concept-model head), the concepts
    that pushed its score ``up`` (towards synthetic) and ``down`` as (name, value), the ``method`` of those
    values ("concept_contributions" or "score_x_alignment"), its ``chart``; or ``error`` when it failed.
    ``concept_logit`` is set when the artifact has a concept model (the contributions explain that logit)."""

    source: str
    p_synthetic: float | None = None
    logit: float | None = None
    prediction: str | None = None
    concept_logit: float | None = None
    direction_terms: list[float] = field(default_factory=list)
    up: list[tuple[str, float]] = field(default_factory=list)
    down: list[tuple[str, float]] = field(default_factory=list)
    method: str = ""
    chart: str = ""
    error: str | None = None


@dataclass
class ExplainReport:
    """What ``explain`` wrote: ``markdown`` and ``json`` paths, every chart file (relative to ``out_dir``), the
    direction and image explanations, and the cosine Gram matrices [k,k] (pooled and joint space)."""

    out_dir: Path
    markdown: Path
    json: Path
    charts: list[str]
    directions: list[DirectionExplanation]
    gram_pooled: np.ndarray | None
    gram_joint: np.ndarray | None
    images: list[ImageExplanation]


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def load_explanation(directory: str | os.PathLike) -> tuple[Manifest, dict[str, np.ndarray]]:
    """(manifest, arrays of explanation.npz as float64), after checking the file against the manifest.

    Raises ManifestError naming the artifact when it has no vocabulary/explanation (exported without concepts or
    before sid-edge had them) or the file is missing or altered.
    """
    d = Path(directory)
    manifest = read_manifest(d)
    entry = manifest.explanation
    if not entry or not manifest.vocabulary:
        raise ManifestError(f"{d}: this artifact has no concept vocabulary; re-export it with "
                            f"`sid-edge export --vocabulary default` (or a vocabulary file) to explain it")
    verify_files(d, entry)
    with np.load(artifact_path(d, entry.file), allow_pickle=False) as z:
        arrays = {k: z[k].astype(np.float64) for k in z.files}
    return manifest, arrays


def direction_geometry(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Directions vs concepts, from explanation arrays (see the module docstring).

    Returns ``cos`` [k,C] (oriented towards synthetic), ``share`` [k], ``gram_pooled`` [k,k], ``gram_joint`` [k,k],
    ``alignment`` [C] = cos(u_eff, d_c) of the logit's effective direction.
    """
    w, v, p, t = arrays["head_directions"], arrays["head_to_logit"], arrays["visual_projection"], arrays["concept_directions"]
    sign = np.where(v >= 0, 1.0, -1.0)
    u = w @ p  # [k,E]: each direction carried through the visual projection like a pooled feature
    cos = _unit_rows(u * sign[:, None]) @ _unit_rows(t).T
    q, _ = np.linalg.qr(p)  # orthonormal basis of P's column space (the part of h that reaches the joint space)
    share = np.linalg.norm(w @ q, axis=1) ** 2 / np.maximum(np.linalg.norm(w, axis=1) ** 2, 1e-24)
    wn, un = _unit_rows(w), _unit_rows(u)
    u_eff = (v @ w) @ p
    alignment = _unit_rows(u_eff[None])[0] @ _unit_rows(t).T
    return {"cos": cos, "share": share, "gram_pooled": wn @ wn.T, "gram_joint": un @ un.T, "alignment": alignment}


def _extremes(names: list[str], values: np.ndarray, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(n largest positive, n most negative) as (name, value), most extreme first; only values of that sign."""
    order = np.argsort(-values, kind="stable")
    top = [(names[i], float(values[i])) for i in order[:n] if values[i] > 0]
    bottom = [(names[i], float(values[i])) for i in order[::-1][:n] if values[i] < 0]
    return top, bottom


# ---------------------------------------------------------------------------------------------------- charts
def _figure(width: float, height: float):
    # Figure + Agg canvas directly: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _bar_panel(ax, up: list[tuple[str, float]], down: list[tuple[str, float]], xlabel: str, title: str) -> None:
    rows = list(reversed(down)) + list(reversed(up))  # most positive at the top
    labels = [name for name, _ in rows]
    values = [value for _, value in rows]
    colours = ["#c0392b" if value > 0 else "#2471a3" for value in values]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "no concepts", ha="center", va="center", transform=ax.transAxes)


def _direction_chart(path: Path, d: DirectionExplanation) -> None:
    fig = _figure(7.5, 0.28 * (len(d.aligned) + len(d.opposed)) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    _bar_panel(ax, d.aligned, d.opposed, "how closely the concept matches this direction (red: towards synthetic, "
               "blue: towards real)",
               f"Direction {d.name}: logit weight {d.to_logit:+.3g}, text-visible share {d.text_visible_share:.0%}")
    fig.tight_layout()
    fig.savefig(path)


def _gram_chart(path: Path, pooled: np.ndarray, joint: np.ndarray) -> None:
    k = len(pooled)
    fig = _figure(4.0 * 2 + 1.2, 0.45 * k + 2.2)
    for i, (gram, title) in enumerate([(pooled, "pooled space (head weights)"), (joint, "joint space (after projection)")]):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1)
        ticks = range(k)
        ax.set_xticks(ticks, [str(j + 1) for j in ticks])
        ax.set_yticks(ticks, [str(j + 1) for j in ticks])
        ax.set_title(f"cosine Gram, {title}", fontsize=9)
        if k <= 16:
            for r in range(k):
                for c in range(k):
                    ax.text(c, r, f"{gram[r, c]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(gram[r, c]) > 0.6 else "black")
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    fig.savefig(path)


def _thumbnail(source: str, side: int = 160):
    """The image as a small RGB array for the chart (None when it cannot be read again)."""
    from sid_edge.runtime.images import ImageDecodeError, decode_image

    try:
        im = decode_image(source)
    except (ImageDecodeError, TypeError):
        return None
    im.thumbnail((side, side))
    return np.asarray(im)


def _image_chart(path: Path, img: ImageExplanation, value_label: str, direction_names: list[str] | None = None) -> None:
    has_terms = bool(img.direction_terms)
    n = max(len(img.up) + len(img.down), len(img.direction_terms), 3)
    panels = 3 if has_terms else 2
    fig = _figure(13.5 if has_terms else 10.0, max(0.28 * n + 1.8, 2.6))
    grid = fig.add_gridspec(1, panels, width_ratios=[1.0, 2.0, 2.2][-panels:] if panels == 2 else [1.0, 2.0, 2.2])
    name = path_text(Path(str(img.source)).name)  # a non-UTF-8 name has \xNN escapes, as in scan rows
    thumb = _thumbnail(img.source)
    ax = fig.add_subplot(grid[0, 0])
    ax.axis("off")
    if thumb is not None:
        ax.imshow(thumb)
    ax.set_title(name, fontsize=8)
    if has_terms:
        ax = fig.add_subplot(grid[0, 1])
        terms = img.direction_terms
        labels = direction_names or [str(j + 1) for j in range(len(terms))]
        ax.barh(range(len(terms)), terms, color=["#c0392b" if t > 0 else "#2471a3" for t in terms])
        ax.set_yticks(range(len(terms)), [f"direction {label}" for label in labels], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("push on the score (right: towards synthetic)", fontsize=9)
        ax.set_title("what each head direction contributed", fontsize=10)
    ax = fig.add_subplot(grid[0, panels - 1])
    title = f"{name}: p_synthetic {img.p_synthetic:.3f} ({img.prediction})"
    if img.concept_logit is not None and has_terms:  # the contributions explain the concept model, not the head
        title = f"{name}: concept model p {1 / (1 + np.exp(-img.concept_logit)):.3f}"
    _bar_panel(ax, img.up, img.down, value_label, title)
    fig.tight_layout()
    fig.savefig(path)


def _concept_model_chart(path: Path, names: list[str], weights: np.ndarray, n: int) -> tuple[list, list]:
    up, down = _extremes(names, weights, n)
    fig = _figure(7.5, 0.28 * (len(up) + len(down)) + 1.6)
    _bar_panel(fig.add_subplot(1, 1, 1), up, down, "classifier weight w_c (applied to gated similarity)",
               "Concept model: largest classifier weights")
    fig.tight_layout()
    fig.savefig(path)
    return up, down


# ---------------------------------------------------------------------------------------------------- report
def _md(text: str) -> str:
    # One line of a table or heading: a line break in a file name would end it and start markup of its own.
    return re.sub(r"[\r\n]+", " ", str(text)).replace("|", "\\|")


def _pair_table(left_title: str, left: list, right_title: str, right: list, value: str) -> list[str]:
    lines = [f"| {left_title} | {value} | {right_title} | {value} |", "|---|---:|---|---:|"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", None)
        b = right[i] if i < len(right) else ("", None)
        fa = f"{a[1]:+.4f}" if a[1] is not None else ""
        fb = f"{b[1]:+.4f}" if b[1] is not None else ""
        lines.append(f"| {_md(a[0])} | {fa} | {_md(b[0])} | {fb} |")
    return lines


def _safe_stem(source: str, i: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(source)).stem)[:40]
    return f"image_{i:02d}_{stem}"


def explain(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike] = (),
    *,
    top: int = DEFAULT_TOP,
    backend: str = "cpu",
    batch_size: int = 8,
) -> ExplainReport:
    """Write ``report.md``, ``report.json`` and PNG charts into ``out_dir`` (created) for the artifact in
    ``model_dir``: one chart per head direction, the Gram matrices, the concept model's weights when it has one,
    and one chart per given image.

    Args:
        model_dir: a detector artifact exported with a vocabulary.
        out_dir: report folder.
        images: image files to explain (scored with the artifact's own graph).
        top: concepts per list (aligned / opposed, up / down).
        backend: inference backend for the images (see :class:`sid_edge.runtime.detector.Detector`).
        batch_size: images per inference batch.

    Raises:
        ManifestError: not an artifact, no vocabulary/explanation file, altered files.
        ValueError: ``top`` < 1.
    """
    if top < 1:
        raise ValueError(f"top={top}: must be >= 1")
    manifest, arrays = load_explanation(model_dir)
    names = concept_names(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts: list[str] = []
    directions: list[DirectionExplanation] = []
    geometry = direction_geometry(arrays) if "head_directions" in arrays else None
    if geometry is not None:
        for j in range(len(arrays["head_directions"])):
            aligned, opposed = _extremes(names, geometry["cos"][j], top)
            d = DirectionExplanation(j + 1, float(arrays["head_to_logit"][j]), float(geometry["share"][j]),
                                     aligned, opposed, f"direction_{j + 1:02d}.png")
            _direction_chart(out / d.chart, d)
            charts.append(d.chart)
            directions.append(d)
        _gram_chart(out / "gram.png", geometry["gram_pooled"], geometry["gram_joint"])
        charts.append("gram.png")
    cm_weights = None
    if "concept_classifier" in arrays:
        cm_weights = _concept_model_chart(out / "concept_model.png", names, arrays["concept_classifier"], top)
        charts.append("concept_model.png")

    explained = _explain_images(model_dir, images, names, arrays, geometry, top, backend, batch_size)
    for i, img in enumerate(explained, start=1):
        if img.error is None:
            img.chart = _safe_stem(img.source, i) + ".png"
            label = ("push on the concept model score (→ synthetic)" if img.method == "concept_contributions"
                     else "concept in the image × its pull on the head (→ synthetic)")
            _image_chart(out / img.chart, img, label, [d.name for d in directions])
            charts.append(img.chart)

    report = ExplainReport(out, out / REPORT_NAME, out / JSON_NAME, charts, directions,
                           geometry["gram_pooled"] if geometry else None, geometry["gram_joint"] if geometry else None,
                           explained)
    shown = manifest.to_dict()
    report.markdown.write_text(_markdown(model_dir, shown, report, cm_weights), encoding="utf-8")
    report.json.write_text(json.dumps(_json(shown, report, cm_weights), indent=2) + "\n", encoding="utf-8")
    return report


def _explain_images(model_dir, images, names, arrays, geometry, top, backend, batch_size) -> list[ImageExplanation]:
    if not images:
        return []
    from sid_edge.runtime.detector import Detector

    det = Detector.load(model_dir, backend=backend)
    det.top_concepts = 0  # ranked here instead
    v = arrays.get("head_to_logit")
    results = []
    for pred in det.predict(list(images), batch_size=batch_size):
        img = ImageExplanation(source=str(pred.source))
        if not pred.ok:
            img.error = pred.error
            results.append(img)
            continue
        img.p_synthetic, img.logit, img.prediction = pred.p_synthetic, pred.logit, pred.prediction
        if geometry is not None:
            img.direction_terms = [float(x) for x in v * pred.head_activations]
        if pred.concept_contributions is not None:
            values, img.method = np.asarray(pred.concept_contributions, np.float64), "concept_contributions"
            img.concept_logit = pred.concept_logit
        else:
            values, img.method = np.asarray(pred.concept_scores, np.float64) * geometry["alignment"], "score_x_alignment"
        img.up, img.down = _extremes(names, values, top)
        results.append(img)
    return results


def _markdown(model_dir, manifest: dict, report: ExplainReport, cm_weights) -> str:
    b, h, vocab = manifest["backbone"], manifest["head"], manifest["vocabulary"]
    lines = [
        f"# Why this detector flags images: `{Path(model_dir).name}`",
        "",
        *([f"> **This artifact's CLIP backbone has random weights** ({b['model_name']}, pretrained none): its scores "
           "and the concepts below mean nothing; it is for pipeline checks only.", ""]
          if str(b.get("pretrained", "")).lower() == "none" else []),
        f"* backbone: {b['model_name']} / {b['pretrained']}",
        f"* head: {h['kind']}, k = {h['k']} ({_md(h.get('source', '?'))})",
        f"* vocabulary: {vocab.get('count', len(vocab.get('concepts', [])))} concepts from {_md(vocab.get('source', '?'))}"
        f" (prompt template `{vocab.get('template', '')}`)",
    ]
    if manifest.get("concept_model"):
        cm = manifest["concept_model"]
        lines.append(f"* concept model: {_md(cm['source'])}" + (" — it is the head: p_synthetic = sigmoid(concept_logit)"
                                                                if cm.get("is_head") else ""))
    lines += [
        "",
        "## How to read this",
        "",
        "* **p_synthetic** is the detector's estimate that an image was generated; at or above the threshold the "
        "verdict is *synthetic*. It comes from the pixels alone.",
        "* The **concepts** below are words the detector's directions resemble (for example *lens flare* or *studio "
        "lighting*). They describe what the detector is sensitive to, in human terms; they are an aid to judgement, "
        "not proof: a concept can be named for an image that does not show it.",
        "* In each image chart, red bars pushed the score **towards synthetic**, blue bars **towards real**; longer "
        "bars pushed harder. The thumbnail is the image that was scored.",
        "* Directions are named by the concept closest to them (`3: bokeh` is direction 3, nearest to *bokeh*).",
        "",
        "Concept scores are cosines between the image embedding and a unit direction per antonym pair, "
        "normalize(text(positive) − text(negative)): positive means the image is nearer the positive prompt.",
        "",
    ]
    if report.directions:
        lines += [
            "## Head directions",
            "",
            "Each direction of the head is carried into the joint image–text space through CLIP's visual projection "
            "and compared with the concept directions (cosine). Directions are oriented by the sign of their logit "
            "weight, so *towards synthetic* concepts raise p_synthetic along that direction and *towards real* "
            "ones lower it. The text-visible share is the part of the direction the projection passes on at all; "
            "the rest is invisible to any text.",
            "",
        ]
        for d in report.directions:
            lines += [f"### Direction {d.index} (logit weight {d.to_logit:+.4g}, text-visible share "
                      f"{d.text_visible_share:.0%})", "", f"![direction {d.index}]({d.chart})", ""]
            lines += _pair_table("towards synthetic", d.aligned, "towards real", d.opposed, "cosine") + [""]
        k = len(report.gram_pooled)
        off = report.gram_pooled[~np.eye(k, dtype=bool)] if k > 1 else np.zeros(1)
        lines += [
            "## How orthogonal the directions are",
            "",
            f"Cosine Gram matrix of the head's directions (1 on the diagonal; 0 = orthogonal). Largest |off-diagonal| "
            f"cosine: pooled space {np.abs(off).max():.3f}.",
            "",
            "![Gram matrices](gram.png)",
            "",
            "| | " + " | ".join(str(j + 1) for j in range(k)) + " |",
            "|---|" + "---:|" * k,
        ]
        lines += [f"| **{r + 1}** | " + " | ".join(f"{report.gram_pooled[r, c]:+.3f}" for c in range(k)) + " |" for r in range(k)]
        lines.append("")
    if cm_weights is not None:
        up, down = cm_weights
        lines += ["## Concept model", "",
                  "Its logit is Σ_c w_c · s_c · g_c + b (s: concept score, g: the image's gate for the concept). "
                  "Largest classifier weights w_c:", "", "![concept model](concept_model.png)", ""]
        lines += _pair_table("towards synthetic", up, "towards real", down, "w_c") + [""]
    if report.images:
        lines += ["## Images", ""]
        for img in report.images:
            name = _md(path_text(Path(img.source).name))
            if img.error is not None:
                lines += [f"### {name}", "", f"Not scored: {_md(img.error)}", ""]
                continue
            how = (f"exact contributions of the concept model (they sum, with its bias, to concept_logit = "
                   f"{img.concept_logit:+.4f})" if img.method == "concept_contributions" else
                   "concept score × the concept's alignment with the head's overall direction (a ranking, not a sum)")
            lines += [f"### {name}: p_synthetic {img.p_synthetic:.4f} ({img.prediction})", "",
                      f"![{name}]({img.chart})", "", f"Concept values: {how}.", ""]
            lines += _pair_table("pushed up (towards synthetic)", img.up, "pushed down (towards real)", img.down,
                                 "value") + [""]
    return "\n".join(lines)


def _json(manifest: dict, report: ExplainReport, cm_weights) -> dict:
    return {
        "artifact": {"backbone": manifest["backbone"]["model_name"], "head": manifest["head"]["kind"],
                     "vocabulary": manifest["vocabulary"].get("source")},
        "directions": [asdict(d) for d in report.directions],
        "gram_pooled": None if report.gram_pooled is None else report.gram_pooled.round(6).tolist(),
        "gram_joint": None if report.gram_joint is None else report.gram_joint.round(6).tolist(),
        "concept_model_weights": None if cm_weights is None else {"up": cm_weights[0], "down": cm_weights[1]},
        "images": [asdict(i) for i in report.images],
        "charts": report.charts,
    }
