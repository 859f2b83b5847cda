"""Vocabularies of photographic concepts: antonym prompt pairs for concept-based heads.

A vocabulary is a list of :class:`Concept` objects, each a pair of CLIP text prompts that describe opposite
ends of one visual property (for example "a photo with visible lens flare" / "a photo without any lens flare").
The prompts are embedded **once, at export time**, by the backbone's own text tower; the runtime only ever sees
the resulting fixed concept directions baked into the ONNX graph, so this module never needs torch (it imports
only the standard library and is safe to import from the torch-free runtime).

File format
-----------
UTF-8 CSV (a leading byte-order mark is tolerated) with a header row, RFC 4180 quoting (prompts may contain
commas). Two layouts are accepted, detected from the header:

* **sid-edge format** (the packaged ``sid_edge/build/vocabularies/photographic.csv``)::

      attribute,positive,negative,category
      lens_flare,a photo with visible lens flare,a photo without any lens flare,optics

  ``attribute`` is a unique snake_case id, ``positive``/``negative`` are the full text prompts and
  ``category`` groups concepts (colour, light_exposure, optics, composition, texture_detail, noise_grain,
  compression, rendering_look, subject_scene).

* **clip-cues paper format** (recognised by an ``attribute_name`` or ``positive_prompt`` column)::

      attribute_name,positive,negative,positive_prompt,negative_prompt,category,explanation

  Here ``positive``/``negative`` are short keywords and are ignored; the prompts come from
  ``positive_prompt``/``negative_prompt`` and the name from ``attribute_name``. ``explanation`` is optional.

Other columns are ignored, surrounding whitespace in every field is stripped and completely blank lines are
skipped. Row order is preserved and defines the order of the concept directions.

Errors
------
* :class:`FileNotFoundError` if the file does not exist.
* :class:`ValueError` naming the file and the reason for: a missing required column, an empty name, prompt or
  category (with the data row number and file line number), a duplicate attribute name, or a file with no data
  rows.
"""

from __future__ import annotations

import csv
import importlib.resources
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Concept", "concept_prompts", "default_vocabulary_path", "load_vocabulary"]

_PACKAGED_FILE = ("vocabularies", "photographic.csv")

# (name column, positive prompt column, negative prompt column, category column) per supported layout.
_OUR_COLUMNS = ("attribute", "positive", "negative", "category")
_PAPER_COLUMNS = ("attribute_name", "positive_prompt", "negative_prompt", "category")


@dataclass(frozen=True)
class Concept:
    """One antonym pair of text prompts.

    Attributes:
        name: unique attribute id (snake_case in the packaged vocabulary), e.g. ``"lens_flare"``.
        positive: the text prompt for the presence/high end of the property.
        negative: the text prompt for its absence/low end.
        category: the group the concept belongs to, e.g. ``"optics"``.
    """

    name: str
    positive: str
    negative: str
    category: str


def default_vocabulary_path() -> pathlib.Path:
    """Path of the vocabulary packaged with sid-edge (``sid_edge/build/vocabularies/photographic.csv``)."""
    resource = importlib.resources.files(__package__ or "sid_edge").joinpath(*_PACKAGED_FILE)
    return resource if isinstance(resource, pathlib.Path) else pathlib.Path(str(resource))


def _detect_columns(fieldnames: list[str], path: pathlib.Path) -> tuple[str, str, str, str]:
    header = set(fieldnames)
    if "attribute_name" in header or "positive_prompt" in header:
        wanted, layout = _PAPER_COLUMNS, "clip-cues format"
    else:
        wanted, layout = _OUR_COLUMNS, "sid-edge format"
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)} for the {layout} "
            f"(header is {fieldnames!r}; expected {','.join(wanted)})"
        )
    return wanted  # type: ignore[return-value]


def load_vocabulary(path: str | os.PathLike[str] | None = None) -> list[Concept]:
    """Read a vocabulary CSV into a list of :class:`Concept`, in file order.

    Args:
        path: the CSV file; ``None`` loads the packaged vocabulary (:func:`default_vocabulary_path`).
            Both the sid-edge layout (``attribute,positive,negative,category``) and the clip-cues paper layout
            (``attribute_name,...,positive_prompt,negative_prompt,category,...``) are accepted; see the module
            docstring for the details.

    Returns:
        The concepts. Their prompts are embedded once at export time by the backbone's own text tower.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: (message starts with the file path) a required column is missing, a name, prompt or
            category is empty (the row and line are given), an attribute name is repeated, or the file has no
            data rows.
    """
    file = default_vocabulary_path() if path is None else pathlib.Path(path)
    if not file.is_file():
        if file.exists():
            raise ValueError(f"{file}: not a regular file")
        raise FileNotFoundError(f"vocabulary file not found: {file}")

    with file.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        fieldnames = [(f or "").strip() for f in (reader.fieldnames or [])]
        if not fieldnames:
            raise ValueError(f"{file}: empty file, no header row and no data rows")
        reader.fieldnames = fieldnames
        name_col, pos_col, neg_col, cat_col = _detect_columns(fieldnames, file)

        concepts: list[Concept] = []
        first_line: dict[str, int] = {}
        row_number = 0
        for record in reader:
            values = {k: (v or "").strip() for k, v in record.items() if isinstance(k, str)}
            if not any(values.values()):
                continue  # blank line
            row_number += 1
            where = f"row {row_number} (line {reader.line_num})"
            name = values.get(name_col, "")
            if not name:
                raise ValueError(f"{file}: empty attribute name in column {name_col!r} at {where}")
            for col in (pos_col, neg_col):
                if not values.get(col, ""):
                    raise ValueError(f"{file}: empty prompt in column {col!r} at {where} (attribute {name!r})")
            if not values.get(cat_col, ""):
                raise ValueError(f"{file}: empty category in column {cat_col!r} at {where} (attribute {name!r})")
            if name in first_line:
                raise ValueError(
                    f"{file}: duplicate attribute name {name!r} at {where}; first defined on line {first_line[name]}"
                )
            first_line[name] = reader.line_num
            concepts.append(Concept(name=name, positive=values[pos_col], negative=values[neg_col], category=values[cat_col]))

    if not concepts:
        raise ValueError(f"{file}: no rows, the vocabulary has a header but no concepts")
    return concepts


def concept_prompts(concepts: Iterable[Concept], template: str = "{}") -> tuple[list[str], list[str]]:
    """Split concepts into the prompt lists to embed with the text tower.

    Args:
        concepts: the vocabulary, e.g. from :func:`load_vocabulary`.
        template: a ``str.format`` template with one ``{}`` placeholder applied to every prompt. The default
            ``"{}"`` uses the prompts verbatim, which is what the packaged vocabulary is written for (its prompts
            are already full phrases such as "a photo with visible lens flare").

    Returns:
        ``(positive_prompts, negative_prompts)``, aligned with ``concepts``.

    Raises:
        ValueError: the template has no ``{}`` placeholder (every prompt would become identical).
    """
    if "{}" not in template:
        raise ValueError(f"template {template!r} must contain a '{{}}' placeholder for the prompt")
    positives: list[str] = []
    negatives: list[str] = []
    for concept in concepts:
        positives.append(template.format(concept.positive))
        negatives.append(template.format(concept.negative))
    return positives, negatives
