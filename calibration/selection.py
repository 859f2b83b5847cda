"""Deterministic stratified draws from a labelled dataset (torch-free).

Calibration needs activations from every kind of image the detector will see, so the draw is balanced rather than
proportional: the size is split as evenly as the data allows first across labels (real / synthetic), then within
each label across sources (generators), and each (label, source) stratum is sampled at random without
replacement. Whatever a small stratum cannot supply goes to the others ("water-filling"), so the requested size is
met whenever the dataset has that many images.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from sid_edge.tools.datasets import LabelledImage

K = TypeVar("K", bound=Hashable)


def allocate(total: int, capacities: Mapping[K, int]) -> dict[K, int]:
    """Split ``total`` across groups as evenly as their ``capacities`` allow.

    Every group gets an equal share, capped at its capacity; what capped groups cannot take is shared again
    among the rest. A remainder smaller than the number of open groups goes one each to groups in sorted key
    order, so the result is deterministic. Returns {group: count}; the counts sum to
    ``min(total, sum(capacities))``.

    Raises ValueError for a negative total or capacity.
    """
    if total < 0 or any(c < 0 for c in capacities.values()):
        raise ValueError(f"allocate: total and capacities must be >= 0, got {total}, {dict(capacities)}")
    alloc = {k: 0 for k in capacities}
    remaining = min(total, sum(capacities.values()))
    open_groups = sorted((k for k, c in capacities.items() if c > 0), key=repr)
    while remaining > 0:
        share = max(1, remaining // len(open_groups))
        for k in list(open_groups):
            give = min(share, capacities[k] - alloc[k], remaining)
            alloc[k] += give
            remaining -= give
            if alloc[k] == capacities[k]:
                open_groups.remove(k)
            if remaining == 0:
                break
    return alloc


def select_stratified(items: Sequence[LabelledImage], size: int, seed: int = 0) -> list[LabelledImage]:
    """Draw ``size`` items, balanced across labels and, within each label, across sources (see module docstring).

    Deterministic for a given ``seed`` and item list. Returns the chosen items in their dataset order; all items
    when ``size`` >= len(items).

    Raises ValueError when ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"a selection needs at least one image, got size={size}")
    strata: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, it in enumerate(items):
        strata[it.label][it.source].append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    per_label = allocate(size, {label: sum(map(len, by_source.values())) for label, by_source in strata.items()})
    for label in sorted(strata):
        by_source = strata[label]
        per_source = allocate(per_label[label], {src: len(ix) for src, ix in by_source.items()})
        for src in sorted(by_source):
            n = per_source[src]
            if n:
                chosen.extend(rng.choice(by_source[src], size=n, replace=False).tolist())
    return [items[i] for i in sorted(chosen)]


def exclude_image_ids(items: Iterable[LabelledImage], image_ids: Iterable[str]) -> list[LabelledImage]:
    """``items`` without those whose ``image_id`` is in ``image_ids``.

    Excluding by image id (not only by file) also drops the synthetic versions of a real photo used in
    calibration, so nothing the quantizer saw leaks into the held-out figures.
    """
    drop = set(image_ids)
    return [it for it in items if it.image_id not in drop]
