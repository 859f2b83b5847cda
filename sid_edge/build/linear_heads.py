"""The two linear heads on the pooled CLIP feature and the paper's orthogonality term.

Source: Willi et al., clip-cues, ``ActivationOrthogonalityHead`` / ``LinearHead``:

* ``orthogonal``: Linear(D -> k) with orthogonal init (the k "directions"), then Linear(k -> 1) to the logit.
  No non-linearity in between, so the whole head is linear and its k activations are interpretable.
* ``linear``: Linear(D -> 1), the linear-probe baseline; its single activation is the logit.

Both follow the head contract of :mod:`sid_edge.build.head_kinds`: ``forward(features [B,D] float32) ->
(logit [B], activations [B,k])``. Files and training live in :mod:`sid_edge.build.heads` and
:mod:`sid_edge.build.training`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OrthogonalHead(nn.Module):
    """Linear(D->k) (orthogonal init) -> Linear(k->1).

    forward(features [B,D] float32) -> (logit [B], activations [B,k]). Raises ValueError unless 1 <= k <= D.
    """

    kind = "orthogonal"

    def __init__(self, feature_dim: int, k: int = 8):
        super().__init__()
        if not 1 <= k <= feature_dim:
            raise ValueError(f"head dimension k={k} must be in 1..{feature_dim}")
        self.directions = nn.Linear(feature_dim, k)
        self.to_logit = nn.Linear(k, 1)
        nn.init.orthogonal_(self.directions.weight)

    @property
    def k(self) -> int:
        return self.directions.out_features

    @property
    def feature_dim(self) -> int:
        return self.directions.in_features

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = self.directions(features)
        return self.to_logit(activations).squeeze(-1), activations


class LinearHead(nn.Module):
    """Linear(D->1). forward(features [B,D]) -> (logit [B], activations [B,1] = the logit)."""

    kind = "linear"

    def __init__(self, feature_dim: int):
        super().__init__()
        self.fc = nn.Linear(feature_dim, 1)

    @property
    def k(self) -> int:
        return 1

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.fc(features)
        return logit.squeeze(-1), logit


def orthogonality_penalty(activations: torch.Tensor) -> torch.Tensor:
    """‖I − ÂᵀÂ‖_F for a batch of head activations [B,k], Â = activations L2-normalised per column (over the
    batch). Source: clip-cues ``ActivationOrthogonalityHead.compute_loss``. Returns a scalar tensor (unweighted)."""
    a = F.normalize(activations, dim=0)
    gram = a.T @ a
    return torch.linalg.matrix_norm(torch.eye(gram.shape[0], device=gram.device) - gram)
