"""Provenance in an evaluation: per dataset, how many images carry each kind of signal, and how each detector's
CLIP score distributes among them (does the pixel score agree with what the metadata says?)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sid_edge.provenance.reader import ProvenanceReader
from sid_edge.provenance.signals import KINDS, Signal

#: Groups of images reported besides one per kind.
SAYS_GENERATED, SAYS_CAPTURED, NO_SIGNAL = "says generated", "says captured", "no signal"


@dataclass
class GroupScores:
    """One detector's scores on one group of images: ``n`` scored, ``mean_p`` / ``median_p`` of p_synthetic,
    ``flagged``: share with p_synthetic >= the detector's threshold (NaN for an empty group)."""

    detector: str
    n: int
    mean_p: float
    median_p: float
    flagged: float


@dataclass
class ProvenanceGroup:
    """Images of one dataset in one group: a signal kind, ``says generated`` (some signal asserts generation),
    ``says captured`` (some signal asserts a capture and none generation) or ``no signal``. ``n_real`` /
    ``n_synthetic``: the dataset's own labels among them."""

    dataset: str
    group: str
    n: int
    n_real: int
    n_synthetic: int
    scores: list[GroupScores] = field(default_factory=list)


def read_signals(items, reader: ProvenanceReader, progress=None) -> dict[str, list[Signal]]:
    """Signals of every labelled image by its key (files, bytes and dataset references alike)."""
    out: dict[str, list[Signal]] = {}
    advance = progress("Reading provenance", len(items)) if progress else None
    for it in items:
        source = it.image
        if hasattr(source, "resolve_image"):
            try:
                source = source.resolve_image()
            except Exception:  # noqa: BLE001 - an unreadable dataset row has no provenance
                source = None
        out[it.key] = reader.read(source).signals if source is not None else []
        if advance:
            advance(1)
    return out


def _group_of(signals: list[Signal]) -> list[str]:
    groups = sorted({s.kind for s in signals}, key=KINDS.index)
    if any(s.generated is True for s in signals):
        groups.append(SAYS_GENERATED)
    elif any(s.generated is False for s in signals):
        groups.append(SAYS_CAPTURED)
    if not signals:
        groups.append(NO_SIGNAL)
    return groups


def summarize(evaluation, signals_by_dataset: dict[str, dict[str, list[Signal]]]) -> list[ProvenanceGroup]:
    """Groups per dataset of ``evaluation`` (an :class:`~sid_edge.tools.evaluation.runner.Evaluation`), with every
    detector's score distribution in each; only groups with images are listed."""
    out = []
    for ds in evaluation.datasets:
        by_key = signals_by_dataset.get(ds, {})
        first = evaluation.scored[(evaluation.detectors[0], ds)]
        member: dict[str, set[str]] = {}
        for key in first.keys:
            for g in _group_of(by_key.get(key, [])):
                member.setdefault(g, set()).add(key)
        order = [*KINDS, SAYS_GENERATED, SAYS_CAPTURED, NO_SIGNAL]
        for g in [g for g in order if g in member]:
            keys = member[g]
            labels = np.array([int(lbl) for k, lbl in zip(first.keys, first.labels) if k in keys], dtype=np.int64)
            group = ProvenanceGroup(ds, g, len(keys), int(np.sum(labels == 0)), int(np.sum(labels == 1)))
            for det in evaluation.detectors:
                s = evaluation.scored[(det, ds)]
                p = np.array([v for k, v in zip(s.keys, s.p_synthetic) if k in keys], dtype=np.float64)
                thr = evaluation.thresholds[det]
                nan = float("nan")
                group.scores.append(GroupScores(det, len(p), float(p.mean()) if len(p) else nan,
                                                float(np.median(p)) if len(p) else nan,
                                                float(np.mean(p >= thr)) if len(p) else nan))
            out.append(group)
    return out


def write_summary(groups: Sequence[ProvenanceGroup], out_dir: str | os.PathLike) -> Path:
    """``out_dir/provenance.json``: the groups as a list of objects (NaN written as null)."""
    path = Path(out_dir) / "provenance.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    path.write_text(json.dumps([clean(asdict(g)) for g in groups], indent=1), encoding="utf-8")
    return path
