"""Read frames from video files and live sources with OpenCV (FFmpeg backend), sampled by presentation time.

    >>> for frame in read_frames("clip.mp4", fps=1.0):        # one frame per second of presentation time
    ...     frame.index, frame.time_s, frame.rgb.shape         # (30, 1.0, (1080, 1920, 3)) ...

Each decoded frame is converted from OpenCV's BGR to RGB once (``cv2.cvtColor``); the RGB uint8 array then goes
through the same preprocessing as a still image, so a frame saved losslessly as PNG scores the same.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

from sid_edge.runtime.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from sid_edge.streams.sources import VideoSourceError, camera_index, display_name, is_live_source

__all__ = ["Frame", "StreamIssue", "FrameReader", "read_frames", "DEFAULT_FPS", "DEFAULT_TIMEOUT_S",
           "DEFAULT_RETRIES"]

log = logging.getLogger(__name__)

#: Default sampling of video files and live sources: one frame per second of presentation (or wall) time.
DEFAULT_FPS = 1.0
#: Default open/read timeout of live sources (seconds): a stream silent this long counts as stalled.
DEFAULT_TIMEOUT_S = 10.0
#: Default reconnect attempts after a live stream stalls or drops (backoff 0.5 s, 1 s, 2 s, ... capped at 8 s).
DEFAULT_RETRIES = 3

# Containers whose frame count OpenCV reads from the file (sample tables, AVI header) rather than estimating it
# from duration x frame rate: decoding fewer frames than declared there means a truncated or corrupt file.
_EXACT_COUNT_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".qt", ".avi", ".3gp", ".3g2"})
# FFmpeg demuxers a video FILE may be read with (format_whitelist): the containers of VIDEO_EXTENSIONS. Without it
# FFmpeg picks a demuxer by content, and a text file named clip.mkv holding an "ffconcat" list would make it open
# other files (playlists and concat lists are inputs that point elsewhere, never a video of their own).
_FILE_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,mpegvideo,asf,flv,ogg,yuv4mpegpipe,"
                  "h264,hevc,mjpeg,m4v")
_CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"  # read by OpenCV at every FFmpeg open: "key;value|key;value"
_OPTIONS_LOCK = threading.Lock()
# A timestamp within this many seconds of a sampling slot's start counts as in the slot (float PTS round-off).
_PTS_EPS = 1e-4


class Frame(NamedTuple):
    """A decoded, sampled frame: ``index`` (0-based position among all decoded frames of the stream),
    ``time_s`` (presentation time in seconds for files; seconds since the source was opened, by the wall clock,
    for live sources), ``rgb`` (HxWx3 uint8, RGB order)."""

    index: int
    time_s: float
    rgb: np.ndarray


@dataclass
class StreamIssue:
    """Something that went wrong in a stream that still yielded (or may still yield) frames: a dropped or stalled
    live stream (and the reconnects), a frame that failed to decode, a file that ends before its declared frame
    count. ``sampled_before``: frames yielded before it happened; ``time_s``: stream time when it happened."""

    source: str
    reason: str
    sampled_before: int
    time_s: float | None = None


class _Sampler:
    """``every``: keep decoded frames 0, N, 2N, ...; ``fps``: keep the first frame in each 1/fps-second slot of
    presentation time counted from the first frame (variable frame rate samples evenly in time)."""

    def __init__(self, every: int | None, fps: float | None):
        self.every, self.fps = every, fps
        self.t0: float | None = None
        self.last_slot = -1

    def keep(self, index: int, t: float) -> bool:
        if self.every is not None:
            return index % self.every == 0
        if self.t0 is None:
            self.t0 = t
        slot = math.floor((t - self.t0 + _PTS_EPS) * self.fps)
        if slot > self.last_slot:
            self.last_slot = slot
            return True
        return False


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        raise ValueError(f"frame of dtype {frame.dtype}, expected 8-bit")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"frame of shape {frame.shape}, expected HxWx3")


def _open_file(url: str) -> cv2.VideoCapture:
    """``cv2.VideoCapture(url, CAP_FFMPEG)`` with FFmpeg's demuxers restricted to :data:`_FILE_DEMUXERS` (added to
    any OPENCV_FFMPEG_CAPTURE_OPTIONS the user set; the variable is restored at once, under a lock)."""
    with _OPTIONS_LOCK:
        before = os.environ.get(_CAPTURE_OPTIONS)
        os.environ[_CAPTURE_OPTIONS] = (before + "|" if before else "") + "format_whitelist;" + _FILE_DEMUXERS
        try:
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        finally:
            if before is None:
                del os.environ[_CAPTURE_OPTIONS]
            else:
                os.environ[_CAPTURE_OPTIONS] = before


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _open_non_utf8(path: str, name: str) -> cv2.VideoCapture:
    """Open a file whose name is not valid UTF-8 (its undecodable bytes are lone surrogates in ``path``, and
    ``cv2.VideoCapture`` crashes the whole process with SIGSEGV on such a str): open the file here and hand FFmpeg
    ``/proc/self/fd/N``, a name made of ASCII that points at the same file (FFmpeg opens its own descriptor)."""
    try:
        fd = os.open(os.fsencode(path), os.O_RDONLY)
    except OSError as e:
        raise VideoSourceError(name, f"cannot open file ({e.strerror or e})") from None
    try:
        proc = f"/proc/self/fd/{fd}"
        if not os.path.exists(proc):
            raise VideoSourceError(name, "file name is not valid UTF-8 and this system has no /proc/self/fd to open it "
                                         "by; rename the file")
        return _open_file("file:" + proc)
    finally:
        os.close(fd)


def _check_file(path: str, name: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoSourceError(name, "file not found (dangling link?)" if os.path.islink(path) else "file not found") from None
    except PermissionError:
        raise VideoSourceError(name, "permission denied") from None
    except OSError as e:
        raise VideoSourceError(name, f"cannot access file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoSourceError(name, "is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder
        raise VideoSourceError(name, "not a regular file")
    if st.st_size == 0:
        raise VideoSourceError(name, "empty file")
    if not os.access(path, os.R_OK):
        raise VideoSourceError(name, "permission denied")


class FrameReader:
    """Iterate over the sampled frames of one video file or live source.

    Args:
        source: a video file path, a URL (``rtsp://``, ``http(s)://`` MJPEG/HLS, ...) or ``camera:N``.
        every: keep every N-th decoded frame (N >= 1; 1 keeps all). Exclusive with ``fps``.
        fps: keep at most this many frames per second of presentation time (> 0), evenly in time even for
            variable-frame-rate video. Default when neither is given: :data:`DEFAULT_FPS`.
        duration_s: stop after this many seconds of stream time (presentation time for files, wall time since
            opening for live sources).
        max_frames: stop after yielding this many frames.
        max_pixels: refuse a stream whose frames have more pixels (width * height).
        timeout_s: live sources: open and read timeout in seconds (FFmpeg's interrupt callback in OpenCV).
        retries: live sources: reconnect attempts after a stall or drop, with exponential backoff from
            ``backoff_s`` (doubling, capped at 8 s); each is recorded in :attr:`issues`.
        live: force the live (True) or file (False) reading; default :func:`is_live_source`.

    A still image (a suffix of :data:`~sid_edge.runtime.images.IMAGE_EXTENSIONS`) reads as one frame, index 0 at
    time 0, decoded by :func:`~sid_edge.runtime.images.decode_image` like any scanned image.

    Raises (when iterated) :class:`VideoSourceError` when no frame at all can be had: a file that is missing,
    not a regular file, not a readable video, has zero frames or oversized frames; a live source that never
    answers after ``retries`` reconnects. Later problems do not raise: they are appended to :attr:`issues` (and
    logged) and the stream goes on or ends. ``decoded``: frames decoded so far; ``yielded``: frames yielded.
    """

    def __init__(self, source, *, every: int | None = None, fps: float | None = None,
                 duration_s: float | None = None, max_frames: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = 0.5, live: bool | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if every is not None and fps is not None:
            raise ValueError("give either every or fps, not both")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if fps is not None and not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be > 0, got {fps!r}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.source = source
        self.name = display_name(source)
        self.live = is_live_source(source) if live is None else live
        self.every, self.fps = every, (fps if every is not None or fps is not None else DEFAULT_FPS)
        self.duration_s, self.max_frames, self.max_pixels = duration_s, max_frames, max_pixels
        self.timeout_s, self.retries, self.backoff_s, self._sleep = timeout_s, retries, backoff_s, sleep
        self.issues: list[StreamIssue] = []
        self.decoded = 0
        self.yielded = 0
        self.declared_frames: int | None = None
        self.stream_fps: float | None = None
        self._t_open = 0.0

    # -- opening ---------------------------------------------------------------------------------------------------
    def _open_once(self) -> cv2.VideoCapture:
        ms = int(self.timeout_s * 1000)
        cam = camera_index(self.source) if isinstance(self.source, str) and self.live else None
        if cam is not None:
            cap = cv2.VideoCapture(cam, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        elif self.live:
            url = os.fspath(self.source)
            if not _utf8(url):  # OpenCV crashes the process (SIGSEGV) on a str holding a lone surrogate
                raise VideoSourceError(self.name, "not a valid UTF-8 URL")
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            path = os.fsdecode(self.source)
            _check_file(path, self.name)
            # "file:" + absolute path: FFmpeg never reads a name like "http:x" or "concat:a|b" as a protocol.
            url = "file:" + os.path.abspath(path)
            if _utf8(url):
                cap = _open_file(url)
            else:
                cap = _open_non_utf8(path, self.name)
        if not cap.isOpened():
            cap.release()
            if cam is not None:
                raise VideoSourceError(self.name, f"cannot open camera {cam}")
            if self.live:
                raise VideoSourceError(self.name, f"no stream (refused, unreachable, or no answer within {self.timeout_s:g} s)")
            raise VideoSourceError(self.name, "cannot open video (not a video, or a container/codec this OpenCV build cannot read)")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > self.max_pixels:
            cap.release()
            raise VideoSourceError(self.name, f"frames of {w}x{h} = {w * h} pixels exceed the limit of {self.max_pixels}")
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(n) if not self.live and n and n > 0 and math.isfinite(n) else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.stream_fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else None
        return cap

    def _open(self, first: bool) -> cv2.VideoCapture | None:
        """Open (or reopen) the source; for live sources retry with backoff. None: gave up after a drop."""
        attempts = (1 + self.retries if first else self.retries) if self.live else 1
        delay = self.backoff_s
        for attempt in range(1, attempts + 1):
            try:
                return self._open_once()
            except VideoSourceError as e:
                last = attempt == attempts or self._deadline_passed(extra=delay)
                if last and first:
                    if attempt > 1 or attempt < attempts:
                        raise VideoSourceError(self.name, f"{e.reason}; gave up after {attempt} attempt"
                                               + ("s" if attempt != 1 else "")
                                               + (" (duration reached)" if attempt < attempts else "")) from None
                    raise
                if last:
                    self._issue(f"stream lost: {e.reason}; gave up after {attempt} reconnect attempt"
                                + ("s" if attempt != 1 else "") + (" (duration reached)" if attempt < attempts else ""))
                    return None
                log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", self.name, e.reason, delay, attempt + 1, attempts)
                self._sleep(delay)
                delay = min(2 * delay, 8.0)
        return None

    # -- reading -----------------------------------------------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self._t_open

    def _deadline_passed(self, extra: float = 0.0) -> bool:
        return self.live and self.duration_s is not None and self._now() + extra >= self.duration_s

    def _issue(self, reason: str, t: float | None = None) -> None:
        issue = StreamIssue(self.name, reason, self.yielded, t)
        self.issues.append(issue)
        log.warning("%s: %s", self.name, reason)

    def __iter__(self) -> Iterator[Frame]:
        self._t_open = time.monotonic()
        if not self.live and os.path.splitext(os.fsdecode(self.source))[1].lower() in IMAGE_EXTENSIONS:
            yield from self._still_image()
            return
        cap = self._open(first=True)
        sampler = _Sampler(self.every, self.fps if self.every is None else None)
        t_first: float | None = None  # files: duration_s counts from the first frame's presentation time
        try:
            while cap is not None:
                if self.max_frames is not None and self.yielded >= self.max_frames:
                    return
                if self._deadline_passed():
                    return
                if not cap.grab():
                    if not self.live:
                        self._check_end()
                        return
                    cap.release()
                    t = self._now()
                    if self.retries == 0:
                        self._issue(f"stream stalled or ended after {self.decoded} frames (no reconnect: retries 0)", t)
                        return
                    self._issue(f"stream stalled or dropped after {self.decoded} frames; reconnecting", t)
                    cap = self._open(first=False)
                    continue
                index = self.decoded
                self.decoded += 1
                t = self._now() if self.live else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not math.isfinite(t):  # a stream without timestamps: its nominal frame rate
                    t = index / (self.stream_fps or 1.0)
                if t_first is None:
                    t_first = t
                if not self.live and self.duration_s is not None and t - t_first >= self.duration_s - _PTS_EPS:
                    return
                if not sampler.keep(index, t):
                    continue
                ok, raw = cap.retrieve()
                if not ok or raw is None:
                    self._issue(f"frame {index} could not be decoded", t)
                    continue
                try:
                    if raw.ndim >= 2 and raw.shape[0] * raw.shape[1] > self.max_pixels:
                        raise ValueError(f"frame of {raw.shape[1]}x{raw.shape[0]} pixels exceeds the limit of {self.max_pixels}")
                    rgb = _to_rgb(raw)
                except ValueError as e:
                    self._issue(f"frame {index}: {e}", t)
                    continue
                self.yielded += 1
                yield Frame(index, float(t), rgb)
        finally:
            if cap is not None:
                cap.release()

    def _still_image(self) -> Iterator[Frame]:
        """A still image is a one-frame stream: frame 0 at time 0, decoded exactly as a scan decodes images."""
        try:
            rgb = np.asarray(decode_image(self.source, max_pixels=self.max_pixels))
        except ImageDecodeError as e:
            raise VideoSourceError(self.name, e.reason) from None
        self.decoded = self.yielded = 1
        yield Frame(0, 0.0, rgb)

    def _check_end(self) -> None:
        if self.decoded == 0:
            raise VideoSourceError(self.name, "no frames (empty video, or none decodable)")
        suffix = os.path.splitext(os.fsdecode(self.source))[1].lower()
        if self.declared_frames and suffix in _EXACT_COUNT_SUFFIXES and self.decoded < self.declared_frames - 1:
            self._issue(f"stream ended after {self.decoded} of {self.declared_frames} declared frames "
                        "(truncated or corrupt file)")


def read_frames(source, **options) -> Iterator[Frame]:
    """Yield the sampled :class:`Frame` s ``(index, time_s, rgb)`` of a video file or live source: a generator
    over :class:`FrameReader` (see there for ``every``, ``fps``, ``duration_s``, ``max_frames``, ``timeout_s``,
    ``retries``). Raises VideoSourceError when the source yields no frame at all; later problems are logged."""
    yield from FrameReader(source, **options)
