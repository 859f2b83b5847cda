"""sid_edge.calibration: calibration sets drawn from SynthCLIC-shaped datasets, INT8 explicit quantization (Q/DQ)
with NVIDIA ModelOpt, the fidelity report of precision variants, and adding those variants to an artifact.

Modules (they need the ``train`` extra: ModelOpt, onnx, scikit-learn; the runtime never imports them):

* :mod:`~sid_edge.calibration.selection` — deterministic stratified draws;
* :mod:`~sid_edge.calibration.calibration_set` — the calibration set, preprocessed like the runtime, cached;
* :mod:`~sid_edge.calibration.int8` — INT8 Q/DQ with ModelOpt ONNX PTQ;
* :mod:`~sid_edge.calibration.fidelity` — held-out figures of each precision against FP32;
* :mod:`~sid_edge.calibration.variants` — all of the above applied to an artifact.

The calibration methods and the default one are named in :mod:`sid_edge.artifact.names`.
"""

from sid_edge.artifact.names import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD

__all__ = ["CALIBRATION_METHODS", "DEFAULT_CALIBRATION_METHOD"]
