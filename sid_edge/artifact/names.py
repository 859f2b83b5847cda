"""Names every stage shares: artifact file names, graph I/O names, precisions, backends, the default backbone.

Defined once here (standard library only) so that the CLI's ``--help`` and the runtime read them without importing
anything heavy, and no stage spells a file name of its own.
"""

from __future__ import annotations

#: The artifact's manifest, in the artifact folder.
MANIFEST_NAME = "manifest.json"
#: The manifest's ``format`` value.
ARTIFACT_FORMAT = "sid-edge-detector"
#: Newest manifest schema this code reads and the one it writes.
SCHEMA_VERSION = 1

#: Model variants an artifact can hold, each in :func:`model_file_name`.
PRECISIONS = ("fp32", "fp16", "int8")

#: The head as float32 arrays, applied in numpy by evaluation (:mod:`sid_edge.runtime.numpy_head`).
HEAD_WEIGHTS_FILE = "head.npz"
#: Arrays ``sid-edge explain`` reads (head directions through the visual projection, concept directions).
EXPLANATION_FILE = "explanation.npz"

#: The graph's one input: float32 [B, 3, S, S].
INPUT_NAME = "pixel_values"
#: Graph outputs, in graph order. ``features`` [B,D] is the pooled pre-projection feature the head reads (so
#: evaluation can compute it once and apply many heads); the concept outputs join when the artifact carries a
#: vocabulary or a concept model.
OUTPUT_NAMES = ("logit", "p_synthetic", "head_activations", "image_embedding", "features")
CONCEPT_SCORES = "concept_scores"
CONCEPT_MODEL_OUTPUTS = ("concept_logit", "concept_contributions")

#: Inference backends a user can ask for; ``auto`` takes the fastest that runs here.
BACKEND_CHOICES = ("auto", "tensorrt", "cuda", "openvino", "cpu")

#: The product's backbone: OpenAI CLIP ViT-L/14-336, which needs QuickGELU (open_clip 3.x does not force it).
DEFAULT_CLIP_MODEL = "ViT-L-14-336-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"


def model_file_name(precision: str) -> str:
    """``model.<precision>.onnx``: the ONNX graph of one precision variant."""
    return f"model.{precision}.onnx"

#: INT8 activation calibration methods (ModelOpt ONNX PTQ), recorded per INT8 model in the manifest.
CALIBRATION_METHODS = ("max", "entropy", "percentile")
#: The method that measured best on the fixture set (README, "Precision variants").
DEFAULT_CALIBRATION_METHOD = "max"
