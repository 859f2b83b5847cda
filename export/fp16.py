"""FP16 variant of the fused graph with NVIDIA ModelOpt AutoCast.

``modelopt.onnx.autocast.convert_to_mixed_precision`` converts the graph to FP16 while keeping in FP32 the nodes
that would lose accuracy there: nodes whose inputs/outputs exceed ``data_max`` in magnitude on reference data
(it runs the graph on our calibration images to find them), initializers beyond the FP16 range, and ops that
need FP32. ``keep_io_types=True`` keeps ``pixel_values`` and every output float32, so the runtime feeds and reads
the same arrays for every precision. TensorRT builds the result as a strongly typed network.

ONNX Runtime note: on x86-64, ONNX Runtime (1.24 to at least 1.32) crashes while creating a CPU session for such
graphs at the default optimisation level, in its NCHWc layout transformer (microsoft/onnxruntime#28392, fix
pending in #29194). The manifest entry therefore lists ``NchwcTransformer`` under
``onnxruntime.disabled_optimizers``, and :class:`sid_edge.runtime.detector.Detector` passes that list to ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np

#: ONNX Runtime graph transformers to disable when loading an FP16 graph on the CPU (see the module docstring).
FP16_ORT_DISABLED_OPTIMIZERS = ["NchwcTransformer"]
#: AutoCast keeps a node in FP32 when |value| on the reference data exceeds this (ModelOpt's default, 512).
DATA_MAX = 512.0
#: Reference images AutoCast runs to find large activations (more adds time, rarely another FP32 node).
REFERENCE_IMAGES = 8


def convert_fp16(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    reference_data: np.ndarray | None = None,
    *,
    input_name: str = "pixel_values",
    data_max: float = DATA_MAX,
    providers: list[str] | None = None,
    use_external_data: bool = False,
) -> dict:
    """Write an FP16 (mixed precision) copy of the FP32 graph ``onnx_path`` to ``output_path``.

    Args:
        reference_data: float32 [N,3,S,S] preprocessed images; the first :data:`REFERENCE_IMAGES` are run to find
            nodes whose values exceed ``data_max`` (kept FP32). None: AutoCast uses random inputs.
        providers: ModelOpt/ORT providers for that reference run (default ``["cpu"]``).
        use_external_data: write the weights as ONNX external data (graphs near the 2 GB protobuf cap).

    Returns {"tool", "low_precision_type", "keep_io_types", "data_max", "reference_images", "fp16_nodes",
    "fp32_nodes", "casts", "onnxruntime": {"disabled_optimizers": [...]}}.
    """
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    from sid_edge.export.modelopt_logs import modelopt_logging

    with tempfile.TemporaryDirectory(prefix="sid-edge-fp16-") as tmp, modelopt_logging():
        ref_path = None
        n_ref = 0
        if reference_data is not None and len(reference_data):
            ref = np.ascontiguousarray(reference_data[:REFERENCE_IMAGES], dtype=np.float32)
            n_ref = len(ref)
            ref_path = str(Path(tmp) / "reference.npz")
            np.savez(ref_path, **{input_name: ref})
        model = convert_to_mixed_precision(
            onnx_path=str(onnx_path),
            low_precision_type="fp16",
            keep_io_types=True,
            data_max=data_max,
            calibration_data=ref_path,
            providers=providers or ["cpu"],
        )
    out = Path(output_path)
    if use_external_data:
        onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    else:
        onnx.save(model, str(out))
    onnx.checker.check_model(str(out))
    kinds = _node_precisions(model)
    return {
        "tool": f"nvidia-modelopt {metadata.version('nvidia-modelopt')} (modelopt.onnx.autocast)",
        "low_precision_type": "fp16",
        "keep_io_types": True,
        "data_max": data_max,
        "reference_images": n_ref,
        "fp16_nodes": kinds["fp16"],
        "fp32_nodes": kinds["fp32"],
        "casts": kinds["cast"],
        "onnxruntime": {"disabled_optimizers": list(FP16_ORT_DISABLED_OPTIMIZERS)},
    }


def _node_precisions(model) -> dict:
    """Count compute nodes by the float type of their first output (via ONNX shape inference), and Casts."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    counts = Counter()
    for node in inferred.graph.node:
        if node.op_type == "Cast":
            counts["cast"] += 1
        elif node.output and types.get(node.output[0]) == onnx.TensorProto.FLOAT16:
            counts["fp16"] += 1
        elif node.output and types.get(node.output[0]) == onnx.TensorProto.FLOAT:
            counts["fp32"] += 1
    return {"fp16": counts["fp16"], "fp32": counts["fp32"], "cast": counts["cast"]}
