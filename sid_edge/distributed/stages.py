"""The two Ray Data stages of a distributed scan, and the ledger that counts what ran.

* :func:`decode_units` (Ray tasks on CPUs): read each unit's bytes (local file, pyarrow filesystem, parquet row
  group) and decode/preprocess them with the local scan's own code (:func:`sid_edge.runtime.batching` ``_load``),
  so pixels and error reasons are the same as ``sid-edge scan``'s.
* :class:`Scorer` (an actor in an ``ActorPoolStrategy`` pool): loads the artifact once (sha256-verified by
  :meth:`Detector.load`), scores batches with the detector's own batch scoring, returns result rows
  (:data:`RESULT_SCHEMA`).
* :class:`Ledger`: a small named actor that counts actor starts and rows scored, so the summary can say what
  Ray retried after a failure (rows scored more than once, actors started more than the pool size).
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
import pyarrow as pa

from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.distributed.inputs import LOCAL_FILE, PARQUET_ROWS, URI_FILE, uri_filesystem
from sid_edge.runtime.batching import Batch, Item, _load
from sid_edge.runtime.detector import Detector, Prediction

#: Largest object read from a store for one image (bytes); bigger objects get an error row. Local files are read
#: by the decoder itself, as in the local scan (its pixel limit bounds memory).
MAX_OBJECT_BYTES = 256 * 1024 * 1024

#: One result row: the local scan's fields, plus ``logit`` and ``concept_logit`` (null when not scored / no concept
#: model) and ``top_concepts`` as JSON ``[{"name", "score"[, "contribution"]}]`` at full precision (null without a
#: vocabulary or with --top-concepts 0); ``provenance`` the JSON list of provenance signals (null when not read).
RESULT_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("p_synthetic", pa.float64()),
    ("logit", pa.float64()),
    ("prediction", pa.string()),
    ("error", pa.string()),
    ("concept_logit", pa.float64()),
    ("top_concepts", pa.string()),
    ("provenance", pa.string()),
])

#: Columns of the unit table handed to :func:`decode_units`.
UNIT_SCHEMA = pa.schema([
    ("kind", pa.int8()),
    ("source", pa.string()),
    ("row_group", pa.int32()),
    ("first_row", pa.int64()),
    ("rows", pa.list_(pa.int32())),
])


def units_table(units) -> pa.Table:
    """:class:`~sid_edge.distributed.inputs.Unit` objects -> a table in :data:`UNIT_SCHEMA`."""
    return pa.table({
        "kind": [u.kind for u in units],
        "source": [u.source for u in units],
        "row_group": [u.row_group for u in units],
        "first_row": [u.first_row for u in units],
        "rows": [u.rows for u in units],
    }, schema=UNIT_SCHEMA)


# ------------------------------------------------------------------------------------------------ reading
_filesystems: dict[str, tuple] = {}


def _uri_location(uri: str):
    """(filesystem, path) for a URI, with one filesystem object per store and bucket/host in this worker."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    key = f"{parts.scheme}://{parts.netloc}"
    if key not in _filesystems:
        _filesystems[key] = uri_filesystem(uri)[0]
    # pyarrow's paths: "bucket/key" for object stores, the plain path for file:// and hdfs://
    path = f"{parts.netloc}{parts.path}" if parts.scheme in ("s3", "gs", "gcs") else parts.path
    return _filesystems[key], path


def _read_uri(uri: str) -> bytes:
    """The object's bytes. Raises OSError with a short reason (missing, too large, unreadable)."""
    from pyarrow import fs as pafs

    filesystem, path = _uri_location(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError("file not found")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError("is a directory" if info.type == pafs.FileType.Directory else "not a regular file")
    if info.size is not None and info.size > MAX_OBJECT_BYTES:
        raise OSError(f"object of {info.size} bytes exceeds the limit of {MAX_OBJECT_BYTES}")
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _open_parquet(source: str):
    if "://" not in source:
        return open(source, "rb")
    filesystem, path = _uri_location(source)
    return filesystem.open_input_file(path)


def _cell_bytes(value, source: str):
    """Bytes or a path out of an ``image`` cell: raw bytes, a path string, or the HF struct {bytes, path}
    (relative paths are taken from the parquet file's folder, as sid_edge.tools.datasets does)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        if "://" in value or os.path.isabs(value):
            target = value
        else:
            target = f"{base}/{value}"
        return _read_uri(target) if "://" in target else target
    raise ValueError("the image cell holds neither bytes nor a path")


def _decode(index: int, source, key: str, spec: Preprocessing, max_pixels: int) -> tuple[Item, object]:
    item = _load(index, source, spec, max_pixels)
    item.source = key
    return item, source


def _unit_items(unit: dict, spec: Preprocessing, max_pixels: int) -> Iterator[tuple[Item, object]]:
    """(item, what was decoded: the local path or the encoded bytes; None when nothing could be read)."""
    kind, source = unit["kind"], unit["source"]
    if kind == LOCAL_FILE:
        yield _decode(0, source, source, spec, max_pixels)  # the path itself, exactly as the local scan passes it
    elif kind == URI_FILE:
        try:
            data = _read_uri(source)
        except OSError as e:
            yield Item(0, source, None, str(e) or type(e).__name__), None
            return
        except Exception as e:  # pyarrow raises its own errors for network and permission problems
            yield Item(0, source, None, f"cannot read: {type(e).__name__}: {e}"), None
            return
        yield _decode(0, data, source, spec, max_pixels)
    elif kind == PARQUET_ROWS:
        import pyarrow.parquet as pq

        keys = [f"{source}#{unit['first_row'] + r}" for r in unit["rows"]]
        try:
            with _open_parquet(source) as f:
                column = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=["image"]).column(0)
        except Exception as e:  # a damaged row group: every row it holds gets the reason, none is lost
            for key in keys:
                yield Item(0, key, None, f"cannot read the parquet row group: {type(e).__name__}: {e}"), None
            return
        for r, key in zip(unit["rows"], keys):
            if r >= len(column):
                yield Item(0, key, None, "row missing from the parquet row group (file changed since listing?)"), None
                continue
            try:
                encoded = _cell_bytes(column[r].as_py(), source)
            except (ValueError, OSError) as e:
                yield Item(0, key, None, str(e)), None
                continue
            yield _decode(0, encoded, key, spec, max_pixels)
    else:
        raise ValueError(f"unknown unit kind {kind}")


_readers: dict[str, object] = {}


def _provenance_reader(options: dict):
    """One :class:`sid_edge.provenance.reader.ProvenanceReader` per worker process and option set."""
    key = json.dumps(options, sort_keys=True)
    if key not in _readers:
        from sid_edge.provenance import ProvenanceReader

        _readers[key] = ProvenanceReader(**options)
    return _readers[key]


def _provenance_json(reader, original) -> str:
    if reader is None:
        return ""
    try:
        return json.dumps(reader(original) if original is not None else [])
    except Exception:  # noqa: BLE001 - as Detector._provenance: a reader must not cost a row
        return "[]"


def _batch_dict(items: list[Item], size: int, provenance: list[str]) -> dict[str, np.ndarray]:
    pixels = np.zeros((len(items), 3, size, size), dtype=np.float32)  # zeros stand in for rows with an error
    for i, it in enumerate(items):
        if it.pixels is not None:
            pixels[i] = it.pixels
    return {
        "path": np.array([str(it.source) for it in items], dtype=object),
        "error": np.array([it.error or "" for it in items], dtype=object),
        "provenance": np.array(provenance, dtype=object),
        "pixels": pixels,
    }


def decode_units(units: pa.Table, *, preprocessing: dict, max_pixels: int, rows_per_batch: int,
                 provenance: dict | None = None) -> Iterator[dict]:
    """Ray Data ``map_batches`` function (task): a table of units (:data:`UNIT_SCHEMA`) -> batches of at most
    ``rows_per_batch`` rows ``{"path": str [n], "error": str [n] ("" when decoded), "provenance": str [n] (JSON
    list of signals; "" when ``provenance`` is None), "pixels": float32 [n,3,S,S]}``.

    ``provenance``: options of :class:`sid_edge.provenance.ProvenanceReader` (``c2pa_trust``, ``check_watermark``);
    the reader gets the file path or the encoded bytes, as the local scan's reader does.

    A generator, so a big parquet row group streams out in small batches (bounded memory). Never raises for one
    bad input: it becomes a row with ``error`` set, with the reason the local scan gives.
    """
    spec = Preprocessing.from_dict(preprocessing)
    reader = _provenance_reader(provenance) if provenance is not None else None
    items: list[Item] = []
    signals: list[str] = []
    for unit in units.to_pylist():
        for item, original in _unit_items(unit, spec, max_pixels):
            items.append(item)
            signals.append(_provenance_json(reader, original))
            if len(items) == rows_per_batch:
                yield _batch_dict(items, spec.size, signals)
                items, signals = [], []
    if items:
        yield _batch_dict(items, spec.size, signals)


# ------------------------------------------------------------------------------------------------ scoring
def prediction_rows(preds: list[Prediction]) -> pa.Table:
    """Predictions -> a table in :data:`RESULT_SCHEMA` (``path`` is ``str(pred.source)``)."""
    def concepts(p: Prediction):
        if not p.ok or not p.top_concepts and p.concept_scores is None:
            return None
        return json.dumps([{"name": h.name, "score": h.score, **({} if h.contribution is None else
                                                               {"contribution": h.contribution})}
                           for h in p.top_concepts])

    return pa.table({
        "path": [str(p.source) for p in preds],
        "p_synthetic": [p.p_synthetic for p in preds],
        "logit": [p.logit for p in preds],
        "prediction": [p.prediction for p in preds],
        "error": [p.error or "" for p in preds],
        "concept_logit": [p.concept_logit for p in preds],
        "top_concepts": [concepts(p) for p in preds],
        "provenance": [None if p.provenance is None else json.dumps(p.provenance) for p in preds],
    }, schema=RESULT_SCHEMA)


class Scorer:
    """Ray Data actor UDF: loads the detector once per actor, then scores decoded batches.

    Args (``fn_constructor_kwargs``): ``model_dir``, ``precision``, ``backend`` (as ``scan --backend``; ``auto``
    takes TensorRT/CUDA when the actor got a GPU, else CPU), ``allow_fallback``, ``threshold``, ``top_concepts``,
    ``threads`` (ONNX Runtime intra-op threads, the actor's CPUs), ``ledger`` (the :class:`Ledger` actor's name).

    ``__call__``: ``{"path", "error", "pixels" float32 [n,3,S,S]}`` -> a :data:`RESULT_SCHEMA` table of n rows, in
    order. Scoring is :class:`Detector`'s own batch scoring, so values equal the local scan's (same graph, same
    backend kind; batch composition changes float32 sums by ~1e-7).
    """

    def __init__(self, *, model_dir: str, precision: str | None, backend: str, allow_fallback: bool,
                 threshold: float | None, top_concepts: int, threads: int | None, ledger: str | None):
        import ray

        self.detector = Detector.load(model_dir, precision=precision, backend=backend, threshold=threshold,
                                      allow_fallback=allow_fallback, threads=threads)
        self.detector.top_concepts = top_concepts
        self.ledger = ray.get_actor(ledger) if ledger else None
        if self.ledger is not None:
            choice = self.detector.backend_choice
            self.ledger.actor_started.remote(os.getpid(), ray.get_runtime_context().get_node_id(),
                                             choice.describe() if choice else str(self.detector.backend))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        items = [Item(i, str(batch["path"][i]), batch["pixels"][i] if not batch["error"][i] else None,
                      str(batch["error"][i]) or None) for i in range(len(batch["path"]))]
        preds = self.detector._score(Batch(items))
        for pred, signals in zip(preds, batch["provenance"]):
            pred.provenance = json.loads(signals) if signals else None
        if self.ledger is not None:
            self.ledger.scored.remote(len(preds))
        return prediction_rows(preds)


class Ledger:
    """Counts, across a run: actor starts (pid, node, backend) and rows scored (a row scored twice was retried).
    Created by the driver as a named actor with ``num_cpus=0``; every method is cheap."""

    def __init__(self):
        self.actors: list[dict] = []
        self.rows_scored = 0

    def actor_started(self, pid: int, node: str, backend: str) -> None:
        self.actors.append({"pid": pid, "node": node, "backend": backend})

    def scored(self, n: int) -> None:
        self.rows_scored += n

    def snapshot(self) -> dict:
        return {"actors": list(self.actors), "rows_scored": self.rows_scored}
