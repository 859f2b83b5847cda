"""Labelled image collections for training, calibration and evaluation (torch-free).

Every reader returns :class:`LabelledImage` items: an image (a file path, or a lazy reference to encoded bytes in
a columnar dataset), ``label`` (0 real, 1 synthetic), ``source`` (generator, or "real"), ``image_id`` (pairs a
real photo with its synthetic versions; the item key when the dataset has none), ``split`` and a unique ``key``.

Accepted forms of ``DATA`` (:func:`read_labelled_images`):

* **SynthCLIC-shaped datasets** (also SynthBuster+ and CNNSpot in the same shape): columns ``image`` (encoded
  bytes, or the Hugging Face Image struct ``{bytes, path}``), ``label``, and optionally ``image_id`` and
  ``source``; splits train/validation/test.

  - parquet files, read with pyarrow: a ``.parquet`` file (one pool, no splits), or a folder of them where the
    split comes from the file or folder name as on the Hugging Face hub: ``<split>.parquet``,
    ``<split>-00000-of-00001.parquet``, ``data/<split>-*.parquet`` or ``<split>/*.parquet``;
  - a folder written by ``datasets``' ``save_to_disk`` (a DatasetDict or a single Dataset), read with the
    ``datasets`` library;
  - ``hf:OWNER/NAME`` (e.g. ``hf:marco-willi/synthclic``): loaded from the Hugging Face hub with
    ``datasets.load_dataset`` (needs a network or a warm hub cache).

  Image bytes stay on disk until an image is decoded: items carry a reference, resolved in decoder threads.
* a folder with ``real/`` and ``synthetic/`` sub-folders (images found recursively);
* the CNNDetection convention: ``0_real/`` and ``1_fake/``, directly or one level down per generator
  (``<generator>/0_real``, ``<generator>/1_fake``; the generator name becomes ``source``);
* a CSV manifest with a header ``path,label[,source][,image_id][,split]`` — label 0 = real, 1 = synthetic;
  relative paths are resolved against the CSV's folder.

Folders without a split layout and CSVs without a ``split`` column are one pool: asking them for any split
returns all of it (so "validation minus calibration images" is "the pool minus calibration images").
"""

from __future__ import annotations

import csv
import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from sid_edge.runtime.images import discover_images

REAL, SYNTHETIC = 0, 1
_FOLDER_LABELS = {"real": REAL, "synthetic": SYNTHETIC, "0_real": REAL, "1_fake": SYNTHETIC}
HF_PREFIX = "hf:"
REQUIRED_COLUMNS = ("image", "label")


class ImageRef:
    """A lazy reference to one encoded image inside a columnar dataset.

    ``resolve_image()`` returns the encoded bytes (or the path of an image file the dataset points to);
    :mod:`sid_edge.runtime.batching` calls it in its decoder threads. ``stamp()`` says which version of the data it
    reads (file size and mtime, or the dataset fingerprint), for caches.
    """

    def resolve_image(self) -> bytes | Path:  # pragma: no cover - interface
        raise NotImplementedError

    def stamp(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


ImageSource = Union[Path, bytes, ImageRef]


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image.

    Attributes:
        image: a file ``Path``, encoded ``bytes``, or an :class:`ImageRef` into a parquet/arrow dataset.
        label: 0 real, 1 synthetic.
        source: the generator ("real" for real images, "unknown" when the dataset does not say).
        image_id: pairs a real photo with its synthetic versions (SynthCLIC); the item ``key`` when absent.
        split: "train"/"validation"/"test"/…, or None for a dataset without splits.
        key: unique within the dataset (file path, or ``file.parquet#row``); "" means ``str(image)``.
    """

    image: ImageSource
    label: int
    source: str = "unknown"
    image_id: str = ""
    split: str | None = None
    key: str = field(default="")

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", str(self.image) if not isinstance(self.image, bytes) else "")
        if not self.image_id:
            object.__setattr__(self, "image_id", self.key)

    @property
    def path(self) -> Path | None:
        """The image file, or None when the image lives inside a dataset file."""
        return self.image if isinstance(self.image, Path) else None


# ------------------------------------------------------------------------------------------------ entry points
def read_labelled_images(data: str | os.PathLike, split: str | None = None) -> list[LabelledImage]:
    """Read any accepted form (see module docstring).

    Args:
        data: a folder, a ``.csv``/``.parquet`` file, a ``save_to_disk`` folder, or ``hf:OWNER/NAME``.
        split: only this split; None for all. A dataset without splits ignores it (it is one pool).

    Returns items in a stable order (by split, then file order / path within each label folder).

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: naming the file, when the dataset lacks the requested split, a required column
            (``image``/``label``; ``path``/``label`` for a CSV), has a label outside {0,1}, has no recognised
            layout, or has no images.
    """
    if str(data).startswith(HF_PREFIX):
        return _read_hf_hub(str(data)[len(HF_PREFIX):], split)
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    if root.is_file():
        if root.suffix.lower() == ".parquet":
            items = _read_parquet_files(root, [(root, None)], split)
        else:
            items = _select_split(root, _read_csv_manifest(root), split)
    elif _is_hf_disk(root):
        items = _read_hf_disk(root, split)
    elif parquet := sorted(root.rglob("*.parquet")):
        items = _read_parquet_files(root, [(p, _parquet_split(p, root)) for p in parquet], split)
    elif _has_label_folders(root):
        items = _select_split(root, _read_label_folders(root, source=None), split)
    else:
        generators = [sub for sub in sorted(root.iterdir()) if sub.is_dir() and _has_label_folders(sub)]
        if not generators:
            raise ValueError(
                f"{root}: no label folders found; expected real/ and synthetic/, 0_real/ and 1_fake/ "
                f"(optionally one level down per generator), parquet files, a save_to_disk folder, or a CSV "
                f"manifest path,label[,source]"
            )
        items = _select_split(root, [item for sub in generators for item in _read_label_folders(sub, source=sub.name)],
                              split)
    if not items:
        raise ValueError(f"{root}: no images found" + (f" in split {split!r}" if split else ""))
    return items


def dataset_location(data: str | os.PathLike) -> str:
    """Where ``data`` lives, comparable across working directories: ``hf:OWNER/NAME`` as given, else the absolute
    resolved path. Used to tell whether two commands read the same dataset (e.g. calibration vs evaluation)."""
    text = str(data)
    return text if text.startswith(HF_PREFIX) else str(Path(text).expanduser().resolve())


def dataset_splits(items: list[LabelledImage]) -> list[str]:
    """The split names present in ``items``, in first-seen order (empty for a dataset without splits)."""
    return list(dict.fromkeys(it.split for it in items if it.split is not None))


#: Split names a dataset without splits answers to (used whole); any other name there is a typo, refused.
KNOWN_SPLITS = ("train", "validation", "valid", "val", "test")


def _select_split(where, items: list[LabelledImage], split: str | None) -> list[LabelledImage]:
    splits = dataset_splits(items)
    if split is not None and not splits and split not in KNOWN_SPLITS:
        raise ValueError(f"{where}: no split {split!r}: this dataset has no splits (it is used whole for "
                         f"{', '.join(KNOWN_SPLITS)}); check the spelling")
    if split is None or not splits:
        return items
    if split not in splits:
        raise ValueError(f"{where}: no split {split!r}; it has {', '.join(splits)}")
    return [it for it in items if it.split == split]


def _check_label(value: Any, where: str) -> int:
    if value is not None and not isinstance(value, (str, bytes)) and value in (0, 1):  # ints, bools, 0.0/1.0
        return int(value)
    raise ValueError(f"{where}: label {value!r} is not 0 (real) or 1 (synthetic)")


def _default_source(label: int, source: Any) -> str:
    text = "" if source is None else str(source).strip()
    return text or ("real" if label == REAL else "unknown")


# ------------------------------------------------------------------------------------------------ folders, CSV
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
    """Rows of a CSV manifest. Raises ValueError naming the file (and line): not UTF-8, malformed CSV (a field over
    csv's field size limit, an unterminated quote), a missing column, an empty path, a label other than 0/1."""
    try:
        return _csv_manifest_rows(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV manifest ({e})") from None


def _csv_manifest_rows(path: Path) -> list[LabelledImage]:
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
            if not row.get("path"):
                raise ValueError(f"{path}:{line}: empty path")
            p = Path(row["path"])
            if not p.is_absolute():
                p = path.parent / p
            label = int(raw)
            split = (row.get("split") or "").strip() or None
            items.append(LabelledImage(p, label, _default_source(label, row.get("source")),
                                       image_id=(row.get("image_id") or "").strip(), split=split))
    return items


# ------------------------------------------------------------------------------------------------ parquet
_SPLIT_CONTAINERS = {"data"}  # folder names that hold split-named files rather than being a split themselves


def _column_item(image: ImageRef, meta: dict, i: int, where: str, split: str | None, key: str) -> LabelledImage:
    """Row ``i`` of a columnar dataset (``meta``: the label/image_id/source columns as lists) as a LabelledImage."""
    label = _check_label(meta["label"][i], where)
    image_id = meta["image_id"][i] if "image_id" in meta else None
    source = meta["source"][i] if "source" in meta else None
    return LabelledImage(image, label, _default_source(label, source),
                         image_id="" if image_id is None else str(image_id), split=split, key=key)


def _parquet_split(path: Path, root: Path) -> str:
    """Split of a parquet file inside ``root``, named the Hugging Face hub way: by its folder
    (``<split>/0000.parquet``) or by its file name up to the first '-' (``data/train-00000-of-00001.parquet``)."""
    parent = path.parent
    if parent != root and parent.name not in _SPLIT_CONTAINERS:
        return parent.name
    return path.stem.split("-", 1)[0]


@functools.lru_cache(maxsize=64)
def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path), threading.Lock()


@functools.lru_cache(maxsize=2)
def _parquet_image_column(path: Path, row_group: int):
    # One row group of the image column; consecutive references into the same group decode from one read.
    pf, lock = _parquet_file(path)
    with lock:  # a ParquetFile reader is not meant to be shared by threads mid-read
        return pf.read_row_group(row_group, columns=["image"]).column(0)


@dataclass(frozen=True)
class ParquetImage(ImageRef):
    """Row ``index`` of row group ``row_group`` of a parquet file's ``image`` column."""

    file: Path
    row_group: int
    index: int

    def resolve_image(self) -> bytes | Path:
        value = _parquet_image_column(self.file, self.row_group)[self.index].as_py()
        return _encoded_image(value, self.file.parent, self)

    def stamp(self) -> str:
        st = self.file.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def __str__(self) -> str:
        return f"{self.file}[row group {self.row_group}, row {self.index}]"


def _encoded_image(value: Any, base: Path, where) -> bytes | Path:
    """Bytes or path out of an ``image`` cell: raw bytes, a path string, or the HF struct {bytes, path}."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        p = Path(value)
        return p if p.is_absolute() else base / p
    raise ValueError(f"{where}: the image cell holds neither bytes nor a path")


def _read_parquet_files(root: Path, files: list[tuple[Path, str | None]], split: str | None) -> list[LabelledImage]:
    splits = list(dict.fromkeys(s for _, s in files if s is not None))
    if split is not None and splits:
        if split not in splits:
            raise ValueError(f"{root}: no split {split!r}; it has {', '.join(splits)}")
        files = [(p, s) for p, s in files if s == split]
    items: list[LabelledImage] = []
    for path, file_split in files:
        pf, _ = _parquet_file(path)
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)} (it has: {', '.join(names)})")
        optional = [c for c in ("image_id", "source") if c in names]
        row = 0
        for rg in range(pf.metadata.num_row_groups):
            meta = pf.read_row_group(rg, columns=["label", *optional]).to_pydict()
            items.extend(_column_item(ParquetImage(path, rg, i), meta, i, f"{path}: row {row + i}", file_split,
                                      f"{path}#{row + i}") for i in range(len(meta["label"])))
            row += len(meta["label"])
    return items


# ------------------------------------------------------------------------------------------------ Hugging Face
def _is_hf_disk(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


@dataclass(frozen=True, eq=False)
class HFImage(ImageRef):
    """Row ``index`` of a ``datasets.Dataset`` whose image column is cast to ``Image(decode=False)``."""

    dataset: Any
    index: int
    name: str

    def resolve_image(self) -> bytes | Path:
        return _encoded_image(self.dataset[self.index]["image"], Path("."), self)

    def stamp(self) -> str:
        return str(getattr(self.dataset, "_fingerprint", ""))

    def __str__(self) -> str:
        return f"{self.name}[{self.index}]"


def _hf_items(ds, name: str, split: str | None) -> list[LabelledImage]:
    from datasets import Image

    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{name}: no column(s) {', '.join(missing)} (it has: {', '.join(ds.column_names)})")
    ds = ds.cast_column("image", Image(decode=False))  # keep the encoded bytes; we decode exactly like the runtime
    meta = ds.select_columns(["label", *[c for c in ("image_id", "source") if c in ds.column_names]]).to_dict()
    return [_column_item(HFImage(ds, i, name), meta, i, f"{name}: row {i}", split, f"{name}#{i}")
            for i in range(len(meta["label"]))]


def _read_hf_disk(root: Path, split: str | None) -> list[LabelledImage]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(root))
    if not isinstance(loaded, DatasetDict):  # a single Dataset: one pool
        return _hf_items(loaded, str(root), None)
    if split is not None:
        if split not in loaded:
            raise ValueError(f"{root}: no split {split!r}; it has {', '.join(loaded)}")
        return _hf_items(loaded[split], f"{root}/{split}", split)
    return [item for name, ds in loaded.items() for item in _hf_items(ds, f"{root}/{name}", name)]


def _read_hf_hub(name: str, split: str | None) -> list[LabelledImage]:
    """``datasets.load_dataset(name)`` from the Hugging Face hub (network, or the local hub cache)."""
    try:
        from datasets import get_dataset_split_names, load_dataset
    except ImportError as e:  # pragma: no cover - datasets is in the train extra
        raise ValueError(f"hf:{name}: loading from the hub needs the `datasets` package ({e})") from e
    try:
        splits = get_dataset_split_names(name)
    except Exception as e:  # noqa: BLE001 - network, auth or name errors all mean "cannot read it"
        raise FileNotFoundError(f"hf:{name}: cannot reach the dataset on the Hugging Face hub ({e})") from e
    if split is not None and split not in splits:
        raise ValueError(f"hf:{name}: no split {split!r}; it has {', '.join(splits)}")
    wanted = [split] if split is not None else splits
    return [item for s in wanted for item in _hf_items(load_dataset(name, split=s), f"hf:{name}/{s}", s)]
