"""The detector artifact: a directory with ``manifest.json`` and model files (torch-free).

The manifest carries everything the runtime needs and nothing it must guess (see DESIGN.md, "The detector
artifact"): schema version, backbone identity, preprocessing rule, head, vocabulary, decision threshold, graph
I/O names and shapes, each model file with precision, sha256 and size, engines, library versions and the
fidelity figures measured at export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sid_edge.artifact.preprocessing import Preprocessing

from sid_edge.artifact.files import sha256_file, write_text_atomic
from sid_edge.artifact.names import (
    ARTIFACT_FORMAT,
    INPUT_NAME,
    MANIFEST_NAME,
    OUTPUT_NAMES,
    PRECISIONS,
    SCHEMA_VERSION,
)

_REQUIRED = ("format", "schema_version", "backbone", "preprocessing", "head", "threshold", "input", "outputs", "models")


class ManifestError(ValueError):
    """The artifact is missing, malformed, or its files do not match the manifest. The message names the file."""


def file_entry(directory: Path, name: str) -> dict:
    """``{"file", "sha256", "size_bytes"}`` of ``directory/name``."""
    p = directory / name
    return {"file": name, "sha256": sha256_file(p), "size_bytes": p.stat().st_size}


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` (pretty, UTF-8) atomically. Returns its path."""
    path = Path(directory) / MANIFEST_NAME
    return write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and structurally validate ``directory/manifest.json``.

    Raises ManifestError naming the path: no such directory or manifest, invalid JSON, another format, a newer
    schema version, or missing required fields.
    """
    d = Path(directory)
    path = d / MANIFEST_NAME
    if not d.is_dir():
        raise ManifestError(f"{d}: not a detector artifact directory (it does not exist or is not a folder)")
    if not path.is_file():
        raise ManifestError(f"{path}: missing; a detector artifact is a folder written by `sid-edge export`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != ARTIFACT_FORMAT:
        raise ManifestError(f"{path}: not a sid-edge detector manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if not isinstance(m.get("schema_version"), int) or m["schema_version"] > SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema version {m.get('schema_version')!r} is newer than this sid-edge understands "
            f"({SCHEMA_VERSION}); upgrade sid-edge"
        )
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"{path}: required field(s) missing: {', '.join(missing)}")
    try:
        Preprocessing.from_dict(m["preprocessing"])
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{path}: bad preprocessing block: {e}") from e
    return m


def model_entry(manifest: dict, precision: str) -> dict:
    """The ``models[precision]`` entry. Raises ManifestError listing the precisions the artifact has."""
    models = manifest["models"]
    if precision not in models:
        raise ManifestError(f"the artifact has no {precision!r} model (it has: {', '.join(models) or 'none'})")
    return models[precision]


def verify_files(directory: str | os.PathLike, entry: dict, check_hash: bool = True) -> None:
    """Check that a model entry's file (and its external-data files) exist with the recorded size and sha256.

    Raises ManifestError naming the file and what differs, before any of it is loaded.
    """
    d = Path(directory)
    for f in [entry, *entry.get("external_data", [])]:
        p = d / f["file"]
        if not p.is_file():
            raise ManifestError(f"{p}: listed in the manifest but missing")
        size = p.stat().st_size
        if size != f["size_bytes"]:
            raise ManifestError(f"{p}: size {size} bytes, the manifest says {f['size_bytes']}; the file is damaged or replaced")
        if check_hash and sha256_file(p) != f["sha256"]:
            raise ManifestError(f"{p}: sha256 does not match the manifest; the file is damaged or replaced")
