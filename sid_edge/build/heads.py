"""Classification heads on the pooled CLIP feature, their files, and import of the paper's checkpoints.

Heads (source: Willi et al., clip-cues, ``ActivationOrthogonalityHead`` / ``LinearHead``):

* ``orthogonal``: Linear(D -> k) with orthogonal init (the k "directions"), then Linear(k -> 1) to the logit.
  No non-linearity in between, so the whole head is linear and its k activations are interpretable.
* ``linear``: Linear(D -> 1), the linear-probe baseline; its single activation is the logit.

A saved head is a directory: ``head.safetensors`` (weights) + ``head.json`` (kind, k, feature, backbone
identity, training report). Never a pickle. The paper's released ``.ckpt`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sid_edge.artifact.names import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

HEAD_FORMAT = "sid-edge-head"
HEAD_FORMAT_VERSION = 1
HEAD_KINDS = ("orthogonal", "linear")

#: The backbone the clip-cues checkpoints were trained on (Hugging Face openai/clip-vit-large-patch14-336 pooler_output).
CLIP_CUES_BACKBONE = {"model_name": DEFAULT_CLIP_MODEL, "pretrained": DEFAULT_CLIP_PRETRAINED, "feature_dim": 1024}


class OrthogonalHead(nn.Module):
    """Linear(D->k) (orthogonal init) -> Linear(k->1).

    forward(features [B,D] float32) -> (logit [B], activations [B,k]).
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

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.fc(features)
        return logit.squeeze(-1), logit


def orthogonality_penalty(activations: torch.Tensor) -> torch.Tensor:
    """‖I − ÂᵀÂ‖_F for a batch of head activations [B,k], Â = activations L2-normalised per column (over the
    batch). Source: clip-cues ``ActivationOrthogonalityHead.compute_loss``. Returns a scalar tensor (unweighted)."""
    a = F.normalize(activations, dim=0)
    gram = a.T @ a
    return torch.linalg.matrix_norm(torch.eye(gram.shape[0], device=gram.device) - gram)


@dataclass
class HeadConfig:
    """The JSON half of a saved head."""

    kind: str
    k: int
    feature_dim: int
    feature: str = "pooled_pre_projection"
    backbone: dict = field(default_factory=dict)
    threshold: float = 0.5
    source: str = "sid-edge train"
    training: dict = field(default_factory=dict)
    #: Concept heads only (kind ``concepts``): the concept vocabulary, see :mod:`sid_edge.build.concept_model`.
    vocabulary: dict | None = None

    def to_dict(self) -> dict:
        return {"format": HEAD_FORMAT, "version": HEAD_FORMAT_VERSION, **self.__dict__}


def build_head(kind: str, feature_dim: int, k: int = 8) -> nn.Module:
    """A fresh head of ``kind`` ('orthogonal' or 'linear'). Raises ValueError for another kind."""
    if kind == "orthogonal":
        return OrthogonalHead(feature_dim, k)
    if kind == "linear":
        return LinearHead(feature_dim)
    raise ValueError(f"unknown head kind {kind!r}; expected one of {HEAD_KINDS}")


def save_head(head: nn.Module, config: HeadConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``head.safetensors`` + ``head.json`` into ``out_dir`` (created). Returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(out / "head.safetensors"))
    (out / "head.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out


def load_head(path: str | os.PathLike) -> tuple[nn.Module, HeadConfig]:
    """Load a head from a sid-edge head directory (or its head.json / head.safetensors) or a clip-cues ``.ckpt``.

    Returns (head module in eval mode, config). Concept bottleneck models (sid-edge kind ``concepts``, clip-cues
    ``model_type == "concept"``) load as :class:`sid_edge.build.concept_model.ConceptBottleneck`, which reads the
    projected image embedding instead of the pooled feature (``cfg.feature``). Raises FileNotFoundError for a
    missing path and ValueError naming the file for anything that is not a head this project can use (wrong
    format, unknown keys, wrong shapes).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"head not found: {p}")
    if p.is_dir() or p.name in ("head.json", "head.safetensors"):
        head, cfg = _load_sid_edge_head(p if p.is_dir() else p.parent)
    else:
        head, cfg = load_clip_cues_checkpoint(p)
    return head.eval(), cfg


def _load_sid_edge_head(directory: Path) -> tuple[nn.Module, HeadConfig]:
    from safetensors.torch import load_file

    cfg_path, weights_path = directory / "head.json", directory / "head.safetensors"
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise ValueError(f"{directory}: not a sid-edge head directory ({f.name} missing)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    if raw.get("format") != HEAD_FORMAT:
        raise ValueError(f"{cfg_path}: format is {raw.get('format')!r}, expected {HEAD_FORMAT!r}")
    if raw.get("version") != HEAD_FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: head format version {raw.get('version')} is not supported")
    if raw.get("kind") == "concepts":
        from sid_edge.build.concept_model import load_concept_head

        return load_concept_head(directory)
    raw = {k: v for k, v in raw.items() if k not in ("format", "version")}
    cfg = HeadConfig(**raw)
    head = build_head(cfg.kind, cfg.feature_dim, cfg.k)
    state = load_file(str(weights_path))
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path}: weights do not match a {cfg.kind} head (k={cfg.k}, D={cfg.feature_dim}): {e}") from e
    return head, cfg


_CLIP_CUES_KEYS = {
    "clip": {
        "model.classification_head.layers.0.weight": "directions.weight",
        "model.classification_head.layers.0.bias": "directions.bias",
        "model.classification_head.to_logits.weight": "to_logit.weight",
        "model.classification_head.to_logits.bias": "to_logit.bias",
    },
    "linear": {
        "model.classification_head.fc.weight": "fc.weight",
        "model.classification_head.fc.bias": "fc.bias",
    },
}


def load_clip_cues_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, HeadConfig]:
    """Import a clip-cues head checkpoint (github.com/marco-willi/clip-cues, ``data/checkpoints/*.ckpt``).

    Format (torch.save dict, read with ``weights_only=True``): ``{"model_type": "clip"|"linear"|"concept",
    "state_dict": ...}``; clip: ``layers.0`` (k,1024) + ``to_logits`` (1,k); linear: ``fc`` (1,1024). Their
    feature is the 1024-d pooled CLS of ViT-L/14-336 (OpenAI weights) before the projection. ``concept``
    checkpoints are imported by :func:`sid_edge.build.concept_model.import_clip_cues_concept_checkpoint`.

    Raises ValueError naming the file: not a torch checkpoint, unsafe pickle content, unknown ``model_type``,
    missing/extra keys, inconsistent shapes.
    """
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for non-checkpoints
        raise ValueError(f"{p}: not a readable torch checkpoint with plain tensors ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_type" not in ckpt:
        raise ValueError(f"{p}: not a clip-cues checkpoint (expected a dict with 'model_type' and 'state_dict')")
    model_type = ckpt["model_type"]
    if model_type == "concept":
        from sid_edge.build.concept_model import import_clip_cues_concept_checkpoint

        return import_clip_cues_concept_checkpoint(p, ckpt)
    if model_type not in _CLIP_CUES_KEYS:
        raise ValueError(f"{p}: unknown clip-cues model_type {model_type!r} (expected 'clip', 'linear' or 'concept')")
    mapping = _CLIP_CUES_KEYS[model_type]
    state = ckpt["state_dict"]
    if set(state) != set(mapping):
        raise ValueError(f"{p}: state_dict keys {sorted(state)} do not match a clip-cues {model_type!r} head {sorted(mapping)}")
    new_state = {mapping[k]: v.float() for k, v in state.items()}
    if model_type == "clip":
        k, d = new_state["directions.weight"].shape
        head: nn.Module = OrthogonalHead(d, k)
        kind = "orthogonal"
    else:
        k, d = 1, new_state["fc.weight"].shape[1]
        head = LinearHead(d)
        kind = "linear"
    try:
        head.load_state_dict(new_state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{p}: inconsistent shapes: {e}") from e
    cfg = HeadConfig(
        kind=kind,
        k=k,
        feature_dim=d,
        backbone=dict(CLIP_CUES_BACKBONE),
        source=f"clip-cues checkpoint {p.name}",
    )
    return head, cfg
