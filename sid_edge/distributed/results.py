"""Where a distributed scan's rows go: parquet partitions written as they arrive, then the CSV/JSONL.

Layout for ``--out results.csv`` (or ``.jsonl``): ``results.parquet/`` holds ``part-<run>-<n>.parquet`` files
(:data:`sid_edge.distributed.stages.RESULT_SCHEMA`) and ``_scan.json`` (what produced them: artifact file sha256,
precision, threshold, top concepts); ``results.csv`` is written at the end from all partitions, one row per input in
the local scan's order and format. ``--out results.parquet`` writes only the partitions.

Each partition is written to a temporary name and renamed, so after an interruption every partition on disk is
whole and its rows are done: ``--resume`` skips their keys.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sid_edge.artifact.files import atomic_write
from sid_edge.distributed.stages import RESULT_SCHEMA
from sid_edge.runtime.concept_ranking import ConceptHit
from sid_edge.runtime.detector import Prediction
from sid_edge.runtime.scan import ResultWriter, output_format

RUN_FILE = "_scan.json"  # "_" prefix: parquet readers skip it


class ResultsError(ValueError):
    """Output that cannot be written or resumed (an existing run without --resume, a run made with other
    settings, a damaged partition); the message names the path."""


@dataclass(frozen=True)
class OutputPaths:
    """``table``: the CSV/JSONL file (None for ``--out X.parquet``); ``parts``: the partition folder."""

    table: Path | None
    parts: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike) -> "OutputPaths":
        p = Path(out)
        if p.suffix.lower() == ".parquet":
            return cls(None, p)
        if p.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
            raise ResultsError(f"--out {out}: use a .csv, .jsonl or .parquet name")
        return cls(p, p.with_suffix(".parquet"))

    @property
    def format(self) -> str:
        return output_format(self.table) if self.table is not None else "parquet"


def part_files(parts: Path) -> list[Path]:
    """Finished partitions (temporary files of an interrupted write are ignored)."""
    return sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []


def prepare(paths: OutputPaths, settings: dict, resume: bool) -> set[str]:
    """Check the partition folder against ``settings`` and return the keys already done (empty for a new run).

    Raises ResultsError: partitions exist without ``resume`` (never mix two runs silently), or ``resume`` with
    different settings (another model file, precision, threshold or top concepts would mix rows).
    """
    parts = part_files(paths.parts)
    run_file = paths.parts / RUN_FILE
    if parts and not resume:
        raise ResultsError(f"{paths.parts}: holds {len(parts)} partition(s) of an earlier run; pass --resume to "
                           f"finish that run, or remove the folder")
    if resume and run_file.is_file():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ResultsError(f"{run_file}: unreadable ({e}); remove {paths.parts} to start over") from None
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ResultsError(f"{paths.parts}: --resume with other settings than the first run ({what}); "
                               f"use the same ones, or remove the folder to start over")
    paths.parts.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_file, "w", encoding="utf-8") as f:
        f.write(json.dumps(settings, indent=2) + "\n")
    done: set[str] = set()
    for p in parts:
        try:
            done.update(pq.read_table(p, columns=["path"]).column(0).to_pylist())
        except Exception as e:
            raise ResultsError(f"{p}: damaged partition ({type(e).__name__}: {e}); remove it and --resume") from None
    return done


class PartWriter:
    """Collects result tables and writes a partition every ``part_rows`` rows (and at :meth:`close`).

    Keeps exactly one row per key: a row whose key was already written, or that was not asked for, is dropped and
    counted in ``dropped`` (a batch Ray ran twice after a failure).
    """

    def __init__(self, parts: Path, expected: set[str], part_rows: int):
        self.parts, self.expected, self.part_rows = parts, expected, part_rows
        self.run = uuid.uuid4().hex[:8]
        self.written: set[str] = set()
        self.dropped = 0
        self.files = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        #: perf_counter() when the first scored batch arrived (start-up time in the summary)
        self.first_at: float | None = None

    def add(self, table: pa.Table) -> int:
        """Add rows; returns how many were kept."""
        if self.first_at is None:
            import time

            self.first_at = time.perf_counter()
        keep = []
        for i, key in enumerate(table.column("path").to_pylist()):
            if key in self.expected and key not in self.written:
                self.written.add(key)
                keep.append(i)
            else:
                self.dropped += 1
        if keep:
            rows = table.take(pa.array(keep, type=pa.int64())) if len(keep) < table.num_rows else table
            self._buffer.append(rows.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA))
            self._buffered += len(keep)
            if self._buffered >= self.part_rows:
                self.flush()
        return len(keep)

    def flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        final = self.parts / f"part-{self.run}-{self.files:05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.files += 1
        self._buffer, self._buffered = [], 0


@dataclass
class Counts:
    """Rows of the finished table: ``rows`` (one per input), ``scored``, ``synthetic``, ``errors``, and
    ``missing`` (inputs without a row; 0 after a complete run)."""

    rows: int
    scored: int
    synthetic: int
    errors: int
    missing: int


def _prediction(row: dict) -> Prediction:
    hits = [ConceptHit(h["name"], h["score"], h.get("contribution")) for h in json.loads(row["top_concepts"])] \
        if row["top_concepts"] else []
    return Prediction(row["path"], row["p_synthetic"], row["logit"], row["prediction"], None,
                      error=row["error"] or None, concept_logit=row["concept_logit"], top_concepts=hits,
                      provenance=json.loads(row["provenance"]) if row["provenance"] else None)


def finish(paths: OutputPaths, keys: list[str], concepts: bool, provenance: bool = False) -> Counts:
    """Read every partition, keep one row per input of ``keys`` (in that order) and write the CSV/JSONL named by
    ``paths.table`` with the local scan's writer (atomically). Returns the counts."""
    files = part_files(paths.parts)
    table = pq.read_table(files, schema=RESULT_SCHEMA) if files else RESULT_SCHEMA.empty_table()
    order = pc.index_in(table.column("path"), value_set=pa.array(keys, type=pa.string()))
    table = table.append_column("_order", order).filter(pc.is_valid(order)).sort_by("_order")
    # one row per key: the first of any duplicates (there are none unless a partition was copied by hand)
    if table.num_rows:
        o = table.column("_order")
        first = pc.not_equal(o, pa.concat_arrays([pa.array([-1], type=o.type), o.slice(0, len(o) - 1).combine_chunks()]))
        table = table.filter(first)
    errors = pc.sum(pc.not_equal(table.column("error"), "")).as_py() or 0
    synthetic = pc.sum(pc.equal(table.column("prediction"), "synthetic")).as_py() or 0
    if paths.table is not None:
        paths.table.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(paths.table, "w", encoding="utf-8") as f:
            writer = ResultWriter(f, paths.format, concepts=concepts, provenance=provenance)
            for batch in table.drop_columns(["_order"]).to_batches(max_chunksize=4096):
                for row in batch.to_pylist():
                    pred = _prediction(row)
                    writer.write(pred.source, pred)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(paths.table, 0o666 & ~umask)  # as an ordinary open() would create it (the temporary file was 0600)
    return Counts(table.num_rows, table.num_rows - errors, synthetic, errors, len(keys) - table.num_rows)
