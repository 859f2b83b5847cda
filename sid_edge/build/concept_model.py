"""The paper's sparse concept bottleneck model: training on cached embeddings, files, checkpoint import.

Needs torch and scikit-learn (the ``train`` extra).

Model (source: Willi et al., clip-cues ``concept_modeling/networks.py``, ``ConceptBottleneckModel``), for an
image embedding x [B,E] and concept text embeddings T [C,E]:

    x̂ = normalize(x),  T̂ = normalize(T) (rows)
    s = x̂ T̂ᵀ                                   similarities (cosines)              [B,C]
    a = W_c x̂ + b_c                             per-image gate logits              [B,C]
    g = sigmoid(a)  at inference;  g ~ BinConcrete(a, τ=0.1) while training      [B,C]
        (binary-concrete relaxation: g = sigmoid((a + log U − log(1−U)) / τ), U ~ Uniform(0,1))
    logit = w · (s ⊙ g) + b                      [B]
    contributions = w ⊙ s ⊙ g                    [B,C]   (Σ_c contributions + b = logit)

Loss: BCE(logit, y) + β · Σ_c KL(Bernoulli(sigmoid(a_c)) ‖ Bernoulli(α)), averaged over the batch (the KL sparsity
prior pulls gates towards a small rate α). Paper defaults: τ = 0.1, β = 1e-4, α = 1e-4, AdamW with the gate layer
at 10× the learning rate and no weight decay, classifier weight decay 1e-5.

Saved like the other heads (``head.safetensors`` + ``head.json``, kind ``concepts``), never a pickle; the JSON
carries the concept vocabulary so names travel with the weights.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sid_edge.build.heads import CLIP_CUES_BACKBONE, HEAD_FORMAT, HEAD_FORMAT_VERSION, HeadConfig
from sid_edge.build.training import EarlyStopping, _ap, stratified_split, threads_for
from sid_edge.build.vocabulary import Concept

log = logging.getLogger(__name__)

KIND = "concepts"
#: The feature a concept model reads: the L2-normalised projected image embedding (joint image-text space).
FEATURE = "image_embedding"
#: Gates above this count as "active" (sigmoid(a) > 0.5, i.e. a > 0) in reports and tests.
ACTIVE_GATE = 0.5


def binary_concrete(logits: torch.Tensor, temperature: float, eps: float = 1e-6) -> torch.Tensor:
    """A relaxed Bernoulli sample in (0,1) per element: sigmoid((logits + log U − log(1−U)) / temperature),
    U ~ Uniform(eps, 1−eps). Source: Maddison et al. 2017 / Jang et al. 2017 (binary concrete), as in clip-cues."""
    u = torch.rand_like(logits).clamp(eps, 1.0 - eps)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def bernoulli_kl(p: torch.Tensor, q: float, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise KL(Bernoulli(p) ‖ Bernoulli(q)) in nats: p·log(p/q) + (1−p)·log((1−p)/(1−q))."""
    return p * (torch.log(p + eps) - np.log(q + eps)) + (1 - p) * (torch.log(1 - p + eps) - np.log(1 - q + eps))


class ConceptBottleneck(nn.Module):
    """The sparse concept bottleneck (see the module docstring for the formula).

    ``text_embeddings`` [C,E] are normalised and kept as a fixed buffer. forward(embedding [B,E] float32) →
    (logit [B], gated similarities s⊙g [B,C]): the same (logit, activations) shape contract as the other heads,
    with the gated similarities as its C activations. In training mode the gates are binary-concrete samples.
    """

    kind = KIND
    #: FusedDetector feeds this head the projected image embedding instead of the pooled feature.
    input_feature = FEATURE

    def __init__(self, text_embeddings: torch.Tensor | np.ndarray, temperature: float = 0.1):
        super().__init__()
        t = F.normalize(torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32)), dim=1)
        if t.ndim != 2 or t.shape[0] < 1:
            raise ValueError(f"text embeddings must be [C,E] with C >= 1, got {tuple(t.shape)}")
        self.register_buffer("text_embeddings", t)
        self.temperature = float(temperature)
        c, e = t.shape
        self.W_concepts = nn.Linear(e, c)
        self.W_classifier = nn.Linear(c, 1)
        # Initialisation as in clip-cues: xavier-normal weights, zero gate bias, classifier bias 0.1.
        nn.init.xavier_normal_(self.W_concepts.weight)
        nn.init.zeros_(self.W_concepts.bias)
        nn.init.xavier_normal_(self.W_classifier.weight)
        nn.init.constant_(self.W_classifier.bias, 0.1)

    @property
    def k(self) -> int:
        """Number of concepts C."""
        return self.text_embeddings.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.text_embeddings.shape[1]

    def decompose(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate for embedding [B,E]: similarities, gate_logits, gates, gated [B,C], contributions
        [B,C] and logit [B]. Gates are sampled in training mode, sigmoid in eval mode."""
        x = F.normalize(embedding, dim=-1)
        sims = x @ self.text_embeddings.T
        gate_logits = self.W_concepts(x)
        gates = binary_concrete(gate_logits, self.temperature) if self.training else torch.sigmoid(gate_logits)
        gated = sims * gates
        contributions = gated * self.W_classifier.weight[0]
        logit = contributions.sum(-1) + self.W_classifier.bias[0]
        return {"similarities": sims, "gate_logits": gate_logits, "gates": gates, "gated": gated,
                "contributions": contributions, "logit": logit}

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.decompose(embedding)
        return parts["logit"], parts["gated"]


@dataclass
class ConceptTrainConfig:
    """Hyper-parameters of ``sid-edge train --model concepts``; defaults follow clip-cues where it states them.

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


@dataclass
class ConceptTrainReport:
    """What training measured. ``active_gates``: mean number of gates > 0.5 per image (eval mode) over the whole
    training set at the kept epoch; ``history``: one dict per epoch (train_loss, bce, kl, val_ap, val_loss,
    active_gates)."""

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


def active_gates(model: ConceptBottleneck, embeddings: torch.Tensor) -> float:
    """Mean number of concepts per image whose inference gate sigmoid(a) exceeds 0.5."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        g = torch.sigmoid(model.W_concepts(F.normalize(embeddings, dim=-1)))
    model.train(was_training)
    return float((g > ACTIVE_GATE).float().sum(-1).mean())


def _loss(model: ConceptBottleneck, parts: dict, y: torch.Tensor, cfg: ConceptTrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
    bce = F.binary_cross_entropy_with_logits(parts["logit"], target)
    kl = bernoulli_kl(torch.sigmoid(parts["gate_logits"]), cfg.prior_rate).sum(-1).mean()
    return bce + cfg.sparsity_weight * kl, bce, kl


def train_concept_model(
    embeddings: np.ndarray,
    labels: np.ndarray,
    text_embeddings: np.ndarray,
    config: ConceptTrainConfig = ConceptTrainConfig(),
    on_epoch=None,
) -> tuple[ConceptBottleneck, ConceptTrainReport]:
    """Train a concept bottleneck on image embeddings [N,E] float32 (``Features.embedding``) with labels [N] in
    {0,1} against concept text embeddings [C,E].

    Returns (model in eval mode with the best-validation-AP weights, report). ``on_epoch(dict)`` is called after
    every epoch. Raises ValueError for mismatched shapes, labels outside {0,1}, or a single class.
    """
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y_np = np.asarray(labels).astype(np.int64)
    t = np.asarray(text_embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y_np):
        raise ValueError(f"embeddings {tuple(x.shape)} and labels {y_np.shape} do not match")
    if t.ndim != 2 or t.shape[1] != x.shape[1]:
        raise ValueError(f"concept embeddings {t.shape} do not match {x.shape[1]}-d image embeddings")
    if not set(np.unique(y_np)) <= {0, 1}:
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    with threads_for(min(config.batch_size, len(x)) * t.shape[0] * t.shape[1]):
        return _train(x, y_np, t, config, on_epoch)


def _train(x: torch.Tensor, y_np: np.ndarray, t: np.ndarray, config: ConceptTrainConfig, on_epoch):
    torch.manual_seed(config.seed)
    tr, va = stratified_split(y_np, config.val_fraction, config.seed)
    y = torch.as_tensor(y_np, dtype=torch.float32)
    model = ConceptBottleneck(t, temperature=config.temperature)
    opt = torch.optim.AdamW([
        {"params": model.W_concepts.parameters(), "lr": config.lr * config.gate_lr_factor, "weight_decay": 0.0},
        {"params": model.W_classifier.parameters(), "lr": config.lr, "weight_decay": config.classifier_weight_decay},
    ])
    gen = torch.Generator().manual_seed(config.seed)
    initial_active = active_gates(model, x[tr])
    stopper, history = EarlyStopping(config.patience), []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        passes = max(1, -(-config.min_steps_per_epoch // -(-len(tr) // config.batch_size)))
        total = total_bce = total_kl = 0.0
        n = 0
        for _ in range(passes):
            perm = tr[torch.randperm(len(tr), generator=gen).numpy()]
            for start in range(0, len(perm), config.batch_size):
                idx = perm[start : start + config.batch_size]
                loss, bce, kl = _loss(model, model.decompose(x[idx]), y[idx], config)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                total_bce += float(bce.detach()) * len(idx)
                total_kl += float(kl.detach()) * len(idx)
                n += len(idx)
        model.eval()
        eval_idx = va if len(va) else tr
        with torch.no_grad():
            parts = model.decompose(x[eval_idx])
            val_loss = float(_loss(model, parts, y[eval_idx], config)[0])
        val_ap = _ap(y_np[va], parts["logit"].numpy()) if len(va) else float("nan")
        row = {"epoch": epoch, "train_loss": total / n, "bce": total_bce / n, "kl": total_kl / n,
               "val_ap": val_ap, "val_loss": val_loss, "active_gates": active_gates(model, x[tr])}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        # Ties in AP are broken by validation loss, which includes the sparsity term, so among equally accurate
        # epochs the sparser one is kept.
        if stopper.update(epoch, val_ap, val_loss, model):
            break
    stopper.restore(model)
    report = ConceptTrainReport(
        val_ap=history[stopper.best_epoch - 1]["val_ap"],
        best_epoch=stopper.best_epoch,
        n_train=len(tr),
        n_val=len(va),
        n_concepts=model.k,
        active_gates=active_gates(model, x[tr]),
        active_gates_initial=initial_active,
        history=history,
    )
    return model, report


# ---------------------------------------------------------------------------------------------------- files
def vocabulary_block(concepts: list[Concept], template: str, source: str, sha256: str | None = None,
                     named: bool = True) -> dict:
    """The ``vocabulary`` entry of a concept head's JSON. ``named`` is False for imported checkpoints whose
    concepts only have placeholder names."""
    return {
        "source": source,
        "sha256": sha256,
        "template": template,
        "named": named,
        "concepts": [{"name": c.name, "category": c.category, "positive": c.positive, "negative": c.negative}
                     for c in concepts],
    }


def concepts_from_block(block: dict) -> list[Concept]:
    """Concept objects from a ``vocabulary`` block (missing prompt/category fields become empty strings)."""
    return [Concept(name=c["name"], positive=c.get("positive", ""), negative=c.get("negative", ""),
                    category=c.get("category", "")) for c in block.get("concepts", [])]


def concept_head_config(model: ConceptBottleneck, vocabulary: dict, backbone: dict, *, source: str = "sid-edge train",
                        training: dict | None = None) -> HeadConfig:
    """A HeadConfig (kind ``concepts``, k = C, feature ``image_embedding`` of E dims) for ``model``."""
    return HeadConfig(kind=KIND, k=model.k, feature_dim=model.embed_dim, feature=FEATURE, backbone=dict(backbone),
                      source=source, training={"temperature": model.temperature, **(training or {})},
                      vocabulary=vocabulary)


def load_concept_head(directory: str | os.PathLike) -> tuple[ConceptBottleneck, HeadConfig]:
    """Load a concept head directory written by :func:`sid_edge.build.heads.save_head` (kind ``concepts``).

    Raises ValueError naming the file: unreadable JSON, wrong format, missing or inconsistent weights, a
    vocabulary whose size differs from the weights.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, weights_path = d / "head.json", d / "head.safetensors"
    raw = json.loads(cfg_path.read_text())
    if raw.get("format") != HEAD_FORMAT or raw.get("version") != HEAD_FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: not a sid-edge head (format {raw.get('format')!r}, version {raw.get('version')!r})")
    cfg = HeadConfig(**{k: v for k, v in raw.items() if k not in ("format", "version")})
    state = load_file(str(weights_path))
    if "text_embeddings" not in state:
        raise ValueError(f"{weights_path}: a concept head needs 'text_embeddings' (keys: {sorted(state)})")
    model = ConceptBottleneck(state["text_embeddings"], temperature=(cfg.training or {}).get("temperature", 0.1))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path}: weights do not match a concept model with C={model.k}: {e}") from e
    names = (cfg.vocabulary or {}).get("concepts", [])
    if names and len(names) != model.k:
        raise ValueError(f"{cfg_path}: {len(names)} concept names for {model.k} concept embeddings")
    return model.eval(), cfg


_CLIP_CUES_CONCEPT_KEYS = {
    "model.text_embeddings": "text_embeddings",
    "model.W_concepts.weight": "W_concepts.weight",
    "model.W_concepts.bias": "W_concepts.bias",
    "model.W_classifier.weight": "W_classifier.weight",
    "model.W_classifier.bias": "W_classifier.bias",
}


def import_clip_cues_concept_checkpoint(path: str | os.PathLike, ckpt: dict) -> tuple[ConceptBottleneck, HeadConfig]:
    """Import an already-loaded clip-cues concept checkpoint (``model_type == "concept"``; keys
    ``model.text_embeddings`` (C,768), ``model.W_concepts.{weight (C,768), bias (C)}``,
    ``model.W_classifier.{weight (1,C), bias (1)}``).

    The checkpoint carries no concept names: they are ``concept_000`` … until an export names them with the
    paper's vocabulary CSV (``--vocabulary antonyms.csv``). Its embeddings are CLIP ViT-L/14-336 text features,
    so it belongs on that backbone's 768-d projected image embedding.

    Raises ValueError naming the file for missing/extra keys or inconsistent shapes.
    """
    p = Path(path)
    state = ckpt["state_dict"]
    if set(state) != set(_CLIP_CUES_CONCEPT_KEYS):
        raise ValueError(f"{p}: state_dict keys {sorted(state)} do not match a clip-cues 'concept' model "
                         f"{sorted(_CLIP_CUES_CONCEPT_KEYS)}")
    new_state = {_CLIP_CUES_CONCEPT_KEYS[k]: torch.as_tensor(v).float() for k, v in state.items()}
    t = new_state["text_embeddings"]
    if t.ndim != 2:
        raise ValueError(f"{p}: model.text_embeddings must be 2-d (C,E), got {tuple(t.shape)}")
    model = ConceptBottleneck(t)
    try:
        model.load_state_dict(new_state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{p}: inconsistent shapes: {e}") from e
    names = [Concept(name=f"concept_{i:03d}", positive="", negative="", category="") for i in range(model.k)]
    vocab = vocabulary_block(names, template="", source=f"clip-cues checkpoint {p.name} (unnamed)", named=False)
    cfg = concept_head_config(model, vocab, CLIP_CUES_BACKBONE, source=f"clip-cues checkpoint {p.name}")
    return model.eval(), cfg
