"""Fuse the frozen backbone and a head into one ONNX graph with a dynamic batch, and write the artifact.

Graph (opset 18, exported with ``torch.onnx.export(dynamo=True)``):

    pixel_values float32 [B,3,S,S] ─► logit [B], p_synthetic [B] = sigmoid(logit), head_activations [B,k],
                                      image_embedding [B,E] (L2-normalised projected embedding),
                                      features [B,D] (the pooled pre-projection feature the head reads)
                                      [, concept_scores [B,C]]            with a vocabulary (the default)
                                      [, concept_logit [B], concept_contributions [B,C]]   with a concept model

The concept part (text tower → fixed Linear weights, concept models) is planned in :mod:`sid_edge.build.concept_directions`.
Orthogonal and linear heads are also written as plain arrays (``head.npz``, :mod:`sid_edge.runtime.numpy_head`), so that
evaluation can run the backbone once (the ``features`` output) and apply many heads in numpy.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from sid_edge import __version__
from sid_edge.artifact.names import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, EXPLANATION_FILE, HEAD_WEIGHTS_FILE, model_file_name
from sid_edge.build.backbone import Backbone, load_backbone
from sid_edge.build.concept_directions import DEFAULT_TEMPLATE, plan_concepts
from sid_edge.runtime.numpy_head import HEAD_ARRAYS, save_head_weights
from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.build.heads import HeadConfig, head_preprocessing, load_head
from sid_edge.runtime.images import load_and_preprocess
from sid_edge.artifact.manifest import (
    ARTIFACT_FORMAT,
    MANIFEST_NAME,
    INPUT_NAME,
    OUTPUT_NAMES,
    SCHEMA_VERSION,
    file_entry,
    parse_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

OPSET = 18
#: ONNX protobuf files are capped at 2 GiB; keep weights in external data well before that.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
MODEL_FILE = model_file_name("fp32")


class FusedDetector(nn.Module):
    """Backbone + head (+ concepts) as one module: pixel_values [B,3,S,S] float32 -> (logit [B], p_synthetic [B],
    head_activations [B,k], image_embedding [B,E], features [B,D], *concept outputs), all float32, named by
    ``output_names``. ``features`` is always the pooled pre-projection feature (what orthogonal/linear heads read).

    A head whose ``input_feature`` is ``"image_embedding"`` (a concept model) reads the normalised projected
    embedding; the others read the pooled feature. ``concepts`` maps the embedding to the extra outputs named by
    its ``output_names`` (see :mod:`sid_edge.build.concept_directions`).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, concepts: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.concepts = concepts
        self.output_names = tuple(OUTPUT_NAMES) + (tuple(concepts.output_names) if concepts is not None else ())
        self.eval().requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor):
        pooled, embedding = self.backbone(pixel_values)
        feature = embedding if getattr(self.head, "input_feature", "pooled") == "image_embedding" else pooled
        logit, activations = self.head(feature)
        outputs = (logit, torch.sigmoid(logit), activations, embedding, pooled)
        if self.concepts is not None:
            outputs += tuple(self.concepts(embedding))
        return outputs


def library_versions() -> dict:
    """Versions of the libraries that produced an artifact (missing ones omitted)."""
    out = {"sid_edge": __version__, "python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _export_onnx(model: FusedDetector, path: Path, image_size: int) -> None:
    example = torch.zeros(2, 3, image_size, image_size)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(model.output_names),
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        dynamo=True,
        external_data=n_bytes > EXTERNAL_DATA_THRESHOLD_BYTES,
        verbose=False,
    )


def measure_parity(model: FusedDetector, onnx_path: Path, pixel_values: np.ndarray) -> dict:
    """Run PyTorch and ONNX Runtime (CPU) on the same pixel_values [N,3,S,S] float32 and compare.

    Returns {"inputs": N, "max_abs_logit_diff", "max_abs_p_synthetic_diff", "max_abs_head_activation_diff",
    "max_abs_features_diff"}, plus
    "max_abs_concept_scores_diff" / "max_abs_concept_logit_diff" / "max_abs_concept_contributions_diff" for the
    concept outputs the graph has.
    """
    import onnxruntime as ort

    names = list(model.output_names)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip(names, sess.run(names, {INPUT_NAME: pixel_values})))
    with torch.inference_mode():
        torch_out = dict(zip(names, (t.numpy() for t in model(torch.from_numpy(pixel_values)))))
    diff = {name: float(np.max(np.abs(onnx_out[name] - torch_out[name]))) for name in names}
    return {
        "inputs": int(len(pixel_values)),
        "max_abs_logit_diff": diff["logit"],
        "max_abs_p_synthetic_diff": diff["p_synthetic"],
        "max_abs_head_activation_diff": diff["head_activations"],
        "max_abs_features_diff": diff["features"],
        **{f"max_abs_{name}_diff": diff[name] for name in names if name.startswith("concept_")},
    }


def parity_inputs(backbone: Backbone, images: Sequence[str | os.PathLike] = (), n_random: int = 2, seed: int = 0,
                  spec: Preprocessing | None = None) -> np.ndarray:
    """Preprocessed ``images`` plus ``n_random`` random images (uint8 noise through the same preprocessing),
    stacked as float32 [N,3,S,S], preprocessed by ``spec`` (default: the backbone's rule). Images that fail to
    decode are skipped."""
    spec = spec or backbone.preprocessing
    arrays = []
    for p in images:
        try:
            arrays.append(load_and_preprocess(p, spec))
        except Exception as e:  # noqa: BLE001 - a parity image is optional; say which was skipped
            log.warning("parity image %s skipped: %s", p, e)
    rng = np.random.default_rng(seed)
    from sid_edge.runtime.images import preprocess

    for _ in range(n_random):
        arrays.append(preprocess(rng.integers(0, 256, (spec.size + 37, spec.size + 11, 3), dtype=np.uint8), spec))
    return np.stack(arrays).astype(np.float32)


def export_detector(
    head_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    backbone: Backbone | None = None,
    parity_images: Sequence[str | os.PathLike] = (),
    threshold: float | None = None,
    overwrite: bool = False,
    vocabulary: str | os.PathLike | Sequence | None = "default",
    concept_model: str | os.PathLike | None = None,
    prompt_template: str = DEFAULT_TEMPLATE,
    preprocessing: str | None = None,
) -> dict:
    """Write a detector artifact (``manifest.json`` + ``model.fp32.onnx``) to ``out_dir``; return the manifest.

    Args:
        head_path: a sid-edge head directory or a clip-cues ``.ckpt`` (see :func:`sid_edge.build.heads.load_head`).
        out_dir: artifact directory; must be empty or absent unless ``overwrite``.
        clip_model, clip_pretrained: backbone (defaults: the head's own backbone if recorded, else ViT-L-14-336
            QuickGELU with OpenAI weights). Ignored when ``backbone`` is given.
        parity_images: images used (with two random ones) to measure ONNX Runtime vs PyTorch parity.
        threshold: decision threshold on p_synthetic (default: the head's, normally 0.5).
        vocabulary: concepts whose scores join the graph as ``concept_scores`` [B,C]: ``"default"`` (the packaged
            photographic vocabulary), a vocabulary CSV (sid-edge or clip-cues layout), or None for none (the graph
            then has exactly the four head outputs). Embedded once here by the backbone's text tower.
        concept_model: a concept model (sid-edge concept head or clip-cues concept ``.ckpt``) whose
            ``concept_logit`` and ``concept_contributions`` join the graph next to the head's logit. When
            ``head_path`` itself is a concept model, the artifact's logit is the concept logit.
        prompt_template: ``str.format`` template applied to every prompt (default ``"{}"``: verbatim).
        preprocessing: the pipeline the artifact serves: None or ``"head"`` (default) = the rule the head was
            trained with (:func:`sid_edge.build.heads.head_preprocessing`: clip-cues' bilinear transform for the
            paper's orthogonal/linear heads, Hugging Face's processor for its concept model, the recorded rule for
            heads from ``sid-edge train``), or a name in :data:`sid_edge.artifact.preprocessing.PIPELINES` to
            override it (mean/std stay the backbone's).

    With a separate ``concept_model`` trained on another pipeline than the one served, the concept outputs'
    deviation from their own pipeline is measured on the parity inputs and recorded in
    ``concept_model.preprocessing`` (the graph keeps ONE input: a second one would run the vision tower twice).

    Also writes ``explanation.npz`` (the weights ``sid-edge explain`` reads) when the artifact has concepts, and
    ``head.npz`` (the head as float32 arrays, :mod:`sid_edge.runtime.numpy_head`) for orthogonal and linear heads.

    Raises:
        ValueError: the head's feature dimension does not match the backbone, ``out_dir`` is not empty, or the
            concept part is inconsistent (see :func:`sid_edge.build.concept_directions.plan_concepts`).
        FileNotFoundError: a vocabulary or concept-model file does not exist.
    """
    head, head_cfg = load_head(head_path)
    _check_finite_head(head, str(head_path))
    if backbone is None:
        model_name = clip_model or head_cfg.backbone.get("model_name") or DEFAULT_CLIP_MODEL
        pretrained = clip_pretrained or head_cfg.backbone.get("pretrained") or DEFAULT_CLIP_PRETRAINED
        backbone = load_backbone(model_name, pretrained)
    spec = serving_preprocessing(head_cfg, backbone, preprocessing)
    _check_head_matches(head_cfg, backbone)
    concepts = plan_concepts(backbone, head, head_cfg, vocabulary=vocabulary, concept_model=concept_model,
                             template=prompt_template)
    final = Path(out_dir)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and not overwrite:
        raise ValueError(f"{final}: not empty; choose a new --out or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written into a temporary folder beside the target and renamed at the end: a failed or killed
    # export leaves no half-written artifact (and no folder that makes the rerun refuse as "not empty").
    out = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        typed = _export_into(out, backbone, head, head_cfg, concepts, parity_images, threshold, spec=spec,
                             concept_model=concept_model)
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return typed


def _check_finite_head(head: nn.Module, where: str) -> None:
    bad = [name for name, t in head.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{where}: the head has non-finite weights (NaN or inf) in {', '.join(bad)}")


def _export_into(out: Path, backbone: Backbone, head: nn.Module, head_cfg: HeadConfig, concepts, parity_images,
                 threshold: float | None, *, spec: Preprocessing, concept_model: str | os.PathLike | None = None):
    """Write the artifact's files and manifest into ``out`` (a fresh folder), served with preprocessing ``spec``.
    Returns the typed manifest."""
    fused = FusedDetector(backbone, head, concepts.module if concepts else None)
    onnx_path = out / MODEL_FILE
    _export_onnx(fused, onnx_path, spec.size)
    import onnx

    onnx.checker.check_model(str(onnx_path))  # path form: works with external data too
    parity = measure_parity(fused, onnx_path, parity_inputs(backbone, parity_images, spec=spec))
    concept_block = concepts.concept_model if concepts else None
    if concept_block is not None and concept_model is not None:
        concept_block = {**concept_block, "preprocessing": concept_model_deviation(
            fused, backbone, load_head(concept_model)[1], spec, parity_images)}
    if not all(np.isfinite(v) for v in parity.values() if isinstance(v, float)):
        raise ValueError(f"{out.parent}: the exported graph gives non-finite outputs (parity {parity}); refusing to "
                         f"write an artifact that would score NaN")

    entry = {"precision": "fp32", **file_entry(out, MODEL_FILE)}
    data_files = sorted(p.name for p in out.iterdir() if p.name.startswith(MODEL_FILE) and p.name != MODEL_FILE)
    if data_files:
        entry["external_data"] = [file_entry(out, name) for name in data_files]
    entry["fidelity"] = {"pytorch_parity": {"reference": "pytorch_fp32", **parity}}

    ident = backbone.identity
    k = head_cfg.k
    manifest = {
        "format": ARTIFACT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": ident.to_dict(),
        "preprocessing": spec.to_dict(),
        # How files become RGB uint8 before preprocessing (sid_edge.runtime.images.decode_image).
        "decoding": {
            "decoder": "Pillow",
            "exif_orientation": "applied",
            "high_bit_depth": "scaled to 8 bits (value/257)",
            "alpha": "dropped (convert RGB, as open_clip does)",
            "frames": "first",
        },
        "head": {
            "kind": head_cfg.kind,
            "k": k,
            "feature": head_cfg.feature,
            "source": head_cfg.source,
            "trained_on_backbone": head_cfg.backbone,
            # The pipeline the head was trained with (the artifact serves "preprocessing"; they differ only when
            # export was told to override it).
            "trained_with_preprocessing": head_preprocessing(head_cfg, backbone.preprocessing).pipeline,
            "training": head_cfg.training,
            # The head as plain arrays, so evaluation can apply it to the graph's `features` output in numpy.
            "weights": _write_head_weights(out, head, head_cfg.kind),
        },
        "vocabulary": concepts.vocabulary if concepts else None,  # concept names, prompts and the score rule
        "concept_model": concept_block,
        "threshold": float(threshold if threshold is not None else head_cfg.threshold),
        "threshold_on": "p_synthetic",
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, ident.image_size, ident.image_size], "dtype": "float32"},
        "outputs": [
            {"name": "logit", "shape": ["batch"], "dtype": "float32"},
            {"name": "p_synthetic", "shape": ["batch"], "dtype": "float32"},
            {"name": "head_activations", "shape": ["batch", k], "dtype": "float32"},
            {"name": "image_embedding", "shape": ["batch", ident.embed_dim], "dtype": "float32"},
            {"name": "features", "shape": ["batch", ident.feature_dim], "dtype": "float32"},
            *(concepts.output_specs if concepts else []),
        ],
        "models": {"fp32": entry},
        "explanation": _write_explanation(out, concepts.explanation) if concepts else None,
        "default_precision": "fp32",
        "engines": [],
        "opset": OPSET,
        "libraries": library_versions(),
    }
    typed = parse_manifest(manifest, out / MANIFEST_NAME)
    write_manifest(out, typed)
    return typed


def serving_preprocessing(head_cfg: HeadConfig, backbone: Backbone, override: str | None = None) -> Preprocessing:
    """The preprocessing rule an artifact serves: the head's own (:func:`head_preprocessing`) or, with
    ``override`` a name in :data:`PIPELINES`, that pipeline at the backbone's size and mean/std.

    Raises ValueError for an unknown ``override`` or an invalid recorded rule."""
    if override in (None, "head"):
        return head_preprocessing(head_cfg, backbone.preprocessing)
    base = backbone.preprocessing
    rule = Preprocessing.for_pipeline(override, base.size, base.mean, base.std)
    trained = head_preprocessing(head_cfg, base)
    if rule != trained:
        log.warning("serving the %s pipeline, but the head was trained with %s: scores can move (issue 10 measured "
                    "up to 1.9e-3 in p_synthetic for bilinear vs bicubic)", rule.pipeline, trained.pipeline)
    return rule


def concept_model_deviation(fused: FusedDetector, backbone: Backbone, concept_cfg: HeadConfig, served: Preprocessing,
                            images: Sequence[str | os.PathLike] = (), n_random: int = 2) -> dict:
    """How far the concept model's outputs move when it is served with ``served`` instead of its own pipeline.

    Runs ``fused`` (PyTorch, FP32) on the parity ``images`` plus ``n_random`` random images under both rules and
    returns ``{"pipeline" (the model's own), "served_with", "inputs", "max_abs_concept_logit_diff",
    "max_abs_concept_probability_diff"}`` (probability = sigmoid(concept_logit)); the differences are 0.0 without
    computing when the two rules are the same. On random images and on images whose two crop offsets agree the
    deviation is the resampling filter's alone.
    """
    own = head_preprocessing(concept_cfg, backbone.preprocessing)
    block = {"pipeline": own.pipeline, "served_with": served.pipeline}
    if own == served:
        return {**block, "inputs": 0, "max_abs_concept_logit_diff": 0.0, "max_abs_concept_probability_diff": 0.0}
    names = list(fused.output_names)
    at = names.index("concept_logit")
    logits = []
    for rule in (served, own):
        x = parity_inputs(backbone, images, n_random=n_random, spec=rule)
        with torch.inference_mode():
            logits.append(fused(torch.from_numpy(x))[at].double())
    d_logit = (logits[0] - logits[1]).abs().max().item()
    d_prob = (torch.sigmoid(logits[0]) - torch.sigmoid(logits[1])).abs().max().item()
    return {**block, "inputs": int(logits[0].shape[0]), "max_abs_concept_logit_diff": float(d_logit),
            "max_abs_concept_probability_diff": float(d_prob)}


def _write_head_weights(out: Path, head: nn.Module, kind: str) -> dict | None:
    """Write ``head.npz`` for an orthogonal or linear head and return its manifest entry (None for other kinds)."""
    if kind not in HEAD_ARRAYS:
        return None
    arrays = {name: t.detach().cpu().numpy() for name, t in head.state_dict().items()}
    save_head_weights(out, kind, arrays)
    return {**file_entry(out, HEAD_WEIGHTS_FILE), "arrays": {k: list(v.shape) for k, v in arrays.items()}}


def _write_explanation(out: Path, arrays: dict[str, np.ndarray]) -> dict:
    """Write ``explanation.npz`` (plain arrays, no pickle) and return its manifest entry."""
    np.savez(out / EXPLANATION_FILE, **arrays)
    return {**file_entry(out, EXPLANATION_FILE), "arrays": {k: list(v.shape) for k, v in arrays.items()}}


def _check_head_matches(cfg: HeadConfig, backbone: Backbone) -> None:
    ident = backbone.identity
    reads_embedding = cfg.feature == "image_embedding"
    have = ident.embed_dim if reads_embedding else ident.feature_dim
    if cfg.feature_dim != have:
        what = "projected image embeddings" if reads_embedding else "pooled features"
        raise ValueError(
            f"the head reads {cfg.feature_dim}-d features but {ident.model_name} gives {have}-d {what}; "
            f"export with the backbone the head was trained on ({cfg.backbone.get('model_name', 'unknown')})"
        )
    trained = cfg.backbone
    same_weights = trained.get("pretrained_sha256") in (None, ident.pretrained_sha256)  # local files, random seeds
    if trained and ((trained.get("model_name"), trained.get("pretrained")) != (ident.model_name, ident.pretrained)
                    or not same_weights):
        log.warning(
            "the head was trained on %s/%s but is exported with %s/%s: its scores are only meaningful on the "
            "backbone it was trained on",
            trained.get("model_name"), trained.get("pretrained"), ident.model_name, ident.pretrained,
        )
