"""Export stage (import name ``sid_edge.export``): frozen CLIP + head (+ concepts) fused into one ONNX graph.

Needs torch, open_clip and onnx (the ``train`` extra). The runtime reads only the artifact this stage writes.
"""

from sid_edge.export.onnx_export import FusedDetector, export_detector

__all__ = ["FusedDetector", "export_detector"]
