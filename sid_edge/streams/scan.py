"""Scan images, video files and live sources together: one row per image and per sampled frame, one summary per
video (torch-free).

Rows (CSV columns in this order; JSONL keys the same, ``frame``/``time_s`` absent on image rows):
``path``, ``frame`` (0-based index of the frame among all decoded frames of the stream), ``time_s``
(presentation time in seconds; for live sources seconds since the source was opened), ``p_synthetic``,
``prediction``, ``error`` (and ``top_concepts`` with a vocabulary). A video that yields no frame (missing,
truncated before its first frame, empty, unsupported codec, a URL that never answers) gets ONE row with empty
``frame``/``p_synthetic`` and the reason in ``error``; problems in the middle of a stream (a dropped or stalled
live source and its reconnects, a file that ends before its declared frame count) get an error row in the
place they happened; the scan goes on.

Per video a :class:`VideoSummary` (see :data:`SUMMARY_FIELDS`), written to a separate ``summary`` file (CSV or
JSONL by extension) so that the rows file stays one row per frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Sequence

import cv2

from sid_edge.runtime.concept_ranking import DEFAULT_TOP_CONCEPTS
from sid_edge.runtime.detector import Detector, Prediction
from sid_edge.runtime.images import DEFAULT_MAX_PIXELS
from sid_edge.runtime.progress import progress_bar
from sid_edge.runtime.scan import (CsvWriter, ResultWriter, _locked_output, _path_bytes, check_output, csv_safe,
                                    output_format, path_text)
from sid_edge.streams.reader import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, FrameReader, StreamIssue
from sid_edge.streams.sources import MediaDiscovery, MediaInput, VideoSourceError, discover_media

__all__ = ["SUMMARY_FIELDS", "VideoSummary", "MediaScanSummary", "scan_media", "write_summaries"]

#: Latency budget of a micro-batch in a scan (ms): rows of a slow live source appear at most this late.
SCAN_MAX_LATENCY_MS = 500.0

SUMMARY_FIELDS = ("path", "frames_decoded", "frames_scored", "errors", "max_p_synthetic", "mean_p_synthetic",
                  "flagged", "flagged_fraction", "first_flagged_time_s", "first_flagged_frame", "error")


@dataclass
class VideoSummary:
    """One video's (or live source's) result.

    ``frames_decoded``: frames the decoder produced (sampled or not); ``frames_scored``: sampled frames with a
    p_synthetic; ``errors``: its error rows; ``max_p_synthetic``/``mean_p_synthetic`` over the scored frames
    (None when none); ``flagged``: scored frames with p_synthetic >= the threshold, ``flagged_fraction`` =
    flagged / frames_scored; ``first_flagged_time_s``/``first_flagged_frame``: the first flagged frame (None when
    none); ``error``: why the video yielded no frames, else the first problem in the stream, else "".
    """

    path: str
    frames_decoded: int = 0
    frames_scored: int = 0
    errors: int = 0
    max_p_synthetic: float | None = None
    mean_p_synthetic: float | None = None
    flagged: int = 0
    flagged_fraction: float | None = None
    first_flagged_time_s: float | None = None
    first_flagged_frame: int | None = None
    error: str = ""
    _sum: float = field(default=0.0, repr=False)

    def add(self, pred: Prediction, frame: int, time_s: float, threshold: float) -> None:
        if not pred.ok:
            self.errors += 1
            self.error = self.error or pred.error or ""
            return
        p = pred.p_synthetic
        self.frames_scored += 1
        self._sum += p
        self.max_p_synthetic = p if self.max_p_synthetic is None else max(self.max_p_synthetic, p)
        self.mean_p_synthetic = self._sum / self.frames_scored
        if p >= threshold:
            self.flagged += 1
            if self.first_flagged_frame is None:
                self.first_flagged_frame, self.first_flagged_time_s = frame, time_s
        self.flagged_fraction = self.flagged / self.frames_scored

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class MediaScanSummary:
    """Counts and timing of a finished scan: ``images`` and ``videos`` (files and live sources) scanned, ``rows``
    written, ``scored`` rows with a score (``synthetic`` of them at the threshold), ``errors`` error rows,
    ``frames`` video frames scored, ``seconds`` wall time, ``videos_summary`` one :class:`VideoSummary` per video,
    ``skipped`` files in folders that are neither images nor videos (by extension), ``unreadable_folders``."""

    images: int
    videos: int
    rows: int
    scored: int
    synthetic: int
    errors: int
    frames: int
    seconds: float
    videos_summary: list[VideoSummary]
    skipped: dict[str, int] = field(default_factory=dict)
    unreadable_folders: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def write_summaries(path: str | os.PathLike, summaries: Sequence[VideoSummary]) -> None:
    """Write per-video summaries as CSV (header :data:`SUMMARY_FIELDS`; empty cells for None) or JSONL
    (``.jsonl``/``.ndjson``; null for None)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        # Paths as the rows write them: \xNN escapes for a non-UTF-8 name (+ path_bytes in JSONL), CSV cells that
        # a spreadsheet would evaluate prefixed with ' (see sid_edge.runtime.scan).
        if output_format(path) == "jsonl":
            for s in summaries:
                row = s.to_dict()
                raw = _path_bytes(row["path"])
                row["path"] = path_text(row["path"])
                f.write(json.dumps({**row, **({"path_bytes": raw} if raw else {})}, ensure_ascii=False) + "\n")
        else:
            w = CsvWriter(f, SUMMARY_FIELDS)
            w.writeheader()
            for s in summaries:
                row = {k: ("" if v is None else f"{v:.7g}" if isinstance(v, float) else v) for k, v in s.to_dict().items()}
                row["path"], row["error"] = csv_safe(path_text(row["path"])), csv_safe(row["error"] or "")
                w.writerow(row)


class _Rows:
    """Counts what goes through the writer."""

    def __init__(self, writer: ResultWriter, stream: IO[str]):
        self.writer, self.stream = writer, stream
        self.rows = self.scored = self.synthetic = self.errors = self.frames = 0

    def write(self, name: str, pred: Prediction, frame: int | None = None, time_s: float | None = None) -> None:
        self.writer.write(name, pred, frame=frame, time_s=time_s)
        self.rows += 1
        if pred.ok:
            self.scored += 1
            self.synthetic += pred.prediction == "synthetic"
            self.frames += frame is not None
        else:
            self.errors += 1


def _error(name: str, reason: str) -> Prediction:
    return Prediction(name, None, None, None, None, error=reason)


def _scan_video(item: MediaInput, detector: Detector, rows: _Rows, advance, *, batch_size: int, workers: int | None,
                options: dict, summary: VideoSummary) -> None:
    name = item.name
    reader = FrameReader(item.source, live=item.kind == "live", **options)
    written_issues = 0

    def issues_up_to(n_frames: int | None) -> None:
        nonlocal written_issues
        while written_issues < len(reader.issues):
            issue: StreamIssue = reader.issues[written_issues]
            if n_frames is not None and issue.sampled_before > n_frames:
                return
            pred = _error(name, issue.reason)
            rows.write(name, pred, time_s=issue.time_s)
            summary.add(pred, -1, issue.time_s or 0.0, detector.threshold)
            written_issues += 1
            advance(1)

    done = 0
    try:
        for pred in detector.stream(reader, batch_size=batch_size, max_latency_ms=SCAN_MAX_LATENCY_MS,
                                    workers=workers):
            index, time_s = pred.source
            pred.source = name
            issues_up_to(done)
            rows.write(name, pred, frame=index, time_s=time_s)
            summary.add(pred, index, time_s, detector.threshold)
            done += 1
            rows.stream.flush()
            advance(1)
    except (VideoSourceError, cv2.error, OSError, MemoryError) as e:  # one bad video never stops a scan
        reason = e.reason if isinstance(e, VideoSourceError) else f"decoder failed: {type(e).__name__}: {e}"
        issues_up_to(None)
        pred = _error(name, reason)
        rows.write(name, pred)
        summary.add(pred, -1, 0.0, detector.threshold)
        summary.error = reason
        advance(1)
    finally:
        summary.frames_decoded = reader.decoded
    issues_up_to(None)
    rows.stream.flush()


def scan_media(
    paths: Sequence[str | os.PathLike],
    detector: Detector,
    *,
    out: str | os.PathLike | None = None,
    summary: str | os.PathLike | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    top_concepts: int = DEFAULT_TOP_CONCEPTS,
    every: int | None = None,
    fps: float | None = None,
    duration_s: float | None = None,
    max_frames: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    all_files: bool = False,
    found: MediaDiscovery | None = None,
) -> MediaScanSummary:
    """Score the images, video files and live sources under ``paths`` (see :func:`discover_media`), writing one
    row per image and per sampled frame to ``out`` (CSV, or JSONL by extension; stdout when None) as results
    arrive, and the per-video summaries to ``summary`` (when given; also written after Ctrl-C, covering what was
    scanned). Video sampling, stop and reconnect options are those of :class:`~sid_edge.streams.reader.FrameReader`
    (default: 1 frame per second). Rows carry ``frame``/``time_s`` columns whenever the scan includes a video.
    The output file is checked and locked as :func:`sid_edge.runtime.scan.scan` does it; unreadable folders get an
    error row. ``found``: ``discover_media(paths)`` when the caller already has it (``paths`` is not walked again).

    Raises FileNotFoundError for an argument that is neither a path nor a live source; ValueError for bad
    sampling options; OutputError for an unusable ``out``; never for a bad image, video or stream (error rows).
    """
    options = dict(every=every, fps=fps, duration_s=duration_s, max_frames=max_frames, max_pixels=max_pixels,
                   timeout_s=timeout_s, retries=retries)
    FrameReader("", **options)  # validate the options before any output is written
    found = discover_media(paths, all_files=all_files) if found is None else found
    inputs = found.inputs
    n_images = sum(it.kind == "image" for it in inputs)
    summaries: list[VideoSummary] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if out is None:
            stream = sys.stdout
        else:
            target = check_output(out, [it.source for it in inputs if it.kind != "live"])
            stream = stack.enter_context(_locked_output(target, resume=False))
        if summary is not None:  # written last, also after Ctrl-C: covers what was scanned
            stack.callback(lambda: write_summaries(summary, summaries))
        stack.callback(stream.flush)
        detector.top_concepts = top_concepts
        writer = ResultWriter(stream, output_format(out), concepts=bool(detector.concept_names) and top_concepts > 0,
                              provenance=detector.provenance_reader is not None, video=found.has_video)
        rows = _Rows(writer, stream)
        for folder, reason in found.unreadable:
            rows.write(folder, _error(str(folder), f"cannot list this folder ({reason})"))
        total = None if found.has_video else len(inputs)
        with progress_bar("Scanning", total=total, unit="row", enabled=progress) as advance:
            i = 0
            while i < len(inputs):
                if inputs[i].kind == "image":
                    j = i
                    while j < len(inputs) and inputs[j].kind == "image":
                        j += 1
                    files = [str(it.source) for it in inputs[i:j]]
                    for preds in detector.predict_batches(files, batch_size=batch_size, workers=workers,
                                                          max_pixels=max_pixels):
                        for pred in preds:
                            rows.write(pred.source, pred)
                        stream.flush()
                        advance(len(preds))
                    i = j
                    continue
                summaries.append(VideoSummary(inputs[i].name))
                _scan_video(inputs[i], detector, rows, advance, batch_size=batch_size, workers=workers, options=options,
                            summary=summaries[-1])
                i += 1
    return MediaScanSummary(n_images, len(inputs) - n_images, rows.rows, rows.scored, rows.synthetic, rows.errors,
                            rows.frames, time.perf_counter() - start, summaries, skipped=dict(found.skipped),
                            unreadable_folders=[str(f) for f, _ in found.unreadable])
