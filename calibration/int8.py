"""INT8 explicit quantization: Q/DQ nodes placed and calibrated by NVIDIA ModelOpt's ONNX PTQ.

``modelopt.onnx.quantization.quantize(quantize_mode="int8")`` inserts QuantizeLinear/DequantizeLinear pairs by
TensorRT's placement rules (MatMul/Gemm/Conv inputs, no Q/DQ where TensorRT would not fuse them, output layers
left in high precision), with symmetric INT8, per-channel weight scales and per-tensor activation scales, and
calibrates the activation scales by running ONNX Runtime over the calibration set. The result is a strongly typed
graph that TensorRT 10 and 11 build as is, and that ONNX Runtime's CPU provider runs (where we measure it).

Calibration methods:

* ``max`` — amax = the largest |activation| seen (ModelOpt "max"; ORT MinMax with symmetric ranges);
* ``entropy`` — the threshold minimising the KL divergence between the float and quantized histograms (TensorRT's
  entropy calibration, ModelOpt's default);
* ``percentile`` — amax = the given percentile of |activation| (default 99.99). ModelOpt's INT8 path offers only
  max and entropy, so these ranges are computed with ONNX Runtime's PercentileCalibrater (through ModelOpt's
  patched calibrators, the same code path its own methods use) and handed to ModelOpt as a TensorRT calibration
  cache (``calibration_cache_path``), whose scales replace the calibrated ones.

``max`` is the default: on the fixture set it measured best on decision agreement and ΔAP (see the README).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from sid_edge.artifact.names import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD
from sid_edge.export.modelopt_logs import modelopt_logging

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_METHODS", "DEFAULT_CALIBRATION_METHOD", "calibration_providers", "quantize_int8"]

DEFAULT_PERCENTILE = 99.99
HIGH_PRECISION_DTYPES = ("fp32", "fp16")
INT8_AMAX = 127.0  # TensorRT INT8 is symmetric over [-127, 127]: scale = amax / 127
#: The Q/DQ INT8 graph needs exact integer accumulation: on x86-64 without VNNI (AVX2, AVX-512 before VNNI) ONNX
#: Runtime's default U8S8 integer GEMM saturates its 16-bit intermediate sums (measured on the test fixture on an
#: AVX2 CPU: mean |Δp_synthetic| vs FP32 0.025 with it, 0.005 with the exact kernel). Recorded in the manifest as
#: ``needs_exact_int8_accumulation``; the runtime picks the kernel for the CPU at hand
#: (:func:`sid_edge.runtime.cpu_features.ort_int8_session_config`).
NEEDS_EXACT_INT8_ACCUMULATION = True


def calibration_providers(available: Sequence[str] | None = None) -> list[str]:
    """ModelOpt execution-provider names for calibration, fastest first: ``trt`` and ``cuda:0`` when this ONNX
    Runtime offers TensorRT/CUDA, always ending with ``cpu``."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    eps = []
    if "TensorrtExecutionProvider" in available:
        eps.append("trt")
    if "CUDAExecutionProvider" in available:
        eps.append("cuda:0")
    return [*eps, "cpu"]


class _ProgressReader(CalibrationDataReader):
    """An ONNX Runtime CalibrationDataReader over pixel_values [N,3,S,S] (batches of ``batch_size``) that reports
    each batch served, so a long calibration shows progress. ModelOpt calls ``get_first`` and ``rewind`` too."""

    def __init__(self, pixel_values: np.ndarray, input_name: str, batch_size: int, on_batch: Callable[[int], None]):
        self.pixel_values, self.input_name, self.batch_size, self.on_batch = pixel_values, input_name, batch_size, on_batch
        self.position = 0

    def get_next(self):
        if self.position >= len(self.pixel_values):
            return None
        batch = np.ascontiguousarray(self.pixel_values[self.position : self.position + self.batch_size], dtype=np.float32)
        self.position += len(batch)
        self.on_batch(len(batch))
        return {self.input_name: batch}

    def get_first(self):
        return {self.input_name: np.ascontiguousarray(self.pixel_values[: self.batch_size], dtype=np.float32)}

    def rewind(self):
        self.position = 0

    def __len__(self) -> int:
        return len(self.pixel_values)


def copy_onnx(src: Path, dst_dir: Path) -> Path:
    """Copy an ONNX file and the external-data files it references into ``dst_dir``; return the new path."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    dst_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=False)
    locations = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    for name in [src.name, *sorted(locations)]:
        shutil.copyfile(src.parent / name, dst_dir / name)
    return dst_dir / src.name


def _percentile_cache(
    onnx_path: Path, reader, providers: list[str], percentile: float, use_external_data: bool, workdir: Path
) -> Path:
    """Percentile activation ranges of every float tensor, written as a TensorRT calibration cache
    (``name: hex(big-endian float32 scale)`` per line, scale = amax / 127) that ModelOpt imports."""
    from modelopt.onnx.quantization.ort_patching import patch_ort_modules
    from onnxruntime.quantization import calibrate

    import onnx

    patch_ort_modules()  # the calibrator code path ModelOpt's own max/entropy calibration runs through
    ort_eps = {"trt": "TensorrtExecutionProvider", "cpu": "CPUExecutionProvider"}
    eps = [ort_eps.get(p, "CUDAExecutionProvider") for p in providers]
    # ModelOpt's patched calibrators take node *names* in op_types_to_calibrate: calibrate every node's tensors.
    nodes = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    calibrator = calibrate.create_calibrator(
        onnx_path, nodes, str(workdir / "augmented.onnx"), calibrate.CalibrationMethod.Percentile,
        use_external_data_format=use_external_data,
        extra_options={"symmetric": True, "percentile": percentile, "num_bins": 2048, "execution_providers": eps},
    )
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    cache = workdir / "percentile.cache"
    lines = ["TRT-8501-EntropyCalibration2"]
    for name, rng in ranges.items():
        low, high = (float(np.asarray(v).max()) for v in (np.abs(rng.range_value[0]), np.abs(rng.range_value[1])))
        amax = max(low, high, 1e-8)
        lines.append(f"{name}: {struct.pack('!f', amax / INT8_AMAX).hex()}")
    cache.write_text("\n".join(lines) + "\n", encoding="ascii")
    return cache


def quantize_int8(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration_data: np.ndarray,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    high_precision: str = "fp32",
    percentile: float = DEFAULT_PERCENTILE,
    input_name: str = "pixel_values",
    batch_size: int = 1,
    providers: Sequence[str] | None = None,
    use_external_data: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict:
    """Write an INT8 Q/DQ copy of the FP32 graph ``onnx_path`` to ``output_path``; return what was done.

    Args:
        calibration_data: float32 [N,3,S,S], preprocessed exactly as the runtime does (a memory map is fine).
        method: one of :data:`CALIBRATION_METHODS`.
        high_precision: dtype of the ops left unquantized: ``fp32`` (default; runs everywhere, including ONNX
            Runtime CPU) or ``fp16`` (faster under TensorRT). Graph inputs and outputs stay float32 either way.
        percentile: for ``method="percentile"``, the percentile of |activation| taken as amax.
        batch_size: calibration images per ONNX Runtime run.
        providers: ModelOpt calibration EPs (default :func:`calibration_providers`).
        use_external_data: write the weights as ONNX external data (graphs near the 2 GB protobuf cap).
        progress: ``progress(description, total) -> advance(n)`` called once per calibration pass.

    Returns {"tool", "mode", "scheme", "calibration_method", "percentile"?, "high_precision_dtype",
    "calibration_images", "calibration_providers", "quantize_linear", "dequantize_linear", "dq_consumers",
    "needs_exact_int8_accumulation"}
    (the last: the graph's integer GEMMs must accumulate exactly, see :data:`NEEDS_EXACT_INT8_ACCUMULATION`).

    Raises ValueError for an unknown method/dtype or an empty calibration set, RuntimeError when ModelOpt wrote
    no Q/DQ node.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    if high_precision not in HIGH_PRECISION_DTYPES:
        raise ValueError(f"high_precision must be one of {HIGH_PRECISION_DTYPES}, got {high_precision!r}")
    if len(calibration_data) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    import onnx
    from modelopt.onnx.quantization import quantize as _quantize

    providers = list(providers or calibration_providers())
    passes = {"n": 0}

    def on_batch_factory():
        # ModelOpt reads the data several times (graph analysis, then calibration); one bar per full pass.
        state = {"advance": None, "seen": 0}

        def on_batch(n: int) -> None:
            if state["advance"] is None or state["seen"] >= len(calibration_data):
                passes["n"] += 1
                state["advance"] = progress(f"INT8 calibration ({method}), pass {passes['n']}", len(calibration_data)) if progress else (lambda k: None)
                state["seen"] = 0
            state["seen"] += n
            state["advance"](n)

        return on_batch

    reader = _ProgressReader(calibration_data, input_name, batch_size, on_batch_factory())
    out = Path(output_path)
    with tempfile.TemporaryDirectory(prefix="sid-edge-int8-") as tmp, modelopt_logging():
        # ModelOpt rewrites the model it is given (and writes intermediate files beside its output): work on a
        # copy in a scratch folder, then move the result into place.
        work = Path(tmp)
        source = copy_onnx(Path(onnx_path), work / "source")
        cache_path = None
        if method == "percentile":
            cache_path = str(_percentile_cache(source, reader, providers, percentile, use_external_data, work))
            # ModelOpt still runs its max pass to place Q/DQ nodes; the cache's scales replace the ones it finds,
            # so one image is enough for that pass.
            reader = _ProgressReader(calibration_data[:1], input_name, 1, lambda n: None)
        (work / "out").mkdir()
        _quantize(
            onnx_path=str(source),
            quantize_mode="int8",
            calibration_data_reader=reader,
            calibration_method="entropy" if method == "entropy" else "max",
            calibration_cache_path=cache_path,
            calibration_eps=providers,
            high_precision_dtype=high_precision,
            use_external_data_format=use_external_data,
            output_path=str(work / "out" / out.name),
            log_level="WARNING",
            dq_only=True,  # weights stored as INT8 behind a DequantizeLinear: a quarter of the FP32 file
        )
        for f in (work / "out").iterdir():
            if f.name.startswith(out.name):  # the graph and its external data, if any
                shutil.move(str(f), str(out.parent / f.name))
    model = onnx.load(str(out), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    if not ops["QuantizeLinear"]:
        raise RuntimeError(f"{out}: ModelOpt wrote no Q/DQ node; nothing in the graph was quantizable")
    quantized = Counter(
        consumer.op_type
        for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear")
        for consumer in model.graph.node if dq.output[0] in consumer.input
    )
    info = {
        "tool": f"nvidia-modelopt {metadata.version('nvidia-modelopt')} (modelopt.onnx.quantization, int8)",
        "mode": "int8",
        "scheme": "explicit Q/DQ; symmetric INT8; per-channel weight scales (weights stored INT8, DequantizeLinear "
                  "only), per-tensor activation scales",
        "calibration_method": method,
        "high_precision_dtype": high_precision,
        "calibration_images": int(len(calibration_data)),
        "calibration_providers": providers,
        "quantize_linear": int(ops["QuantizeLinear"]),  # activation quantizers
        "dequantize_linear": int(ops["DequantizeLinear"]),  # activations + INT8 weights
        "dq_consumers": dict(sorted(quantized.items())),  # op types reading a DequantizeLinear output
    }
    if method == "percentile":
        info["percentile"] = percentile
    info["needs_exact_int8_accumulation"] = NEEDS_EXACT_INT8_ACCUMULATION
    return info
