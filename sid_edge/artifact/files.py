"""File helpers of the artifact contract: content hashes, atomic writes, names confined to a folder.

Standard library only. Every stage that writes an artifact file, a cache entry or a report goes through
:func:`atomic_write`, so a killed process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def sha256_stream(f: IO[bytes]) -> str:
    """Hex sha256 of a binary file object's remaining bytes, streamed (``hashlib.file_digest`` where Python has it,
    3.11+; JetPack 6 ships Python 3.10)."""
    if hasattr(hashlib, "file_digest"):
        return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed. Raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        return sha256_stream(f)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one ``os.replace``.

    On an exception the temporary file is removed and ``path`` is left as it was. ``mode`` is ``"wb"`` or ``"w"``
    (text, UTF-8 unless ``encoding`` says otherwise). The parent folder must exist.
    """
    path = Path(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode {mode!r} (expected 'w' or 'wb')")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`). Returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`). Returns the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


class UnsafeName(ValueError):
    """A file name that would leave its folder (absolute, ``..``, a drive, a link pointing outside)."""


def confined(directory: str | os.PathLike, name: object) -> Path:
    """``directory/name`` for a plain relative file name that stays inside ``directory``.

    Refused (UnsafeName, naming the value but never the outside file's properties): a non-string, an empty
    name, an absolute path, a backslash or NUL, any ``..`` or ``.`` component, or a path whose resolved location
    (symbolic links followed) is outside the resolved ``directory``.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise UnsafeName(f"{name!r}: not a plain relative file name")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeName(f"{name!r}: file names must be relative and stay inside the artifact folder")
    base = Path(directory).resolve()
    path = base / name
    try:
        path.resolve().relative_to(base)
    except ValueError:
        raise UnsafeName(f"{name!r}: resolves outside the artifact folder") from None
    return path
