"""``sid-edge`` command line: train, export, scan, info.

Heavy imports (torch, open_clip) happen inside the training/export commands only, so ``sid-edge scan`` and
``sid-edge info`` run on machines without PyTorch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sid_edge import __version__
from sid_edge.progress import console

from sid_edge.calibration import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD  # constants only: light
from sid_edge.manifest import PRECISIONS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3

DEFAULT_CLIP_MODEL = "ViT-L-14-336-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"


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
                       description="Extract CLIP features once (cached) and train an orthogonal (or linear) head. "
                                   "DATA: a folder with real/ and synthetic/ (or 0_real/ and 1_fake/, optionally per "
                                   "generator), a CSV manifest path,label[,source], or a SynthCLIC-shaped dataset "
                                   "(parquet files, a `datasets` save_to_disk folder, hf:OWNER/NAME), whose train split "
                                   "is used.")
    t.add_argument("--data", required=True, metavar="DATA", help="labelled images (folder, CSV, parquet, save_to_disk folder, hf:NAME)")
    t.add_argument("--out", required=True, metavar="HEAD", help="output head directory (head.safetensors + head.json)")
    _add_backbone_args(t)
    t.add_argument("--head", default="orthogonal", choices=["orthogonal", "linear"], help="head kind (default: %(default)s)")
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
    s.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"], help="inference backend (default: %(default)s)")
    s.add_argument("--workers", type=int, default=None, help="decoder threads (default: one per core, at least 2)")
    s.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (decompression bombs)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print an artifact's manifest in readable form")
    i.add_argument("model", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    handler = {"train": cmd_train, "export": cmd_export, "scan": cmd_scan, "info": cmd_info}[args.command]
    try:
        return handler(args)
    except UsageError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return EXIT_USAGE
    except ModelError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return EXIT_MODEL
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


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

    from sid_edge.backbone import load_backbone
    from sid_edge.features import extract_features
    from sid_edge.heads import HeadConfig, save_head
    from sid_edge.train import TrainConfig, train_head

    backbone = _load_backbone(args.clip_model, args.clip_pretrained)
    feats = extract_features(backbone, [it.image for it in items], batch_size=args.batch_size,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache)
    for idx, reason in sorted(feats.errors.items()):
        console.print(f"[yellow]skipped[/] {items[idx].key}: {reason}", highlight=False)
    labels = np.asarray([items[i].label for i in feats.kept])
    config = TrainConfig(kind=args.head, k=args.head_dim if args.head == "orthogonal" else 1,
                         ortho_weight=args.ortho_weight, lr=args.lr, max_epochs=args.epochs,
                         patience=args.patience, val_fraction=args.val_fraction, seed=args.seed)
    console.print(f"Training a {config.kind} head (k={config.k}) on {len(labels)} images "
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
    backbone = _load_backbone(model, pretrained)
    with console.status("Exporting the fused ONNX graph and measuring parity…"):
        try:
            manifest = export_detector(args.head, args.out, backbone=backbone, parity_images=args.parity_images,
                                       threshold=args.threshold, overwrite=args.overwrite)
        except ValueError as e:
            raise ModelError(str(e)) from e
    fid = manifest["models"]["fp32"]["fidelity"]["pytorch_parity"]
    console.print(f"FP32 graph written to {args.out}: max |Δlogit| ONNX Runtime vs PyTorch = "
                  f"{fid['max_abs_logit_diff']:.2e} on {fid['inputs']} inputs", highlight=False)
    if args.calibration:
        manifest = _add_variants(args)
        console.print(fidelity_table(manifest["models"]))
    console.print(f"artifact {args.out}: " + ", ".join(
        f"{p} ({e['size_bytes'] / 1e6:.1f} MB)" for p, e in manifest["models"].items()), highlight=False)
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
        det = Detector.load(model_dir, precision=args.precision, backend=args.backend, threshold=args.threshold)
    except (ManifestError, ValueError) as e:
        raise ModelError(str(e)) from e
    progress = False if args.no_progress else None
    summary = scan(args.paths, det, out=args.out, batch_size=args.batch_size, workers=args.workers,
                   max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=progress)
    console.print(
        f"{summary.files} files: {summary.scored} scored ({summary.synthetic} synthetic at threshold "
        f"{det.threshold:g}), {summary.errors} errors; {summary.images_per_second:.1f} images/s on {det.backend}"
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
    out.print(f"head: {h['kind']} k={h['k']} from {h.get('source', '?')}")
    out.print(f"preprocessing: resize {pre['resize_mode']} side→{pre['size']} {pre['interpolation']}, crop {pre.get('crop')}, "
              f"mean {pre['mean']}, std {pre['std']}, {pre['colour_order']}")
    out.print(f"threshold: {m['threshold']} on {m.get('threshold_on', 'p_synthetic')}")
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
    out.print("libraries: " + ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items()))
    return EXIT_OK


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
