"""`sid-edge export`: fuse CLIP + head (+ concepts) into one ONNX graph, with FP16/INT8 variants."""

from __future__ import annotations

from pathlib import Path

from sid_edge.cli.common import (
    require_extra,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    EXIT_OK,
    ModelError,
    PRECISIONS,
    UsageError,
    add_backbone_args,
    add_engine_args,
    check_dataset,
    console,
    load_backbone_or_fail,
)
from sid_edge.cli.build import build_engines, engine_options
from sid_edge.cli.info import fidelity_table



def add_parser(sub) -> None:
    e = sub.add_parser("export", help="fuse CLIP + head into one ONNX graph (a detector artifact), with FP16/INT8 variants",
                       description="Write DIR/manifest.json and DIR/model.<precision>.onnx, and measure ONNX Runtime vs "
                                   "PyTorch parity. FP16 (ModelOpt AutoCast) and INT8 (ModelOpt PTQ, explicit Q/DQ) "
                                   "variants are calibrated on --calibration DATA and measured against FP32 on held-out "
                                   "images (the fidelity report). DATA: parquet files or a folder of them (SynthCLIC "
                                   "layout: columns image, label, image_id, source; splits train/validation/test), a "
                                   "`datasets` save_to_disk folder, hf:OWNER/NAME, real/ + synthetic/ folders, or a CSV.")
    e.add_argument("--head", required=True, metavar="HEAD", help="head directory from `sid-edge train`, or a clip-cues .ckpt")
    e.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")
    add_backbone_args(e, default_from_head=True)
    e.add_argument("--threshold", type=float, default=None, help="decision threshold on p_synthetic (default: the head's, 0.5)")
    e.add_argument("--parity-images", nargs="*", default=[], metavar="IMG", help="images to include in the parity check")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    e.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS, metavar="P", type=str.lower,
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
                   help="a concept model (from `train --head-kind concepts`, or a clip-cues cm_*.ckpt) whose concept_logit "
                        "and concept_contributions join the graph next to --head's score")
    e.add_argument("--prompt-template", default="{}", metavar="TEMPLATE",
                   help="str.format template applied to every prompt (default: '{}', prompts verbatim)")
    e.add_argument("--preprocessing", default="head", choices=["head", "clip-cues", "hf-clip", "open_clip"],
                   help="preprocessing pipeline the artifact serves (default: %(default)s = the one the head was trained "
                        "with: clip-cues' bilinear transform for the paper's orthogonal/linear heads, Hugging Face's "
                        "CLIPImageProcessor for its concept models, the recorded one for `sid-edge train` heads); "
                        "naming another overrides it, with a warning")
    e.add_argument("--engine", action="store_true",
                   help="also build a TensorRT engine for each precision in the artifact (needs TensorRT and an NVIDIA GPU)")
    add_engine_args(e)



def run(args) -> int:
    require_extra("train", "torch", "open_clip", "onnx")
    build_options = engine_options(args) if args.engine else None  # bad profile arguments stop before the export
    from sid_edge.export import export_detector
    from sid_edge.build.heads import load_head

    wants_variants = [p for p in args.precision if p != "fp32"]
    if wants_variants and not args.calibration:
        raise UsageError(f"--precision {' '.join(wants_variants)} needs --calibration DATA (images to calibrate on and "
                         f"to measure the variants against FP32)")
    for flag in ("calibration_size", "fidelity_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.calibration:
        check_dataset(args.calibration, args.calibration_split)
        check_dataset(args.fidelity_data or args.calibration, args.fidelity_split)
    _check_out(args)
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
    backbone = load_backbone_or_fail(model, pretrained)
    with console.status("Exporting the fused ONNX graph and measuring parity…"):
        try:
            manifest = export_detector(args.head, args.out, backbone=backbone, parity_images=args.parity_images,
                                       threshold=args.threshold, overwrite=args.overwrite, vocabulary=vocabulary,
                                       concept_model=args.concept_model, prompt_template=args.prompt_template,
                                       preprocessing=args.preprocessing)
        except ValueError as e:
            raise ModelError(str(e)) from e
        except OSError as e:  # the folder cannot be created or written (read-only place, /proc, a full disk)
            raise UsageError(f"--out {args.out}: cannot write the artifact there ({e.strerror or e})") from e
    console.print(f"preprocessing: {manifest.preprocessing.describe()}", highlight=False)
    fid = manifest.models["fp32"].fidelity.pytorch_parity
    console.print(f"FP32 graph written to {args.out}: max |Δlogit| ONNX Runtime vs PyTorch = "
                  f"{fid.max_abs_logit_diff:.2e} on {fid.inputs} inputs", highlight=False)
    if manifest.vocabulary:
        console.print(f"concept scores: {manifest.vocabulary.count} concepts from "
                      f"{manifest.vocabulary.source}" + (f"; concept model {manifest.concept_model.source}"
                                                         if manifest.concept_model else ""), highlight=False)
    if args.calibration:
        manifest = _add_variants(args)
        console.print(fidelity_table(manifest.models))
    console.print(f"artifact {args.out}: " + ", ".join(
        f"{p} ({e.size_bytes / 1e6:.1f} MB)" for p, e in manifest.models.items()), highlight=False)
    if build_options is not None:
        build_engines(args.out, None, build_options)
    return EXIT_OK


def _check_out(args) -> None:
    """--out must be a folder to create (or, with --overwrite, to replace) that holds none of the inputs: replacing
    it would otherwise delete the head being exported (``--head H --out H --overwrite``). UsageError (exit 2)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; name a folder for the artifact")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {args.out}: not empty; choose a new --out or pass --overwrite")
    target = out.resolve()
    inputs = [("--head", args.head), ("--concept-model", args.concept_model), ("--vocabulary", args.vocabulary),
              ("--calibration", args.calibration), ("--fidelity-data", args.fidelity_data)]
    inputs += [("--parity-images", p) for p in args.parity_images]
    for flag, value in inputs:
        if value is None or not Path(value).exists():
            continue
        p = Path(value).resolve()
        if p == target or target in p.parents:
            raise UsageError(f"--out {args.out}: holds {flag} {value}; writing the artifact there would destroy it")


def _add_variants(args) -> dict:
    from sid_edge.calibration.calibration_set import default_calibration_size
    from sid_edge.calibration.fidelity import default_fidelity_size
    from sid_edge.calibration.variants import add_precision_variants
    from sid_edge.artifact.manifest import ManifestError
    from sid_edge.runtime.progress import progress_tasks

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
