"""sid-edge: synthetic image detection on frozen CLIP features, served from one fused ONNX graph.

The runtime half of this package (``Detector``, ``sid-edge scan``) depends only on numpy, Pillow, OpenCV and
ONNX Runtime; it never imports torch. Training and export live in ``sid_edge.build.training``, ``sid_edge.build.backbone``,
``sid_edge.build.heads`` and ``sid_edge.export`` and need the ``train`` extra.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Detector", "Prediction", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import sid_edge` stays cheap and training code can import sid_edge.* without ONNX Runtime.
    if name in ("Detector", "Prediction"):
        from sid_edge.runtime import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'sid_edge' has no attribute {name!r}")
