"""An image's top concepts from the graph's concept outputs, and their text forms for scan rows (torch-free).

Ranking rule (recorded in the manifest as ``vocabulary.top_concepts_by``):

* artifacts with a concept model rank by |concept_contributions| — the per-concept terms of ``concept_logit``, so
  the top concepts are the reasons that moved the score most (positive: towards synthetic, negative: towards real);
* otherwise by |concept_scores| — the cosine to each concept direction, so the top concepts are the properties the
  image expresses most strongly at either end of the antonym pair (positive: nearer the positive prompt).

CSV cell: ``name:value;name:value`` with the ranking value to 4 decimals (split on ``;``, then ``rsplit(":", 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOP_CONCEPTS = 3


@dataclass(frozen=True)
class ConceptHit:
    """One of an image's top concepts: ``name``; ``score`` the cosine concept score in [−1,1];
    ``contribution`` its term in concept_logit (None without a concept model)."""

    name: str
    score: float
    contribution: float | None = None

    @property
    def value(self) -> float:
        """The ranking value: the contribution when there is one, else the score."""
        return self.score if self.contribution is None else self.contribution

    def to_dict(self) -> dict:
        d = {"name": self.name, "score": round(self.score, 6)}
        if self.contribution is not None:
            d["contribution"] = round(self.contribution, 6)
        return d


def concept_names(manifest) -> list[str]:
    """Concept names of an artifact in graph column order ([] when it has no vocabulary)."""
    return manifest.concept_names


def top_concepts(names: list[str], scores: np.ndarray, contributions: np.ndarray | None = None, n: int = DEFAULT_TOP_CONCEPTS) -> list[ConceptHit]:
    """The ``n`` concepts with the largest |contribution| (or |score| without contributions), largest first.

    Args:
        names: C concept names.
        scores: float32 [C] concept_scores of one image.
        contributions: float32 [C] concept_contributions of that image, or None.
        n: how many (0 gives []).

    Raises ValueError when the lengths differ.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(names) != len(scores) or (contributions is not None and len(contributions) != len(scores)):
        raise ValueError(f"{len(names)} concept names for {len(scores)} concept scores")
    key = np.abs(scores if contributions is None else np.asarray(contributions, dtype=np.float64))
    order = np.argsort(-key, kind="stable")[: max(0, n)]
    return [ConceptHit(names[i], float(scores[i]), None if contributions is None else float(contributions[i]))
            for i in order]


def format_csv_cell(hits: list[ConceptHit]) -> str:
    """``lens_flare:0.3100;bokeh:-0.2800`` (ranking values)."""
    return ";".join(f"{h.name}:{h.value:.4f}" for h in hits)


def parse_csv_cell(cell: str) -> list[tuple[str, float]]:
    """Inverse of :func:`format_csv_cell`: [(name, value)]; empty cell → []."""
    out = []
    for part in filter(None, cell.split(";")):
        name, value = part.rsplit(":", 1)
        out.append((name, float(value)))
    return out
