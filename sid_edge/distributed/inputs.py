"""What a distributed scan reads: inputs expanded into units, one image file or one parquet row group each.

Accepted inputs (``sid-edge scan --ray PATH…``):

* **local files and folders**, with the local ``scan``'s rules (:func:`sid_edge.runtime.images.discover_images`:
  folders walked recursively for image suffixes, sorted; a file named explicitly kept whatever its suffix; a file
  reached twice kept once). A folder's ``*.parquet`` files are read as datasets too (below), after its images;
* ``@FILE``: a text file (UTF-8) listing one path or URI per line; blank lines and lines starting with ``#`` are
  skipped. A listed path that does not exist gets an error row ("file not found") instead of stopping the scan;
* **parquet datasets** in the SynthCLIC / Hugging Face layout: a ``.parquet`` file, or a folder holding them
  (``data/<split>-00000-of-00001.parquet``, ...); each row's ``image`` column (encoded bytes, or the Hugging Face
  Image struct ``{bytes, path}``) is one input, keyed ``FILE#ROW`` (ROW counts from 0 over the whole file), as
  :func:`sid_edge.tools.datasets.read_labelled_images` keys it;
* **object-store URIs** (``s3://bucket/prefix/``, ``gs://…``, ``hdfs://…``, ``file:///…``): read through
  :meth:`pyarrow.fs.FileSystem.from_uri`; a prefix is listed recursively like a folder. Credentials come from the
  usual places of each store (environment, instance metadata); the URI's query string is not kept.

Every input has a unique *key* (the ``path`` of its row): the path as the local scan prints it, the URI, or
``FILE#ROW``. Nothing here imports Ray.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from sid_edge.runtime.images import IMAGE_EXTENSIONS, discover_images

#: Unit kinds: a local image file, an image file behind a URI, a row group of a parquet file (local or URI).
LOCAL_FILE, URI_FILE, PARQUET_ROWS = 0, 1, 2

#: Lines longer than this in an ``@FILE`` list are refused (a binary file given by mistake).
MAX_LIST_LINE = 8192

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class InputError(ValueError):
    """An input that cannot be expanded (missing path, unreadable list, parquet without an ``image`` column,
    an unknown URI scheme); the message names it. The CLI turns it into exit status 2."""


def is_uri(text: str) -> bool:
    """True for ``scheme://…`` (``s3://``, ``gs://``, ``file://``, …)."""
    return bool(_URI.match(text))


@dataclass
class Unit:
    """One piece of work for a read task.

    ``kind``: :data:`LOCAL_FILE`, :data:`URI_FILE` or :data:`PARQUET_ROWS`. ``source``: the local path or URI of
    the file. For parquet units, ``row_group`` (index in the file), ``first_row`` (row number of the group's first
    row in the file) and ``rows`` (indices inside the group still to score).
    """

    kind: int
    source: str
    row_group: int = -1
    first_row: int = 0
    rows: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Inputs in this unit."""
        return len(self.rows) if self.kind == PARQUET_ROWS else 1

    def keys(self) -> list[str]:
        """Row keys of the unit's inputs, in order."""
        if self.kind == PARQUET_ROWS:
            return [f"{self.source}#{self.first_row + r}" for r in self.rows]
        return [self.source]


@dataclass
class InputPlan:
    """All inputs of a scan: ``units`` in the order rows are listed, and ``keys`` (one per input, unique)."""

    units: list[Unit]
    keys: list[str]
    parquet_files: int = 0

    def pending(self, done: set[str]) -> "InputPlan":
        """The plan without the inputs whose key is in ``done`` (for ``--resume``); ``keys`` stays complete."""
        if not done:
            return self
        units = []
        for u in self.units:
            if u.kind == PARQUET_ROWS:
                rows = [r for r in u.rows if f"{u.source}#{u.first_row + r}" not in done]
                if rows:
                    units.append(Unit(u.kind, u.source, u.row_group, u.first_row, rows))
            elif u.source not in done:
                units.append(u)
        return InputPlan(units, self.keys, self.parquet_files)

    @property
    def inputs(self) -> int:
        """Inputs still to score (sum of unit sizes)."""
        return sum(u.size for u in self.units)


def uri_filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI. Raises InputError naming the URI when pyarrow cannot serve
    it (unknown scheme, a store whose support is not built in, bad credentials configuration)."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # ArrowInvalid, ArrowNotImplementedError, OSError: all mean "cannot read this URI"
        raise InputError(f"{uri}: cannot open this URI with pyarrow's filesystems ({type(e).__name__}: {e})") from None


def _uri_prefix(uri: str) -> str:
    return uri[: uri.index("://") + 3]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _parquet_units(source: str, opener) -> list[Unit]:
    """One unit per row group of a parquet file; checks that it has an ``image`` column."""
    import pyarrow.parquet as pq

    try:
        with opener() as f:
            md = pq.ParquetFile(f).metadata
            names = md.schema.to_arrow_schema().names
    except Exception as e:  # a damaged or non-parquet file: pyarrow raises ArrowInvalid/OSError
        raise InputError(f"{source}: cannot read it as parquet ({type(e).__name__}: {e})") from None
    if "image" not in names:
        raise InputError(f"{source}: no column 'image' (it has: {', '.join(names)}); expected the SynthCLIC layout")
    units, row = [], 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if n:
            units.append(Unit(PARQUET_ROWS, source, g, row, list(range(n))))
        row += n
    return units


class _Planner:
    def __init__(self):
        self.units: list[Unit] = []
        self.keys: list[str] = []
        self.seen: set[str] = set()
        self.parquet_files = 0

    def add_file(self, kind: int, source: str, dedupe_key: str) -> None:
        if dedupe_key in self.seen:
            return
        self.seen.add(dedupe_key)
        self.units.append(Unit(kind, source))
        self.keys.append(source)

    def add_parquet(self, source: str, opener) -> None:
        if f"parquet:{source}" in self.seen:
            return
        self.seen.add(f"parquet:{source}")
        self.parquet_files += 1
        for u in _parquet_units(source, opener):
            self.units.append(u)
            self.keys.extend(u.keys())

    # ---------------------------------------------------------------------------------------------------- local
    def add_local(self, arg: str, listed: bool) -> None:
        p = Path(arg)
        if p.is_dir():
            try:
                images = discover_images([p])
                parquet = sorted(Path(root, name) for root, _dirs, files in os.walk(p, followlinks=False)
                                 for name in files if name.lower().endswith(".parquet"))
            except OSError as e:
                raise InputError(f"{arg}: cannot list this folder ({e.strerror or e})") from None
            for f in images:
                self.add_file(LOCAL_FILE, str(f), str(f.absolute()))
            for q in parquet:
                self.add_parquet(str(q), lambda q=q: open(q, "rb"))
        elif p.suffix.lower() == ".parquet" and p.is_file():
            self.add_parquet(str(p), lambda: open(p, "rb"))
        elif os.path.lexists(p) or listed:
            # As in `scan`: an explicit file is kept whatever it is; a missing listed file gets an error row.
            self.add_file(LOCAL_FILE, str(p), str(p.absolute()))
        else:
            raise InputError(f"no such file or folder: {arg}")

    # ---------------------------------------------------------------------------------------------------- URIs
    def add_uri(self, uri: str, listed: bool) -> None:
        from pyarrow import fs as pafs

        filesystem, path = uri_filesystem(uri)
        prefix = _uri_prefix(uri)
        try:
            info = filesystem.get_file_info(path)
        except Exception as e:
            raise InputError(f"{uri}: cannot look it up ({type(e).__name__}: {e})") from None
        if info.type == pafs.FileType.Directory:
            try:
                found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
            except Exception as e:
                raise InputError(f"{uri}: cannot list it ({type(e).__name__}: {e})") from None
            files = sorted(i.path for i in found if i.type == pafs.FileType.File)
            for f in files:
                if _is_image_name(f):
                    self.add_file(URI_FILE, prefix + f, prefix + f)
            for f in files:
                if f.lower().endswith(".parquet"):
                    self.add_parquet(prefix + f, lambda f=f: filesystem.open_input_file(f))
        elif info.type == pafs.FileType.File and path.lower().endswith(".parquet"):
            self.add_parquet(prefix + path, lambda: filesystem.open_input_file(path))
        elif info.type == pafs.FileType.File or listed:
            self.add_file(URI_FILE, prefix + path, prefix + path)
        else:
            raise InputError(f"no such object or prefix: {uri}")

    def add_list(self, list_file: str) -> None:
        try:
            with open(list_file, encoding="utf-8") as f:
                number = 0
                while line := f.readline(MAX_LIST_LINE + 1):  # bounded: a file without newlines cannot fill memory
                    number += 1
                    if len(line) > MAX_LIST_LINE:
                        raise InputError(f"{list_file}:{number}: line longer than {MAX_LIST_LINE} characters; "
                                         f"@FILE must list one path or URI per line")
                    entry = line.strip()
                    if not entry or entry.startswith("#"):
                        continue
                    if "\x00" in entry:
                        raise InputError(f"{list_file}:{number}: NUL byte in a path")
                    self.add(entry, listed=True)
        except FileNotFoundError:
            raise InputError(f"no such list file: {list_file}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"{list_file}: not UTF-8 text ({e.reason} at byte {e.start}); @FILE must list one "
                             f"path or URI per line") from None
        except OSError as e:
            raise InputError(f"{list_file}: cannot read it ({e.strerror or e})") from None

    def add(self, arg: str, listed: bool = False) -> None:
        if arg.startswith("@") and not listed:
            self.add_list(arg[1:])
        elif is_uri(arg):
            self.add_uri(arg, listed)
        else:
            self.add_local(arg, listed)


def plan_inputs(paths: Sequence[str | os.PathLike]) -> InputPlan:
    """Expand scan arguments (see the module docstring) into an :class:`InputPlan`, in argument order.

    Raises InputError naming the argument: a local path or URI that does not exist (listed entries get error rows
    instead), an unreadable list file, a parquet file that is damaged or has no ``image`` column.
    """
    planner = _Planner()
    for arg in paths:
        planner.add(os.fspath(arg) if not isinstance(arg, str) else arg)
    return InputPlan(planner.units, planner.keys, planner.parquet_files)


def group_units(units: Iterable[Unit], target: int) -> list[list[Unit]]:
    """Consecutive units in groups of about ``target`` inputs (a big parquet row group stays one group): the
    blocks handed to read tasks, so that many tasks run at once and each stays small."""
    groups: list[list[Unit]] = []
    current: list[Unit] = []
    size = 0
    for u in units:
        if current and size + u.size > target:
            groups.append(current)
            current, size = [], 0
        current.append(u)
        size += u.size
    if current:
        groups.append(current)
    return groups
