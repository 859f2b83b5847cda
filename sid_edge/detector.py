"""The runtime: load a detector artifact and score images (torch-free; numpy, Pillow, ONNX Runtime).

    >>> det = Detector.load("my-detector")                      # verifies manifest and sha256 first
    >>> results = det.predict(["a.jpg", rgb_array])            # paths or HxWx3 uint8 arrays in RGB order
    >>> results[0].p_synthetic, results[0].prediction
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sid_edge.imageio import DEFAULT_MAX_PIXELS, Preprocessing
from sid_edge.manifest import INPUT_NAME, ManifestError, model_entry, read_manifest, verify_files
from sid_edge.pipeline import Batch, iter_batches

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")


@dataclass
class Prediction:
    """One image's result.

    ``p_synthetic`` in [0,1] (sigmoid of ``logit``); ``prediction`` is "synthetic" when p_synthetic >= threshold,
    else "real"; ``head_activations`` float32 [k]. For an image that could not be decoded, the scores are None,
    ``prediction`` is None and ``error`` says why.
    """

    source: object
    p_synthetic: float | None
    logit: float | None
    prediction: str | None
    head_activations: np.ndarray | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Detector:
    """A loaded detector artifact with an inference backend.

    Build with :meth:`load`. ``threshold`` (on p_synthetic) defaults to the manifest's.
    """

    def __init__(self, directory: Path, manifest: dict, session, precision: str, threshold: float | None = None):
        self.directory = directory
        self.manifest = manifest
        self.session = session
        self.precision = precision
        self.preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
        self.threshold = float(manifest["threshold"] if threshold is None else threshold)
        self.output_names = [o["name"] for o in manifest["outputs"]]
        self.backend = _backend_name(session)

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
    ) -> "Detector":
        """Load an artifact written by ``sid-edge export``.

        Args:
            directory: the artifact folder (``manifest.json`` + model files).
            precision: which model variant to run (``fp32``, ``fp16``, ``int8``); default: the manifest's
                ``default_precision`` (``fp32`` when the artifact has it).
            backend: ``auto`` (CUDA when ONNX Runtime has it, else CPU), ``cpu`` or ``cuda``.
            threshold: override the manifest's decision threshold on p_synthetic.
            verify: check every file's size and sha256 against the manifest before loading (a wrong model file
                is refused before it runs).
            threads: ONNX Runtime intra-op threads (default: its own choice).

        Raises:
            ManifestError: missing/malformed manifest, missing or altered model file, graph I/O that does not
                match the manifest. ValueError: unknown backend or unavailable one.
        """
        import onnxruntime as ort

        d = Path(directory)
        manifest = read_manifest(d)
        precision = precision or default_precision(manifest)
        entry = model_entry(manifest, precision)
        verify_files(d, entry, check_hash=verify)
        providers = _providers(backend, ort.get_available_providers())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ONNX Runtime settings the exporter recorded for this graph: session config entries (e.g. exact INT8 GEMMs
        # on CPUs without VNNI) and graph transformers to skip (e.g. NchwcTransformer on FP16 graphs:
        # microsoft/onnxruntime#28392, a crash at session creation on x86-64).
        ort_settings = entry.get("onnxruntime", {})
        for key, value in ort_settings.get("session_config", {}).items():
            opts.add_session_config_entry(str(key), str(value))
        disabled = list(ort_settings.get("disabled_optimizers", []))
        try:
            session = ort.InferenceSession(str(d / entry["file"]), sess_options=opts, providers=providers,
                                           disabled_optimizers=disabled or None)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise ManifestError(f"{d / entry['file']}: ONNX Runtime could not load it ({e})") from e
        _check_graph_io(d / entry["file"], session, manifest)
        return cls(d, manifest, session, precision, threshold)

    @property
    def input_size(self) -> int:
        """Square input side S of the graph (pixels)."""
        return self.preprocessing.size

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on preprocessed pixel_values float32 [B,3,S,S]; returns every output by name
        (logit [B], p_synthetic [B], head_activations [B,k], ...)."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        outs = self.session.run(self.output_names, {INPUT_NAME: pixel_values})
        return dict(zip(self.output_names, outs))

    def label(self, p_synthetic: float) -> str:
        """"synthetic" if p_synthetic >= threshold else "real"."""
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
        for batch in iter_batches(sources, self.preprocessing, batch_size, workers=workers, max_pixels=max_pixels):
            yield self._score(batch)

    def predict(self, images: Sequence, *, batch_size: int = 8, workers: int | None = None) -> list[Prediction]:
        """Score images: file paths (str/PathLike), encoded bytes, PIL images, or HxWx3 uint8 numpy arrays in RGB
        channel order (convert OpenCV's BGR frames with ``frame[..., ::-1]``). Returns one Prediction per input,
        in order; undecodable inputs get ``error`` set instead of raising."""
        out: list[Prediction] = []
        for preds in self.predict_batches(images, batch_size=batch_size, workers=workers):
            out.extend(preds)
        return out

    def _score(self, batch: Batch) -> list[Prediction]:
        results = {}
        pixels = batch.pixel_values
        if pixels is not None:
            outs = self.run(pixels)
            for j, item in enumerate(batch.ok):
                p = float(outs["p_synthetic"][j])
                results[item.index] = Prediction(
                    source=item.source,
                    p_synthetic=p,
                    logit=float(outs["logit"][j]),
                    prediction=self.label(p),
                    head_activations=outs["head_activations"][j],
                )
        return [
            results.get(it.index) or Prediction(it.source, None, None, None, None, error=it.error)
            for it in batch.items
        ]


def default_precision(manifest: dict) -> str:
    """The manifest's ``default_precision``; else ``fp32`` when present; else its first model."""
    models = manifest["models"]
    if manifest.get("default_precision") in models:
        return manifest["default_precision"]
    return "fp32" if "fp32" in models or not models else next(iter(models))


def _providers(backend: str, available: list[str]) -> list[str]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError("backend 'cuda' needs onnxruntime-gpu with a CUDA GPU; this ONNX Runtime has: " + ", ".join(available))
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if backend == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _backend_name(session) -> str:
    first = session.get_providers()[0]
    return {"CUDAExecutionProvider": "onnxruntime-cuda", "CPUExecutionProvider": "onnxruntime-cpu"}.get(first, first)


def _check_graph_io(path: Path, session, manifest: dict) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [manifest["input"]["name"]]:
        raise ManifestError(f"{path}: graph inputs {inputs} do not match the manifest ({manifest['input']['name']})")
    missing = [o["name"] for o in manifest["outputs"] if o["name"] not in outputs]
    if missing:
        raise ManifestError(f"{path}: graph lacks output(s) {missing} listed in the manifest")
