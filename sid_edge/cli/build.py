"""`sid-edge build`: build TensorRT engines for an artifact (also used by `export --engine`)."""

from __future__ import annotations


from sid_edge.cli.common import (
    PRECISIONS,
    EXIT_OK,
    ModelError,
    UsageError,
    add_engine_args,
    console,
)



def add_parser(sub) -> None:
    b = sub.add_parser("build", help="build TensorRT engines for an existing artifact",
                       description="Build one TensorRT engine per precision from the artifact's ONNX graphs (strongly "
                                   "typed: FP16/INT8 come from the FP16/Q-DQ graphs), on this machine's GPU, and record "
                                   "them in the manifest. Needs TensorRT >= 10 and cuda-python for the driver's CUDA: "
                                   "pip install 'sid-edge[tensorrt-cu12]' (CUDA 12 driver) or "
                                   "'sid-edge[tensorrt-cu13]' (CUDA 13); Jetson: 'sid-edge[tensorrt-jetson]' "
                                   "beside JetPack's TensorRT.")
    b.add_argument("model", metavar="DIR", help="detector artifact")
    b.add_argument("--precision", action="append", default=None, metavar="P", type=str.lower, choices=PRECISIONS,
                   help="precision to build (repeatable; default: every model in the artifact)")
    add_engine_args(b)



def engine_options(args) -> dict:
    """Validated keyword arguments for sid_edge.export.engine.build_engine (UsageError on bad values)."""
    from sid_edge.runtime.tensorrt_engines import BatchProfile

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


def machine_line() -> str:
    """"this machine: <GPU>, TensorRT x (CUDA n wheels), cuda-bindings y, driver supports CUDA z" plus what to
    install when the wheels need a newer CUDA than the driver (also used by `sid-edge info`)."""
    from sid_edge.runtime.tensorrt_engines import detect_environment

    env = detect_environment()
    gpu = f"{env.gpu_name} (compute capability {env.compute_capability})" if env.has_gpu else "no usable CUDA GPU"
    advice = env.install_advice()
    return f"this machine: {gpu}; {env.describe_versions()}" + (f"; {advice}" if advice else "")


def build_engines(model_dir, precisions, options: dict) -> None:
    from sid_edge.runtime.tensorrt_engines import EngineError
    from sid_edge.export.engine import build_engine
    from sid_edge.artifact.manifest import ManifestError, model_entry, read_manifest

    try:
        manifest = read_manifest(model_dir)
        wanted = precisions or list(manifest.models)
        for p in wanted:
            model_entry(manifest, p)
        console.print(machine_line(), highlight=False, markup=False)
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


def run(args) -> int:
    options = engine_options(args)
    build_engines(args.model, args.precision, options)
    return EXIT_OK
