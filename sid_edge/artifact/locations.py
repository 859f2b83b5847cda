"""Where sid-edge keeps things on this machine: the cache root and the default detector's folder.

Standard library + platformdirs only, so the runtime can find a cached default artifact without importing the
build stage that makes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root() -> Path:
    """Root of every sid-edge cache: ``$SID_EDGE_CACHE`` or the user cache dir (platformdirs)."""
    return Path(os.environ.get("SID_EDGE_CACHE") or user_cache_dir("sid-edge"))


def default_detector_dir() -> Path:
    """Folder of the cached default detector artifact (built by :mod:`sid_edge.export.default_detector`)."""
    # v2: built with concept scores (the packaged vocabulary); a cached v1 artifact without them is not reused.
    # v3: serves the paper head's own preprocessing (clip-cues: bilinear); a cached v2 (bicubic) is not reused.
    return cache_root() / "default-detector-v3"
