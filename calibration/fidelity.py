"""Fidelity of precision variants: every variant of an artifact run by the runtime itself (``Detector``, ONNX
Runtime CPU) on the same held-out images, compared with the FP32 graph.

Held-out set: the fidelity split (default ``validation``) minus every image whose ``image_id`` is in the
calibration set, optionally capped by a stratified draw. Figures per precision (``p`` = p_synthetic):

* ``ap`` — average precision of ``p`` against the labels (scikit-learn ``average_precision_score``, the area
  under the precision-recall curve as a step function); ``accuracy`` — share of correct decisions at the
  artifact's threshold;
* against FP32: ``delta_ap`` (AP − AP_fp32), ``max_abs_dp`` / ``mean_abs_dp`` (|p − p_fp32|),
  ``decision_agreement`` (share of images with the same decision at the threshold), and the cosine similarity
  of the head activation vectors (``head_activation_cosine_mean`` / ``_min``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sid_edge.calibration.selection import exclude_image_ids, select_stratified
from sid_edge.tools.datasets import LabelledImage, read_labelled_images
from sid_edge.runtime.batching import iter_batches

#: Held-out images on a CPU by default: each costs one pass per precision (seconds for ViT-L/14-336).
CPU_FIDELITY_SIZE = 128


def default_fidelity_size(providers: Sequence[str] | None = None) -> int | None:
    """None (the whole held-out split) when ONNX Runtime offers CUDA or TensorRT, else 128 images."""
    if providers is None:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    return None if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers) else CPU_FIDELITY_SIZE


@dataclass
class HeldOutSet:
    """The images the fidelity report is measured on, and how they were chosen (``description``)."""

    items: list[LabelledImage]
    description: dict


def held_out_set(
    data: str | os.PathLike,
    *,
    split: str = "validation",
    exclude: Sequence[str] = (),
    size: int | None = None,
    seed: int = 0,
    items: Sequence[LabelledImage] | None = None,
) -> HeldOutSet:
    """``data``'s ``split`` minus images whose image_id is in ``exclude`` (the calibration set's), then a
    stratified draw of ``size`` images when given (see :func:`sid_edge.calibration.selection.select_stratified`).

    Raises FileNotFoundError/ValueError from the reader (missing data or split, bad column or label), and
    ValueError when nothing is left after the exclusion.
    """
    pool = list(items) if items is not None else read_labelled_images(data, split=split)
    kept = exclude_image_ids(pool, exclude)
    if not kept:
        raise ValueError(f"{data}: no held-out images left in split {split!r} once the calibration images are excluded")
    chosen = select_stratified(kept, size, seed) if size else kept
    return HeldOutSet(chosen, {
        "data": str(data),
        "split": split if any(it.split for it in pool) else None,
        "excluded_calibration_images": len(pool) - len(kept),
        "drawn": f"stratified {size} (seed {seed})" if size and size < len(kept) else "all",
    })


def run_variants(
    detectors: dict, items: Sequence[LabelledImage], *, batch_size: int = 8,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, list[dict]]:
    """Decode ``items`` once and run every detector (precision -> ``Detector``) on each batch.

    Returns (outputs {precision: {"p_synthetic" [N], "head_activations" [N,k]}}, labels int [N], skipped
    [{"key", "reason"}]) over the N images that decoded, in order.
    """
    first = next(iter(detectors.values()))
    outs: dict[str, dict[str, list]] = {p: {"p_synthetic": [], "head_activations": []} for p in detectors}
    labels: list[int] = []
    skipped: list[dict] = []
    advance = progress("Fidelity (" + ", ".join(detectors) + ")", len(items)) if progress else (lambda n: None)
    for batch in iter_batches([it.image for it in items], first.preprocessing, batch_size):
        for it in batch.items:
            if it.error is not None:
                skipped.append({"key": items[it.index].key, "reason": it.error})
        pixels = batch.pixel_values
        if pixels is not None:
            for precision, det in detectors.items():
                res = det.run(pixels)
                outs[precision]["p_synthetic"].append(res["p_synthetic"])
                outs[precision]["head_activations"].append(res["head_activations"])
            labels.extend(items[it.index].label for it in batch.ok)
        advance(len(batch.items))
    stacked = {p: {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in o.items()} for p, o in outs.items()}
    return stacked, np.asarray(labels, dtype=np.int64), skipped


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    if len(np.unique(labels)) < 2:
        return None  # undefined without both classes
    return float(average_precision_score(labels, scores))


def fidelity_figures(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray] | None, labels: np.ndarray, threshold: float
) -> dict:
    """Figures of one precision (see module docstring). ``reference`` = FP32 outputs; ``candidate`` = the
    variant's (None for FP32 itself: only ``ap`` and ``accuracy``). Arrays: p_synthetic [N], head_activations [N,k]."""
    own = reference if candidate is None else candidate
    p = own["p_synthetic"].astype(np.float64)
    fig = {"images": int(len(p)), "ap": _average_precision(labels, p),
           "accuracy": float(np.mean((p >= threshold) == (labels == 1))) if len(p) else None}
    if candidate is None:
        return fig
    p_ref = reference["p_synthetic"].astype(np.float64)
    dp = np.abs(p - p_ref)
    a, b = candidate["head_activations"].astype(np.float64), reference["head_activations"].astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    ap_ref = _average_precision(labels, p_ref)
    fig.update({
        "delta_ap": None if fig["ap"] is None or ap_ref is None else fig["ap"] - ap_ref,
        "max_abs_dp": float(dp.max()),
        "mean_abs_dp": float(dp.mean()),
        "decision_agreement": float(np.mean((p >= threshold) == (p_ref >= threshold))),
        "head_activation_cosine_mean": float(cos.mean()),
        "head_activation_cosine_min": float(cos.min()),
    })
    return fig


def measure_fidelity(
    artifact_dir: str | os.PathLike, precisions: Sequence[str], held_out: HeldOutSet, *,
    batch_size: int = 8, progress: Callable[[str, int], Callable[[int], None]] | None = None,
    backends: dict[str, tuple[str, str]] | None = None,
) -> tuple[dict[str, dict], dict]:
    """Load each precision of the artifact with the runtime (CPU) and measure :func:`fidelity_figures` against
    its FP32 model on ``held_out``. Returns ({precision: figures}, description of the set: data, split, images,
    real, synthetic, excluded calibration images, undecodable, threshold, runtime).

    ``backends``: further rows run on another backend, {label: (precision, backend)} (e.g. ``{"openvino:int8":
    ("int8", "openvino"), "openvino:bf16": ("bf16", "openvino")}``), measured against the same ONNX Runtime FP32
    outputs and returned under their labels.

    Raises ManifestError when the artifact lacks an FP32 model or a requested precision; ValueError when no
    held-out image could be decoded.
    """
    from sid_edge.runtime.detector import Detector

    order = ["fp32", *[p for p in precisions if p != "fp32"]]
    detectors = {p: Detector.load(artifact_dir, precision=p, backend="cpu") for p in order}
    for label, (precision, backend) in (backends or {}).items():
        detectors[label] = Detector.load(artifact_dir, precision=precision, backend=backend)
    outputs, labels, skipped = run_variants(detectors, held_out.items, batch_size=batch_size, progress=progress)
    if not len(labels):
        raise ValueError(f"{held_out.description['data']}: none of the {len(held_out.items)} held-out images could be decoded")
    threshold = detectors["fp32"].threshold
    description = {**held_out.description, "images": int(len(labels)), "real": int((labels == 0).sum()),
                   "synthetic": int((labels == 1).sum()), "undecodable": len(skipped), "threshold": threshold,
                   "runtime": "onnxruntime-cpu"}
    report = {p: fidelity_figures(outputs["fp32"], None if p == "fp32" else outputs[p], labels, threshold)
              for p in [*order, *(backends or {})] if p in precisions or p in (backends or {})}
    return report, description
