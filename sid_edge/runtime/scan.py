"""Scan files and folders: one result row per discovered file, streamed to CSV or JSONL (torch-free).

Row fields: ``path``, ``p_synthetic`` (empty when not scored), ``prediction`` ("synthetic"/"real" at the
threshold, empty when not scored), ``error`` (empty when scored, else the reason). Artifacts with a vocabulary
add ``top_concepts`` (when N > 0): in CSV a ``name:value;name:value`` cell (see :mod:`sid_edge.runtime.concept_ranking`), in
JSONL a list of ``{"name", "score"[, "contribution"]}`` objects; JSONL rows also carry ``concept_logit`` when the
artifact has a concept model. With a provenance reader on the detector (``Detector.provenance_reader``, see
:mod:`sid_edge.provenance`), rows add ``provenance``: in CSV a ``kind:label;kind:label`` cell, in JSONL the list of
signal objects.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from sid_edge.runtime.detector import Detector, Prediction
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, discover_images
from sid_edge.runtime.progress import progress_bar
from sid_edge.runtime.concept_ranking import DEFAULT_TOP_CONCEPTS, format_csv_cell

FIELDS = ("path", "p_synthetic", "prediction", "error")


@dataclass
class ScanSummary:
    """Counts and timing of a finished scan; ``images_per_second`` counts every discovered file over wall time."""

    files: int
    scored: int
    synthetic: int
    errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else float("nan")


class ResultWriter:
    """Writes rows as CSV (header first) or JSONL (one object per line), chosen by ``fmt`` ("csv" | "jsonl").
    ``concepts``: add the ``top_concepts`` field (after the standard ones); ``provenance``: add the ``provenance``
    field (last)."""

    def __init__(self, stream: IO[str], fmt: str, concepts: bool = False, provenance: bool = False):
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown output format {fmt!r}; use .csv or .jsonl")
        self.stream, self.fmt, self.concepts, self.provenance = stream, fmt, concepts, provenance
        if fmt == "csv":
            fields = FIELDS + (("top_concepts",) if concepts else ()) + (("provenance",) if provenance else ())
            self._csv = csv.DictWriter(stream, fieldnames=fields, lineterminator="\n")
            self._csv.writeheader()

    def write(self, path: str, pred: Prediction) -> None:
        if self.fmt == "jsonl":
            row = {"path": path, "p_synthetic": pred.p_synthetic, "prediction": pred.prediction, "error": pred.error or ""}
            if self.concepts:
                row["top_concepts"] = [h.to_dict() for h in pred.top_concepts]
                if pred.concept_logit is not None:
                    row["concept_logit"] = pred.concept_logit
            if self.provenance:
                row["provenance"] = pred.provenance or []
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            row = {
                "path": path,
                "p_synthetic": "" if pred.p_synthetic is None else f"{pred.p_synthetic:.7g}",
                "prediction": pred.prediction or "",
                "error": pred.error or "",
            }
            if self.concepts:
                row["top_concepts"] = format_csv_cell(pred.top_concepts)
            if self.provenance:
                row["provenance"] = ";".join(f"{s['kind']}:{s['label']}" for s in pred.provenance or [])
            self._csv.writerow(row)


def output_format(out: str | os.PathLike | None) -> str:
    """"jsonl" for a ``.jsonl``/``.ndjson`` path, else "csv" (also for stdout)."""
    return "jsonl" if out is not None and Path(out).suffix.lower() in (".jsonl", ".ndjson") else "csv"


def scan(
    paths: Sequence[str | os.PathLike],
    detector: Detector,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    top_concepts: int = DEFAULT_TOP_CONCEPTS,
) -> ScanSummary:
    """Discover images under ``paths`` (recursively) and score them, writing one row per file to ``out``
    (CSV, or JSONL by extension; stdout when None) as results arrive. ``top_concepts``: concepts per row when
    the artifact has a vocabulary (0: no ``top_concepts`` field); it is set on ``detector.top_concepts``.

    Raises FileNotFoundError for a path argument that does not exist; never for a bad image.
    """
    files = [p for p in discover_images(paths)]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    stream = open(out, "w", newline="", encoding="utf-8") if out is not None else sys.stdout
    counts = {"scored": 0, "synthetic": 0, "errors": 0}
    start = time.perf_counter()
    try:
        detector.top_concepts = top_concepts
        writer = ResultWriter(stream, output_format(out), concepts=bool(detector.concept_names) and top_concepts > 0,
                              provenance=detector.provenance_reader is not None)
        with progress_bar("Scanning", total=len(files), enabled=progress) as advance:
            for preds in detector.predict_batches([str(f) for f in files], batch_size=batch_size, workers=workers, max_pixels=max_pixels):
                for pred in preds:
                    writer.write(pred.source, pred)
                    if pred.ok:
                        counts["scored"] += 1
                        counts["synthetic"] += pred.prediction == "synthetic"
                    else:
                        counts["errors"] += 1
                stream.flush()
                advance(len(preds))
    finally:
        if out is not None:
            stream.close()
    return ScanSummary(len(files), counts["scored"], counts["synthetic"], counts["errors"], time.perf_counter() - start)
