"""Which files an ONNX graph references (its external-data ``location`` entries), read without the onnx package.

The runtime must stay onnx-free, yet every file a graph makes ONNX Runtime open has to be listed in the manifest
and verified by sha256 first (a graph is verified; its external data must be too). ONNX stores each reference as a
``StringStringEntryProto {key = "location", value = <relative path>}`` inside ``TensorProto.external_data``
(onnx/onnx.proto3). Serialized, that entry is the bytes ``0x0a 0x08 "location" 0x12 <varint length> <path>``
wherever the tensor sits (initializers, Constant nodes, subgraphs), so a scan for that byte pattern finds every
reference. A false match inside raw tensor bytes would only add a name to check (a refusal, never a silent load).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

_ENTRY = b"\x0a\x08location\x12"
_MAX_NAME = 4096


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def external_data_locations(path: str | os.PathLike) -> set[str]:
    """The ``location`` strings of every external-data entry in the ONNX file at ``path`` (as written, relative to
    the graph's folder). Raises OSError when the file cannot be read, ValueError for a malformed entry."""
    out: set[str] = set()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return out
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos = buf.find(_ENTRY)
            while pos != -1:
                length, start = _varint(buf, pos + len(_ENTRY))
                if length > _MAX_NAME or start + length > len(buf):
                    raise ValueError(f"{Path(path).name}: malformed external-data entry at byte {pos}")
                out.add(bytes(buf[start:start + length]).decode("utf-8", errors="replace"))
                pos = buf.find(_ENTRY, start + length)
    return out
