"""OpenVINO backend: the artifact's ONNX graphs (FP32, INT8 Q/DQ) compiled by the OpenVINO runtime for an Intel or
x86/ARM CPU, an Intel GPU or NPU (optional ``openvino`` extra; torch-free).

* The graph is read straight from the artifact (OpenVINO's ONNX frontend); FP32 runs at FP32 inference precision
  (set explicitly: OpenVINO would otherwise pick BF16 on AMX CPUs and FP16 on GPUs), the INT8 Q/DQ graph runs
  OpenVINO's low-precision (INT8) kernels, and the ``bf16`` precision is OpenVINO's BF16 inference-precision hint on
  the FP32 graph (native on CPUs with AVX512-BF16 or AMX-BF16).
* The compiled model is cached by OpenVINO's model cache (``CACHE_DIR``) in a folder keyed by the graph's sha256
  (from the manifest), the OpenVINO version, the device and the inference precision: a new graph or a new OpenVINO
  release compiles afresh instead of reading a stale blob. Default folder: ``<cache root>/openvino/<key>``
  (:func:`sid_edge.artifact.locations.cache_root`; ``$SID_EDGE_CACHE`` moves it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sid_edge.artifact.locations import cache_root
from sid_edge.artifact.manifest import Manifest, ManifestError, ModelEntry
from sid_edge.artifact.names import INPUT_NAME
from sid_edge.runtime.cpu_features import CpuFeatures, detect

log = logging.getLogger(__name__)

#: OpenVINO inference precision per artifact precision: (graph to read, OpenVINO INFERENCE_PRECISION_HINT).
INFERENCE_PRECISION = {"fp32": ("fp32", "f32"), "int8": ("int8", "f32"), "bf16": ("fp32", "bf16"), "fp16": ("fp16", "f32")}
#: Devices a user may name (OpenVINO's own names; "GPU.1" etc. also accepted).
DEFAULT_DEVICE = "CPU"


class OpenVinoUnavailable(ValueError):
    """OpenVINO cannot run this here (not installed, device absent, no BF16 units). The message says why."""


def openvino_installed() -> bool:
    """Whether the ``openvino`` package is importable (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version (e.g. ``2026.4.1-22982-...``), or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def openvino_problem(precision: str, device: str = DEFAULT_DEVICE, cpu: CpuFeatures | None = None,
                     devices: list[str] | None = None, version: str | None = "probe") -> str | None:
    """None when OpenVINO can run ``precision`` on ``device`` here, else the reason (for ``BackendChoice``).

    ``devices`` (OpenVINO's ``Core().available_devices``) and ``version`` may be given (tests); by default they are
    probed, which imports OpenVINO.
    """
    if version == "probe":
        version = openvino_version()
    if version is None:
        return "OpenVINO is not installed (pip install 'sid-edge[openvino]')"
    if precision not in INFERENCE_PRECISION:
        return f"OpenVINO backend has no {precision!r} mode (it runs {', '.join(INFERENCE_PRECISION)})"
    if devices is None:
        import openvino as ov

        devices = list(ov.Core().available_devices)
    base = device.split(".")[0].upper()
    if device.upper() not in {d.upper() for d in devices} and base not in {d.split(".")[0].upper() for d in devices} \
            and base not in ("AUTO", "HETERO", "MULTI"):
        return f"OpenVINO sees no {device} device (it has: {', '.join(devices) or 'none'})"
    if precision == "bf16" and base == "CPU":
        cpu = cpu or detect()
        if not cpu.bf16:
            return "this CPU has no BF16 units (AVX512-BF16 or AMX-BF16); OpenVINO would compute FP32 instead"
    return None


def compiled_cache_dir(sha256: str, version: str, device: str, hint: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of OpenVINO's compiled-model cache for one graph: ``<root>/openvino/<sha256[:16]>-<version>-<device>-
    <hint>`` (``root`` default :func:`cache_root`). Characters outside ``[A-Za-z0-9._-]`` in the version and device
    become ``_``."""
    def clean(s: str) -> str:
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)

    if not sha256 or not all(c in "0123456789abcdef" for c in sha256.lower()):
        raise ManifestError(f"model entry sha256 {sha256!r} is not a hex digest; cannot key the OpenVINO cache")
    base = Path(root) if root is not None else cache_root()
    return base / "openvino" / f"{sha256[:16].lower()}-{clean(version)}-{clean(device)}-{hint}"


class OpenVinoBackend:
    """An OpenVINO compiled model over one ONNX graph of the artifact.

    Args:
        model_path: the ONNX file (its external-data files beside it).
        manifest: the artifact manifest (input/output names are checked against the compiled model).
        entry: the manifest's model entry for the graph (its ``sha256`` keys the compiled-model cache).
        precision: ``fp32``, ``int8``, ``fp16`` (the graph's own) or ``bf16`` (the FP32 graph with OpenVINO's BF16
            inference-precision hint).
        device: OpenVINO device name (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).
        cache_dir: root of the compiled-model cache (default :func:`cache_root`); False for no cache.

    ``run(pixel_values float32 [B,3,S,S])`` returns every manifest output as float32 with first dimension B.
    ``loaded_from_cache`` says whether the compiled model came from the cache; ``cache_path`` is its folder.

    Raises:
        OpenVinoUnavailable: OpenVINO missing, the device absent, or BF16 asked on a CPU without BF16 units.
        ManifestError: OpenVINO cannot read or compile the graph, or its inputs/outputs differ from the manifest.
    """

    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, manifest: Manifest, entry: ModelEntry, precision: str = "fp32",
                 device: str = DEFAULT_DEVICE, threads: int | None = None, cache_dir: str | os.PathLike | bool | None = None):
        problem = openvino_problem(precision, device)
        if problem:
            raise OpenVinoUnavailable(f"backend 'openvino': {problem}")
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        path = Path(model_path)
        self.version = ov.get_version()
        self.precision, self.device = precision, device
        self.inference_precision = INFERENCE_PRECISION[precision][1]
        config: dict = {hints.inference_precision: self.inference_precision}
        if threads and device.upper().startswith("CPU"):
            config[props.inference_num_threads] = int(threads)
        self.cache_path = None
        if cache_dir is not False:
            self.cache_path = compiled_cache_dir(entry.sha256, self.version, device, self.inference_precision,
                                                 None if cache_dir in (None, True) else cache_dir)
            try:
                self.cache_path.mkdir(parents=True, exist_ok=True)
                config[props.cache_dir] = str(self.cache_path)
            except OSError as e:  # a read-only cache: compile every time rather than fail
                log.warning("OpenVINO compiled-model cache %s unusable (%s); compiling without a cache", self.cache_path, e)
                self.cache_path = None
        core = ov.Core()
        try:
            self.compiled = core.compile_model(str(path), device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with its own text
            raise ManifestError(f"{path}: OpenVINO could not compile it for {device} ({_first_line(e)})") from e
        try:
            self.loaded_from_cache = bool(self.compiled.get_property(props.loaded_from_cache))
        except Exception:  # devices that do not report it
            self.loaded_from_cache = False
        self.output_names = manifest.output_names
        inputs = [sorted(i.get_names()) for i in self.compiled.inputs]
        if len(inputs) != 1 or manifest.input.name not in inputs[0]:
            raise ManifestError(f"{path}: graph inputs {inputs} do not match the manifest ({manifest.input.name})")
        have = {n for o in self.compiled.outputs for n in o.get_names()}
        missing = [n for n in self.output_names if n not in have]
        if missing:
            raise ManifestError(f"{path}: graph lacks output(s) {missing} listed in the manifest")
        self._outputs = {n: self.compiled.output(n) for n in self.output_names}
        self.request = self.compiled.create_infer_request()

    def describe(self) -> str:
        """E.g. "OpenVINO 2026.4.1 on CPU, BF16 inference precision, compiled model from cache"."""
        prec = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}[self.inference_precision]
        what = "INT8 kernels, FP32 elsewhere" if self.precision == "int8" else f"{prec} inference precision"
        cached = ("compiled model from cache" if self.loaded_from_cache else "compiled model cached") if self.cache_path else "no cache"
        return f"OpenVINO {self.version.split('-')[0]} on {self.device}, {what}, {cached}"

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        results = self.request.infer({INPUT_NAME: pixel_values})
        return {n: np.array(results[port], dtype=np.float32, copy=True) for n, port in self._outputs.items()}

    def close(self) -> None:
        self.request = None
        self.compiled = None

    def __str__(self) -> str:
        return self.name


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
