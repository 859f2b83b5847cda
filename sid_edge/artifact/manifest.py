"""The detector artifact's manifest as typed, validated classes (pydantic v2; torch-free, ONNX-free).

An artifact is a folder: ``manifest.json`` + model files. The manifest carries everything the runtime needs and
nothing it must guess: schema version, backbone identity, preprocessing rule, head, vocabulary, decision threshold,
graph I/O names and shapes, each model file with precision, sha256 and size, engines, library versions and the
fidelity figures measured at export.

Reading (:func:`read_manifest`) validates every field's type and range and fails with :class:`ManifestError`
naming the file and the field (``models.fp32.sha256: …``): thresholds are finite and in [0, 1]; the schema is an
integer not newer than this reader's; sizes are non-negative integers; the graph's input side equals the
preprocessing size; every file name is relative, without ``..``, and stays inside the artifact folder.

Writing happens only here, atomically, through named operations: :func:`write_manifest` (a whole new manifest, at
export), :func:`update_manifest` (read → change → validate → write), and the operations built on it
(:func:`set_threshold`, :func:`add_engine`, :func:`set_models`). Blocks that are records of how something was made
(training configuration, library versions, quantization details) are typed at their top level and keep extra keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from sid_edge.artifact.files import UnsafeName, confined, sha256_file, write_text_atomic
from sid_edge.artifact.names import (
    ARTIFACT_FORMAT,
    CONCEPT_MODEL_OUTPUTS,
    CONCEPT_SCORES,
    INPUT_NAME,
    MANIFEST_NAME,
    OUTPUT_NAMES,
    PRECISIONS,
    SCHEMA_VERSION,
)
from sid_edge.artifact.onnx_references import external_data_locations
from sid_edge.artifact.preprocessing import Preprocessing

__all__ = [
    "ARTIFACT_FORMAT", "INPUT_NAME", "MANIFEST_NAME", "OUTPUT_NAMES", "PRECISIONS", "SCHEMA_VERSION",
    "ManifestError", "Manifest", "FileRecord", "ModelEntry", "EngineEntry", "Backbone", "Head", "Vocabulary",
    "ConceptModel", "ThresholdChoice", "Calibration", "read_manifest", "write_manifest", "update_manifest",
    "parse_manifest", "model_entry", "verify_files", "file_entry", "set_threshold", "add_engine", "set_models",
    "UncertainBand", "set_uncertain_band",
    "artifact_path", "sha256_file",
]


class ManifestError(ValueError):
    """The artifact is missing, malformed, or its files do not match the manifest. The message names the file
    and, for a bad value, the field (dotted path)."""


# ------------------------------------------------------------------------------------------------ field types
def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


def _safe_name(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError(f"expected a file name (string), got {type(v).__name__}")
    try:
        # Syntax only here (no folder yet); artifact_path() checks the resolved location against the real folder.
        confined("/", v)
    except UnsafeName as e:
        raise ValueError(str(e)) from None
    return v


def _probability(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number in [0, 1], got {type(v).__name__}")
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"must be a finite number in [0, 1], got {v!r}")
    return float(v)


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    return _finite(float(v))


FileName = Annotated[str, BeforeValidator(_safe_name)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
Probability = Annotated[float, BeforeValidator(_probability)]
Number = Annotated[float, BeforeValidator(_number)]
Precision = Literal["fp32", "fp16", "int8"]
Dim = StrictInt | StrictStr  # a fixed size or a symbolic one ("batch")


def _preprocessing(v: Any) -> Preprocessing:
    if isinstance(v, Preprocessing):
        return v
    return Preprocessing.from_dict(v)  # ValueError names the field


PreprocessingField = Annotated[Preprocessing, BeforeValidator(_preprocessing), PlainSerializer(lambda p: p.to_dict())]


class _Block(BaseModel):
    """A manifest block: validated on construction; unknown keys kept (records of provenance). Edits in place are
    validated when the manifest is written (:func:`write_manifest` validates the whole)."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def to_dict(self) -> dict:
        """The block as JSON-able data, as the manifest stores it (fields that are None are left out)."""
        return self.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------------------------------------ blocks
class FileRecord(_Block):
    """A file of the artifact: ``file`` (relative name inside the folder), ``sha256`` (hex), ``size_bytes``."""

    file: FileName
    sha256: Sha256
    size_bytes: Size


class ArrayFile(FileRecord):
    """A ``.npz`` of float32 arrays (``head.npz``, ``explanation.npz``): ``arrays`` maps name -> shape."""

    arrays: dict[StrictStr, list[Annotated[StrictInt, Field(ge=0)]]] = Field(default_factory=dict)


class Parity(_Block):
    """ONNX Runtime vs PyTorch on the same inputs at export: max |Δ| per output (float32 units)."""

    reference: StrictStr = "pytorch_fp32"
    inputs: Annotated[StrictInt, Field(ge=0)]
    max_abs_logit_diff: Number
    max_abs_p_synthetic_diff: Optional[Number] = None


class HeldOut(_Block):
    """Fidelity of one precision on held-out images (AP, accuracy; vs FP32: ΔAP, |Δp|, agreement, cosines)."""

    images: Annotated[StrictInt, Field(ge=0)]
    ap: Optional[Number] = None
    accuracy: Optional[Number] = None


class Fidelity(_Block):
    """Figures measured at export: ONNX Runtime vs PyTorch parity, held-out figures, and held-out figures of the same
    graph on other backends (``held_out_backends``, e.g. ``"openvino"``, ``"openvino-bf16"``)."""

    pytorch_parity: Optional[Parity] = None
    held_out: Optional[HeldOut] = None
    held_out_backends: dict[StrictStr, HeldOut] = Field(default_factory=dict)


class OrtOptions(_Block):
    """ONNX Runtime settings a graph needs: session config entries (string -> string), disabled optimizers."""

    session_config: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    disabled_optimizers: list[StrictStr] = Field(default_factory=list)


class ModelEntry(FileRecord):
    """One precision's ONNX graph (``models[precision]``), its external-data files and how it was made."""

    precision: Precision
    external_data: list[FileRecord] = Field(default_factory=list)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    conversion: Optional[dict[str, Any]] = None      # FP16: ModelOpt AutoCast record
    quantization: Optional[dict[str, Any]] = None    # INT8: ModelOpt PTQ record
    onnxruntime: Optional[OrtOptions] = None
    #: INT8 graphs: integer sums must be exact; on x86-64 CPUs without VNNI/AMX the runtime then picks ONNX Runtime's
    #: exact U8U8 kernel (decided where the artifact runs, from the CPU: sid_edge.runtime.cpu_features).
    needs_exact_int8_accumulation: Optional[StrictBool] = None

    def files(self) -> list[FileRecord]:
        """The graph file and its external-data files."""
        return [self, *self.external_data]


class BatchProfileRecord(_Block):
    input: StrictStr = INPUT_NAME
    min_batch: PositiveInt
    opt_batch: PositiveInt
    max_batch: PositiveInt

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"needs min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                             f"{self.max_batch}")
        return self


class EngineEntry(FileRecord):
    """A TensorRT engine built from one precision's graph, for one TensorRT release and compute capability."""

    precision: Precision
    source_model: FileName
    source_sha256: Optional[Sha256] = None
    strongly_typed: StrictBool = True
    profile: BatchProfileRecord
    tensorrt_version: StrictStr
    gpu_name: StrictStr
    compute_capability: StrictStr
    builder_optimization_level: Optional[Annotated[StrictInt, Field(ge=0, le=5)]] = None
    workspace_bytes: Optional[Size] = None
    timing_cache: Optional[FileName] = None
    build_seconds: Optional[Number] = None
    created: Optional[StrictStr] = None


class Backbone(_Block):
    """The CLIP backbone the graph fuses: open_clip name and weights identity, the feature the head reads."""

    model_name: StrictStr
    pretrained: StrictStr
    pretrained_sha256: Optional[StrictStr] = None
    quick_gelu: StrictBool
    feature: StrictStr
    feature_dim: PositiveInt
    embed_dim: PositiveInt
    image_size: PositiveInt

    @property
    def random_weights(self) -> bool:
        """True when the backbone was exported with random weights (its scores mean nothing)."""
        return self.pretrained.lower() == "none"


class Head(_Block):
    """The head fused after the backbone: kind, k directions, the feature it reads, where it came from."""

    kind: Literal["orthogonal", "linear", "concepts"]
    k: PositiveInt
    feature: StrictStr
    source: StrictStr = "?"
    trained_on_backbone: Optional[dict[str, Any]] = None
    training: Optional[dict[str, Any]] = None
    weights: Optional[ArrayFile] = None


class Concept(_Block):
    name: StrictStr
    category: Optional[StrictStr] = None
    positive: Optional[StrictStr] = None
    negative: Optional[StrictStr] = None


class Vocabulary(_Block):
    """Concepts whose scores the graph outputs (``concept_scores`` [B,C]), in graph order."""

    source: StrictStr
    sha256: Optional[StrictStr] = None
    template: StrictStr = "{}"
    score: Optional[StrictStr] = None
    count: Annotated[StrictInt, Field(ge=0)]
    concepts: list[Concept]
    top_concepts_by: Literal["concept_scores", "concept_contributions"] = "concept_scores"

    @model_validator(mode="after")
    def _count_matches(self):
        if self.count != len(self.concepts):
            raise ValueError(f"count {self.count} but {len(self.concepts)} concepts listed")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]


class ConceptModel(_Block):
    """The paper's concept bottleneck model fused into the graph (``concept_logit``, ``concept_contributions``)."""

    source: StrictStr
    is_head: StrictBool = False
    concepts: Optional[Any] = None
    temperature: Optional[Number] = None
    bias: Optional[Number] = None


class GraphInput(_Block):
    name: StrictStr
    shape: list[Dim]
    dtype: Literal["float32"] = "float32"


class GraphOutput(_Block):
    name: StrictStr
    shape: list[Dim]
    dtype: StrictStr = "float32"


class ThresholdChoice(_Block):
    """How the threshold was chosen (``evaluate --threshold-from … --write-threshold``)."""

    method: StrictStr
    data: StrictStr
    location: Optional[StrictStr] = None
    split: Optional[StrictStr] = None
    target_fpr: Probability
    achieved_fpr: Probability
    tpr: Optional[Probability] = None
    n_real: Annotated[StrictInt, Field(ge=0)]
    n_synthetic: Optional[Annotated[StrictInt, Field(ge=0)]] = None


class UncertainBand(_Block):
    """Scores too close to the threshold to trust (``evaluate --perturb … --write-band``): p_synthetic in the closed
    interval [``low``, ``high``] is reported as "uncertain". Derived at ``threshold`` (the band is ignored by the
    runtime once the manifest's threshold leaves it) from the measured ``perturbations`` on ``data``; ``method``
    says how (see :mod:`sid_edge.robustness.stability`)."""

    low: Probability
    high: Probability
    threshold: Probability
    method: StrictStr
    coverage: Probability = 1.0
    perturbations: list[StrictStr] = Field(default_factory=list)
    data: list[StrictStr] = Field(default_factory=list)
    pairs: Annotated[StrictInt, Field(ge=0)] = 0
    flips: Annotated[StrictInt, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low <= self.threshold <= self.high:
            raise ValueError(f"needs low <= threshold <= high, got {self.low}, {self.threshold}, {self.high}")
        return self


class Calibration(_Block):
    """The INT8 calibration set: where it was drawn, how, counts, and every image id (excluded from evaluation)."""

    data: StrictStr
    location: Optional[StrictStr] = None
    split: Optional[StrictStr] = None
    seed: Optional[StrictInt] = None
    images: Annotated[StrictInt, Field(ge=0)]
    by_label: dict[StrictStr, Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=dict)
    by_source: dict[StrictStr, Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=dict)
    image_ids: list[StrictStr] = Field(default_factory=list)
    #: sha256 of each calibration image's bytes: evaluation excludes by content, whatever the path's spelling.
    image_sha256: list[Sha256] = Field(default_factory=list)


class FidelitySet(_Block):
    data: StrictStr
    split: Optional[StrictStr] = None
    images: Annotated[StrictInt, Field(ge=0)]


class Manifest(_Block):
    """The whole ``manifest.json`` (schema :data:`SCHEMA_VERSION`). Construct from JSON data with
    :func:`parse_manifest` (ManifestError on any bad field) and write with :func:`write_manifest`."""

    format: Literal["sid-edge-detector"]
    schema_version: StrictInt
    created: Optional[StrictStr] = None
    backbone: Backbone
    preprocessing: PreprocessingField
    decoding: Optional[dict[StrictStr, StrictStr]] = None
    head: Head
    vocabulary: Optional[Vocabulary] = None
    concept_model: Optional[ConceptModel] = None
    threshold: Probability
    threshold_on: Literal["p_synthetic"] = "p_synthetic"
    threshold_choice: Optional[ThresholdChoice] = None
    uncertain_band: Optional[UncertainBand] = None
    input: GraphInput
    outputs: list[GraphOutput]
    models: dict[Precision, ModelEntry]
    explanation: Optional[ArrayFile] = None
    default_precision: Optional[Precision] = None
    engines: list[EngineEntry] = Field(default_factory=list)
    opset: Optional[PositiveInt] = None
    libraries: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    calibration: Optional[Calibration] = None
    fidelity_set: Optional[FidelitySet] = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.schema_version < 1 or self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not one this sid-edge reads (1..{SCHEMA_VERSION}); "
                             f"upgrade sid-edge")
        if not self.models:
            raise ValueError("models: the artifact lists no model")
        for key, entry in self.models.items():
            if entry.precision != key:
                raise ValueError(f"models.{key}.precision is {entry.precision!r}")
        if self.default_precision is not None and self.default_precision not in self.models:
            raise ValueError(f"default_precision {self.default_precision!r} is not among models ({', '.join(self.models)})")
        shape = self.input.shape
        if self.input.name != INPUT_NAME:
            raise ValueError(f"input.name {self.input.name!r} (the runtime feeds {INPUT_NAME!r})")
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or not isinstance(shape[2], int):
            raise ValueError(f"input.shape {shape}: expected [batch, 3, S, S]")
        if shape[2] != self.preprocessing.size:
            raise ValueError(f"preprocessing.size {self.preprocessing.size} does not match the graph's input side "
                             f"{shape[2]} (input.shape)")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"outputs: duplicate names in {names}")
        missing = [n for n in OUTPUT_NAMES[:3] if n not in names]
        if missing:
            raise ValueError(f"outputs: missing {', '.join(missing)}")
        if self.vocabulary is not None:
            scores = next((o for o in self.outputs if o.name == CONCEPT_SCORES), None)
            if scores is None:
                raise ValueError("outputs: a vocabulary needs the concept_scores output")
            if scores.shape[-1] != self.vocabulary.count:
                raise ValueError(f"outputs.concept_scores.shape {scores.shape} vs vocabulary.count {self.vocabulary.count}")
        if self.concept_model is not None and not all(n in names for n in CONCEPT_MODEL_OUTPUTS):
            raise ValueError(f"outputs: a concept model needs {', '.join(CONCEPT_MODEL_OUTPUTS)}")
        return self

    # ---- conveniences the runtime uses
    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def preferred_precision(self) -> str:
        """``default_precision``, else fp32 when present, else the first model."""
        return self.default_precision or ("fp32" if "fp32" in self.models else next(iter(self.models)))

    @property
    def concept_names(self) -> list[str]:
        """Concept names in graph order ([] without a vocabulary)."""
        return self.vocabulary.names if self.vocabulary else []


# ------------------------------------------------------------------------------------------------ errors
def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith(("function-", "json-or-python"))))


def _explain(e: ValidationError, max_errors: int = 3) -> str:
    parts = []
    for err in e.errors(include_url=False)[:max_errors]:
        where = _field(err["loc"]) or "manifest"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r:.60})"
        parts.append(f"{where}: {msg}{shown}")
    more = len(e.errors()) - max_errors
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_manifest(data: Any, where: str | os.PathLike = MANIFEST_NAME) -> Manifest:
    """Validate JSON data as a :class:`Manifest`. Raises ManifestError naming ``where`` and the bad field(s)."""
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise ManifestError(f"{where}: not a sid-edge detector manifest (format {fmt!r})")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ManifestError(f"{where}: schema version {version} is newer than this sid-edge understands "
                            f"({SCHEMA_VERSION}); upgrade sid-edge")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(f"{where}: {_explain(e)}") from None
    except (ValueError, TypeError) as e:  # raised by a field's own constructor (e.g. Preprocessing)
        raise ManifestError(f"{where}: {e}") from None


# Bound the work a hostile manifest can cause: real ones are tens of kB (calibration ids included).
MAX_MANIFEST_BYTES = 64 << 20


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and validate ``directory/manifest.json``.

    Raises ManifestError naming the path: no such folder or manifest, a manifest over 64 MiB, invalid JSON,
    another format, a newer schema, or any field of the wrong type or out of range (named by its dotted path).
    """
    d = Path(directory)
    path = d / MANIFEST_NAME
    if d.is_file():
        hint = f"; pass its folder, {d.parent}" if (d.parent / MANIFEST_NAME).is_file() else ""
        raise ManifestError(f"{d}: is a file; a detector artifact is the folder holding manifest.json{hint}")
    if not d.is_dir():
        raise ManifestError(f"{d}: not a detector artifact directory (it does not exist or is not a folder)")
    if not path.is_file():
        raise ManifestError(f"{path}: missing; a detector artifact is a folder written by `sid-edge export`")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {path.stat().st_size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read ({e.strerror or e})") from None
    return parse_manifest(data, path)


def write_manifest(directory: str | os.PathLike, manifest: Manifest | dict) -> Path:
    """Validate and write ``directory/manifest.json`` (pretty, UTF-8) atomically. Returns its path.

    Raises ManifestError when ``manifest`` does not validate (nothing is written then)."""
    m = manifest if isinstance(manifest, Manifest) else parse_manifest(manifest, Path(directory) / MANIFEST_NAME)
    m = parse_manifest(m.to_dict(), Path(directory) / MANIFEST_NAME)  # re-validate after in-place edits
    return write_text_atomic(Path(directory) / MANIFEST_NAME, json.dumps(m.to_dict(), indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def update_manifest(directory: str | os.PathLike) -> Iterator[Manifest]:
    """Read the manifest, let the caller change it, then validate and write it atomically.

    Nothing is written when the block raises or the result does not validate (ManifestError)."""
    m = read_manifest(directory)
    yield m
    write_manifest(directory, m)


# ------------------------------------------------------------------------------------------------ operations
def set_threshold(directory: str | os.PathLike, threshold: float, choice: dict | ThresholdChoice | None = None) -> Path:
    """Set the decision threshold (on p_synthetic, in [0, 1]) and, optionally, how it was chosen. An uncertain
    band derived at another threshold is dropped (it described the old decision boundary)."""
    with update_manifest(directory) as m:
        m.threshold = threshold
        if m.uncertain_band is not None and m.uncertain_band.threshold != float(threshold):
            m.uncertain_band = None
        if choice is not None:
            m.threshold_choice = choice if isinstance(choice, ThresholdChoice) else ThresholdChoice.model_validate(choice)
    return Path(directory) / MANIFEST_NAME


def set_uncertain_band(directory: str | os.PathLike, band: dict | UncertainBand | None) -> Path:
    """Store (or, with None, remove) the ``uncertain_band``. Raises ManifestError when the band does not hold the
    manifest's current threshold or does not validate (nothing is written then)."""
    try:
        b = band if band is None or isinstance(band, UncertainBand) else UncertainBand.model_validate(band)
    except ValidationError as e:
        raise ManifestError(f"{Path(directory) / MANIFEST_NAME}: uncertain_band: {_explain(e)}") from None
    with update_manifest(directory) as m:
        if b is not None and b.threshold != m.threshold:
            raise ManifestError(f"{Path(directory) / MANIFEST_NAME}: the band was derived at threshold {b.threshold}, "
                                f"the manifest's is {m.threshold}")
        m.uncertain_band = b
    return Path(directory) / MANIFEST_NAME


def add_engine(directory: str | os.PathLike, entry: dict | EngineEntry) -> EngineEntry:
    """Record a TensorRT engine, replacing an entry for the same precision, TensorRT release (major.minor.patch;
    the fourth field is the build) and compute capability."""
    e = entry if isinstance(entry, EngineEntry) else EngineEntry.model_validate(entry)

    def key(x: EngineEntry) -> tuple:
        return x.precision, tuple(x.tensorrt_version.split(".")[:3]), x.compute_capability

    with update_manifest(directory) as m:
        keep = [x for x in m.engines if key(x) != key(e)]
        m.engines = [*keep, e]
    return e


def set_models(directory: str | os.PathLike, models: dict[str, dict | ModelEntry], *, default_precision: str | None = None,
               **blocks: Any) -> Manifest:
    """Replace the models (precision variants) and, optionally, the ``calibration``/``fidelity_set``/``libraries``
    blocks given as keywords. Returns the written manifest."""
    with update_manifest(directory) as m:
        m.models = {p: (e if isinstance(e, ModelEntry) else ModelEntry.model_validate(e)) for p, e in models.items()}
        if default_precision or m.default_precision not in m.models:
            m.default_precision = default_precision or ("fp32" if "fp32" in m.models else next(iter(m.models), None))
        for name, value in blocks.items():
            setattr(m, name, value)
    return m


# ------------------------------------------------------------------------------------------------ files
def artifact_path(directory: str | os.PathLike, name: str) -> Path:
    """``directory/name`` for a file the manifest lists, refused (ManifestError) when it would leave the folder."""
    try:
        return confined(directory, name)
    except UnsafeName as e:
        raise ManifestError(f"{Path(directory) / MANIFEST_NAME}: {e}") from None


def file_entry(directory: str | os.PathLike, name: str) -> dict:
    """``{"file", "sha256", "size_bytes"}`` of ``directory/name`` (for writers)."""
    p = Path(directory) / name
    return {"file": name, "sha256": sha256_file(p), "size_bytes": p.stat().st_size}


def model_entry(manifest: Manifest, precision: str) -> ModelEntry:
    """The ``models[precision]`` entry. Raises ManifestError listing the precisions the artifact has."""
    if precision not in manifest.models:
        raise ManifestError(f"the artifact has no {precision!r} model (it has: {', '.join(manifest.models) or 'none'})")
    return manifest.models[precision]


def verify_files(directory: str | os.PathLike, entry: FileRecord, check_hash: bool = True) -> None:
    """Check that an entry's file (and its external-data files) exist inside the artifact folder with the recorded
    size and sha256, before any of it is loaded.

    Raises ManifestError naming the file and what differs. A name that leaves the folder is refused without looking
    at what it points to (so a manifest cannot probe files elsewhere).
    """
    records = entry.files() if isinstance(entry, ModelEntry) else [entry]
    for f in records:
        p = artifact_path(directory, f.file)
        if not p.is_file():
            raise ManifestError(f"{p}: listed in the manifest but missing")
        size = p.stat().st_size
        if size != f.size_bytes:
            raise ManifestError(f"{p}: size {size} bytes, the manifest says {f.size_bytes}; the file is damaged or replaced")
        if check_hash and sha256_file(p) != f.sha256:
            raise ManifestError(f"{p}: sha256 does not match the manifest; the file is damaged or replaced")
    if isinstance(entry, ModelEntry):
        # Every file the graph makes ONNX Runtime open must be one of the verified files above.
        graph = artifact_path(directory, entry.file)
        try:
            referenced = external_data_locations(graph)
        except (OSError, ValueError) as e:
            raise ManifestError(f"{graph}: cannot read its external-data references ({e})") from None
        listed = {f.file for f in entry.external_data}
        unlisted = sorted(referenced - listed)
        if unlisted:
            raise ManifestError(f"{graph}: the graph references external data the manifest does not list for "
                                f"{entry.precision} ({', '.join(map(repr, unlisted[:3]))}); refusing to load unverified files")
