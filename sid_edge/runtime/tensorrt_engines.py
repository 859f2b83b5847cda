"""TensorRT engines in the artifact: optimization profiles, the machine's GPU/TensorRT record, and whether an engine
recorded in the manifest can run here (torch-free; ``tensorrt`` and ``cuda-python`` are imported lazily, only by
:func:`detect_environment`).

A serialized TensorRT engine only loads in the TensorRT version that built it (unless built version-compatible,
which we do not) and on GPUs of the compute capability it was built for (unless built hardware-compatible, which
we do not: both cost speed). Source: NVIDIA TensorRT developer guide, "Version Compatibility" and "Hardware
Compatibility". So every engine entry records those, and :func:`check_engine` decides before anything is loaded.

Engine entry in ``manifest["engines"]`` (a list; one per precision, TensorRT version and compute capability)::

    {"precision": "fp16", "file": "model.fp16.sm90.trt10.8.0.engine", "sha256": ..., "size_bytes": ...,
     "source_model": "model.fp16.onnx", "source_sha256": ..., "strongly_typed": true,
     "profile": {"input": "pixel_values", "min_batch": 1, "opt_batch": 8, "max_batch": 64},
     "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA H200", "compute_capability": "9.0",
     "builder_optimization_level": 3, "workspace_bytes": null, "timing_cache": "timing.sm90.trt10.8.0.cache",
     "build_seconds": 41.2, "created": "2026-..."}
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sid_edge.artifact.manifest import EngineEntry, Manifest, artifact_path

#: What to install for the TensorRT backend and engine builds (pyproject extras, one per CUDA major version of the
#: driver: the TensorRT and cuda-bindings wheels of CUDA 13 do not load under a CUDA 12 driver).
TENSORRT_INSTALL_HINT = ("pip install 'sid-edge[tensorrt]' (= tensorrt-cu13, for a CUDA 13 driver) or "
                         "'sid-edge[tensorrt-cu12]' (CUDA 12 driver); on Jetson, TensorRT comes with JetPack: "
                         "pip install 'sid-edge[tensorrt-jetson]'")

#: The pyproject extra that fits a driver of each CUDA major version.
EXTRA_FOR_CUDA_MAJOR = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}


class EngineError(RuntimeError):
    """An engine cannot be built or loaded here (TensorRT or a GPU missing, build failed, incompatible engine).
    The message says what was expected and what to do."""


# ------------------------------------------------------------------------------------------ optimization profile
@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimization profile over the batch dimension: the engine accepts batches ``min_batch..max_batch``
    and its kernels are tuned for ``opt_batch``.

    Raises:
        ValueError: a batch size below 1, or not ``min_batch <= opt_batch <= max_batch``.
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64

    def __post_init__(self):
        for name in ("min_batch", "opt_batch", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"optimization profile: {name} must be an integer >= 1, got {value!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "optimization profile: needs min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch} / {self.opt_batch} / {self.max_batch}"
            )

    def shapes(self, image_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes ``(B, 3, S, S)`` for ``IOptimizationProfile.set_shape``."""
        return tuple((b, 3, image_size, image_size) for b in (self.min_batch, self.opt_batch, self.max_batch))

    def to_dict(self) -> dict:
        return {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchProfile":
        return cls(int(d["min_batch"]), int(d["opt_batch"]), int(d["max_batch"]))


def plan_chunks(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split a batch of ``n`` images into engine runs that fit the profile.

    Returns ``[(start, stop, run_batch), ...]`` covering ``0..n`` in order: each run takes images
    ``start:stop`` (at most ``max_batch``) and executes with ``run_batch = max(stop - start, min_batch)`` rows,
    the extra rows being zero padding whose outputs are dropped. ``n == 0`` gives ``[]``.

    Raises:
        ValueError: ``n < 0`` or a profile bound below 1 or ``min_batch > max_batch``.
    """
    if n < 0:
        raise ValueError(f"batch of {n} images")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"profile batch range {min_batch}..{max_batch} is empty or below 1")
    chunks = []
    for start in range(0, n, max_batch):
        stop = min(start + max_batch, n)
        chunks.append((start, stop, max(stop - start, min_batch)))
    return chunks


# ------------------------------------------------------------------------------------------ this machine
@dataclass(frozen=True)
class GpuEnvironment:
    """What this machine offers for TensorRT: library version and GPU 0, each None when missing.

    ``compute_capability`` is "major.minor" (e.g. "9.0" for H100/H200, "8.7" for Jetson Orin); ``problems`` lists
    why TensorRT or the GPU is unusable, in words (empty when both are there).
    """

    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    problems: tuple[str, ...] = field(default=())
    #: CUDA major version the installed TensorRT wheels were built for (from the ``tensorrt-cu12``/``-cu13``
    #: distribution names; None for TensorRT from JetPack or a system package, or when TensorRT is missing).
    tensorrt_cuda_major: int | None = None
    #: cuda-python's ``cuda-bindings`` release ("12.9.4"), None when missing.
    cuda_bindings_version: str | None = None
    #: Highest CUDA version the installed driver supports ("12.8", from ``cudaDriverGetVersion``), None when
    #: unknown (no driver, or cuda-python missing).
    driver_cuda_version: str | None = None

    @property
    def has_tensorrt(self) -> bool:
        return self.tensorrt_version is not None

    @property
    def has_gpu(self) -> bool:
        return self.gpu_name is not None and self.compute_capability is not None

    def describe(self) -> str:
        """One line: "NVIDIA H200 (compute capability 9.0), TensorRT 10.8.0.43" or what is missing."""
        gpu = f"{self.gpu_name} (compute capability {self.compute_capability})" if self.has_gpu else "no usable CUDA GPU"
        trt = f"TensorRT {self.tensorrt_version}" if self.has_tensorrt else "no TensorRT"
        return f"{gpu}, {trt}"

    def describe_versions(self) -> str:
        """One line with the library and driver versions found, e.g. "TensorRT 11.4.0.106 (CUDA 13 wheels),
        cuda-bindings 13.5.0, driver supports CUDA 13.0"."""
        if self.tensorrt_version is None:
            trt = "TensorRT not found"
        else:
            built = (f"CUDA {self.tensorrt_cuda_major} wheels" if self.tensorrt_cuda_major
                     else "not from a tensorrt-cu* wheel: JetPack or a system package")
            trt = f"TensorRT {self.tensorrt_version} ({built})"
        cb = f"cuda-bindings {self.cuda_bindings_version}" if self.cuda_bindings_version else "cuda-bindings not found"
        drv = (f"driver supports CUDA {self.driver_cuda_version}" if self.driver_cuda_version
               else "no CUDA driver found")
        return f"{trt}, {cb}, {drv}"

    def install_advice(self) -> str | None:
        """What to install when the TensorRT or cuda-bindings wheels need a newer CUDA than the driver supports
        (a CUDA 13 wheel under a CUDA 12 driver fails to load or finds no device); None when they fit or the
        driver's version is unknown. A driver supports the CUDA versions up to the one it reports."""
        if not self.driver_cuda_version:
            return None
        driver_major = _major(self.driver_cuda_version)
        too_new = []
        if self.tensorrt_cuda_major and self.tensorrt_cuda_major > driver_major:
            too_new.append(f"TensorRT {self.tensorrt_version} is the CUDA {self.tensorrt_cuda_major} build")
        if self.cuda_bindings_version and _major(self.cuda_bindings_version) > driver_major:
            too_new.append(f"cuda-bindings {self.cuda_bindings_version} needs a CUDA "
                           f"{_major(self.cuda_bindings_version)} driver")
        if not too_new:
            return None
        fix = EXTRA_FOR_CUDA_MAJOR.get(driver_major)
        todo = (f"uninstall them and pip install 'sid-edge[{fix}]', or update the driver" if fix else
                "update the NVIDIA driver (the TensorRT 10/11 wheels need CUDA 12 or 13)")
        return f"{'; '.join(too_new)}, but the driver supports CUDA {self.driver_cuda_version}: {todo}"


def _major(version: str) -> int:
    """"12.8" / "13.5.0" -> 12 / 13 (0 when unreadable)."""
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else 0


def _distribution_version(*names: str) -> tuple[str, str] | None:
    """(name, version) of the first of ``names`` installed as a Python distribution, else None."""
    from importlib import metadata

    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_cuda_major() -> int | None:
    """CUDA major version of the installed TensorRT wheels: NVIDIA publishes one set per CUDA major
    (``tensorrt-cu12-bindings``, ``tensorrt-cu13-bindings``; the ``tensorrt`` metapackage pulls the newest).
    None when no such distribution is installed (JetPack's or a distribution's TensorRT, or none)."""
    for major in (13, 12, 11):
        if _distribution_version(f"tensorrt-cu{major}-bindings", f"tensorrt-cu{major}", f"tensorrt-cu{major}-libs"):
            return major
    return None


def cuda_bindings_version() -> str | None:
    """Release of the installed cuda-python runtime bindings (``cuda.bindings.__version__``, else the
    ``cuda-bindings`` or, before 12.6, ``cuda-python`` distribution's), None when missing."""
    version = getattr(sys.modules.get("cuda.bindings"), "__version__", None)
    if version:
        return str(version)
    found = _distribution_version("cuda-bindings", "cuda-python")
    return found[1] if found else None


def _version_text(encoded: int) -> str:
    """CUDA's integer version (1000 * major + 10 * minor, e.g. 12080) -> "12.8"."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def import_cudart():
    """The CUDA runtime bindings of cuda-python (package cuda-bindings: ``cuda.bindings.runtime``; ``cuda.cudart``
    in cuda-python before 12.6).

    Raises:
        EngineError: cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as e:
            raise EngineError(f"cuda-python is not installed; {TENSORRT_INSTALL_HINT}") from e
    return cudart


def import_tensorrt():
    """The ``tensorrt`` module, or EngineError saying how to install it."""
    try:
        import tensorrt
    except ImportError as e:
        raise EngineError(f"TensorRT is not installed; {TENSORRT_INSTALL_HINT}") from e
    return tensorrt


_TRT_LOGGER = None


def trt_logger():
    """One process-wide ``tensorrt.Logger`` (WARNING): TensorRT keeps a single logger and warns when builders and
    runtimes are created with different ones."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        trt = import_tensorrt()
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def cuda_check(result, what: str):
    """Unpack a cuda-python call result ``(err, *values)``: the value(s) on success, else EngineError naming
    ``what`` and CUDA's own error text."""
    cudart = import_cudart()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise EngineError(f"{what} failed: {text} ({getattr(err, 'name', err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def detect_environment(device: int = 0) -> GpuEnvironment:
    """Probe TensorRT (import only), cuda-python and CUDA GPU ``device``, with the versions of each and the CUDA
    version the driver supports. Never raises: what is missing goes into ``problems``, followed by
    :meth:`GpuEnvironment.install_advice` when the wheels need a newer CUDA than the driver. Imports nothing when
    neither library is installed."""
    problems = []
    trt_version = None
    try:
        trt_version = import_tensorrt().__version__
    except EngineError as e:
        problems.append(str(e))
    except Exception as e:  # noqa: BLE001 - a broken TensorRT install (missing libnvinfer) raises OSError etc.
        problems.append(f"TensorRT could not be imported: {e}")
    name = cc = driver = bindings = None
    try:
        cudart = import_cudart()
        bindings = cuda_bindings_version()
        try:
            driver = _version_text(int(cuda_check(cudart.cudaDriverGetVersion(), "reading the CUDA driver version")))
            if driver == "0.0":  # cudaDriverGetVersion reports 0 when no driver is installed
                driver = None
        except EngineError:
            driver = None
        count = cuda_check(cudart.cudaGetDeviceCount(), "counting CUDA devices")
        if device >= count:
            problems.append(f"no CUDA device {device} (this machine has {count})")
        else:
            props = cuda_check(cudart.cudaGetDeviceProperties(device), f"reading CUDA device {device}")
            raw = props.name
            name = (raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)).split("\x00")[0].strip()
            cc = f"{props.major}.{props.minor}"
    except EngineError as e:
        hint = "" if "cuda-python" in str(e) else "; is an NVIDIA GPU with its driver present?"
        problems.append(f"no usable CUDA GPU: {e}{hint}")
    env = GpuEnvironment(trt_version, name, cc, tuple(problems), tensorrt_cuda_major() if trt_version else None,
                         bindings, driver)
    advice = env.install_advice()
    if advice:
        env = dataclasses.replace(env, problems=(*env.problems, advice))
    return env


# ------------------------------------------------------------------------------------------ compatibility
def _release(version: str) -> tuple[int, ...]:
    """"10.8.0.43" -> (10, 8, 0): the part of a TensorRT version an engine is tied to (the 4th is the build)."""
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass
class EngineCheck:
    """Outcome of :func:`check_engine`: ``ok``; ``reason`` (why not, with how to rebuild) when not ok;
    ``warnings`` that do not stop loading (e.g. another GPU model of the same compute capability)."""

    ok: bool
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def rebuild_command(directory: str | os.PathLike, precision: str) -> str:
    """The command that rebuilds an artifact's engine on the current machine."""
    return f"sid-edge build {directory} --precision {precision}"


def check_engine(entry: EngineEntry, env: GpuEnvironment, *, source_sha256: str | None = None,
                 directory: str | os.PathLike = "DIR") -> EngineCheck:
    """Can the engine recorded in ``entry`` (a ``manifest["engines"]`` item) run on ``env``?

    Rules, in order (each failure says what was expected and how to rebuild):
      1. TensorRT importable and a CUDA GPU present;
      2. same TensorRT release (major.minor.patch) as the one that built it;
      3. same GPU compute capability (major.minor);
      4. when ``source_sha256`` is given: built from that ONNX file (a re-exported model makes the engine stale).
    A different GPU name with the same compute capability passes with a warning: the engine loads, but its
    kernels were timed on the other GPU.
    """
    fix = f"rebuild it here with `{rebuild_command(directory, entry.precision)}`"
    built = f"{entry.file} was built with TensorRT {entry.tensorrt_version} for " \
            f"{entry.gpu_name} (compute capability {entry.compute_capability})"
    if not env.has_tensorrt or not env.has_gpu:
        missing = "; ".join(env.problems) or env.describe()
        return EngineCheck(False, f"{built}, but this machine cannot run TensorRT engines: {missing}")
    if _release(entry.tensorrt_version) != _release(env.tensorrt_version):
        return EngineCheck(False, f"{built}; this machine has TensorRT {env.tensorrt_version}, and an engine only "
                                  f"loads in the TensorRT release that built it: {fix}")
    if entry.compute_capability != env.compute_capability:
        return EngineCheck(False, f"{built}; this GPU is {env.gpu_name} (compute capability "
                                  f"{env.compute_capability}), and an engine only runs on the GPU architecture it "
                                  f"was built for: {fix}")
    if source_sha256 is not None and entry.source_sha256 not in (None, source_sha256):
        return EngineCheck(False, f"{entry.file} was built from an earlier {entry.source_model} "
                                  f"(sha256 differs from the manifest's model): {fix}")
    warnings = []
    if entry.gpu_name and entry.gpu_name != env.gpu_name:
        warnings.append(f"{entry.file} was built on {entry.gpu_name} and runs on {env.gpu_name} (same "
                        f"compute capability {env.compute_capability}): it works, but its kernels were tuned for the "
                        f"other GPU; {fix} for full speed")
    return EngineCheck(True, "", warnings)


def engines_for(manifest: Manifest, precision: str) -> list[EngineEntry]:
    """The manifest's engine entries for ``precision`` (possibly several: one per GPU architecture/TensorRT)."""
    return [e for e in manifest.engines if e.precision == precision]


def select_engine(manifest: Manifest, precision: str, env: GpuEnvironment,
                  directory: str | os.PathLike = "DIR") -> tuple[EngineEntry | None, EngineCheck]:
    """Pick the first engine for ``precision`` that :func:`check_engine` accepts on ``env``.

    Returns ``(entry, check)``; ``entry`` is None when none fits, and ``check.reason`` then says why (no engine
    at all, or each candidate's reason).
    """
    candidates = engines_for(manifest, precision)
    if not candidates:
        return None, EngineCheck(False, f"the artifact has no TensorRT engine for {precision}; build one with "
                                        f"`{rebuild_command(directory, precision)}`")
    source = manifest.models[precision].sha256 if precision in manifest.models else None
    reasons = []
    for entry in candidates:
        check = check_engine(entry, env, source_sha256=source, directory=directory)
        if check.ok:
            return entry, check
        reasons.append(check.reason)
    return None, EngineCheck(False, " | ".join(reasons))


# ------------------------------------------------------------------------------------------ names in the artifact
def _sm(env: GpuEnvironment) -> str:
    return "sm" + str(env.compute_capability).replace(".", "")


def _trt_release(env: GpuEnvironment) -> str:
    return "trt" + ".".join(map(str, _release(env.tensorrt_version)))


def engine_file_name(precision: str, env: GpuEnvironment) -> str:
    """``model.<precision>.sm<CC>.trt<x.y.z>.engine``: one file per precision, GPU architecture and TensorRT
    release, so engines for a Jetson and a data-centre GPU can sit in the same artifact."""
    return f"model.{precision}.{_sm(env)}.{_trt_release(env)}.engine"


def timing_cache_name(env: GpuEnvironment) -> str:
    """``timing.sm<CC>.trt<x.y.z>.cache``: TensorRT timing caches only carry over within one release and device
    kind, so the name keys on both and a build on another machine starts its own cache."""
    return f"timing.{_sm(env)}.{_trt_release(env)}.cache"


def engine_path(directory: str | os.PathLike, entry: EngineEntry) -> Path:
    """The engine file inside the artifact folder (ManifestError for a name that would leave it)."""
    return artifact_path(directory, entry.file)
