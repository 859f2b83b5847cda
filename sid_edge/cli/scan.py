"""`sid-edge scan`: score every image and video frame under the given files, folders and live sources."""

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
    s = sub.add_parser("scan", help="score every image and video frame under the given files/folders/streams",
                       description="Recursively discover images and videos and score them in batches. One row per "
                                   "image and per sampled video frame: path, [frame, time_s,] p_synthetic, prediction, "
                                   "error (+ top_concepts, provenance). Bad files get a reason in `error`; the scan goes "
                                   "on. PATH may also be a live source: rtsp://..., http(s)://... (MJPEG, HLS) or camera:N.")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--model", default=None, metavar="DIR", help="detector artifact (default: the default detector, built once and cached)")
    s.add_argument("--out", default=None, metavar="FILE", help="results.csv or results.jsonl (default: CSV on stdout)")
    s.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    s.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold on p_synthetic")
    s.add_argument("--precision", default=None, metavar="P", type=str.lower, choices=(*PRECISIONS, "bf16"),
                   help="model variant in the artifact: fp32, fp16 or int8, or bf16 (OpenVINO's BF16 hint on the fp32 "
                        "graph) (default: the artifact's default, fp32 when present)")
    s.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend: auto takes the fastest available (a TensorRT engine that fits this GPU, "
                        "else ONNX Runtime CUDA, else OpenVINO where installed and faster for the precision (int8, "
                        "bf16), else ONNX Runtime CPU) and says which (default: %(default)s)")
    s.add_argument("--device", default=None, metavar="D",
                   help="OpenVINO device for --backend openvino/auto: CPU, GPU, NPU or AUTO (default: CPU)")
    s.add_argument("--allow-fallback", action="store_true",
                   help="if the requested backend cannot run here, use ONNX Runtime instead of stopping")
    s.add_argument("--workers", type=int, default=None, help="decoder threads (video: preprocessing threads) (default: one per core, at least 2)")
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
    r = s.add_argument_group("how far to trust a verdict")
    r.add_argument("--no-band", action="store_true",
                   help="ignore the artifact's uncertain band: only 'synthetic'/'real' (by default p_synthetic inside "
                        "the band written by `evaluate --perturb … --write-band` gives 'uncertain')")
    r.add_argument("--stability", type=int, default=0, metavar="N",
                   help="also score N perturbed versions of each image (jpeg:75 resize:0.5 webp:80 crop:0.9 jpeg:50 "
                        "blur:1.0 thumbnail:256 screenshot gray resize:0.25, the first N) and add stability_spread "
                        "(max - min p_synthetic) and stability_flips (versions whose verdict differs); N+1 times the "
                        "work (default: 0, off)")
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
    v = s.add_argument_group("video and live sources")
    sampling = v.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, default=None, metavar="F",
                          help="sample F frames per second of presentation time, evenly even for variable frame rate "
                               "(default: 1)")
    sampling.add_argument("--every", type=int, default=None, metavar="N", help="sample every N-th decoded frame (1: all)")
    v.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop each video/stream after S seconds (presentation time; wall time for live sources)")
    v.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each video/stream after N sampled frames")
    v.add_argument("--summary", default=None, metavar="FILE",
                   help="per-video summary (frames scored, max/mean p_synthetic, flagged fraction, first flagged "
                        "time) as .csv or .jsonl")
    v.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="live sources: open/read timeout in seconds (default: %(default)s)")
    v.add_argument("--retries", type=int, default=3, metavar="N",
                   help="live sources: reconnects after a stall or drop, with backoff (default: %(default)s)")



def run(args) -> int:
    if args.ray is not None:
        from sid_edge.cli import scan_ray

        return scan_ray.run(args)
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, Discovery
    from sid_edge.artifact.manifest import ManifestError
    from sid_edge.runtime.scan import OutputError, check_output, scan

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.top_concepts < 0:
        raise UsageError(f"--top-concepts {args.top_concepts}: must be >= 0")
    if args.stability < 0:
        raise UsageError(f"--stability {args.stability}: must be >= 0")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UsageError(f"--max-pixels {args.max_pixels}: must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1] (it applies to p_synthetic)")
    from sid_edge.streams.sources import discover_media, is_live_source

    _check_video_args(args)
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink() and not is_live_source(p)]
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
                            allow_fallback=args.allow_fallback, device=args.device, use_band=not args.no_band)
    except (ManifestError, ValueError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    console.print(f"backend: {escape(det.backend_choice.summary())}", highlight=False)
    log.info("backend: %s", det.backend_choice.describe())
    if det.band is not None:
        console.print(f"uncertain band: p_synthetic in [{det.band[0]:.6g}, {det.band[1]:.6g}] reads 'uncertain' "
                      f"(--no-band: off)", highlight=False)
    if args.stability:
        from sid_edge.robustness import attach_stability

        try:
            attach_stability(det, args.stability)
        except ValueError as e:
            det.close()
            raise UsageError(str(e)) from e
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
    media = discover_media(args.paths, all_files=args.all_files)
    if args.summary is not None or media.has_video:
        if args.resume:
            raise UsageError("--resume applies to image scans; a scan with videos or live sources starts afresh")
        return _scan_media(args, det, progress, media)
    try:
        with det:
            # The folders were walked once already (for videos): no video among them, so these are the image files.
            found = Discovery([it.source for it in media.inputs], media.skipped, media.unreadable)
            summary = scan(args.paths, det, out=args.out, batch_size=args.batch_size, workers=args.workers,
                           max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=progress,
                           top_concepts=args.top_concepts, resume=args.resume, all_files=args.all_files, found=found)
    except OutputError as e:
        raise UsageError(str(e)) from None
    for folder in summary.unreadable_folders:
        console.print(f"[yellow]could not list[/] {escape(folder)} (its files were not scanned)", highlight=False)
    skipped = sum(summary.skipped.values())
    console.print(
        f"{count(summary.files, 'row')}: {summary.scored} scored ({summary.synthetic} synthetic at threshold "
        f"{det.threshold:g}" + (f", {summary.uncertain} uncertain" if det.band is not None else "")
        + f"), {count(summary.errors, 'error')}"
        + (f", {summary.kept} kept from the earlier run" if summary.kept else "")
        + (f"; skipped {count(skipped, 'file')} that {'is not an image' if skipped == 1 else 'are not images'} ("
           + ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in sorted(summary.skipped.items(), key=lambda kv: -kv[1]))
           + "; --all-files scores them too)" if skipped else "")
        + f"; {summary.images_per_second:.1f} images/s on {det.backend_name}"
        + (f"; results in {args.out}" if args.out else ""),
        highlight=False,
    )
    return EXIT_OK


def _check_video_args(args) -> None:
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps {args.fps}: must be > 0")
    if args.every is not None and args.every < 1:
        raise UsageError(f"--every {args.every}: must be >= 1")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"--duration {args.duration}: must be > 0 seconds")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames {args.max_frames}: must be >= 1")
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout}: must be > 0 seconds")
    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: must be >= 0")


def _scan_media(args, det, progress, media) -> int:
    """Scans that include videos or live sources (sid_edge.streams): rows with frame/time_s, per-video summaries."""
    import dataclasses
    import os

    import cv2

    from sid_edge.runtime.images import DEFAULT_MAX_PIXELS
    from sid_edge.runtime.scan import OutputError
    from sid_edge.streams.scan import scan_media

    # FFmpeg's and OpenCV's own log lines would interleave with the scan's output; errors arrive as rows instead.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        with det:
            s = scan_media(args.paths, det, out=args.out, summary=args.summary, batch_size=args.batch_size,
                           workers=args.workers, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=progress,
                           top_concepts=args.top_concepts, every=args.every, fps=args.fps, duration_s=args.duration,
                           max_frames=args.max_frames, timeout_s=args.timeout, retries=args.retries, found=media)
    except OutputError as e:
        raise UsageError(str(e)) from None
    for folder in s.unreadable_folders:
        console.print(f"could not list {folder} (its files were not scanned)", highlight=False, markup=False)
    from sid_edge.runtime.scan import path_text

    for v in s.videos_summary[:20]:
        v = dataclasses.replace(v, path=path_text(v.path))  # a non-UTF-8 name as the rows show it
        if v.frames_scored:
            first = f", first flagged at {v.first_flagged_time_s:.3f} s (frame {v.first_flagged_frame})" if v.flagged else ""
            console.print(f"{v.path}: {count(v.frames_scored, 'frame')} scored, max p_synthetic {v.max_p_synthetic:.3f}, "
                          f"mean {v.mean_p_synthetic:.3f}, {v.flagged_fraction:.1%} flagged{first}"
                          + (f"; {count(v.errors, 'error')}" if v.errors else ""), highlight=False, markup=False)
        else:
            console.print(f"{v.path}: no frames scored ({v.error})", highlight=False, markup=False)
    console.print(
        f"{count(s.images, 'image')}, {count(s.videos, 'video')}: {count(s.rows, 'row')}, {s.scored} scored "
        f"({s.frames} video frames; {s.synthetic} synthetic at threshold {det.threshold:g}), "
        f"{count(s.errors, 'error')}"
        + (f"; skipped {count(sum(s.skipped.values()), 'file')} that are neither images nor videos" if s.skipped else "")
        + f"; {s.rows_per_second:.1f} rows/s on {det.backend_name}"
        + (f"; results in {args.out}" if args.out else "") + (f"; summary in {args.summary}" if args.summary else ""),
        highlight=False, markup=False,
    )
    return EXIT_OK
