"""Inference backends behind the one :class:`~sid_edge.runtime.detector.Detector` interface (torch-free).

* ``tensorrt`` — a TensorRT engine from the artifact (:mod:`sid_edge.runtime.tensorrt_backend`; needs the ``tensorrt``
  extra and an NVIDIA GPU);
* ``cuda`` — ONNX Runtime with its CUDA execution provider (needs ``onnxruntime-gpu`` in place of ``onnxruntime``);
* ``openvino`` — the OpenVINO runtime on a CPU, Intel GPU or NPU (:mod:`sid_edge.runtime.openvino_backend`; needs
  the ``openvino`` extra); it also runs the ``bf16`` precision (BF16 inference hint on the FP32 graph);
* ``cpu`` — ONNX Runtime on the CPU (always there).

``auto`` takes the first available in that order — TensorRT engines are the fastest on NVIDIA GPUs, then ONNX
Runtime CUDA, then OpenVINO where it is installed and faster than ONNX Runtime for that precision
(:data:`OPENVINO_FASTER`), then ONNX Runtime on the CPU — and says which it chose and why it passed over the
others. An explicit backend that is unavailable is refused with the reason, unless the caller allows falling back
to ONNX Runtime.

ONNX Runtime's INT8 integer-GEMM kernel is chosen when the session is created, from the CPU's features and the
manifest's ``needs_exact_int8_accumulation`` (:func:`sid_edge.runtime.cpu_features.ort_int8_session_config`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sid_edge.runtime.cpu_features import ORT_X64_QUANT_PRECISION, CpuFeatures, needs_exact_int8_accumulation, ort_int8_session_config
from sid_edge.runtime.tensorrt_engines import EngineError, GpuEnvironment, detect_environment, engine_path, engines_for, select_engine
from sid_edge.artifact.manifest import EngineEntry, Manifest, ManifestError, ModelEntry, OrtOptions, artifact_path, model_entry, verify_files
from sid_edge.artifact.names import BACKEND_CHOICES, INPUT_NAME

log = logging.getLogger(__name__)

#: auto's preference, fastest first.
AUTO_ORDER = ("tensorrt", "cuda", "openvino", "cpu")
#: Where an explicit backend may fall back to when the caller allows it: ONNX Runtime, GPU first.
FALLBACKS = {"tensorrt": ("cuda", "cpu"), "cuda": ("cpu",), "openvino": ("cpu",), "cpu": ()}
#: Human names, also ``Detector.backend_name``.
BACKEND_NAMES = {"tensorrt": "tensorrt", "cuda": "onnxruntime-cuda", "openvino": "openvino", "cpu": "onnxruntime-cpu"}
#: Precisions where ``auto`` prefers OpenVINO over ONNX Runtime on the CPU, with the measurement behind it
#: (ViT-L-14-336, batch 8, 2 vCPUs of an AVX512-VNNI/BF16 AMD EPYC, ONNX Runtime 1.32, OpenVINO 2026.4; issue 16).
#: FP32 is not in it: OpenVINO was within 7 % of ONNX Runtime (1.13 vs 1.06 img/s), which stays the reference.
OPENVINO_FASTER = {
    "int8": "OpenVINO ran the INT8 Q/DQ graph 1.4x faster than ONNX Runtime (2.79 vs 2.02 img/s, ViT-L, 2 vCPUs)",
    "bf16": "only OpenVINO runs bf16 (BF16 inference hint on the FP32 graph)",
}
#: Precisions that exist only as an OpenVINO inference mode (no file of their own; they read this graph).
RUNTIME_ONLY_PRECISIONS = {"bf16": "fp32"}


class BackendUnavailable(ValueError):
    """The requested backend cannot run here (library, GPU or engine missing or incompatible). The message says
    why and what to do. A ValueError so callers that treat bad load arguments alike need no new clause."""


@runtime_checkable
class Backend(Protocol):
    """What the Detector needs from a backend.

    ``run(pixel_values float32 [B,3,S,S]) -> {output name: ndarray}`` with every output listed in the manifest
    (float32, first dimension B); ``name`` as in :data:`BACKEND_NAMES`; ``close()`` frees device memory.
    """

    name: str

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ ONNX Runtime
class OnnxRuntimeBackend:
    """ONNX Runtime session on ``device`` "cpu" or "cuda" over one ONNX file of the artifact.

    Raises:
        BackendUnavailable: "cuda" asked but this ONNX Runtime has no CUDA provider, or the provider failed to
            start (ONNX Runtime then silently runs on the CPU; we refuse instead of mislabelling the backend).
        ManifestError: ONNX Runtime cannot load the file, or its inputs/outputs differ from the manifest.
    """

    def __init__(self, model_path: str | os.PathLike, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 settings: OrtOptions | None = None, exact_int8: bool = False, cpu: CpuFeatures | None = None):
        import onnxruntime as ort

        if device not in ("cpu", "cuda"):
            raise ValueError(f"ONNX Runtime device {device!r}: expected 'cpu' or 'cuda'")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            reason = ort_cuda_problem(ort.get_available_providers())
            if reason:
                raise BackendUnavailable(f"backend 'cuda': {reason}")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ONNX Runtime settings the exporter recorded for this graph (manifest models[p].onnxruntime): session config
        # entries (e.g. exact INT8 GEMMs on CPUs without VNNI) and graph transformers to skip (e.g. NchwcTransformer
        # on FP16 graphs: microsoft/onnxruntime#28392, a crash at session creation on x86-64).
        # The INT8 kernel choice is this CPU's (exact_int8: the manifest's needs_exact_int8_accumulation); an old
        # artifact's baked "session.x64quantprecision" is replaced by that decision.
        settings = settings or OrtOptions()
        config = {k: v for k, v in settings.session_config.items() if k != ORT_X64_QUANT_PRECISION}
        int8_config, note = ort_int8_session_config(exact_int8, cpu)
        self.kernel_note = note if exact_int8 else None
        config.update(int8_config)
        self.session_config = config
        for key, value in config.items():
            opts.add_session_config_entry(key, value)
        disabled = list(settings.disabled_optimizers)
        path = Path(model_path)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers,
                                                disabled_optimizers=disabled or None)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise ManifestError(f"{path}: ONNX Runtime could not load it ({e})") from e
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(
                "backend 'cuda': ONNX Runtime's CUDA provider did not start (CUDA/cuDNN libraries or the GPU "
                f"missing?); the session would run on {self.session.get_providers()[0]}"
            )
        self.name = BACKEND_NAMES[device]
        self.output_names = manifest.output_names
        _check_ort_io(path, self.session, manifest)

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        outs = self.session.run(self.output_names, {INPUT_NAME: pixel_values})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None

    def __str__(self) -> str:
        return self.name


def ort_cuda_problem(providers: list[str]) -> str | None:
    """None when ONNX Runtime lists the CUDA execution provider, else why the ``cuda`` backend is unavailable."""
    if "CUDAExecutionProvider" in providers:
        return None
    return ("this ONNX Runtime has no CUDAExecutionProvider (it has " + ", ".join(providers) + "); install "
            "onnxruntime-gpu in place of onnxruntime")


def _check_ort_io(path: Path, session, manifest: Manifest) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [manifest.input.name]:
        raise ManifestError(f"{path}: graph inputs {inputs} do not match the manifest ({manifest.input.name})")
    missing = [name for name in manifest.output_names if name not in outputs]
    if missing:
        raise ManifestError(f"{path}: graph lacks output(s) {missing} listed in the manifest")


# ------------------------------------------------------------------------------------------ selection
@dataclass
class BackendChoice:
    """Which backend runs and why. ``passed_over``: (backend, reason) for each faster one not taken;
    ``fallback``: True when an explicitly requested backend was replaced (the caller allowed it); ``notes``: how
    the chosen backend runs (INT8 kernel, OpenVINO device and precision), appended by :func:`open_backend` and shown
    by :meth:`summary` too; ``reasons``: why ``auto`` took it (shown by :meth:`describe` only)."""

    backend: str
    requested: str
    passed_over: list[tuple[str, str]] = field(default_factory=list)
    fallback: bool = False
    notes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One short line, e.g. "onnxruntime-cpu (auto; no TensorRT engine or CUDA here: -v says why)"."""
        name = BACKEND_NAMES[self.backend]
        notes = "".join(f"; {n}" for n in self.notes)
        if self.requested == self.backend:
            return f"{name} (requested{notes})"
        if self.requested != "auto":
            return self.describe()  # a fallback from what was asked for: the reason matters
        skipped = ", ".join(b for b, _ in self.passed_over)
        return f"{name} (auto{notes}" + (f"; not {skipped}: -v says why)" if skipped else ")")

    def describe(self) -> str:
        """E.g. "onnxruntime-cpu (auto: fastest available; not tensorrt: ..., not cuda: ...)"."""
        name = BACKEND_NAMES[self.backend]
        notes = "".join(f"; {n}" for n in [*self.reasons, *self.notes])
        if self.requested == self.backend:
            return f"{name} (requested{notes})"
        why = "; ".join(f"not {b}: {r}" for b, r in self.passed_over)
        head = "auto: fastest available" if self.requested == "auto" else f"fell back from {self.requested}"
        return f"{name} ({head}" + (f"; {why}" if why else "") + notes + ")"


def choose_backend(requested: str, unavailable: dict[str, str | None], allow_fallback: bool = False) -> BackendChoice:
    """Decide the backend from what is available (pure: no probing).

    Args:
        requested: one of :data:`BACKEND_CHOICES`.
        unavailable: for each of "tensorrt", "cuda", "openvino", "cpu": None when it can run here, else the reason it cannot
            (a backend missing from the dict counts as unavailable for an unknown reason).
        allow_fallback: when an explicitly requested backend is unavailable, run on ONNX Runtime instead (CUDA,
            else CPU) rather than refusing.

    Raises:
        ValueError: unknown ``requested``.
        BackendUnavailable: the requested backend cannot run and falling back is not allowed (or nothing can run);
            the message carries the reason and says how to allow the fallback.
    """
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKEND_CHOICES)}")

    order = AUTO_ORDER if requested == "auto" else (requested, *FALLBACKS[requested])
    passed = []
    for b in order:
        reason = unavailable.get(b, "not probed")
        if reason is None:
            fell_back = requested != "auto" and b != requested
            if fell_back and not allow_fallback:
                break
            return BackendChoice(b, requested, passed, fallback=fell_back)
        passed.append((b, reason))
    if requested == "auto" or not passed:
        raise BackendUnavailable("no backend can run here: " + "; ".join(f"{b}: {r}" for b, r in passed))
    first = passed[0][1]
    if allow_fallback:
        raise BackendUnavailable(f"backend {requested!r} is not available ({first}), and neither is a fallback: "
                                 + "; ".join(f"{b}: {r}" for b, r in passed[1:]))
    raise BackendUnavailable(f"backend {requested!r} is not available: {first}. Pass --allow-fallback "
                             f"(allow_fallback=True) to run on ONNX Runtime instead.")


def probe_unavailable(manifest: Manifest, precision: str, requested: str, directory: str | os.PathLike = "DIR",
                      env: GpuEnvironment | None = None, providers: list[str] | None = None,
                      openvino: str | None | bool = True, device: str | None = None) -> tuple[dict, dict | None]:
    """Probe this machine for what :func:`choose_backend` needs.

    Returns ``(unavailable, engine_entry)``: the reasons dict and the TensorRT engine entry that fits (or None).
    TensorRT and the GPU are probed (imports ``tensorrt``/``cuda-python``) only when a TensorRT engine could be
    used: ``requested`` is "auto" or "tensorrt" and the artifact has an engine for ``precision``. OpenVINO is probed
    when ``requested`` is "auto" or "openvino"; under "auto" it counts only for the precisions in
    :data:`OPENVINO_FASTER`. ``env``, ``providers`` and ``openvino`` (None when OpenVINO can run ``precision``
    on ``device``, else the reason; True: probe) may be passed in (tests, or callers that probed already).
    ``precision`` "bf16" (:data:`RUNTIME_ONLY_PRECISIONS`) runs on OpenVINO only.
    """
    if providers is None:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    unavailable: dict[str, str | None] = {"cpu": None, "cuda": ort_cuda_problem(providers)}
    if requested in ("auto", "openvino"):
        slower = requested == "auto" and precision not in OPENVINO_FASTER
        if openvino is True:
            from sid_edge.runtime.openvino_backend import DEFAULT_DEVICE, openvino_installed, openvino_problem

            if slower and openvino_installed():  # not chosen anyway: spare the import and device probe
                openvino = None
            else:
                openvino = openvino_problem(precision, device or DEFAULT_DEVICE)
        if openvino is None and slower:
            openvino = f"for {precision} not faster than ONNX Runtime on the CPU (ONNX Runtime is the reference)"
        unavailable["openvino"] = openvino
    else:
        unavailable["openvino"] = "not requested"
    if precision in RUNTIME_ONLY_PRECISIONS:
        why = (f"{precision} is OpenVINO's inference-precision hint on the {RUNTIME_ONLY_PRECISIONS[precision]} graph; "
               "use --backend openvino or auto")
        unavailable.update({"cpu": why, "cuda": why, "tensorrt": why})
        return unavailable, None
    entry = None
    if requested in ("auto", "tensorrt"):
        if not engines_for(manifest, precision):
            unavailable["tensorrt"] = (f"the artifact has no TensorRT engine for {precision} (build one with "
                                       f"`sid-edge build {directory} --precision {precision}`)")
        else:
            env = env or detect_environment()
            entry, check = select_engine(manifest, precision, env, directory)
            unavailable["tensorrt"] = None if entry else check.reason
            if entry is None and requested == "auto":
                log.warning("TensorRT engine not used: %s", check.reason)
            for w in check.warnings:
                log.warning("%s", w)
    else:
        unavailable["tensorrt"] = "not requested"
    return unavailable, entry


def open_backend(
    directory: str | os.PathLike,
    manifest: Manifest,
    precision: str = "fp32",
    backend: str = "auto",
    *,
    allow_fallback: bool = False,
    verify: bool = True,
    threads: int | None = None,
    device: str | None = None,
) -> tuple[Backend, BackendChoice]:
    """Choose (:func:`choose_backend`) and start the backend for ``precision`` of the artifact in ``directory``.

    ``precision`` is one of the artifact's models, or ``bf16`` (OpenVINO's BF16 hint on the FP32 graph).
    ``device``: the OpenVINO device (``CPU``, ``GPU``, ``NPU``, ``AUTO``; default ``CPU``); other backends ignore it.

    Files are checked against the manifest (size and, with ``verify``, sha256) before loading. If the chosen
    backend fails to start (e.g. ONNX Runtime's CUDA provider cannot load its libraries) and falling back is
    allowed (``auto``, or ``allow_fallback``), the next one is tried and the failure logged.

    Raises:
        ValueError: unknown backend. BackendUnavailable: see :func:`choose_backend`. ManifestError: no such
            precision, or a model/engine file missing, altered or not matching the manifest.
    """
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_CHOICES)}")
    d = Path(directory)
    entry = model_entry(manifest, RUNTIME_ONLY_PRECISIONS.get(precision, precision))
    unavailable, engine = probe_unavailable(manifest, precision, backend, d, device=device)
    while True:
        choice = choose_backend(backend, unavailable, allow_fallback)
        try:
            runner = _start(choice.backend, d, manifest, entry, engine, verify, threads, precision, device)
            if choice.backend == "openvino":
                if backend == "auto" and precision in OPENVINO_FASTER:
                    choice.reasons.append(OPENVINO_FASTER[precision])
                choice.notes.append(runner.describe())
            elif getattr(runner, "kernel_note", None):
                choice.notes.append(runner.kernel_note)
            return runner, choice
        except BackendUnavailable as e:
            if backend != "auto" and not allow_fallback:
                raise
            log.warning("%s; trying the next backend", e)
            unavailable[choice.backend] = str(e)


def _start(name: str, d: Path, manifest: Manifest, entry: ModelEntry, engine: EngineEntry | None, verify: bool, threads,
           precision: str = "fp32", device: str | None = None) -> Backend:
    if name == "tensorrt":
        from sid_edge.runtime.tensorrt_backend import TensorRTBackend

        verify_files(d, engine, check_hash=verify)
        try:
            return TensorRTBackend(engine_path(d, engine), manifest, engine)
        except EngineError as e:
            raise BackendUnavailable(f"backend 'tensorrt': {e}") from e
    verify_files(d, entry, check_hash=verify)
    if name == "openvino":
        from sid_edge.runtime.openvino_backend import DEFAULT_DEVICE, OpenVinoBackend, OpenVinoUnavailable

        try:
            return OpenVinoBackend(artifact_path(d, entry.file), manifest, entry, precision, device or DEFAULT_DEVICE, threads)
        except OpenVinoUnavailable as e:
            raise BackendUnavailable(str(e)) from e
    return OnnxRuntimeBackend(artifact_path(d, entry.file), manifest, device=name, threads=threads,
                              settings=entry.onnxruntime, exact_int8=needs_exact_int8_accumulation(entry))


def auto_plan(directory: str | os.PathLike, manifest: Manifest, precisions: list[str] | None = None,
              device: str | None = None) -> dict[str, str]:
    """What ``auto`` would run for each precision on this machine, and why, without loading a model.

    Returns {precision: description} (as :meth:`BackendChoice.describe`, plus the INT8 kernel ONNX Runtime would
    use), or the reason nothing can run. ``precisions`` default: the artifact's models, plus ``bf16`` where the
    artifact has FP32. Probes ONNX Runtime, OpenVINO and (only with engines) TensorRT.
    """
    if precisions is None:
        precisions = [*manifest.models, *(p for p, src in RUNTIME_ONLY_PRECISIONS.items() if src in manifest.models)]
    plan = {}
    for precision in precisions:
        try:
            unavailable, _ = probe_unavailable(manifest, precision, "auto", directory, device=device)
            choice = choose_backend("auto", unavailable)
        except (BackendUnavailable, EngineError) as e:
            plan[precision] = f"none: {e}"
            continue
        if choice.backend == "openvino" and precision in OPENVINO_FASTER:
            choice.reasons.append(OPENVINO_FASTER[precision])
        elif choice.backend in ("cpu", "cuda"):
            entry = manifest.models.get(precision)
            if entry is not None and needs_exact_int8_accumulation(entry):
                choice.notes.append(ort_int8_session_config(True)[1])
        plan[precision] = choice.describe()
    return plan
