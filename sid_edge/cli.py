"""``sid-edge`` command line: train, export, build, scan, info, explain, evaluate.

Heavy imports (torch, open_clip) happen inside the training/export commands only, so ``sid-edge scan``,
``sid-edge info``, ``sid-edge explain`` and ``sid-edge evaluate`` run on machines without PyTorch; ``sid-edge build``
needs TensorRT, not PyTorch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.markup import escape

from sid_edge import __version__
from sid_edge.progress import console

from sid_edge.calibration import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD  # constants only: light
from sid_edge.manifest import PRECISIONS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3

DEFAULT_CLIP_MODEL = "ViT-L-14-336-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"
BACKEND_CHOICES = ("auto", "tensorrt", "cuda", "cpu")  # = sid_edge.backends.BACKEND_CHOICES, kept literal: cheap import


class UsageError(Exception):
    """Bad arguments discovered after parsing (exit status 2)."""


class ModelError(Exception):
    """The model/artifact/head cannot be used (exit status 3)."""


def _add_backbone_args(p: argparse.ArgumentParser, default_from_head: bool = False) -> None:
    suffix = " (default: the head's own backbone, else %(default)s)" if default_from_head else " (default: %(default)s)"
    p.add_argument("--clip-model", default=None if default_from_head else DEFAULT_CLIP_MODEL, metavar="NAME",
                   help="open_clip model name; OpenAI weights need a -quickgelu name" + suffix.replace("%(default)s", DEFAULT_CLIP_MODEL))
    p.add_argument("--clip-pretrained", default=None if default_from_head else DEFAULT_CLIP_PRETRAINED, metavar="TAG|PATH|none",
                   help="open_clip pretrained tag, a local open_clip weights file (works offline), or 'none' for random "
                        "weights (predictions meaningless; for scale checks)" + suffix.replace("%(default)s", DEFAULT_CLIP_PRETRAINED))


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TensorRT engine build")
    g.add_argument("--min-batch", type=int, default=1, metavar="N", help="smallest batch the engine accepts (default: %(default)s)")
    g.add_argument("--opt-batch", type=int, default=8, metavar="N", help="batch the engine is tuned for (default: %(default)s)")
    g.add_argument("--max-batch", type=int, default=64, metavar="N",
                   help="largest batch the engine accepts; bigger batches are split at run time (default: %(default)s)")
    g.add_argument("--workspace", type=float, default=None, metavar="GIB",
                   help="cap on TensorRT's scratch memory in GiB (default: TensorRT's, the GPU's memory)")
    g.add_argument("--opt-level", type=int, default=3, metavar="0-5",
                   help="builder optimization level: 0 builds fastest, 5 searches longest (default: %(default)s)")
    g.add_argument("--no-timing-cache", action="store_true",
                   help="neither read nor update the timing cache kept in the artifact")
    g.add_argument("--device", type=int, default=0, help="CUDA device to build for (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sid-edge",
        description="Synthetic image detection on frozen CLIP features: train a head, export one fused ONNX "
                    "graph, scan folders.",
    )
    parser.add_argument("--version", action="version", version=f"sid-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a head on CLIP features of labelled images",
                       description="Extract CLIP features once (cached) and train an orthogonal (or linear) head, or "
                                   "the paper's sparse concept bottleneck model (--model concepts). "
                                   "DATA: a folder with real/ and synthetic/ (or 0_real/ and 1_fake/, optionally per "
                                   "generator), a CSV manifest path,label[,source], or a SynthCLIC-shaped dataset "
                                   "(parquet files, a `datasets` save_to_disk folder, hf:OWNER/NAME), whose train split "
                                   "is used.")
    t.add_argument("--data", required=True, metavar="DATA", help="labelled images (folder, CSV, parquet, save_to_disk folder, hf:NAME)")
    t.add_argument("--out", required=True, metavar="HEAD", help="output head directory (head.safetensors + head.json)")
    _add_backbone_args(t)
    t.add_argument("--model", "--head", dest="head", default="orthogonal", choices=["orthogonal", "linear", "concepts"],
                   help="what to train: an orthogonal or linear head on the pooled feature, or a concept bottleneck "
                        "model on the projected embedding (default: %(default)s)")
    t.add_argument("--head-dim", type=int, default=8, metavar="K", help="k, directions of the orthogonal head, 2..16 (default: %(default)s)")
    t.add_argument("--ortho-weight", type=float, default=0.33, help="weight of ‖I − ÂᵀÂ‖_F (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=200, help="maximum epochs (default: %(default)s)")
    t.add_argument("--patience", type=int, default=5, help="early-stopping patience on validation AP (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out validation share, stratified (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=16, help="images per backbone batch during extraction (default: %(default)s)")
    t.add_argument("--cache-dir", default=None, help="feature cache folder (default: user cache dir)")
    t.add_argument("--no-cache", action="store_true", help="recompute features, do not read or write the cache")
    c = t.add_argument_group("concept model (--model concepts)")
    c.add_argument("--vocabulary", default="default", metavar="FILE|default",
                   help="concept vocabulary CSV (sid-edge or clip-cues layout; default: the packaged one)")
    c.add_argument("--prompt-template", default="{}", metavar="TEMPLATE",
                   help="str.format template applied to every prompt (default: '{}', prompts verbatim)")
    c.add_argument("--sparsity-weight", type=float, default=1e-4, metavar="BETA",
                   help="weight of the KL sparsity prior on the gates (default: %(default)s)")
    c.add_argument("--prior-rate", type=float, default=1e-4, metavar="ALPHA",
                   help="Bernoulli rate the gates are pulled towards (default: %(default)s)")
    c.add_argument("--temperature", type=float, default=0.1,
                   help="binary-concrete temperature while training (default: %(default)s)")

    e = sub.add_parser("export", help="fuse CLIP + head into one ONNX graph (a detector artifact), with FP16/INT8 variants",
                       description="Write DIR/manifest.json and DIR/model.<precision>.onnx, and measure ONNX Runtime vs "
                                   "PyTorch parity. FP16 (ModelOpt AutoCast) and INT8 (ModelOpt PTQ, explicit Q/DQ) "
                                   "variants are calibrated on --calibration DATA and measured against FP32 on held-out "
                                   "images (the fidelity report). DATA: parquet files or a folder of them (SynthCLIC "
                                   "layout: columns image, label, image_id, source; splits train/validation/test), a "
                                   "`datasets` save_to_disk folder, hf:OWNER/NAME, real/ + synthetic/ folders, or a CSV.")
    e.add_argument("--head", required=True, metavar="HEAD", help="head directory from `sid-edge train`, or a clip-cues .ckpt")
    e.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")
    _add_backbone_args(e, default_from_head=True)
    e.add_argument("--threshold", type=float, default=None, help="decision threshold on p_synthetic (default: the head's, 0.5)")
    e.add_argument("--parity-images", nargs="*", default=[], metavar="IMG", help="images to include in the parity check")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    e.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS, metavar="P",
                   help="precisions to write, any of fp32 fp16 int8 (default: fp32); fp16/int8 need --calibration")
    e.add_argument("--calibration", default=None, metavar="DATA",
                   help="labelled images to calibrate on (drawn from its train split) and, by default, to measure fidelity on")
    e.add_argument("--calibration-split", default="train", metavar="SPLIT", help="split to draw calibration images from (default: %(default)s)")
    e.add_argument("--calibration-size", type=int, default=None, metavar="N",
                   help="calibration images, stratified by label and source (default: 512 with a CUDA/TensorRT ONNX "
                        "Runtime, 32 on a CPU, where ViT-L/14-336 calibration costs ~40 s an image)")
    e.add_argument("--calibration-method", default=DEFAULT_CALIBRATION_METHOD, choices=CALIBRATION_METHODS,
                   help="INT8 activation calibration (default: %(default)s, the one that measured best)")
    e.add_argument("--calibration-seed", type=int, default=0, help="seed of the calibration and held-out draws (default: %(default)s)")
    e.add_argument("--int8-high-precision", default="fp32", choices=["fp32", "fp16"],
                   help="dtype of the ops INT8 leaves unquantized (default: %(default)s; fp16 is faster under TensorRT)")
    e.add_argument("--fidelity-data", default=None, metavar="DATA", help="held-out images (default: the --calibration data)")
    e.add_argument("--fidelity-split", default="validation", metavar="SPLIT",
                   help="split of the held-out images (default: %(default)s); calibration images are excluded")
    e.add_argument("--fidelity-size", type=int, default=None, metavar="N",
                   help="cap the held-out images with a stratified draw (default: all with a CUDA/TensorRT ONNX Runtime, 128 on a CPU)")
    e.add_argument("--vocabulary", default="default", metavar="FILE|default|none",
                   help="concepts whose scores the graph outputs (concept_scores): a vocabulary CSV (sid-edge or "
                        "clip-cues layout), 'default' (the packaged photographic vocabulary) or 'none'. With a concept "
                        "model, it only names an unnamed clip-cues checkpoint's concepts (default: %(default)s)")
    e.add_argument("--concept-model", default=None, metavar="HEAD",
                   help="a concept model (from `train --model concepts`, or a clip-cues cm_*.ckpt) whose concept_logit "
                        "and concept_contributions join the graph next to --head's score")
    e.add_argument("--prompt-template", default="{}", metavar="TEMPLATE",
                   help="str.format template applied to every prompt (default: '{}', prompts verbatim)")
    e.add_argument("--engine", action="store_true",
                   help="also build a TensorRT engine for each precision in the artifact (needs TensorRT and an NVIDIA GPU)")
    _add_engine_args(e)

    b = sub.add_parser("build", help="build TensorRT engines for an existing artifact",
                       description="Build one TensorRT engine per precision from the artifact's ONNX graphs (strongly "
                                   "typed: FP16/INT8 come from the FP16/Q-DQ graphs), on this machine's GPU, and record "
                                   "them in the manifest. Needs TensorRT >= 10 and cuda-python: pip install "
                                   "'sid-edge[tensorrt]'.")
    b.add_argument("model", metavar="DIR", help="detector artifact")
    b.add_argument("--precision", action="append", default=None, metavar="P",
                   help="precision to build (repeatable; default: every model in the artifact)")
    _add_engine_args(b)

    s = sub.add_parser("scan", help="score every image under the given files/folders",
                       description="Recursively discover images and score them in batches. One row per file: path, "
                                   "p_synthetic, prediction, error. Bad files get a reason in `error`; the scan goes on.")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--model", default=None, metavar="DIR", help="detector artifact (default: the default detector, built once and cached)")
    s.add_argument("--out", default=None, metavar="FILE", help="results.csv or results.jsonl (default: CSV on stdout)")
    s.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    s.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold on p_synthetic")
    s.add_argument("--precision", default=None, metavar="P",
                   help="model variant in the artifact: fp32, fp16 or int8 (default: the artifact's default, fp32 when present)")
    s.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend: auto takes the fastest available (a TensorRT engine that fits this GPU, "
                        "else ONNX Runtime CUDA, else CPU) and says which (default: %(default)s)")
    s.add_argument("--allow-fallback", action="store_true",
                   help="if the requested backend cannot run here, use ONNX Runtime instead of stopping")
    s.add_argument("--workers", type=int, default=None, help="decoder threads (default: one per core, at least 2)")
    s.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (decompression bombs)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--top-concepts", type=int, default=3, metavar="N",
                   help="top concepts per row when the artifact has a vocabulary: by |contribution| with a concept "
                        "model, else by |concept score|; 0 for none (default: %(default)s)")

    i = sub.add_parser("info", help="print an artifact's manifest in readable form")
    i.add_argument("model", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print the raw manifest JSON")

    x = sub.add_parser("explain", help="explain a detector in words: head directions, orthogonality, image reasons",
                       description="Write REPORT_DIR/report.md (+ report.json) with PNG charts: for each head direction "
                                   "the most aligned and most opposed concepts, the directions' Gram matrix, and for "
                                   "the given images the concepts that pushed their score up or down. Needs an "
                                   "artifact exported with a vocabulary, and matplotlib.")
    x.add_argument("model", metavar="DIR", help="detector artifact")
    x.add_argument("--images", nargs="*", default=[], metavar="IMG", help="images or folders to explain")
    x.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created)")
    x.add_argument("--top", type=int, default=8, metavar="N", help="concepts per list (default: %(default)s)")
    x.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"], help="inference backend for the images (default: %(default)s)")
    v = sub.add_parser("evaluate", help="AP per dataset and generator, the cross-dataset matrix, plots, thresholds",
                       description="Score labelled datasets with one or more detector artifacts and report, for each "
                                   "pair: mAP (mean per-generator AP, the paper's metric) and pooled AP, accuracy and "
                                   "balanced accuracy at the artifact's threshold, real and synthetic accuracy, and AP per "
                                   "generator (source) against the real images; with several artifacts, the detector x "
                                   "dataset matrix. Writes REPORT_DIR/report.md, report.json, scores.csv and PNG plots. "
                                   "Backbone features are computed once per dataset and backbone and shared by every "
                                   "FP32 orthogonal/linear head (cached by image content). No PyTorch needed; needs "
                                   "scikit-learn and matplotlib (pip install 'sid-edge[evaluate]').")
    v.add_argument("models", nargs="+", metavar="DIR",
                   help="detector artifacts; NAME=DIR names one (default name: the folder's)")
    v.add_argument("--data", nargs="+", default=[], metavar="DATA",
                   help="labelled datasets (folder, CSV, parquet, save_to_disk folder, hf:OWNER/NAME); NAME=DATA names "
                        "one (default name: the path's stem)")
    v.add_argument("--split", default="test", help="split to evaluate (datasets without splits are used whole; default: %(default)s)")
    v.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="model variant of every artifact (default: each artifact's default, fp32 when present)")
    v.add_argument("--out", default="evaluation", metavar="REPORT_DIR", help="report folder, created or updated (default: %(default)s)")
    v.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    v.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="inference backend (default: %(default)s)")
    v.add_argument("--workers", type=int, default=None, help="decoder threads (default: one per core, at least 2)")
    v.add_argument("--pairing", default="auto", choices=["auto", "shared", "matched"],
                   help="real images each generator's AP is computed against: all of the split (shared), those of the "
                        "same source (matched, CNNSpot's convention), or matched when real images carry generator "
                        "names as their source (auto, default)")
    v.add_argument("--no-cache", action="store_true", help="neither read nor write the per-image cache")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    th = v.add_argument_group("threshold at a target false-positive rate")
    th.add_argument("--threshold-from", default=None, metavar="DATA",
                    help="choose each artifact's threshold so that at most --target-fpr of DATA's real images are "
                         "flagged; the evaluation then uses it (--data may be omitted)")
    th.add_argument("--threshold-split", default="validation", metavar="SPLIT",
                    help="split of --threshold-from DATA (default: %(default)s; never choose it on the test split)")
    th.add_argument("--target-fpr", type=float, default=0.01, metavar="RATE",
                    help="false-positive rate on real images, in [0, 1] (default: %(default)s)")
    th.add_argument("--write-threshold", action="store_true",
                    help="write the chosen threshold into each artifact's manifest (recording data, split, target FPR "
                         "and counts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    handler = {"train": cmd_train, "export": cmd_export, "build": cmd_build, "scan": cmd_scan, "info": cmd_info,
               "explain": cmd_explain, "evaluate": cmd_evaluate}[args.command]
    try:
        return handler(args)
    except UsageError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_USAGE
    except ModelError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_MODEL
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `sid-edge info --json | head`: the reader left, nothing is wrong
        sys.stdout = None
        return EXIT_OK


def _count(n: int, noun: str) -> str:
    """'1 file', '3 files'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )


# ---------------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    if args.head == "orthogonal" and not 2 <= args.head_dim <= 16:
        raise UsageError(f"--head-dim {args.head_dim}: must be between 2 and 16")
    from sid_edge.datasets import read_labelled_images

    try:
        items = read_labelled_images(args.data, split="train")  # a dataset without splits is used whole
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    import numpy as np

    from sid_edge.features import extract_features
    from sid_edge.heads import HeadConfig, save_head
    from sid_edge.train import TrainConfig, train_head

    backbone = _load_backbone(args.clip_model, args.clip_pretrained)
    feats = extract_features(backbone, [it.image for it in items], batch_size=args.batch_size,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache)
    for idx, reason in sorted(feats.errors.items()):
        console.print(f"[yellow]skipped[/] {items[idx].key}: {reason}", highlight=False)
    labels = np.asarray([items[i].label for i in feats.kept])
    if args.head == "concepts":
        return _train_concepts(args, backbone, feats, labels)
    config = TrainConfig(kind=args.head, k=args.head_dim if args.head == "orthogonal" else 1,
                         ortho_weight=args.ortho_weight, lr=args.lr, max_epochs=args.epochs,
                         patience=args.patience, val_fraction=args.val_fraction, seed=args.seed)
    console.print(f"Training {'an' if config.kind[0] in 'aeiou' else 'a'} {config.kind} head (k={config.k}) on {len(labels)} images "
                  f"({int((labels == 0).sum())} real, {int((labels == 1).sum())} synthetic)", highlight=False)
    try:
        head, report = train_head(feats.pooled, labels, config)
    except ValueError as e:
        raise UsageError(f"{args.data}: {e}") from e
    cfg = HeadConfig(kind=config.kind, k=config.k, feature_dim=backbone.feature_dim,
                     backbone=backbone.identity.to_dict(),
                     training={**report.to_dict(), "data": str(args.data), "skipped_images": len(feats.errors),
                               "config": config.__dict__})
    save_head(head, cfg, args.out)
    console.print(f"validation AP {report.val_ap:.4f} (n_val={report.n_val}, best epoch {report.best_epoch}); "
                  f"‖I − ÂᵀÂ‖_F {report.ortho_initial:.3f} → {report.ortho_final:.3f}", highlight=False)
    console.print(f"head written to {args.out}", highlight=False)
    print(json.dumps({"head": str(args.out), **report.to_dict()}))
    return EXIT_OK


def _train_concepts(args, backbone, feats, labels) -> int:
    from sid_edge.concept_model import (ConceptTrainConfig, concept_head_config, train_concept_model,
                                        vocabulary_block)
    from sid_edge.concepts import build_concept_set
    from sid_edge.heads import save_head

    try:
        cset = build_concept_set(backbone, args.vocabulary, template=args.prompt_template)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    config = ConceptTrainConfig(temperature=args.temperature, sparsity_weight=args.sparsity_weight,
                                prior_rate=args.prior_rate, lr=args.lr, max_epochs=args.epochs, patience=args.patience,
                                val_fraction=args.val_fraction, seed=args.seed)
    console.print(f"Training a concept model ({len(cset.concepts)} concepts from {cset.source}) on {len(labels)} images "
                  f"({int((labels == 0).sum())} real, {int((labels == 1).sum())} synthetic)", highlight=False)
    try:
        model, report = train_concept_model(feats.embedding, labels, cset.directions, config)
    except ValueError as e:
        raise UsageError(f"{args.data}: {e}") from e
    vocab = vocabulary_block(cset.concepts, cset.template, cset.source, cset.sha256)
    cfg = concept_head_config(model, vocab, backbone.identity.to_dict(),
                              training={**report.to_dict(), "data": str(args.data), "skipped_images": len(feats.errors),
                                        "config": config.__dict__})
    save_head(model, cfg, args.out)
    console.print(f"validation AP {report.val_ap:.4f} (n_val={report.n_val}, best epoch {report.best_epoch}); active "
                  f"gates per image {report.active_gates_initial:.1f} → {report.active_gates:.1f} of {report.n_concepts}",
                  highlight=False)
    console.print(f"concept model written to {args.out}", highlight=False)
    print(json.dumps({"head": str(args.out), **report.to_dict()}))
    return EXIT_OK


def _load_backbone(model: str, pretrained: str):
    from sid_edge.backbone import load_backbone

    try:
        return load_backbone(model, pretrained)
    except ValueError as e:
        raise UsageError(str(e)) from e
    except RuntimeError as e:
        raise ModelError(str(e)) from e


# ---------------------------------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    engine_options = _engine_options(args) if args.engine else None  # bad profile arguments stop before the export
    from sid_edge.export import export_detector
    from sid_edge.heads import load_head

    wants_variants = [p for p in args.precision if p != "fp32"]
    if wants_variants and not args.calibration:
        raise UsageError(f"--precision {' '.join(wants_variants)} needs --calibration DATA (images to calibrate on and "
                         f"to measure the variants against FP32)")
    for flag in ("calibration_size", "fidelity_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.calibration:
        _check_dataset(args.calibration, args.calibration_split)
        _check_dataset(args.fidelity_data or args.calibration, args.fidelity_split)
    try:
        _, head_cfg = load_head(args.head)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    except ValueError as e:
        raise ModelError(str(e)) from e
    model = args.clip_model or head_cfg.backbone.get("model_name") or DEFAULT_CLIP_MODEL
    pretrained = args.clip_pretrained or head_cfg.backbone.get("pretrained") or DEFAULT_CLIP_PRETRAINED
    vocabulary = None if args.vocabulary.lower() == "none" else args.vocabulary
    if vocabulary is None and (head_cfg.kind == "concepts" or args.concept_model):
        raise UsageError("--vocabulary none: a concept model's outputs need its concept names")
    for path in [p for p in (vocabulary, args.concept_model) if p not in (None, "default")]:
        if not Path(path).exists():
            raise UsageError(f"no such file: {path}")
    backbone = _load_backbone(model, pretrained)
    with console.status("Exporting the fused ONNX graph and measuring parity…"):
        try:
            manifest = export_detector(args.head, args.out, backbone=backbone, parity_images=args.parity_images,
                                       threshold=args.threshold, overwrite=args.overwrite, vocabulary=vocabulary,
                                       concept_model=args.concept_model, prompt_template=args.prompt_template)
        except ValueError as e:
            raise ModelError(str(e)) from e
    fid = manifest["models"]["fp32"]["fidelity"]["pytorch_parity"]
    console.print(f"FP32 graph written to {args.out}: max |Δlogit| ONNX Runtime vs PyTorch = "
                  f"{fid['max_abs_logit_diff']:.2e} on {fid['inputs']} inputs", highlight=False)
    if manifest["vocabulary"]:
        console.print(f"concept scores: {manifest['vocabulary']['count']} concepts from "
                      f"{manifest['vocabulary']['source']}" + (f"; concept model {manifest['concept_model']['source']}"
                                                               if manifest["concept_model"] else ""), highlight=False)
    if args.calibration:
        manifest = _add_variants(args)
        console.print(fidelity_table(manifest["models"]))
    console.print(f"artifact {args.out}: " + ", ".join(
        f"{p} ({e['size_bytes'] / 1e6:.1f} MB)" for p, e in manifest["models"].items()), highlight=False)
    if engine_options is not None:
        _build_engines(args.out, None, engine_options)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- build
def _engine_options(args) -> dict:
    """Validated keyword arguments for sid_edge.export.engine.build_engine (UsageError on bad values)."""
    from sid_edge.engines import BatchProfile

    try:
        profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    except ValueError as e:
        raise UsageError(f"--min-batch/--opt-batch/--max-batch: {e}") from e
    if not 0 <= args.opt_level <= 5:
        raise UsageError(f"--opt-level {args.opt_level}: must be between 0 and 5")
    if args.workspace is not None and args.workspace <= 0:
        raise UsageError(f"--workspace {args.workspace}: must be a positive number of GiB")
    workspace = None if args.workspace is None else int(args.workspace * (1 << 30))
    return {"profile": profile, "workspace_bytes": workspace, "optimization_level": args.opt_level,
            "timing_cache": not args.no_timing_cache, "device": args.device}


def _build_engines(model_dir, precisions, options: dict) -> None:
    from sid_edge.engines import EngineError
    from sid_edge.export.engine import build_engine
    from sid_edge.manifest import ManifestError, model_entry, read_manifest

    try:
        manifest = read_manifest(model_dir)
        wanted = precisions or list(manifest["models"])
        for p in wanted:
            model_entry(manifest, p)
        for p in wanted:
            prof = options["profile"]
            console.print(f"Building the {p} TensorRT engine of {model_dir} (batch {prof.min_batch}..{prof.max_batch}, "
                          f"tuned for {prof.opt_batch})…", highlight=False)
            entry = build_engine(model_dir, p, **options)
            console.print(f"  {entry['file']}: {entry['size_bytes'] / 1e6:.1f} MB in {entry['build_seconds']:.0f} s, "
                          f"TensorRT {entry['tensorrt_version']} on {entry['gpu_name']} "
                          f"(compute capability {entry['compute_capability']})", highlight=False)
    except (EngineError, ManifestError) as e:
        raise ModelError(str(e)) from e


def cmd_build(args) -> int:
    options = _engine_options(args)
    _build_engines(args.model, args.precision, options)
    return EXIT_OK


def _check_dataset(data: str, split: str) -> None:
    """Fail fast (exit 2) on unreadable data before minutes of export."""
    from sid_edge.datasets import read_labelled_images

    try:
        read_labelled_images(data, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _add_variants(args) -> dict:
    from sid_edge.calibration.calibration_set import default_calibration_size
    from sid_edge.calibration.fidelity import default_fidelity_size
    from sid_edge.calibration.variants import add_precision_variants
    from sid_edge.manifest import ManifestError
    from sid_edge.progress import progress_tasks

    size = args.calibration_size or default_calibration_size()
    fidelity_size = args.fidelity_size or default_fidelity_size()
    try:
        with progress_tasks() as new_task:
            return add_precision_variants(
                args.out, args.precision, calibration_data=args.calibration, calibration_split=args.calibration_split,
                calibration_size=size, calibration_seed=args.calibration_seed, calibration_method=args.calibration_method,
                high_precision=args.int8_high_precision, fidelity_data=args.fidelity_data,
                fidelity_split=args.fidelity_split, fidelity_size=fidelity_size, progress=new_task,
                say=lambda line: console.print(line, highlight=False),
            )
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    except (ManifestError, RuntimeError) as e:
        raise ModelError(str(e)) from e


# ---------------------------------------------------------------------------------------------------- scan
def cmd_scan(args) -> int:
    from sid_edge.detector import Detector
    from sid_edge.imageio import DEFAULT_MAX_PIXELS
    from sid_edge.manifest import ManifestError
    from sid_edge.scan import scan

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.top_concepts < 0:
        raise UsageError(f"--top-concepts {args.top_concepts}: must be >= 0")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1] (it applies to p_synthetic)")
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    model_dir = args.model
    if model_dir is None:
        from sid_edge.default_detector import DefaultDetectorUnavailable, ensure_default_detector

        try:
            model_dir = ensure_default_detector()
        except DefaultDetectorUnavailable as e:
            raise ModelError(str(e)) from e
    try:
        det = Detector.load(model_dir, precision=args.precision, backend=args.backend, threshold=args.threshold,
                            allow_fallback=args.allow_fallback)
    except (ManifestError, ValueError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    console.print(f"backend: {det.backend_choice.describe()}", highlight=False)
    progress = False if args.no_progress else None
    summary = scan(args.paths, det, out=args.out, batch_size=args.batch_size, workers=args.workers,
                   max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=progress, top_concepts=args.top_concepts)
    console.print(
        f"{_count(summary.files, 'file')}: {summary.scored} scored ({summary.synthetic} synthetic at threshold "
        f"{det.threshold:g}), {_count(summary.errors, 'error')}; {summary.images_per_second:.1f} images/s on {det.backend}"
        + (f"; results in {args.out}" if args.out else ""),
        highlight=False,
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from rich.table import Table

    from sid_edge.manifest import ManifestError, read_manifest

    try:
        m = read_manifest(args.model)
    except ManifestError as e:
        raise ModelError(str(e)) from e
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    # stdout; piped output gets 120 columns (rich's default of 80 would truncate the tables)
    out = console.__class__(width=None if sys.stdout.isatty() else 120)
    b, h, pre = m["backbone"], m["head"], m["preprocessing"]
    out.print(f"[bold]{args.model}[/] — sid-edge detector, schema {m['schema_version']}, created {m.get('created', '?')}")
    out.print(f"backbone: {b['model_name']} / {b['pretrained']} (QuickGELU {b['quick_gelu']}, {b['feature']} {b['feature_dim']}-d, "
              f"embedding {b['embed_dim']}-d)")
    out.print(f"head: {h['kind']} k={h['k']} from {h.get('source', '?')}"
              + (f"; weights {h['weights']['file']} (shared-feature evaluation)" if h.get("weights") else ""))
    out.print(f"preprocessing: resize {pre['resize_mode']} side→{pre['size']} {pre['interpolation']}, crop {pre.get('crop')}, "
              f"mean {pre['mean']}, std {pre['std']}, {pre['colour_order']}")
    choice = m.get("threshold_choice")
    out.print(f"threshold: {m['threshold']} on {m.get('threshold_on', 'p_synthetic')}"
              + (f" (chosen at FPR {choice['target_fpr']:g} on {choice['n_real']} real images of {choice['data']}"
                 f"{' / ' + choice['split'] if choice.get('split') else ''}: FPR {choice['achieved_fpr']:.4f}"
                 + (f", TPR {choice['tpr']:.4f}" if choice.get("tpr") is not None else "") + ")" if choice else ""),
              highlight=False)
    vocab, cm = m.get("vocabulary"), m.get("concept_model")
    out.print("concepts: " + (f"{vocab['count']} from {vocab['source']} (template {vocab.get('template')!r}, top "
                              f"concepts by {vocab.get('top_concepts_by')})" if vocab else "none")
              + (f"; concept model {cm['source']}" + (" (the head)" if cm.get("is_head") else "") if cm else ""),
              highlight=False)
    out.print(f"input: {m['input']['name']} {m['input']['shape']}; outputs: "
              + ", ".join(f"{o['name']} {o['shape']}" for o in m["outputs"]))
    default = m.get("default_precision") or ("fp32" if "fp32" in m["models"] else next(iter(m["models"]), "?"))
    table = Table("", "file", "size", "sha256", "made by", "ORT vs PyTorch", title=f"Models (default: {default})")
    for prec, entry in m["models"].items():
        table.add_row(prec, entry["file"], f"{entry['size_bytes'] / 1e6:.1f} MB", entry["sha256"][:8],
                      _made_by(entry), _parity_text(entry.get("fidelity", {})))
    out.print(table)
    cal = m.get("calibration")
    if cal:
        sources = ", ".join(f"{k} {v}" for k, v in cal.get("by_source", {}).items())
        out.print(f"calibration: {cal['images']} images from {cal['data']} (split {cal.get('split') or '– (one pool)'}, seed {cal.get('seed')}, "
                  f"{cal.get('selection', '')}): {cal['by_label']['real']} real, {cal['by_label']['synthetic']} synthetic; "
                  f"{sources}", highlight=False)
    fset = m.get("fidelity_set")
    if fset:
        out.print(f"held-out set: {fset['images']} images from {fset['data']} (split {fset.get('split') or '– (one pool)'}; "
                  f"{fset['real']} real, {fset['synthetic']} synthetic; {fset['excluded_calibration_images']} calibration "
                  f"images excluded; drawn: {fset.get('drawn')}; threshold {fset['threshold']}; {fset.get('runtime')})",
                  highlight=False)
        out.print(fidelity_table(m["models"]))
    if m.get("engines"):
        # One line per engine: a table this wide gets its cells cut on an 80-column terminal.
        for e in m["engines"]:
            prof = e.get("profile", {})
            out.print(f"engine {e['precision']}: {e['file']} ({e['size_bytes'] / 1e6:.1f} MB), TensorRT "
                      f"{e.get('tensorrt_version')}, {e.get('gpu_name')} (compute capability "
                      f"{e.get('compute_capability')}), batch {prof.get('min_batch')}..{prof.get('max_batch')} "
                      f"(tuned for {prof.get('opt_batch')})", highlight=False, soft_wrap=True)
    else:
        out.print("engines: none (build with `sid-edge build DIR` on a machine with TensorRT and an NVIDIA GPU)")
    out.print("libraries: " + ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items()))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- explain
def cmd_explain(args) -> int:
    from sid_edge.imageio import discover_images
    from sid_edge.manifest import ManifestError

    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be >= 1")
    try:
        images = discover_images(args.images)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    try:
        from sid_edge.explain import explain
        import matplotlib  # noqa: F401  (a clear message below instead of a traceback mid-report)
    except ImportError as e:
        raise UsageError(f"sid-edge explain needs matplotlib: pip install 'sid-edge[explain]' ({e})") from e
    with console.status("Writing the explanation report…"):
        try:
            report = explain(args.model, args.out, images, top=args.top, backend=args.backend)
        except (ManifestError, ValueError) as e:
            raise ModelError(str(e)) from e
    failed = [img for img in report.images if img.error is not None]
    for img in failed:
        console.print(f"[yellow]skipped[/] {img.source}: {img.error}", highlight=False)
    console.print(f"report written to {report.markdown} ({len(report.charts)} charts: {len(report.directions)} "
                  f"directions, {len(report.images) - len(failed)} images)", highlight=False)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from sid_edge.datasets import read_labelled_images
    from sid_edge.manifest import ManifestError

    if not args.data and not args.threshold_from:
        raise UsageError("nothing to do: give --data DATA… to evaluate on, or --threshold-from DATA to set thresholds")
    if args.write_threshold and not args.threshold_from:
        raise UsageError("--write-threshold needs --threshold-from DATA")
    if not 0.0 <= args.target_fpr <= 1.0:
        raise UsageError(f"--target-fpr {args.target_fpr}: must be in [0, 1]")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    try:
        import matplotlib  # noqa: F401  (clear messages instead of a traceback after minutes of scoring)
        import sklearn  # noqa: F401

        from sid_edge import evaluate as ev
    except ImportError as e:
        raise UsageError(f"sid-edge evaluate needs scikit-learn and matplotlib: pip install 'sid-edge[evaluate]' ({e})") from e
    from sid_edge.progress import progress_tasks

    try:
        models = ev.parse_named(args.models, "detector")
        datasets = [ev.NamedData(n, d) for n, d in ev.parse_named(args.data, "dataset")]
    except ValueError as e:
        raise UsageError(str(e)) from e
    checks = [(d.data, args.split) for d in datasets]
    if args.threshold_from:
        checks.append((args.threshold_from, args.threshold_split))
    for data, split in checks:  # fail fast (exit 2) on unreadable data, before any model runs
        try:
            read_labelled_images(data, split=split)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from e
    try:
        detectors = [ev.load_detector(name, path, args.precision) for name, path in models]
    except ManifestError as e:
        raise ModelError(str(e)) from e
    for d in detectors:
        how = "head on shared features" if d.scoring == "features+head" else f"own graph ({d.scoring_reason})"
        console.print(f"{d.name}: {d.directory} ({d.precision}), {how}, threshold {d.threshold:g}", highlight=False)
    options = dict(batch_size=args.batch_size, backend=args.backend, workers=args.workers,
                   use_cache=not args.no_cache)
    try:
        with progress_tasks(enabled=False if args.no_progress else None) as new_task:
            thresholds = None
            if args.threshold_from:
                name = ev.default_name(args.threshold_from)
                choices = ev.choose_thresholds(detectors, ev.NamedData(name, args.threshold_from),
                                               split=args.threshold_split, target_fpr=args.target_fpr,
                                               progress=new_task, **options)
                thresholds = {k: c.threshold for k, c in choices.items()}
            result = ev.evaluate(detectors, datasets, split=args.split, thresholds=thresholds, pairing=args.pairing,
                                 progress=new_task, **options) if datasets else None
    except (ManifestError, ValueError, RuntimeError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    out = console.__class__(width=None if sys.stdout.isatty() else 120)  # tables on stdout
    if args.threshold_from:
        out.print(_threshold_table(choices.values()))
        if args.write_threshold:
            for d in detectors:
                path = ev.write_threshold(d, choices[d.name])
                console.print(f"threshold {choices[d.name].threshold:.6g} written to {path}", highlight=False)
    if result is None:
        return EXIT_OK
    result.threshold_choices = choices if args.threshold_from else {}
    out.print(_matrix_table(result))
    out.print(_metrics_table(result))
    for key, s in result.scored.items():
        for line in s.notes()[:-1]:  # exclusions and failures; where scores came from is in the report
            console.print(f"[yellow]{key[0]} on {key[1]}:[/] {line}", highlight=False)
    files = ev.write_report(result, args.out)
    console.print(f"report written to {Path(args.out) / 'report.md'} (+ report.json, scores.csv, "
                  f"{sum(name.endswith('.png') for name in files)} plots)", highlight=False)
    return EXIT_OK


def _threshold_table(choices):
    from rich.table import Table

    table = Table("detector", "threshold", "target FPR", "FPR reached", "TPR", "real", "synthetic",
                  title="Thresholds at the target false-positive rate on real images")
    for c in choices:
        table.add_row(c.detector, f"{c.threshold:.6g}", f"{c.target_fpr:g}", f"{c.achieved_fpr:.4f}",
                      "–" if c.tpr != c.tpr else f"{c.tpr:.4f}", str(c.n_real), str(c.n_synthetic))
    return table


def _fmt3(v) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def _matrix_table(result):
    from rich.table import Table

    table = Table("detector", *result.datasets, title="mAP (pooled AP), detector × dataset")
    maps, aps = result.matrix("map"), result.matrix("ap")
    for i, det in enumerate(result.detectors):
        table.add_row(det, *(f"{_fmt3(maps[i, j])} ({_fmt3(aps[i, j])})" for j in range(len(result.datasets))))
    return table


def _metrics_table(result):
    from rich.table import Table

    table = Table("detector", "dataset", "n", "real", "synth.", "mAP", "AP", "acc.", "bal. acc.", "real acc.",
                  "synth. acc.", "threshold", title=f"Metrics (split {result.split}) at each detector's threshold")
    for (det, ds), m in result.metrics.items():
        table.add_row(det, ds, str(m.n), str(m.n_real), str(m.n_synthetic), _fmt3(m.map), _fmt3(m.ap),
                      _fmt3(m.accuracy), _fmt3(m.balanced_accuracy), _fmt3(m.real_accuracy),
                      _fmt3(m.synthetic_accuracy), f"{m.threshold:.4g}")
    return table


def fidelity_table(models: dict):
    """A rich Table of the held-out figures in a manifest's ``models`` block (``models[p]["fidelity"]["held_out"]``,
    see :mod:`sid_edge.calibration.fidelity`); precisions without them are listed with dashes."""
    from rich.table import Table

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    table = Table("", "AP", "ΔAP", "acc.", "agree", "max|Δp|", "mean|Δp|", "cos mean", "cos min",
                  title="Fidelity on held-out images vs FP32 (cos: head activations)")
    for precision, entry in models.items():
        h = entry.get("fidelity", {}).get("held_out")
        if not h:
            table.add_row(precision, *["–"] * 8)
            continue
        table.add_row(precision, f(h.get("ap"), ".4f"), f(h.get("delta_ap"), "+.4f"), f(h.get("accuracy"), ".3f"),
                      f(h.get("decision_agreement"), ".1%"), f(h.get("max_abs_dp"), ".1e"), f(h.get("mean_abs_dp"), ".1e"),
                      f(h.get("head_activation_cosine_mean"), ".5f"), f(h.get("head_activation_cosine_min"), ".4f"))
    return table


def _made_by(entry: dict) -> str:
    if "quantization" in entry:
        q = entry["quantization"]
        return (f"ModelOpt PTQ: {q.get('quantize_linear')} Q + {q.get('dequantize_linear')} DQ, {q.get('calibration_method')} on "
                f"{q.get('calibration_images')} images, rest {q.get('high_precision_dtype')}")
    if "conversion" in entry:
        c = entry["conversion"]
        return f"ModelOpt AutoCast: {c.get('fp16_nodes')} nodes FP16, {c.get('fp32_nodes')} FP32"
    return "torch.onnx.export"


def _parity_text(fidelity: dict) -> str:
    parity = fidelity.get("pytorch_parity") or (fidelity if "max_abs_logit_diff" in fidelity else None)
    if not parity:
        return "–"
    return f"max|Δlogit| {parity['max_abs_logit_diff']:.1e} ({parity['inputs']} inputs)"


if __name__ == "__main__":
    sys.exit(main())
