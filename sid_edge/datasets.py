"""Labelled image collections for training and evaluation (torch-free).

Accepted forms of ``--data``:

* a folder with ``real/`` and ``synthetic/`` sub-folders (images found recursively);
* the CNNDetection convention: ``0_real/`` and ``1_fake/``, directly or one level down per generator
  (``<generator>/0_real``, ``<generator>/1_fake``; the generator name becomes ``source``);
* a CSV manifest with a header ``path,label[,source]`` — label 0 = real, 1 = synthetic; relative paths are
  resolved against the CSV's folder.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from sid_edge.imageio import discover_images

REAL, SYNTHETIC = 0, 1
_FOLDER_LABELS = {"real": REAL, "synthetic": SYNTHETIC, "0_real": REAL, "1_fake": SYNTHETIC}


@dataclass(frozen=True)
class LabelledImage:
    """One image: ``path``, ``label`` (0 real, 1 synthetic), ``source`` (generator or 'real'/'unknown')."""

    path: Path
    label: int
    source: str = "unknown"


def read_labelled_images(data: str | os.PathLike) -> list[LabelledImage]:
    """Read any accepted form (see module docstring). Returns items sorted by path within each label folder.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: naming the path, when the folder has no recognised label sub-folders, a CSV lacks the
            ``path``/``label`` columns, a label is not 0/1, or no images were found.
    """
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    if root.is_file():
        items = _read_csv_manifest(root)
    elif _has_label_folders(root):
        items = _read_label_folders(root, source=None)
    else:
        generators = [sub for sub in sorted(root.iterdir()) if sub.is_dir() and _has_label_folders(sub)]
        if not generators:
            raise ValueError(
                f"{root}: no label folders found; expected real/ and synthetic/, 0_real/ and 1_fake/ "
                f"(optionally one level down per generator), or a CSV manifest path,label[,source]"
            )
        items = [item for sub in generators for item in _read_label_folders(sub, source=sub.name)]
    if not items:
        raise ValueError(f"{root}: no images found")
    return items


def _has_label_folders(root: Path) -> bool:
    return any((root / name).is_dir() for name in _FOLDER_LABELS)


def _read_label_folders(root: Path, source: str | None) -> list[LabelledImage]:
    items = []
    for name, label in _FOLDER_LABELS.items():
        folder = root / name
        if folder.is_dir():
            src = "real" if label == REAL else (source or "unknown")
            items.extend(LabelledImage(p, label, src) for p in discover_images([folder]))
    return items


def _read_csv_manifest(path: Path) -> list[LabelledImage]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = {"path", "label"} - set(fields)
        if missing:
            raise ValueError(f"{path}: CSV manifest lacks column(s) {sorted(missing)}; header is {fields}")
        items = []
        for line, row in enumerate(reader, start=2):
            raw = (row.get("label") or "").strip()
            if raw not in ("0", "1"):
                raise ValueError(f"{path}:{line}: label {raw!r} is not 0 (real) or 1 (synthetic)")
            p = Path(row["path"])
            if not p.is_absolute():
                p = path.parent / p
            label = int(raw)
            source = (row.get("source") or "").strip() or ("real" if label == REAL else "unknown")
            items.append(LabelledImage(p, label, source))
    return items
