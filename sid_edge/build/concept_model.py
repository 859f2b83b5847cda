"""The paper's sparse concept bottleneck model and the vocabulary block a concept head's JSON carries.

Needs torch (the ``train`` extra). Its hyper-parameters and loss terms are the ``concepts`` entry of
:mod:`sid_edge.build.head_kinds`; it trains in the one loop of :mod:`sid_edge.build.training`; its files and the
import of clip-cues ``concept`` checkpoints go through :func:`sid_edge.build.heads.load_head`.

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
carries the concept vocabulary (:func:`vocabulary_block`) so names travel with the weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sid_edge.build.vocabulary import Concept

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

    @property
    def feature_dim(self) -> int:
        """E, the size of the image embedding it reads (the input size in the head contract)."""
        return self.embed_dim

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


def active_gates(model: ConceptBottleneck, embeddings: torch.Tensor) -> float:
    """Mean number of concepts per image whose inference gate sigmoid(a) exceeds 0.5."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        g = torch.sigmoid(model.W_concepts(F.normalize(embeddings, dim=-1)))
    model.train(was_training)
    return float((g > ACTIVE_GATE).float().sum(-1).mean())


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
