"""Build TensorRT engines from the artifact's ONNX graphs and record them in its manifest (no torch needed).

The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): every tensor keeps the type the
ONNX graph gives it, so an FP16 graph (ModelOpt AutoCast) builds an FP16 engine and a Q/DQ graph (ModelOpt INT8
PTQ) an INT8 engine, with no precision builder flags or calibrators. That is the only mode TensorRT 11 has (the
flag is accepted and ignored there) and the opt-in mode of TensorRT 10.x (JetPack 6), so the same code builds on
both. Source: NVIDIA TensorRT 10.x -> 11.x migration guide, "Strongly Typed Networks Are Now Required".

Per build: one optimization profile over the batch dimension, an optional workspace limit, the builder
optimization level (0..5, TensorRT's default 3), a timing cache kept beside the artifact (one per GPU architecture
and TensorRT release) and reused by later builds, and a progress display fed by TensorRT's ``IProgressMonitor``.

    >>> from sid_edge.export.engine import build_engine
    >>> entry = build_engine("my-detector", "fp16", profile=BatchProfile(1, 8, 64))
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from sid_edge.artifact.files import write_bytes_atomic
from sid_edge.runtime.tensorrt_engines import (
    BatchProfile,
    EngineError,
    cuda_check,
    detect_environment,
    engine_file_name,
    import_cudart,
    import_tensorrt,
    timing_cache_name,
    trt_logger,
)
from sid_edge.artifact.manifest import ManifestError, add_engine, artifact_path, file_entry, model_entry, read_manifest, verify_files

log = logging.getLogger(__name__)

#: TensorRT's own default; 0 builds fastest, 5 searches longest.
DEFAULT_OPTIMIZATION_LEVEL = 3


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network: the STRONGLY_TYPED bit where the enum has it, else 0 (strong
    typing is then the only mode).

    The bit is taken from the enum, never hard-coded: ``STRONGLY_TYPED`` is 1 in TensorRT 10.x (0 being the
    deprecated EXPLICIT_BATCH), where it is needed, and 0 in TensorRT 11.x, where it is deprecated and ignored and
    1 means PREFER_JIT_PYTHON_PLUGINS. Source: NvInfer.h ``NetworkDefinitionCreationFlag`` of both releases."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _progress_monitor(trt):
    """An ``IProgressMonitor`` drawing TensorRT's build phases as rich progress bars (on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sid_edge.runtime.progress import console

    class RichProgressMonitor(trt.IProgressMonitor):
        # TensorRT calls these from its own threads; rich's Progress serialises updates with its own lock.
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console, transient=True)
            self.tasks: dict[str, int] = {}
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            self.tasks[phase_name] = self.progress.add_task("  " * depth + phase_name, total=max(int(num_steps), 1))

        def step_complete(self, phase_name, step):
            # TensorRT reads anything but True here -- False, None, an exception -- as "cancel the build".
            try:
                task = self.tasks.get(phase_name)
                if task is not None:
                    self.progress.update(task, completed=int(step) + 1)
            except Exception:  # noqa: BLE001 - a drawing problem must not cancel the build
                log.debug("progress display failed", exc_info=True)
            return True

        def phase_finish(self, phase_name):
            task = self.tasks.pop(phase_name, None)
            self.depth.pop(phase_name, None)
            if task is not None:
                self.progress.remove_task(task)

    return RichProgressMonitor()


def _input_shape(network, index: int) -> list | str:
    try:
        return list(network.get_input(index).shape)
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


def _attach_timing_cache(config, cache_path: Path) -> None:
    """Attach the timing cache saved at ``cache_path`` to ``config``, or a fresh one.

    ``IBuilderConfig.create_timing_cache`` returns None for bytes it cannot read (a truncated or foreign file) and
    ``set_timing_cache`` returns False for a cache from another TensorRT build or device (``ignore_mismatch`` is
    False: a cache timed on another GPU would mislead the tactic choice); both fall back to a fresh cache, since
    the cache only saves time. A fresh cache that TensorRT still refuses raises EngineError."""
    cached = b""
    if cache_path.is_file():
        try:
            cached = cache_path.read_bytes()
        except OSError as e:
            log.warning("cannot read the timing cache %s (%s); starting a new one", cache_path.name, e)
    if cached:
        cache = config.create_timing_cache(cached)
        if cache is not None and config.set_timing_cache(cache, False):
            return
        why = "is not a timing cache TensorRT can read" if cache is None else "does not match this TensorRT/GPU"
        log.warning("%s %s; starting a new timing cache", cache_path.name, why)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise EngineError("TensorRT could not create an empty timing cache (see the TensorRT errors above); "
                          "build with --no-timing-cache")


def _write_atomic(path: Path, data) -> None:
    write_bytes_atomic(path, memoryview(data))  # TensorRT returns an IHostMemory (buffer protocol)


def build_engine(
    artifact_dir: str | os.PathLike,
    precision: str = "fp32",
    *,
    profile: BatchProfile = BatchProfile(),
    workspace_bytes: int | None = None,
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
    timing_cache: bool = True,
    progress: bool | None = None,
    device: int = 0,
) -> dict:
    """Build a TensorRT engine from ``models[precision]`` of the artifact, write it beside the ONNX file and record
    it in ``manifest["engines"]`` (replacing an engine of the same precision, GPU architecture and TensorRT
    release). Returns the engine entry (see :mod:`sid_edge.runtime.tensorrt_engines` for its fields).

    Args:
        artifact_dir: a detector artifact (``sid-edge export``).
        precision: which ONNX graph to build from ("fp32", "fp16", "int8", ... as the manifest lists).
        profile: batch sizes the engine accepts (min..max) and is tuned for (opt).
        workspace_bytes: cap on TensorRT's scratch memory pool (None: TensorRT's default, the device's memory).
        optimization_level: builder optimization level 0..5.
        timing_cache: read and update ``timing.sm<CC>.trt<x.y.z>.cache`` in the artifact, so rebuilds on the same
            kind of GPU skip the kernel timing already done.
        progress: show TensorRT's build phases as progress bars (default: when stderr is a terminal).
        device: CUDA device ordinal to build for.

    Raises:
        EngineError: TensorRT, cuda-python or a GPU missing; the ONNX parser or the builder failed (message
            carries TensorRT's errors). ManifestError: not an artifact, no such precision, or the ONNX file is
            missing or altered. ValueError: ``optimization_level`` outside 0..5 or a workspace below 1 byte.
    """
    if not 0 <= optimization_level <= 5:
        raise ValueError(f"builder optimization level {optimization_level}: must be between 0 and 5")
    if workspace_bytes is not None and workspace_bytes < 1:
        raise ValueError(f"workspace limit {workspace_bytes} bytes: must be positive")
    d = Path(artifact_dir)
    manifest = read_manifest(d)
    model = model_entry(manifest, precision)
    verify_files(d, model)
    env = detect_environment(device)
    if not env.has_tensorrt or not env.has_gpu:
        raise EngineError("cannot build a TensorRT engine on this machine: " + "; ".join(env.problems))
    trt = import_tensorrt()
    cuda_check(import_cudart().cudaSetDevice(device), f"selecting CUDA device {device}")

    onnx_path = artifact_path(d, model.file)
    input_name = manifest.input.name
    image_size = manifest.preprocessing.size
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)): it resolves external-data files next to the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors or 'no detail given'}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [input_name]:
        raise ManifestError(f"{onnx_path}: graph inputs {inputs} do not match the manifest ({input_name})")

    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.builder_optimization_level = int(optimization_level)
    opt_profile = builder.create_optimization_profile()
    shapes = profile.shapes(image_size)
    try:
        # The Python binding raises RuntimeError ("Shape provided for min is inconsistent with other shapes.")
        # where the C++ setDimensions returns false; its docstring says ValueError.
        opt_profile.set_shape(input_name, *shapes)
    except (RuntimeError, ValueError, TypeError) as e:
        raise EngineError(f"{onnx_path}: TensorRT refused the optimization profile min/opt/max {list(shapes)} for "
                          f"{input_name!r}: {e}") from e
    if config.add_optimization_profile(opt_profile) < 0:  # -1: the profile is not valid for this network
        raise EngineError(f"{onnx_path}: TensorRT refused the optimization profile min/opt/max {list(shapes)} for "
                          f"{input_name!r} (see the TensorRT errors above; the graph's input "
                          f"{_input_shape(network, 0)} must take a dynamic batch and these image sizes)")

    cache_path = d / timing_cache_name(env)
    if timing_cache:
        _attach_timing_cache(config, cache_path)
    show = sys.stderr.isatty() if progress is None else progress
    monitor = _progress_monitor(trt) if show and hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config.progress_monitor = monitor

    log.info("building a %s TensorRT engine from %s on %s", precision, onnx_path.name, env.describe())
    start = time.perf_counter()
    if monitor is not None:
        with monitor.progress:
            serialized = builder.build_serialized_network(network, config)
    else:
        serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT errors above); "
                          "a smaller --max-batch or a larger --workspace may help")
    if memoryview(serialized).nbytes == 0:  # IHostMemory (no len()) of size 0: a failed build, never written
        raise EngineError(f"TensorRT returned an empty engine for {onnx_path} (see the TensorRT errors above)")

    name = engine_file_name(precision, env)
    _write_atomic(d / name, serialized)
    if timing_cache:
        _write_atomic(cache_path, config.get_timing_cache().serialize())
    entry = {
        "precision": precision,
        **file_entry(d, name),
        "source_model": model.file,
        "source_sha256": model.sha256,
        "strongly_typed": True,
        "profile": {"input": input_name, **profile.to_dict()},
        "tensorrt_version": env.tensorrt_version,
        "gpu_name": env.gpu_name,
        "compute_capability": env.compute_capability,
        "builder_optimization_level": int(optimization_level),
        "workspace_bytes": workspace_bytes,
        "timing_cache": cache_path.name if timing_cache else None,
        "build_seconds": round(seconds, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    add_engine(d, entry)  # re-reads the manifest: another build may have finished meanwhile
    return entry


def build_engines(artifact_dir: str | os.PathLike, precisions: Sequence[str] | None = None, **kwargs) -> list[dict]:
    """:func:`build_engine` for each of ``precisions`` (default: every model the artifact has, in manifest order).
    Returns the engine entries. Raises as build_engine; ManifestError for a precision the artifact lacks, before
    anything is built."""
    manifest = read_manifest(artifact_dir)
    wanted = list(precisions) if precisions else list(manifest.models)
    for p in wanted:
        model_entry(manifest, p)
    return [build_engine(artifact_dir, p, **kwargs) for p in wanted]
