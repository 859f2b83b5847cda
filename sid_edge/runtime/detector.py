"""The runtime: load a detector artifact and score images (torch-free; numpy, Pillow, ONNX Runtime or TensorRT).

    >>> det = Detector.load("my-detector")                      # verifies manifest and sha256 first
    >>> results = det.predict(["a.jpg", rgb_array])            # paths or HxWx3 uint8 arrays in RGB order
    >>> results[0].p_synthetic, results[0].prediction
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sid_edge.runtime.backends import BACKEND_CHOICES, Backend, BackendChoice, open_backend
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS
from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.artifact.manifest import Manifest, read_manifest
from sid_edge.runtime.batching import Batch, iter_batches
from sid_edge.runtime.concept_ranking import DEFAULT_TOP_CONCEPTS, ConceptHit, top_concepts

log = logging.getLogger(__name__)

BACKENDS = BACKEND_CHOICES


@dataclass
class Prediction:
    """One image's result.

    ``p_synthetic`` in [0,1] (sigmoid of ``logit``); ``prediction`` is "synthetic" when p_synthetic >= threshold,
    else "real" — or "uncertain" when the detector has an uncertain band (manifest ``uncertain_band``, written by
    ``evaluate --perturb … --write-band``) and p_synthetic lies inside it (p_synthetic itself is unchanged); ``head_activations`` float32 [k]. For an image that could not be decoded, the scores are None,
    ``prediction`` is None and ``error`` says why.

    Artifacts with a vocabulary add ``concept_scores`` float32 [C] (cosines, names in ``Detector.concept_names``)
    and ``top_concepts`` (see :mod:`sid_edge.runtime.concept_ranking`); with a concept model also ``concept_logit`` and
    ``concept_contributions`` float32 [C] (its per-concept terms; they sum, plus a bias, to concept_logit).

    ``provenance``: the image's provenance signals as JSON-able dicts (kind, assertion, trust, ...) when the
    detector has a ``provenance_reader`` (see :func:`sid_edge.provenance.attach`), else None. Separate evidence:
    it never changes p_synthetic.
    """

    source: object  # the path (or dataset reference) given, or the input's position for in-memory inputs
    p_synthetic: float | None
    logit: float | None
    prediction: str | None
    head_activations: np.ndarray | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)
    concept_scores: np.ndarray | None = None
    concept_logit: float | None = None
    concept_contributions: np.ndarray | None = None
    top_concepts: list[ConceptHit] = field(default_factory=list)
    provenance: list[dict] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """JSON-ready result: source (path as text, or the input's index), p_synthetic, logit, prediction, error,
        head_activations and concept outputs as lists of floats, top_concepts as ``{"name", "score"[,
        "contribution"]}``. ``json.dumps`` accepts it."""
        def floats(a):
            return None if a is None else [float(v) for v in np.asarray(a).ravel()]

        src = self.source
        out = {"source": src if isinstance(src, int) else os.fsdecode(src) if isinstance(src, (str, os.PathLike)) else str(src),
               "p_synthetic": self.p_synthetic, "logit": self.logit, "prediction": self.prediction, "error": self.error,
               "head_activations": floats(self.head_activations)}
        if self.concept_scores is not None:
            out["concept_scores"] = floats(self.concept_scores)
            out["top_concepts"] = [h.to_dict() for h in self.top_concepts]
        if self.concept_logit is not None:
            out["concept_logit"] = self.concept_logit
            out["concept_contributions"] = floats(self.concept_contributions)
        if self.provenance is not None:
            out["provenance"] = self.provenance
        if "stability" in self.extra:
            out["stability"] = self.extra["stability"]
        return out


class Detector:
    """A loaded detector artifact with an inference backend.

    Build with :meth:`load`. ``threshold`` (on p_synthetic) defaults to the manifest's. ``top_concepts`` (default
    3) is how many top concepts each Prediction carries when the artifact has a vocabulary; set it before
    predicting (0 for none; ``concept_scores`` always hold all C). ``stability_checker`` (default None): a callable
    (source, Prediction) -> JSON-able dict stored in ``Prediction.extra["stability"]`` for each scored image (the
    runtime knows only this interface; :func:`sid_edge.robustness.attach_stability` installs one).
    ``provenance_reader`` (default None): a callable
    source -> list of JSON-able signal dicts set on each Prediction's ``provenance`` (the runtime knows only this
    interface; :func:`sid_edge.provenance.attach` installs one). ``band``: the uncertain band (low, high) on
    p_synthetic in use, or None (no band in the manifest, switched off with ``use_band=False``, or a threshold
    outside the band).
    """

    def __init__(self, directory: Path, manifest: Manifest, backend: Backend, precision: str, threshold: float | None = None,
                 choice: BackendChoice | None = None, use_band: bool = True):
        self.directory = directory
        self.manifest = manifest
        self.backend = backend  # the Backend object; str(backend) is its name
        self.backend_choice = choice
        self._backend_name = backend.name
        self.precision = precision
        self.preprocessing: Preprocessing = manifest.preprocessing
        self.threshold = float(manifest.threshold if threshold is None else threshold)
        self.output_names = manifest.output_names
        #: Concept names in the column order of concept_scores / concept_contributions ([] without a vocabulary).
        self.concept_names = manifest.concept_names
        self.top_concepts = DEFAULT_TOP_CONCEPTS
        self.provenance_reader = None
        self.stability_checker = None
        self.band: tuple[float, float] | None = None
        b = manifest.uncertain_band
        if use_band and b is not None and b.low < b.high:
            if b.low <= self.threshold <= b.high:
                self.band = (float(b.low), float(b.high))
            else:
                log.warning("uncertain band [%g, %g] ignored: threshold %g lies outside it", b.low, b.high, self.threshold)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        precision: str | None = None,
        backend: str = "auto",
        threshold: float | None = None,
        verify: bool = True,
        threads: int | None = None,
        allow_fallback: bool = False,
        device: str | None = None,
        use_band: bool = True,
    ) -> "Detector":
        """Load an artifact written by ``sid-edge export``.

        Args:
            directory: the artifact folder (``manifest.json`` + model files).
            precision: which model variant to run (``fp32``, ``fp16``, ``int8``), or ``bf16`` (the FP32 graph with
                OpenVINO's BF16 inference hint; OpenVINO only); default: the manifest's ``default_precision``
                (``fp32`` when the artifact has it).
            backend: ``auto`` (the fastest available: a TensorRT engine of ``precision`` that fits this GPU and
                TensorRT, else ONNX Runtime CUDA, else OpenVINO where installed and faster for ``precision``
                (INT8, BF16), else ONNX Runtime CPU), ``tensorrt``, ``cuda``, ``openvino`` or ``cpu``.
                ``backend_choice.describe()`` says which ran and why.
            threshold: override the manifest's decision threshold on p_synthetic.
            verify: check the file's size and sha256 against the manifest before loading (a wrong model or
                engine file is refused before it runs).
            threads: ONNX Runtime intra-op / OpenVINO inference threads (default: the library's own choice).
            allow_fallback: when the explicitly requested backend cannot run here (no TensorRT, no GPU, an engine
                built for another TensorRT release or GPU architecture), run on ONNX Runtime (CUDA, else CPU)
                instead of refusing.
            device: OpenVINO device (``CPU``, ``GPU``, ``NPU``, ``AUTO``; default ``CPU``); ignored by the others.
            use_band: report "uncertain" for p_synthetic inside the manifest's ``uncertain_band`` (False: only
                "synthetic"/"real").

        Raises:
            ManifestError: missing/malformed manifest, missing or altered model file, graph I/O that does not
                match the manifest. BackendUnavailable (a ValueError): the backend cannot run here and no fallback
                is allowed; the message says why and how to rebuild. ValueError: unknown backend.
        """
        d = Path(directory)
        manifest = read_manifest(d)
        warn_if_random_weights(manifest, d)
        precision = precision or default_precision(manifest)
        runner, choice = open_backend(d, manifest, precision, backend, allow_fallback=allow_fallback,
                                      verify=verify, threads=threads, device=device)
        if choice.fallback:
            log.warning("backend %s", choice.describe())
        return cls(d, manifest, runner, precision, threshold, choice, use_band=use_band)

    @property
    def backend_name(self) -> str:
        """"tensorrt", "onnxruntime-cuda", "openvino" or "onnxruntime-cpu"."""
        return self._backend_name

    @property
    def input_size(self) -> int:
        """Square input side S of the graph (pixels)."""
        return self.preprocessing.size

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on preprocessed pixel_values float32 [B,3,S,S]; returns every output by name
        (logit [B], p_synthetic [B], head_activations [B,k], ...).

        Raises RuntimeError after :meth:`close`."""
        if self.backend is None:
            raise RuntimeError(f"{self.directory}: this Detector is closed")
        return self.backend.run(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def close(self) -> None:
        """Release the backend (ONNX Runtime session, or TensorRT engine, GPU and pinned buffers). Idempotent;
        the Detector cannot predict afterwards. Also called on leaving a ``with Detector.load(...) as det:`` block."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def label(self, p_synthetic: float) -> str:
        """"uncertain" inside the band (low <= p <= high), else "synthetic" if p_synthetic >= threshold, else "real"."""
        if self.band is not None and self.band[0] <= p_synthetic <= self.band[1]:
            return "uncertain"
        return "synthetic" if p_synthetic >= self.threshold else "real"

    def predict_batches(
        self,
        sources: Iterable,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterable[list[Prediction]]:
        """Stream results batch by batch (in input order) while later images decode in worker threads."""
        reader, checker = self.provenance_reader, self.stability_checker
        originals: dict[int, object] = {}  # inputs of the batches in flight, for the provenance reader / checker

        def remember(items):
            for i, src in enumerate(items):
                originals[i] = src
                yield src

        stream = remember(sources) if reader is not None or checker is not None else sources
        for batch in iter_batches(stream, self.preprocessing, batch_size, workers=workers, max_pixels=max_pixels):
            preds = self._score(batch)
            if reader is not None or checker is not None:
                for item, pred in zip(batch.items, preds):
                    original = originals.pop(item.index)
                    if reader is not None:
                        pred.provenance = self._provenance(original)
                    if checker is not None and pred.ok:
                        pred.extra["stability"] = self._stability(original, pred)
            yield preds

    def predict(self, images, *, batch_size: int = 8, workers: int | None = None) -> list[Prediction]:
        """Score images: file paths (str/PathLike), encoded bytes (bytes, bytearray, memoryview, a binary file
        object), PIL images, or HxWx3 uint8 numpy arrays in RGB channel order (convert OpenCV's BGR frames with
        ``frame[..., ::-1]``); a sequence of them, or one of them alone (a numpy array is one image unless it is 4-D,
        ``(N, H, W, 3)``, a stack of N frames; an array of another dtype or shape gets one ``error``). Returns one Prediction per input, in order;
        undecodable inputs get ``error`` set instead of raising. PIL images are copied in the calling thread (Pillow
        objects are not thread-safe) and turned upright by their EXIF orientation, like a file passed by path."""
        if _is_single_input(images):
            images = [images]
        out: list[Prediction] = []
        for preds in self.predict_batches(images, batch_size=batch_size, workers=workers):
            out.extend(preds)
        return out

    def stream(self, frames: Iterable, *, batch_size: int = 8, max_latency_ms: float = 100.0,
               bgr: bool = False, workers: int | None = None) -> Iterator[Prediction]:
        """Score an endless stream of in-memory frames, yielding one Prediction per frame, in order, as soon as
        its micro-batch has run: a batch runs when it holds ``batch_size`` frames or when its first frame has
        waited ``max_latency_ms`` milliseconds. Frames are preprocessed in a producer thread while the previous
        batch runs; at most ``2 * batch_size + 1`` frames are in flight, so memory stays flat over a long stream.

        ``frames``: HxWx3 uint8 arrays in RGB order (``bgr=True`` for OpenCV's BGR), or tuples whose last element
        is such an array, e.g. the ``(frame_index, time_s, rgb)`` frames of :func:`sid_edge.streams.read_frames`;
        ``Prediction.source`` is the rest of the tuple, or the frame's 0-based position for a bare array. A frame of
        another shape/dtype gets ``error`` set. ``workers``: preprocessing threads (default: one per core, at least
        2). See :mod:`sid_edge.runtime.streaming`."""
        from sid_edge.runtime.streaming import micro_batches

        for batch in micro_batches(frames, self.preprocessing, batch_size=batch_size, max_latency_ms=max_latency_ms,
                                   bgr=bgr, workers=workers):
            yield from self._score(batch)

    def _score(self, batch: Batch) -> list[Prediction]:
        results = {}
        pixels = batch.pixel_values
        if pixels is not None:
            outs = self.run(pixels)
            for j, item in enumerate(batch.ok):
                p = float(outs["p_synthetic"][j])
                results[item.index] = self._with_concepts(Prediction(
                    source=item.source,
                    p_synthetic=p,
                    logit=float(outs["logit"][j]),
                    prediction=self.label(p),
                    head_activations=outs["head_activations"][j],
                ), outs, j)
        return [
            results.get(it.index) or Prediction(it.source, None, None, None, None, error=it.error)
            for it in batch.items
        ]

    def _stability(self, source, pred: Prediction) -> dict:
        try:
            return dict(self.stability_checker(source, pred))
        except Exception as e:  # noqa: BLE001 - a checker must not cost a row; the row says why it has no figures
            log.warning("stability checker failed on %r", source, exc_info=True)
            return {"error": f"{type(e).__name__}: {e}"}

    def _provenance(self, source) -> list[dict]:
        try:
            return list(self.provenance_reader(source))
        except Exception:  # noqa: BLE001 - a reader must not cost a row; it reports its own problems
            log.warning("provenance reader failed on %r", source, exc_info=True)
            return []

    def _with_concepts(self, pred: Prediction, outs: dict[str, np.ndarray], j: int) -> Prediction:
        """Attach row ``j``'s concept outputs and its ``self.top_concepts`` top concepts (when the graph has them)."""
        if "concept_scores" in outs:
            pred.concept_scores = outs["concept_scores"][j]
            if "concept_contributions" in outs:
                pred.concept_contributions = outs["concept_contributions"][j]
                pred.concept_logit = float(outs["concept_logit"][j])
            pred.top_concepts = top_concepts(self.concept_names, pred.concept_scores, pred.concept_contributions,
                                             self.top_concepts)
        return pred

_WARNED_RANDOM: set[str] = set()


def warn_if_random_weights(manifest: Manifest, directory) -> bool:
    """Log a warning (every time an artifact is used) when its backbone has random weights: its scores mean nothing.
    Returns whether it has."""
    if manifest.backbone.random_weights:
        key = os.path.abspath(os.fspath(directory))
        if key in _WARNED_RANDOM:  # once per artifact and process: a command that loads it five times warns once
            return True
        _WARNED_RANDOM.add(key)
        log.warning("%s: the CLIP backbone of this artifact has RANDOM weights (%s, pretrained none): its "
                    "p_synthetic scores are meaningless; use it only for pipeline, scale and speed checks",
                    directory, manifest.backbone.model_name)
        return True
    return False


def _is_single_input(x) -> bool:
    """One image rather than a sequence of them (a str would otherwise be iterated character by character)."""
    from PIL import Image

    return (isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))
            # Any array but an (N, H, W, C) stack is one image: a wrong dtype or shape gets one error, not a row each.
            or (isinstance(x, np.ndarray) and x.ndim != 4)
            or (hasattr(x, "read") and not isinstance(x, (list, tuple))))


def default_precision(manifest: Manifest) -> str:
    """The manifest's ``default_precision``; else ``fp32`` when present; else its first model."""
    return manifest.preferred_precision
