"""What a scan input is: a still image, a video file, or a live source (URL or local camera), and how to open it.

Video files are recognised by suffix (:data:`VIDEO_EXTENSIONS`) in folders and when named directly. Live sources
are strings, not paths: ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://`` (MJPEG, HLS or anything FFmpeg
reads), ``udp://``, ``tcp://``, ``srt://`` URLs and ``camera:N`` (local camera N: V4L2 on Linux). An existing file
of that name wins over the live reading.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

from sid_edge.runtime.images import IMAGE_EXTENSIONS, discover

__all__ = ["VIDEO_EXTENSIONS", "LIVE_SCHEMES", "MediaInput", "MediaDiscovery", "VideoSourceError", "discover_media",
           "display_name", "is_live_source", "camera_index"]

#: File suffixes (lower case, with the dot) read as video with OpenCV's FFmpeg backend.
VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts", ".m2ts",
    ".wmv", ".asf", ".flv", ".3gp", ".3g2", ".ogv", ".mjpeg", ".mjpg", ".y4m", ".h264", ".264", ".hevc", ".h265",
})

#: URL schemes read as live sources.
LIVE_SCHEMES: frozenset[str] = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})

_CAMERA = re.compile(r"^camera:(\d{1,3})$")


class VideoSourceError(Exception):
    """A video file or live source that yields no frames at all.

    Attributes: ``source`` (display name, credentials removed), ``reason`` (short human text, e.g.
    ``'cannot open video (not a video, or a container/codec this OpenCV build cannot read)'``,
    ``'no frames (empty video)'``, ``'no answer within 10 s'``). ``str(e)`` is ``f"{source}: {reason}"``.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(source, reason)
        self.source, self.reason = source, reason

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def camera_index(source: str) -> int | None:
    """N for ``camera:N`` (0..999), else None."""
    m = _CAMERA.match(source)
    return int(m.group(1)) if m else None


def is_live_source(source: str | os.PathLike) -> bool:
    """True for a ``camera:N`` string or a URL of a :data:`LIVE_SCHEMES` scheme that is not an existing path."""
    if not isinstance(source, str) or os.path.lexists(source):
        return False
    if camera_index(source) is not None:
        return True
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in LIVE_SCHEMES


def display_name(source: str | os.PathLike) -> str:
    """The name a row carries: a path as given; a URL with any ``user:password@`` replaced by ``***@``."""
    s = os.fsdecode(source) if not isinstance(source, str) else source
    if "://" not in s or "@" not in s:
        return s
    try:
        parts = urlsplit(s)
    except ValueError:
        return s
    if parts.username is None and parts.password is None:
        return s
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def is_video_path(path: str | os.PathLike) -> bool:
    """True when the suffix (lower-cased) is in :data:`VIDEO_EXTENSIONS`."""
    return os.path.splitext(os.fsdecode(path))[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class MediaInput:
    """One scan input: ``kind`` is "image", "video" (a file) or "live"; ``source`` the path or the URL/camera string."""

    kind: str
    source: str | Path

    @property
    def name(self) -> str:
        """The ``path`` value of its rows (credentials removed from URLs)."""
        return display_name(self.source)


@dataclass
class MediaDiscovery:
    """What :func:`discover_media` found: ``inputs`` in order, files in folders ``skipped`` (count by lower-case
    extension) and ``unreadable`` folders (path, reason), as :class:`sid_edge.runtime.images.Discovery` has them."""

    inputs: list[MediaInput]
    skipped: Counter = field(default_factory=Counter)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def has_video(self) -> bool:
        """True when a video file or live source is among the inputs."""
        return any(it.kind != "image" for it in self.inputs)


def discover_media(paths: Iterable[str | os.PathLike], *, all_files: bool = False) -> MediaDiscovery:
    """Expand arguments into images, video files and live sources, in argument order.

    Folders are walked as :func:`sid_edge.runtime.images.discover` does (an unreadable folder is reported, not
    fatal), collecting image AND video suffixes (every file with ``all_files``); a file named directly is kept
    whatever its suffix (a video by its suffix, else an image, which gets an error row when it is not one); a file
    reached twice is kept once. Live sources (:func:`is_live_source`) are kept as strings.

    Raises FileNotFoundError for an argument that is neither an existing path nor a live source.
    """
    found = MediaDiscovery([])
    seen: set = set()
    suffixes = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    for arg in paths:
        if is_live_source(arg):
            if arg not in seen:
                seen.add(arg)
                found.inputs.append(MediaInput("live", arg))
            continue
        part = discover([arg], all_files=all_files, extensions=suffixes)
        found.skipped.update(part.skipped)
        found.unreadable.extend(part.unreadable)
        for f in part.files:
            key = f.absolute()
            if key not in seen:
                seen.add(key)
                found.inputs.append(MediaInput("video" if is_video_path(f) else "image", f))
    return found
