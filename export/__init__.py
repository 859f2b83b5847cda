"""Export stage (import name ``sid_edge.export``): frozen CLIP + head (+ concepts) fused into one ONNX graph, and
TensorRT engines built from it (:mod:`sid_edge.export.engine`).

The ONNX export needs torch, open_clip and onnx (the ``train`` extra); the engine build needs only TensorRT
(the ``tensorrt`` extra), so names are imported lazily and ``sid_edge.export.engine`` works without torch. The
runtime reads only the artifact this stage writes.
"""

__all__ = ["FusedDetector", "export_detector"]


def __getattr__(name: str):
    if name in __all__:
        from sid_edge.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'sid_edge.export' has no attribute {name!r}")
