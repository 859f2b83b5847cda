"""`sid-edge serve`: the detection service (FastAPI on uvicorn) with cross-request batching, health, metrics and
limits. Needs the `serve` extra; torch-free."""

from __future__ import annotations

from sid_edge.cli.common import BACKEND_CHOICES, EXIT_OK, ModelError, UsageError, console

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    s = sub.add_parser(
        "serve", help="serve a detector over HTTP (POST /v1/detect) with cross-request batching",
        description="An HTTP service for moderation pipelines: POST /v1/detect (one image as the raw body, or several "
                    "as multipart form files) answers p_synthetic, logit, prediction and top concepts per image. "
                    "Concurrent requests share inference batches (--max-batch, --max-wait-ms). GET /v1/model, "
                    "/healthz, /readyz, /metrics (Prometheus); OpenAPI at /docs. Listens on 127.0.0.1 unless told. "
                    "SIGTERM drains the queue, then exits. Needs: pip install 'sid-edge[serve]'.")
    s.add_argument("--model", required=True, metavar="DIR", help="detector artifact (from `sid-edge export`)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the service to the network (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    s.add_argument("--precision", default=None, metavar="P",
                   help="model variant: fp32, fp16 or int8 (default: the artifact's default)")
    s.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend; auto takes the fastest available (default: %(default)s)")
    s.add_argument("--allow-fallback", action="store_true",
                   help="if the requested backend cannot run here, use ONNX Runtime instead of stopping")
    s.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold on p_synthetic")
    s.add_argument("--top-concepts", type=int, default=3, metavar="N",
                   help="top concepts per image when the artifact has a vocabulary; 0 for none (default: %(default)s)")
    s.add_argument("--no-provenance", action="store_true",
                   help="no `provenance` field in the results (by default each image's C2PA, IPTC digital source type "
                        "and generator-metadata signals are read from its bytes, needs the provenance extra)")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    g = s.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="most images per inference batch, gathered across requests; 1 turns batching off "
                        "(default: %(default)s)")
    g.add_argument("--max-wait-ms", type=float, default=5.0, metavar="T",
                   help="longest wait for a batch to fill after its first image, in ms (default: %(default)s)")
    g.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="image decoding threads (default: one per core, at least 2)")
    lim = s.add_argument_group("limits")
    lim.add_argument("--max-queue", type=int, default=256, metavar="N",
                     help="most images admitted at once; beyond it requests get 503 + Retry-After (default: %(default)s)")
    lim.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB",
                     help="largest request body in MiB; 413 above (default: %(default)s)")
    lim.add_argument("--max-images", type=int, default=64, metavar="N",
                     help="most images in one multipart request; 413 above (default: %(default)s)")
    lim.add_argument("--max-pixels", type=int, default=None, metavar="N",
                     help="refuse images whose header declares more pixels (422; default: Pillow's 89478485)")
    lim.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                     help="answer within this many seconds or give 504 (default: %(default)s)")
    lim.add_argument("--api-key-file", default=None, metavar="FILE",
                     help="require `Authorization: Bearer <key>` on /v1/* and /metrics, the key being this file's "
                          "content (401 without it)")


def _positive(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{name} {value}: must be >= {minimum}")


def run(args) -> int:
    import logging
    import sys

    try:
        from sid_edge.service.app import ServiceSettings, create_app
        from sid_edge.service.core import BatchingDetector
        from sid_edge.service.limits import ImageLimits
        from sid_edge.service.server import serve
    except ImportError as e:
        raise UsageError(f"`sid-edge serve` needs the serve extra ({e.name} is missing): "
                         "pip install 'sid-edge[serve]'") from e
    from sid_edge.artifact.manifest import ManifestError
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.images import DEFAULT_MAX_PIXELS

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be in 0..65535")
    for name in ("max_batch", "max_queue", "max_images", "max_pixels", "decode_workers", "threads"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--top-concepts", args.top_concepts, 0)
    if not 0 <= args.max_wait_ms <= 60_000:
        raise UsageError(f"--max-wait-ms {args.max_wait_ms}: must be in 0..60000")
    if not args.timeout_s > 0:
        raise UsageError(f"--timeout-s {args.timeout_s}: must be > 0")
    if not args.max_body_mb > 0:
        raise UsageError(f"--max-body-mb {args.max_body_mb}: must be > 0")
    if args.max_queue < args.max_batch:
        raise UsageError(f"--max-queue {args.max_queue}: must be >= --max-batch {args.max_batch}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1] (it applies to p_synthetic)")
    api_key = None
    if args.api_key_file:
        try:
            with open(args.api_key_file, "rb") as f:
                raw = f.read(4097)
        except OSError as e:
            raise UsageError(f"--api-key-file {args.api_key_file}: cannot read it ({e.strerror or e})") from e
        try:
            api_key = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise UsageError(f"--api-key-file {args.api_key_file}: the key must be ASCII text") from None
        if not api_key or len(raw) > 4096 or any(c.isspace() for c in api_key):
            raise UsageError(f"--api-key-file {args.api_key_file}: expected one key of 1..4096 characters without "
                             "spaces")

    try:
        det = Detector.load(args.model, precision=args.precision, backend=args.backend, threshold=args.threshold,
                            threads=args.threads, allow_fallback=args.allow_fallback)
    except (ManifestError, ValueError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    det.top_concepts = args.top_concepts
    if not args.no_provenance:
        try:
            from sid_edge.provenance import attach

            reader = attach(det)
            if reader.unavailable:
                console.print("provenance: not checked: " + "; ".join(f"{k} ({r})" for k, r in reader.unavailable.items()),
                              highlight=False, markup=False)
        except ImportError as e:
            console.print(f"provenance: off ({e}); pip install 'sid-edge[provenance]'", highlight=False, markup=False)
    limits = ImageLimits(max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    core = BatchingDetector(det, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                            decode_workers=args.decode_workers, limits=limits)
    settings = ServiceSettings(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_images=args.max_images,
                               timeout_s=args.timeout_s, api_key=api_key, drain_timeout_s=args.timeout_s + 5)
    app = create_app(core, settings)

    access = logging.getLogger("sid_edge.service.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False

    if args.host not in _LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {args.host}: reachable from the network"
                      + ("" if api_key else " without --api-key-file"), highlight=False)
    console.print(f"backend: {det.backend_choice.describe()}", highlight=False)
    console.print(f"serving {args.model} on http://{_url_host(args.host)}:{args.port} (POST /v1/detect, docs at /docs; "
                  f"batches of up to {args.max_batch} within {args.max_wait_ms:g} ms); SIGTERM or Ctrl-C drains and "
                  "stops", highlight=False, soft_wrap=True)
    try:
        serve(app, core, host=args.host, port=args.port, graceful_timeout_s=args.timeout_s + 5,
              log_level="info" if args.verbose else "warning")
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from e
    return EXIT_OK


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
