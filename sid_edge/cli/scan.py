"""`sid-edge scan`: score every image under the given files and folders."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.markup import escape

from sid_edge.cli.common import (
    PRECISIONS,
    BACKEND_CHOICES,
    EXIT_OK,
    ModelError,
    UsageError,
    console,
    count,
    default_model_dir,
)



log = logging.getLogger(__name__)

def add_parser(sub) -> None:
    s = sub.add_parser("scan", help="score every image under the given files/folders",
                       description="Recursively discover images and score them in batches. One row per file: path, "
                                   "p_synthetic, prediction, error (+ top_concepts, provenance). Bad files get a reason in `error`; the scan goes on.")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--model", default=None, metavar="DIR", help="detector artifact (default: the default detector, built once and cached)")
    s.add_argument("--out", default=None, metavar="FILE", help="results.csv or results.jsonl (default: CSV on stdout)")
    s.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    s.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold on p_synthetic")
    s.add_argument("--precision", default=None, metavar="P", type=str.lower, choices=PRECISIONS,
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
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan to the same --out: keep the rows of files unchanged since (size "
                        "and modification time), score the rest; no file gets two rows")
    s.add_argument("--all-files", action="store_true",
                   help="give every file found in a folder a row (by default only image extensions are read and the "
                        "others are counted as skipped)")
    g = s.add_argument_group("provenance (evidence beside the score; never changes p_synthetic)")
    g.add_argument("--no-provenance", action="store_true",
                   help="no `provenance` field (by default each row lists C2PA, IPTC digital source type and generator "
                        "metadata signals read from the file's metadata, without decoding pixels)")
    g.add_argument("--c2pa-trust", default=None, metavar="FILE",
                   help="PEM file of C2PA trust anchors: signatures chaining to them read 'trusted' (default: none, "
                        "valid signatures read 'valid-untrusted')")
    g.add_argument("--watermark", action="store_true",
                   help="also decode Stable Diffusion's invisible DWT-DCT watermark (decodes each image a second time)")
    from sid_edge.cli.scan_ray import add_ray_args

    add_ray_args(s)



def run(args) -> int:
    if args.ray is not None:
        from sid_edge.cli import scan_ray

        return scan_ray.run(args)
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.images import DEFAULT_MAX_PIXELS
    from sid_edge.artifact.manifest import ManifestError
    from sid_edge.runtime.scan import OutputError, check_output, scan

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.top_concepts < 0:
        raise UsageError(f"--top-concepts {args.top_concepts}: must be >= 0")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1] (it applies to p_synthetic)")
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    if args.out is not None:
        try:
            check_output(args.out, [])  # a folder, or below a file: stop before loading the model
        except OutputError as e:
            raise UsageError(str(e)) from None
    if args.c2pa_trust is not None and not Path(args.c2pa_trust).is_file():
        raise UsageError(f"--c2pa-trust {args.c2pa_trust}: no such file")
    model_dir = args.model if args.model is not None else default_model_dir()
    try:
        det = Detector.load(model_dir, precision=args.precision, backend=args.backend, threshold=args.threshold,
                            allow_fallback=args.allow_fallback)
    except (ManifestError, ValueError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    console.print(f"backend: {escape(det.backend_choice.summary())}", highlight=False)
    log.info("backend: %s", det.backend_choice.describe())
    if not args.no_provenance:
        from sid_edge.provenance import attach

        try:
            reader = attach(det, c2pa_trust=args.c2pa_trust, check_watermark=args.watermark)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if reader.unavailable:
            console.print("provenance: not checked: " + escape("; ".join(f"{k} ({r})" for k, r in reader.unavailable.items())),
                          highlight=False)
    elif args.c2pa_trust or args.watermark:
        raise UsageError("--c2pa-trust and --watermark need provenance; drop --no-provenance")
    progress = False if args.no_progress else None
    try:
        with det:
            summary = scan(args.paths, det, out=args.out, batch_size=args.batch_size, workers=args.workers,
                           max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=progress,
                           top_concepts=args.top_concepts, resume=args.resume, all_files=args.all_files)
    except OutputError as e:
        raise UsageError(str(e)) from None
    for folder in summary.unreadable_folders:
        console.print(f"[yellow]could not list[/] {escape(folder)} (its files were not scanned)", highlight=False)
    skipped = sum(summary.skipped.values())
    console.print(
        f"{count(summary.files, 'row')}: {summary.scored} scored ({summary.synthetic} synthetic at threshold "
        f"{det.threshold:g}), {count(summary.errors, 'error')}"
        + (f", {summary.kept} kept from the earlier run" if summary.kept else "")
        + (f"; skipped {count(skipped, 'file')} that are not images ("
           + ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in sorted(summary.skipped.items(), key=lambda kv: -kv[1]))
           + "; --all-files scores them too)" if skipped else "")
        + f"; {summary.images_per_second:.1f} images/s on {det.backend_name}"
        + (f"; results in {args.out}" if args.out else ""),
        highlight=False,
    )
    return EXIT_OK
