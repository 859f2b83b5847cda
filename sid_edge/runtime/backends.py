"""Inference backends behind the one :class:`~sid_edge.runtime.detector.Detector` interface (torch-free).

* ``tensorrt`` — a TensorRT engine from the artifact (:mod:`sid_edge.runtime.tensorrt_backend`; needs the ``tensorrt``
  extra and an NVIDIA GPU);
* ``cuda`` — ONNX Runtime with its CUDA execution provider (needs ``onnxruntime-gpu`` in place of ``onnxruntime``);
* ``cpu`` — ONNX Runtime on the CPU (always there).

``auto`` takes the first available in that order — TensorRT engines are the fastest on NVIDIA GPUs, then ONNX
Runtime CUDA, then the CPU — and says which it chose and why it passed over the others. An explicit backend that
is unavailable is refused with the reason, unless the caller allows falling back to ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sid_edge.runtime.tensorrt_engines import EngineError, GpuEnvironment, detect_environment, engine_path, engines_for, select_engine
from sid_edge.artifact.manifest import EngineEntry, Manifest, ManifestError, ModelEntry, OrtOptions, artifact_path, model_entry, verify_files
from sid_edge.artifact.names import BACKEND_CHOICES, INPUT_NAME

log = logging.getLogger(__name__)

#: auto's preference, fastest first.
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
#: Where an explicit backend may fall back to when the caller allows it: ONNX Runtime, GPU first.
FALLBACKS = {"tensorrt": ("cuda", "cpu"), "cuda": ("cpu",), "cpu": ()}
#: Human names, also ``Detector.backend_name``.
BACKEND_NAMES = {"tensorrt": "tensorrt", "cuda": "onnxruntime-cuda", "cpu": "onnxruntime-cpu"}


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
                 settings: OrtOptions | None = None):
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
        settings = settings or OrtOptions()
        for key, value in settings.session_config.items():
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
    ``fallback``: True when an explicitly requested backend was replaced (the caller allowed it)."""

    backend: str
    requested: str
    passed_over: list[tuple[str, str]] = field(default_factory=list)
    fallback: bool = False

    def summary(self) -> str:
        """One short line, e.g. "onnxruntime-cpu (auto; no TensorRT engine or CUDA here: -v says why)"."""
        name = BACKEND_NAMES[self.backend]
        if self.requested == self.backend:
            return f"{name} (requested)"
        if self.requested != "auto":
            return self.describe()  # a fallback from what was asked for: the reason matters
        skipped = ", ".join(b for b, _ in self.passed_over)
        return f"{name} (auto" + (f"; not {skipped}: -v says why)" if skipped else ")")

    def describe(self) -> str:
        """E.g. "onnxruntime-cpu (auto: fastest available; not tensorrt: ..., not cuda: ...)"."""
        name = BACKEND_NAMES[self.backend]
        if self.requested == self.backend:
            return f"{name} (requested)"
        why = "; ".join(f"not {b}: {r}" for b, r in self.passed_over)
        head = "auto: fastest available" if self.requested == "auto" else f"fell back from {self.requested}"
        return f"{name} ({head}" + (f"; {why})" if why else ")")


def choose_backend(requested: str, unavailable: dict[str, str | None], allow_fallback: bool = False) -> BackendChoice:
    """Decide the backend from what is available (pure: no probing).

    Args:
        requested: one of :data:`BACKEND_CHOICES`.
        unavailable: for each of "tensorrt", "cuda", "cpu": None when it can run here, else the reason it cannot
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
                      env: GpuEnvironment | None = None, providers: list[str] | None = None) -> tuple[dict, dict | None]:
    """Probe this machine for what :func:`choose_backend` needs.

    Returns ``(unavailable, engine_entry)``: the reasons dict and the TensorRT engine entry that fits (or None).
    TensorRT and the GPU are probed (imports ``tensorrt``/``cuda-python``) only when a TensorRT engine could be
    used: ``requested`` is "auto" or "tensorrt" and the artifact has an engine for ``precision``. ``env`` and
    ``providers`` may be passed in (tests, or callers that probed already).
    """
    if providers is None:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    unavailable: dict[str, str | None] = {"cpu": None, "cuda": ort_cuda_problem(providers)}
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
) -> tuple[Backend, BackendChoice]:
    """Choose (:func:`choose_backend`) and start the backend for ``precision`` of the artifact in ``directory``.

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
    entry = model_entry(manifest, precision)
    unavailable, engine = probe_unavailable(manifest, precision, backend, d)
    while True:
        choice = choose_backend(backend, unavailable, allow_fallback)
        try:
            return _start(choice.backend, d, manifest, entry, engine, verify, threads), choice
        except BackendUnavailable as e:
            if backend != "auto" and not allow_fallback:
                raise
            log.warning("%s; trying the next backend", e)
            unavailable[choice.backend] = str(e)


def _start(name: str, d: Path, manifest: Manifest, entry: ModelEntry, engine: EngineEntry | None, verify: bool, threads) -> Backend:
    if name == "tensorrt":
        from sid_edge.runtime.tensorrt_backend import TensorRTBackend

        verify_files(d, engine, check_hash=verify)
        try:
            return TensorRTBackend(engine_path(d, engine), manifest, engine)
        except EngineError as e:
            raise BackendUnavailable(f"backend 'tensorrt': {e}") from e
    verify_files(d, entry, check_hash=verify)
    return OnnxRuntimeBackend(artifact_path(d, entry.file), manifest, device=name, threads=threads,
                              settings=entry.onnxruntime)
