"""Scan files and folders: one result row per discovered file, streamed to CSV or JSONL (torch-free).

Row fields: ``path``, ``p_synthetic`` (empty when not scored), ``prediction`` ("synthetic"/"real" at the
threshold, empty when not scored), ``error`` (empty when scored, else the reason).
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

from sid_edge.detector import Detector, Prediction
from sid_edge.imageio import DEFAULT_MAX_PIXELS, discover_images
from sid_edge.progress import progress_bar

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
    """Writes rows as CSV (header first) or JSONL (one object per line), chosen by ``fmt`` ("csv" | "jsonl")."""

    def __init__(self, stream: IO[str], fmt: str):
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown output format {fmt!r}; use .csv or .jsonl")
        self.stream, self.fmt = stream, fmt
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=FIELDS, lineterminator="\n")
            self._csv.writeheader()

    def write(self, path: str, pred: Prediction) -> None:
        if self.fmt == "jsonl":
            row = {"path": path, "p_synthetic": pred.p_synthetic, "prediction": pred.prediction, "error": pred.error or ""}
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._csv.writerow({
                "path": path,
                "p_synthetic": "" if pred.p_synthetic is None else f"{pred.p_synthetic:.7g}",
                "prediction": pred.prediction or "",
                "error": pred.error or "",
            })


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
) -> ScanSummary:
    """Discover images under ``paths`` (recursively) and score them, writing one row per file to ``out``
    (CSV, or JSONL by extension; stdout when None) as results arrive.

    Raises FileNotFoundError for a path argument that does not exist; never for a bad image.
    """
    files = [p for p in discover_images(paths)]
    stream = open(out, "w", newline="", encoding="utf-8") if out is not None else sys.stdout
    counts = {"scored": 0, "synthetic": 0, "errors": 0}
    start = time.perf_counter()
    try:
        writer = ResultWriter(stream, output_format(out))
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
