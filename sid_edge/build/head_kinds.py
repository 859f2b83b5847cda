"""The registry of head kinds: what each kind is built from, what it optimises, what it reports and how its
weights are named in the paper's checkpoints.

One entry per kind, used by the one training loop (:func:`sid_edge.build.training.train`) and the one head-file
loader / clip-cues importer (:func:`sid_edge.build.heads.load_head`):

=============  ==========================  ============================================  =========================
kind           module (feature it reads)   loss (source: Willi et al., clip-cues)         reported
=============  ==========================  ============================================  =========================
orthogonal     OrthogonalHead (pooled D)   BCE(ls 0.1) + 0.33·‖I − ÂᵀÂ‖_F                ‖I − ÂᵀÂ‖_F before/after
linear         LinearHead (pooled D)       BCE(ls 0.1)                                   ‖I − ÂᵀÂ‖_F (0 for k=1)
concepts       ConceptBottleneck (emb. E)  BCE + β·Σ_c KL(Bern(σ(a_c)) ‖ Bern(α))        active gates per image
=============  ==========================  ============================================  =========================

Every head module follows one contract: ``forward(x [B,D] float32) -> (logit [B], activations [B,k])``, with
``module.kind``, ``module.k`` and ``module.feature_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sid_edge.build.concept_model import FEATURE as EMBEDDING_FEATURE
from sid_edge.build.concept_model import ConceptBottleneck, active_gates, bernoulli_kl
from sid_edge.build.linear_heads import LinearHead, OrthogonalHead, orthogonality_penalty

#: The feature the orthogonal and linear heads read: the pooled CLS token before the visual projection.
POOLED_FEATURE = "pooled_pre_projection"


# ---------------------------------------------------------------------------------------------------- settings
@dataclass
class TrainConfig:
    """Hyper-parameters of the orthogonal and linear heads; defaults follow the paper where it states them
    (Willi et al., clip-cues: label smoothing 0.1, ‖I − ÂᵀÂ‖_F weight 0.33, AdamW weight decay 0.01,
    early stopping on validation AP with patience 5)."""

    kind: str = "orthogonal"
    k: int = 8
    ortho_weight: float = 0.33
    label_smoothing: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    #: An epoch is one pass over the training split, repeated until at least this many optimizer steps: on small
    #: datasets one pass is a single step, which makes patience-5 early stopping stop before anything is learnt.
    min_steps_per_epoch: int = 20
    max_epochs: int = 200
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0


@dataclass
class ConceptTrainConfig:
    """Hyper-parameters of the concept bottleneck (``sid-edge train --head-kind concepts``); defaults follow
    clip-cues where it states them.

    ``sparsity_weight`` is β (weight of the KL prior), ``prior_rate`` α (target gate rate), ``temperature`` τ of
    the binary-concrete relaxation. Early stopping on validation AP as for the heads.
    """

    temperature: float = 0.1
    sparsity_weight: float = 1e-4
    prior_rate: float = 1e-4
    lr: float = 1e-3
    gate_lr_factor: float = 10.0
    classifier_weight_decay: float = 1e-5
    label_smoothing: float = 0.0
    batch_size: int = 256
    min_steps_per_epoch: int = 20
    max_epochs: int = 200
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0

    kind: ClassVar[str] = "concepts"


@dataclass
class TrainReport:
    """What training an orthogonal or linear head measured. ``history`` has one dict per epoch: train_loss, bce,
    ortho (unweighted ‖I − ÂᵀÂ‖_F over the training set), val_ap, val_loss."""

    val_ap: float
    best_epoch: int
    n_train: int
    n_val: int
    ortho_initial: float
    ortho_final: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"epochs": len(self.history)}


@dataclass
class ConceptTrainReport:
    """What training a concept bottleneck measured. ``active_gates``: mean number of gates > 0.5 per image (eval
    mode) over the whole training set at the kept epoch; ``history``: one dict per epoch (train_loss, bce, kl,
    active_gates, val_ap, val_loss)."""

    val_ap: float
    best_epoch: int
    n_train: int
    n_val: int
    n_concepts: int
    active_gates: float
    active_gates_initial: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"epochs": len(self.history)}


# ---------------------------------------------------------------------------------------------------- kinds
class HeadKind:
    """One kind of head. Subclasses fill the class attributes and the methods the loop and the loader call."""

    name: ClassVar[str]
    #: Which backbone output the head reads (``HeadConfig.feature``).
    feature: ClassVar[str]
    config_type: ClassVar[type]
    #: ``model_type`` of the paper's checkpoints and their state_dict keys -> this module's keys.
    clip_cues_model_type: ClassVar[str]
    clip_cues_keys: ClassVar[dict[str, str]]

    # -- training
    def new(self, feature_dim: int, config, **inputs) -> nn.Module:
        """A freshly initialised module for training on ``feature_dim``-d inputs (consumes torch's global RNG)."""
        raise NotImplementedError

    def width(self, config, **inputs) -> int:
        """k (activations per image) before the module exists, to size the training step."""
        raise NotImplementedError

    def param_groups(self, module: nn.Module, config) -> list[dict]:
        """AdamW parameter groups."""
        raise NotImplementedError

    def objective(self, module: nn.Module, x: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """(logit [B], weighted regulariser added to the BCE or None, {name: unweighted term} averaged per epoch
        into the history) for a batch x [B,D]."""
        raise NotImplementedError

    def monitor(self, module: nn.Module, x: torch.Tensor) -> dict[str, float]:
        """Figures over the whole training split x, logged every epoch (no gradient, no RNG)."""
        raise NotImplementedError

    def report(self, module: nn.Module, initial: dict, final: dict, **common) -> Any:
        """The kind's report from the common figures (val_ap, best_epoch, n_train, n_val, history) and the
        :meth:`monitor` figures before training (``initial``) and at the kept epoch (``final``)."""
        raise NotImplementedError

    # -- files
    def from_state(self, state: dict[str, torch.Tensor], k: int, feature_dim: int, training: dict) -> nn.Module:
        """A module of this kind holding ``state`` (strict). Raises ValueError (without a file name) when the
        tensors do not fit."""
        raise NotImplementedError

    def saved_training(self, module: nn.Module) -> dict:
        """What ``from_state`` needs back from the head's JSON ``training`` block."""
        return {}


class _PooledHead(HeadKind):
    feature = POOLED_FEATURE
    config_type = TrainConfig

    def width(self, config, **inputs) -> int:
        return config.k

    def param_groups(self, module, config):
        return [{"params": module.parameters(), "lr": config.lr, "weight_decay": config.weight_decay}]

    def monitor(self, module, x):
        with torch.no_grad():
            _, acts = module(x)
            return {"ortho": float(orthogonality_penalty(acts))}

    def report(self, module, initial, final, **common) -> TrainReport:
        return TrainReport(ortho_initial=initial["ortho"], ortho_final=final["ortho"], **common)

    def from_state(self, state, k, feature_dim, training):
        module = self.new_sized(feature_dim, k)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights do not match a {self.name} head (k={k}, D={feature_dim}): {e}") from e
        return module

    def new(self, feature_dim, config, **inputs):
        return self.new_sized(feature_dim, config.k)

    def new_sized(self, feature_dim: int, k: int) -> nn.Module:
        raise NotImplementedError


class Orthogonal(_PooledHead):
    name = "orthogonal"
    clip_cues_model_type = "clip"
    clip_cues_keys = {
        "model.classification_head.layers.0.weight": "directions.weight",
        "model.classification_head.layers.0.bias": "directions.bias",
        "model.classification_head.to_logits.weight": "to_logit.weight",
        "model.classification_head.to_logits.bias": "to_logit.bias",
    }

    def new_sized(self, feature_dim, k):
        return OrthogonalHead(feature_dim, k)

    def objective(self, module, x, config):
        logit, acts = module(x)
        # The term needs >= 2 images (it normalises each activation over the batch).
        reg = config.ortho_weight * orthogonality_penalty(acts) if config.ortho_weight > 0 and len(x) > 1 else None
        return logit, reg, {}


class Linear(_PooledHead):
    name = "linear"
    clip_cues_model_type = "linear"
    clip_cues_keys = {
        "model.classification_head.fc.weight": "fc.weight",
        "model.classification_head.fc.bias": "fc.bias",
    }

    def new_sized(self, feature_dim, k):
        return LinearHead(feature_dim)

    def objective(self, module, x, config):
        logit, _ = module(x)
        return logit, None, {}


class Concepts(HeadKind):
    name = "concepts"
    feature = EMBEDDING_FEATURE
    config_type = ConceptTrainConfig
    clip_cues_model_type = "concept"
    clip_cues_keys = {
        "model.text_embeddings": "text_embeddings",
        "model.W_concepts.weight": "W_concepts.weight",
        "model.W_concepts.bias": "W_concepts.bias",
        "model.W_classifier.weight": "W_classifier.weight",
        "model.W_classifier.bias": "W_classifier.bias",
    }

    @staticmethod
    def _text(feature_dim: int, text_embeddings) -> np.ndarray:
        t = np.asarray(text_embeddings, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != feature_dim:
            raise ValueError(f"concept embeddings {t.shape} do not match {feature_dim}-d image embeddings")
        return t

    def width(self, config, *, text_embeddings, **inputs) -> int:
        return len(np.asarray(text_embeddings))

    def new(self, feature_dim, config, *, text_embeddings, **inputs):
        return ConceptBottleneck(self._text(feature_dim, text_embeddings), temperature=config.temperature)

    def param_groups(self, module, config):
        # Source: clip-cues: the gate layer at 10x the learning rate without weight decay.
        return [
            {"params": module.W_concepts.parameters(), "lr": config.lr * config.gate_lr_factor, "weight_decay": 0.0},
            {"params": module.W_classifier.parameters(), "lr": config.lr, "weight_decay": config.classifier_weight_decay},
        ]

    def objective(self, module, x, config):
        parts = module.decompose(x)  # binary-concrete gates in training mode (torch's global RNG)
        kl = bernoulli_kl(torch.sigmoid(parts["gate_logits"]), config.prior_rate).sum(-1).mean()
        # Always added (also for β = 0): ties in validation AP are broken by this loss, so among equally accurate
        # epochs the sparser one is kept.
        return parts["logit"], config.sparsity_weight * kl, {"kl": kl}

    def monitor(self, module, x):
        return {"active_gates": active_gates(module, x)}

    def report(self, module, initial, final, **common) -> ConceptTrainReport:
        return ConceptTrainReport(n_concepts=module.k, active_gates=final["active_gates"],
                                  active_gates_initial=initial["active_gates"], **common)

    def from_state(self, state, k, feature_dim, training):
        if "text_embeddings" not in state:
            raise ValueError(f"a concept head needs 'text_embeddings' (keys: {sorted(state)})")
        t = state["text_embeddings"]
        if t.ndim != 2:
            raise ValueError(f"text_embeddings must be 2-d (C,E), got {tuple(t.shape)}")
        module = ConceptBottleneck(t, temperature=(training or {}).get("temperature", 0.1))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights do not match a concept model with C={module.k}: {e}") from e
        return module

    def saved_training(self, module):
        return {"temperature": module.temperature}


#: Every head kind by name, in the order ``sid-edge train --head-kind`` lists them.
HEAD_KINDS: dict[str, HeadKind] = {kind.name: kind for kind in (Orthogonal(), Linear(), Concepts())}


def head_kind(name: str) -> HeadKind:
    """The registry entry for ``name``. Raises ValueError naming the known kinds for another name."""
    try:
        return HEAD_KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown head kind {name!r}; expected one of {tuple(HEAD_KINDS)}") from None


def clip_cues_kind(model_type: str) -> HeadKind:
    """The kind a clip-cues checkpoint's ``model_type`` imports as. Raises ValueError for another type."""
    for kind in HEAD_KINDS.values():
        if kind.clip_cues_model_type == model_type:
            return kind
    known = ", ".join(repr(k.clip_cues_model_type) for k in HEAD_KINDS.values())
    raise ValueError(f"unknown clip-cues model_type {model_type!r} (expected one of {known})")
