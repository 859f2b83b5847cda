"""Scan files and folders: one result row per discovered file, streamed to CSV or JSONL (torch-free).

Row fields: ``path``, ``p_synthetic`` (empty when not scored), ``prediction`` ("synthetic"/"real" at the
threshold, empty when not scored), ``error`` (empty when scored, else the reason). Artifacts with a vocabulary
add ``top_concepts`` (when N > 0): in CSV a ``name:value;name:value`` cell (see
:mod:`sid_edge.runtime.concept_ranking`), in JSONL a list of ``{"name", "score"[, "contribution"]}`` objects; JSONL
rows also carry ``concept_logit`` when the artifact has a concept model.

Hostile names and outputs:

* **Paths** are written as text. A name that is not valid UTF-8 (Linux names are bytes) gets its undecodable bytes
  written as ``\\xNN`` escapes (Python's ``backslashreplace``); JSONL rows then also carry ``path_bytes``, the
  exact name as base64, so every row maps back to its file (``os.fsdecode(base64.b64decode(row["path_bytes"]))``).
* **CSV cells** that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
  return) are prefixed with ``'`` (OWASP, "CSV Injection"); JSONL keeps every value exactly.
* **The output file** is locked while a scan writes it (a second scan to the same file stops with a message), may
  not be one of the scanned files, and receives complete rows batch by batch (a killed scan keeps them).
* **Resume** (``resume=True``): a sidecar ``<out>.resume.jsonl`` records the size and modification time of each file
  whose row is complete; a resumed scan keeps the rows of unchanged files, rescoring changed, new and unconfirmed
  ones, and never writes a file's row twice. The sidecar's first line records the run's settings (model manifest
  sha256, precision, threshold, format and columns, pixel limit): a resume with other settings is refused (an
  ``OutputError`` naming what changed; exit 2 in the CLI) and leaves the earlier output as it was.

Predictions are "uncertain" inside the detector's uncertain band (``Detector.band``, from the manifest). With a
stability checker on the detector (``Detector.stability_checker``, see :mod:`sid_edge.robustness`), rows add
``stability_spread`` (max − min p_synthetic over the image and its perturbed versions) and ``stability_flips``
(perturbed versions whose verdict differs from the image's); JSONL rows carry the whole ``stability`` object.

With a provenance reader on the detector (``Detector.provenance_reader``, see :mod:`sid_edge.provenance`), rows add
``provenance``: in CSV a ``kind:label;kind:label`` cell, in JSONL the list of signal objects.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import io
import json
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

from sid_edge.artifact.files import sha256_file, write_text_atomic
from sid_edge.artifact.names import MANIFEST_NAME
from sid_edge.runtime.concept_ranking import DEFAULT_TOP_CONCEPTS, format_csv_cell
from sid_edge.runtime.detector import Detector, Prediction
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, Discovery, discover
from sid_edge.runtime.progress import progress_bar

FIELDS = ("path", "p_synthetic", "prediction", "error")
#: First characters that make spreadsheet programs evaluate a cell (OWASP "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class OutputError(ValueError):
    """The ``out`` file cannot be used (a folder, unwritable, one of the inputs, or being written by another scan)."""


@dataclass
class ScanSummary:
    """Counts and timing of a finished scan; ``images_per_second`` counts every row written over wall time.

    ``skipped`` counts files in scanned folders that were not images, by extension (``--all-files`` gives them rows);
    ``unreadable_folders`` lists folders that could not be listed (each also has an error row); ``kept`` counts rows
    kept from an earlier run (resume)."""

    files: int
    scored: int
    synthetic: int
    errors: int
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)
    unreadable_folders: list[str] = field(default_factory=list)
    kept: int = 0
    uncertain: int = 0

    @property
    def images_per_second(self) -> float:
        return (self.files - self.kept) / self.seconds if self.seconds > 0 else float("nan")


def path_text(path: str | os.PathLike) -> str:
    """The path as text for a result row: undecodable bytes of a non-UTF-8 name become ``\\xNN`` escapes."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def _path_bytes(path: str | os.PathLike) -> str | None:
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def csv_safe(text: str) -> str:
    """Neutralise a CSV cell a spreadsheet would evaluate: prefix ``'`` when it starts with = + - @ tab or CR."""
    return "'" + text if text.startswith(FORMULA_START) else text


class CsvWriter(csv.DictWriter):
    """``csv.DictWriter`` writing rows that end in ``"\n"`` and quoting every cell of a row that holds a carriage
    return: Python's csv module quotes only the characters of its ``lineterminator``, so with ``"\n"`` a name
    holding a bare CR would be written unquoted and every CSV reader (csv with ``newline=""``, pandas, spreadsheets)
    would split that row in two."""

    def __init__(self, f: IO[str], fieldnames: Sequence[str]):
        super().__init__(f, fieldnames=fieldnames, lineterminator="\n")
        self._quoted = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, rowdict):
        if any(isinstance(v, str) and "\r" in v for v in rowdict.values()):
            return self._quoted.writerow(rowdict)
        return super().writerow(rowdict)


class ResultWriter:
    """Writes rows as CSV (header first) or JSONL (one object per line), chosen by ``fmt`` ("csv" | "jsonl").
    ``concepts``: add the ``top_concepts`` field (after the standard ones); ``provenance``: add the ``provenance``
    field (last); ``stability``: add ``stability_spread`` and ``stability_flips`` (before provenance). ``header``:
    write the CSV header. ``video``: add ``frame`` and ``time_s`` after ``path`` (rows of still images leave them
    empty in CSV and omit them in JSONL; see sid_edge.streams)."""

    def __init__(self, stream: IO[str], fmt: str, concepts: bool = False, provenance: bool = False, header: bool = True,
                 video: bool = False, stability: bool = False):
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown output format {fmt!r}; use .csv or .jsonl")
        self.stream, self.fmt, self.concepts, self.provenance, self.video = stream, fmt, concepts, provenance, video
        self.stability = stability
        if fmt == "csv":
            self.fields = (FIELDS[:1] + (("frame", "time_s") if video else ()) + FIELDS[1:]
                           + (("top_concepts",) if concepts else ())
                           + (("stability_spread", "stability_flips") if stability else ())
                           + (("provenance",) if provenance else ()))
            self._csv = CsvWriter(stream, self.fields)
            if header:
                self._csv.writeheader()

    def write(self, path, pred: Prediction, frame: int | None = None, time_s: float | None = None) -> None:
        text = path_text(path) if isinstance(path, (str, os.PathLike)) else str(path)
        if self.fmt == "jsonl":
            row = {"path": text}
            if frame is not None:
                row["frame"] = frame
            if time_s is not None:
                row["time_s"] = round(time_s, 6)
            row.update(p_synthetic=pred.p_synthetic, prediction=pred.prediction, error=pred.error or "")
            raw = _path_bytes(path) if isinstance(path, (str, os.PathLike)) else None
            if raw is not None:
                row["path_bytes"] = raw
            if self.concepts:
                row["top_concepts"] = [h.to_dict() for h in pred.top_concepts]
                if pred.concept_logit is not None:
                    row["concept_logit"] = pred.concept_logit
            if self.stability:
                row["stability"] = pred.extra.get("stability")
            if self.provenance:
                row["provenance"] = pred.provenance or []
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            row = {
                "path": csv_safe(text),
                **({"frame": "" if frame is None else frame,
                    "time_s": "" if time_s is None else repr(round(time_s, 6))} if self.video else {}),
                "p_synthetic": "" if pred.p_synthetic is None else f"{pred.p_synthetic:.7g}",
                "prediction": pred.prediction or "",
                "error": csv_safe(pred.error or ""),
            }
            if self.concepts:
                row["top_concepts"] = csv_safe(format_csv_cell(pred.top_concepts))
            if self.stability:
                st = pred.extra.get("stability") or {}
                row["stability_spread"] = "" if st.get("spread") is None else f"{st['spread']:.7g}"
                row["stability_flips"] = "" if st.get("flips") is None else str(st["flips"])
            if self.provenance:
                row["provenance"] = csv_safe(";".join(f"{s['kind']}:{s['label']}" for s in pred.provenance or []))
            self._csv.writerow(row)

    def write_raw(self, record: str) -> None:
        """Copy a complete row kept from an earlier run (its text as read, newline included)."""
        self.stream.write(record)


def output_format(out: str | os.PathLike | None) -> str:
    """"jsonl" for a ``.jsonl``/``.ndjson`` path, else "csv" (also for stdout)."""
    return "jsonl" if out is not None and Path(out).suffix.lower() in (".jsonl", ".ndjson") else "csv"


def resume_file(out: str | os.PathLike) -> Path:
    """The sidecar that makes ``--resume`` safe: ``<out>.resume.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + ".resume.jsonl")


def _stamp(path: str | os.PathLike) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _key(path: str | os.PathLike) -> str:
    return os.fsencode(os.path.abspath(path)).decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------------------ the output file
def check_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """Refuse (OutputError) an ``out`` that is a symbolic link, a folder, lies below a file, is not a regular file (a
    device or FIFO), or is one of ``inputs`` (by device and inode: a hard link to an input counts as that input)."""
    p = Path(out)
    if p.is_symlink():  # a link planted where results go (e.g. in /tmp) would have us truncate its target
        raise OutputError(f"--out {out}: is a symbolic link; name the file itself")
    if p.is_dir():
        raise OutputError(f"--out {out}: is a folder; name a .csv or .jsonl file")
    for parent in p.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"--out {out}: {parent} is a file, not a folder")
    if p.exists():
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"--out {out}: not a regular file (a device, FIFO or socket); name a .csv or .jsonl file, "
                              f"or leave --out out to write to stdout")
        # Compared by (device, inode): a symbolic or a hard link to an input is that input.
        for i in inputs:
            try:
                ist = os.stat(i)
            except OSError:
                continue
            if (ist.st_dev, ist.st_ino) == (st.st_dev, st.st_ino):
                raise OutputError(f"--out {out}: is one of the files to scan ({path_text(i)}, the same file by another "
                                  f"name); writing results there would destroy it")
    return p


@contextlib.contextmanager
def _locked_output(out: Path, resume: bool) -> Iterator[IO[str]]:
    """The output file opened for writing under an exclusive lock (fcntl.flock), emptied unless resuming."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stream = open(out, "a+", newline="", encoding="utf-8", errors="strict")
    except OSError as e:
        raise OutputError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"--out {out}: another scan is writing this file; wait for it or choose another") from None
        if not resume:
            stream.truncate(0)
        yield stream
    finally:
        stream.close()


def _complete_records(text: str, fmt: str) -> list[tuple[str, str]]:
    """Complete rows of an earlier output as (path text, exact record text); a partial last row is dropped."""
    out = []
    if fmt == "jsonl":
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append((row.get("path_bytes") or row.get("path"), line))
        return out
    buf = io.StringIO(text)
    reader = csv.reader(buf)
    try:
        next(reader)  # header
    except (StopIteration, csv.Error):
        return []
    start = buf.tell()
    try:
        for row in reader:
            end = buf.tell()
            record = text[start:end]
            start = end
            if row and record.endswith("\n"):
                out.append((row[0], record))
    except csv.Error:  # an unterminated quoted field at the end: a partial row
        pass
    return out


def scan_settings(detector: Detector, fmt: str, concepts: bool, provenance: bool, top_concepts: int,
                  max_pixels: int) -> dict:
    """What makes two runs' rows comparable: the model (sha256 of its manifest), precision, threshold, output format
    and columns (concepts, provenance, the stability check's perturbations), and the limits that decide which files
    get an error. Recorded first in the resume sidecar."""
    manifest = Path(detector.directory) / MANIFEST_NAME
    checker = getattr(detector, "stability_checker", None)
    return {"model": sha256_file(manifest) if manifest.is_file() else str(detector.directory),
            "precision": detector.precision, "threshold": detector.threshold, "format": fmt, "concepts": concepts,
            "top_concepts": top_concepts if concepts else 0, "provenance": provenance, "max_pixels": max_pixels,
            "stability": None if checker is None else [getattr(p, "name", str(p)) for p in checker.perturbations]}


def _earlier_rows(out: Path, fmt: str, files: dict[str, Path], settings: dict | None = None) -> dict[str, str]:
    """Rows of an earlier run worth keeping, by file key: complete, confirmed in the sidecar, file unchanged.

    Raises OutputError when the sidecar records other ``settings`` (another model, threshold, columns, ...): mixing
    its rows with new ones would give a file whose rows disagree."""
    side = resume_file(out)
    if not out.is_file() or not side.is_file():
        return {}
    confirmed: dict[str, list] = {}
    for line in side.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            if isinstance(entry, dict) and "settings" in entry:
                if settings is not None and entry["settings"] != settings:
                    before = entry["settings"] if isinstance(entry["settings"], dict) else {}
                    changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items()
                                        if before.get(k) != v)
                    raise OutputError(f"--resume {out}: the earlier run used other settings ({changed}); its rows "
                                      f"cannot be mixed with new ones. Resume with the same settings, or drop --resume "
                                      f"to start afresh")
                continue
            confirmed[entry["key"]] = entry["stamp"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a partial last line of a killed run
    by_text = {}
    for key, path in files.items():
        by_text.setdefault(path_text(path), key)
        if _path_bytes(path):
            by_text.setdefault(_path_bytes(path), key)
    kept: dict[str, str] = {}
    with open(out, encoding="utf-8", errors="replace", newline="") as f:  # newline="": a CR inside a name stays a CR
        earlier = f.read()
    for shown, record in _complete_records(earlier, fmt):
        shown = shown[1:] if fmt == "csv" and shown.startswith("'") and shown[1:].startswith(FORMULA_START) else shown
        key = by_text.get(shown)
        if key is not None and key not in kept and confirmed.get(key) == _stamp(files[key]):
            kept[key] = record
    return kept


# ------------------------------------------------------------------------------------------------ scan
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
    resume: bool = False,
    all_files: bool = False,
    found: Discovery | None = None,
) -> ScanSummary:
    """Discover images under ``paths`` (recursively) and score them, writing one row per file to ``out``
    (CSV, or JSONL by extension; stdout when None) as results arrive.

    Args:
        top_concepts: concepts per row when the artifact has a vocabulary (0: no ``top_concepts`` field); it is set on
            ``detector.top_concepts``.
        resume: keep the rows of an earlier run to the same ``out`` for files unchanged since (module docstring).
        all_files: give every file found in a folder a row, not only those with an image extension.
        found: ``discover(paths, all_files=all_files)`` when the caller already walked ``paths`` (not walked again).

    Raises:
        FileNotFoundError: a path argument that does not exist.
        OutputError: ``out`` cannot be used (module docstring). Never raised for a bad image or an unreadable folder.
    """
    found = discover(paths, all_files=all_files) if found is None else found
    files = found.files
    if resume and out is None:
        raise OutputError("--resume needs --out FILE (the results of the run to resume)")
    counts = Counter()
    fmt = output_format(out)
    concepts = bool(detector.concept_names) and top_concepts > 0
    provenance = detector.provenance_reader is not None
    stability = detector.stability_checker is not None
    detector.top_concepts = top_concepts
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if out is None:
            stream, side, kept = sys.stdout, None, {}
        else:
            target = check_output(out, files)
            keys = {_key(f): f for f in files}
            stream = stack.enter_context(_locked_output(target, resume))
            settings = scan_settings(detector, fmt, concepts, provenance, top_concepts, max_pixels)
            kept = _earlier_rows(target, fmt, keys, settings) if resume else {}  # read under the lock
            # Start from exactly the rows worth keeping (written whole, then the sidecar that confirms them).
            stream.seek(0)
            stream.truncate(0)
            writer = ResultWriter(stream, fmt, concepts=concepts, provenance=provenance, stability=stability)
            for record in kept.values():
                writer.write_raw(record)
            stream.flush()
            stamps = {k: _stamp(keys[k]) for k in kept}
            side_path = resume_file(target)
            write_text_atomic(side_path, json.dumps({"settings": settings}) + "\n"
                              + "".join(json.dumps({"key": k, "stamp": s}) + "\n" for k, s in stamps.items()))
            side = stack.enter_context(open(side_path, "a", encoding="utf-8"))
        if out is None:
            writer = ResultWriter(stream, fmt, concepts=concepts, provenance=provenance, stability=stability)
        for folder, reason in found.unreadable:
            writer.write(folder, Prediction(folder, None, None, None, error=f"cannot list this folder ({reason})"))
            counts["errors"] += 1
        todo = [f for f in files if _key(f) not in kept]
        with progress_bar("Scanning", total=len(todo), enabled=progress) as advance:
            for preds in detector.predict_batches([str(f) for f in todo], batch_size=batch_size, workers=workers,
                                                  max_pixels=max_pixels):
                for pred in preds:
                    writer.write(pred.source, pred)
                    if pred.ok:
                        counts["scored"] += 1
                        counts["synthetic"] += pred.prediction == "synthetic"
                        counts["uncertain"] += pred.prediction == "uncertain"
                    else:
                        counts["errors"] += 1
                stream.flush()
                if side is not None:  # rows confirmed only once they are complete in the output
                    side.write("".join(json.dumps({"key": _key(p.source), "stamp": _stamp(p.source)}) + "\n"
                                       for p in preds))
                    side.flush()
                advance(len(preds))
    rows = len(files) + len(found.unreadable)
    return ScanSummary(rows, counts["scored"], counts["synthetic"], counts["errors"], time.perf_counter() - start,
                       skipped=dict(found.skipped), unreadable_folders=[path_text(f) for f, _ in found.unreadable],
                       kept=len(kept), uncertain=counts["uncertain"])
