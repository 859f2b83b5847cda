"""The head's weights as plain float32 arrays (``head.npz`` in the artifact), and the head applied in numpy.

The fused graph computes backbone + head in one pass. Evaluating many heads that share a backbone on the same
images needs the backbone only once: the graph's ``features`` output (the pooled pre-projection feature the head
reads, [B,D]) is computed by one artifact, and every head is then applied here, in numpy (torch-free).

File layout (``np.savez``, read with ``allow_pickle=False``), by head kind (source: :mod:`sid_edge.build.heads`):

* ``orthogonal``: ``directions.weight`` [k,D], ``directions.bias`` [k], ``to_logit.weight`` [1,k],
  ``to_logit.bias`` [1]; logit = to_logit(directions(x)).
* ``linear``: ``fc.weight`` [1,D], ``fc.bias`` [1]; logit = fc(x).

Concept bottleneck heads (kind ``concepts``) read the projected embedding through gates and are not written here:
their artifacts are scored by their own graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sid_edge.artifact.names import HEAD_WEIGHTS_FILE


#: Arrays of each head kind whose logit this module can compute, with their shapes in terms of k and D.
HEAD_ARRAYS = {
    "orthogonal": {"directions.weight": ("k", "D"), "directions.bias": ("k",), "to_logit.weight": (1, "k"),
                   "to_logit.bias": (1,)},
    "linear": {"fc.weight": (1, "D"), "fc.bias": (1,)},
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x| (same dtype as ``x``)."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@dataclass(frozen=True)
class HeadWeights:
    """A linear head in numpy. ``arrays`` hold float32 weights named as in :data:`HEAD_ARRAYS`."""

    kind: str
    arrays: dict

    @property
    def feature_dim(self) -> int:
        return int(self.arrays["directions.weight" if self.kind == "orthogonal" else "fc.weight"].shape[1])

    @property
    def k(self) -> int:
        return int(self.arrays["directions.weight"].shape[0]) if self.kind == "orthogonal" else 1

    def logit(self, features: np.ndarray) -> np.ndarray:
        """logit float32 [N] of features [N,D] (float32 arithmetic, as the graph does it).

        Raises ValueError when ``features`` is not [N, feature_dim].
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"the {self.kind} head reads [N,{self.feature_dim}] features, got {list(x.shape)}")
        a = self.arrays
        if self.kind == "orthogonal":
            acts = x @ a["directions.weight"].T + a["directions.bias"]
            return (acts @ a["to_logit.weight"].T + a["to_logit.bias"])[:, 0]
        return (x @ a["fc.weight"].T + a["fc.bias"])[:, 0]

    def p_synthetic(self, features: np.ndarray) -> np.ndarray:
        """sigmoid(logit) float32 [N]."""
        return sigmoid(self.logit(features))


def save_head_weights(directory: str | os.PathLike, kind: str, arrays: dict) -> Path:
    """Write ``directory/head.npz`` with ``arrays`` (cast to float32) after checking names and shapes.

    Raises ValueError for a kind this module cannot apply or arrays that do not form such a head.
    """
    weights = HeadWeights(kind, {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in arrays.items()})
    _check(weights, f"head weights for {directory}")
    path = Path(directory) / HEAD_WEIGHTS_FILE
    np.savez(path, **weights.arrays)
    return path


def load_head_weights(path: str | os.PathLike, kind: str) -> HeadWeights:
    """Read a ``head.npz`` (no pickle) for a head of ``kind``.

    Raises ValueError naming the file when it is not a readable npz or its arrays do not form a ``kind`` head.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {name: z[name].astype(np.float32, copy=False) for name in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a readable head weights file ({e})") from e
    weights = HeadWeights(kind, arrays)
    _check(weights, str(p))
    return weights


def _check(weights: HeadWeights, where: str) -> None:
    spec = HEAD_ARRAYS.get(weights.kind)
    if spec is None:
        raise ValueError(f"{where}: head kind {weights.kind!r} has no numpy form (expected one of {', '.join(HEAD_ARRAYS)})")
    if set(weights.arrays) != set(spec):
        raise ValueError(f"{where}: arrays {sorted(weights.arrays)} do not match a {weights.kind} head {sorted(spec)}")
    first = weights.arrays["directions.weight" if weights.kind == "orthogonal" else "fc.weight"]
    if first.ndim != 2:
        raise ValueError(f"{where}: weight of shape {list(first.shape)} is not a matrix")
    dims = {"k": first.shape[0] if weights.kind == "orthogonal" else 1, "D": first.shape[1]}
    for name, shape in spec.items():
        want = tuple(dims.get(s, s) for s in shape)
        if weights.arrays[name].shape != want:
            raise ValueError(f"{where}: {name} has shape {list(weights.arrays[name].shape)}, expected {list(want)}")
