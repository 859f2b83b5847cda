"""The edge runtime (numpy, Pillow, OpenCV, ONNX Runtime; optionally TensorRT): ``Detector``, the backends, image
decoding/preprocessing/discovery, batching, ``scan`` and concept ranking.

Imports only :mod:`sid_edge.artifact` and libraries; never torch, onnx, open_clip, or the build/export stages.
"""
