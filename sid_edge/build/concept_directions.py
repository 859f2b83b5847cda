"""Concept directions from the backbone's own text tower, and the concept-score layer folded into the graph.

Needs torch and open_clip (the ``train`` extra); the runtime only ever sees the fixed weights in the ONNX graph.

How an antonym pair becomes one concept score (the rule the clip-cues concept checkpoints follow too: their 168
text embeddings are unit vectors with mean pairwise cosine ~0.03, i.e. pair *differences*, not raw prompt
embeddings, which sit at cosine ~0.8 to each other):

    t⁺ = normalize(text(template.format(positive)))       t⁻ = normalize(text(template.format(negative)))
    d  = normalize(t⁺ − t⁻)                                (one unit direction per pair, [C,E])
    concept_scores[b,c] = cos(image_embedding[b], d_c) = image_embedding[b] · d_c

``image_embedding`` is the L2-normalised projected image embedding, so each score is a true cosine similarity in
[−1, 1]: positive when the image lies nearer the positive prompt than the negative one. It equals
(cos(img, t⁺) − cos(img, t⁻)) / ‖t⁺ − t⁻‖, i.e. the pair difference rescaled by a per-pair constant.
``text()`` is open_clip's ``encode_text`` (projected text embedding) with the model's own tokenizer
(``open_clip.get_tokenizer``). The default prompt template is ``"{}"``: both the packaged vocabulary and the
paper's CSV already hold full phrases ("a photo with visible lens flare", "A photograph with ..."); a different
template is recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sid_edge.artifact.files import atomic_write
from sid_edge.build.backbone import Backbone
from sid_edge.build.features import default_cache_dir
from sid_edge.build.vocabulary import Concept, concept_prompts, default_vocabulary_path, load_vocabulary

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{}"
SCORE_RULE = (
    "concept_scores[b,c] = cos(image_embedding[b], d_c), d_c = normalize(normalize(text(positive_c)) - "
    "normalize(text(negative_c))); text = the backbone's open_clip encode_text"
)


@dataclass
class ConceptSet:
    """A vocabulary together with its unit concept directions.

    ``concepts`` [C] (names unique; prompts may be empty for an imported checkpoint that carries only
    embeddings), ``directions`` float32 [C,E] with unit rows, ``template`` the prompt template used, ``source``
    a human-readable origin (file name or checkpoint), ``sha256`` of the vocabulary file when there is one.
    """

    concepts: list[Concept]
    directions: np.ndarray
    template: str = DEFAULT_TEMPLATE
    source: str = ""
    sha256: str | None = None
    notes: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def to_manifest(self) -> dict:
        """The manifest's ``vocabulary`` block: everything a reader needs to interpret ``concept_scores``."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "template": self.template,
            "score": SCORE_RULE,
            "count": len(self.concepts),
            "concepts": [
                {"name": c.name, "category": c.category, "positive": c.positive, "negative": c.negative}
                for c in self.concepts
            ],
            **self.notes,
        }


def check_concept_names(concepts: Sequence[Concept], where: str) -> None:
    """Names travel in scan CSV cells as ``name:value;name:value``: refuse names a program could not split.

    Raises ValueError naming ``where`` and the concept.
    """
    for c in concepts:
        if not c.name or any(ch in c.name for ch in ";\n\r"):
            raise ValueError(f"{where}: concept name {c.name!r} must be non-empty and contain no ';' or line breaks")


def _cache_path(backbone: Backbone, prompts: list[str], cache_dir: str | os.PathLike | None) -> Path:
    h = hashlib.sha256(backbone.identity.key.encode())
    for p in prompts:
        h.update(b"\0" + p.encode("utf-8"))
    root = Path(cache_dir) if cache_dir else default_cache_dir().parent / "text"
    return root / backbone.identity.key / f"{h.hexdigest()[:32]}.npy"


@torch.inference_mode()
def encode_prompts(backbone: Backbone, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Projected, L2-normalised text embeddings float32 [N,E] of ``prompts`` from the backbone's text tower
    (open_clip ``encode_text`` with ``open_clip.get_tokenizer(model_name)``)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(backbone.identity.model_name)
    device = next(backbone.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[start : start + batch_size])).to(device)
        out.append(backbone.clip.encode_text(tokens).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


def pair_directions(positive: torch.Tensor, negative: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """``normalize(normalize(pos) − normalize(neg))`` row-wise, float32 [C,E].

    Raises ValueError naming the concept when its two prompts embed to the same vector (no direction).
    """
    diff = F.normalize(positive, dim=-1) - F.normalize(negative, dim=-1)
    norms = diff.norm(dim=-1)
    bad = [names[i] for i in torch.nonzero(norms < 1e-6).flatten().tolist()]
    if bad:
        raise ValueError(f"concept(s) {bad}: the positive and negative prompts embed identically; no direction")
    return diff / norms[:, None]


def embed_vocabulary(
    backbone: Backbone,
    concepts: Sequence[Concept],
    *,
    template: str = DEFAULT_TEMPLATE,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Unit concept directions float32 [C,E] for ``concepts`` (see the module docstring for the rule).

    Cached per (backbone identity, prompts) under the sid-edge cache; never for random weights
    (``pretrained == 'none'``), whose identity does not pin the weights.

    Raises ValueError: a template without ``{}``, or a pair whose prompts embed identically.
    """
    positives, negatives = concept_prompts(concepts, template)
    cacheable = use_cache and backbone.identity.pretrained != "none"
    path = _cache_path(backbone, positives + negatives, cache_dir)
    if cacheable and path.is_file():
        directions = np.load(path, allow_pickle=False)
        if directions.shape == (len(concepts), backbone.embed_dim):
            return directions
    text = encode_prompts(backbone, positives + negatives)
    directions = pair_directions(text[: len(concepts)], text[len(concepts) :], [c.name for c in concepts]).numpy()
    directions = directions.astype(np.float32)
    if cacheable:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            np.save(f, directions)
    return directions


def resolve_vocabulary(vocabulary: str | os.PathLike | Sequence[Concept] | None) -> tuple[list[Concept], str, str | None]:
    """``"default"``/None-like → the packaged vocabulary; a path → that CSV (sid-edge or clip-cues layout); a
    list of Concept → itself. Returns (concepts, source description, sha256 of the file or None).

    Raises FileNotFoundError / ValueError from :func:`sid_edge.build.vocabulary.load_vocabulary` (message names the file).
    """
    from sid_edge.artifact.manifest import sha256_file

    if vocabulary is None or (isinstance(vocabulary, str) and vocabulary == "default"):
        path = default_vocabulary_path()
        concepts = load_vocabulary(None)
        source = f"sid-edge packaged {path.name}"
    elif isinstance(vocabulary, (str, os.PathLike)):
        path = Path(vocabulary)
        concepts = load_vocabulary(path)
        source = path.name
    else:
        concepts = list(vocabulary)
        return concepts, "in-memory vocabulary", None
    check_concept_names(concepts, str(path))
    return concepts, source, sha256_file(path)


def build_concept_set(
    backbone: Backbone,
    vocabulary: str | os.PathLike | Sequence[Concept] | None = "default",
    *,
    template: str = DEFAULT_TEMPLATE,
    cache_dir: str | os.PathLike | None = None,
) -> ConceptSet:
    """Load ``vocabulary`` (see :func:`resolve_vocabulary`) and embed it with ``backbone``'s text tower."""
    concepts, source, sha = resolve_vocabulary(vocabulary)
    directions = embed_vocabulary(backbone, concepts, template=template, cache_dir=cache_dir)
    return ConceptSet(concepts, directions, template=template, source=source, sha256=sha)


class ConceptScores(nn.Module):
    """The concept layer of the graph: image_embedding [B,E] (L2-normalised) → concept_scores [B,C] float32.

    A bias-free Linear whose weight rows are the unit concept directions, so each output is a cosine.
    """

    output_names = ("concept_scores",)

    def __init__(self, directions: np.ndarray | torch.Tensor):
        super().__init__()
        d = torch.as_tensor(np.asarray(directions, dtype=np.float32))
        self.linear = nn.Linear(d.shape[1], d.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(d)
        self.requires_grad_(False)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.linear(embedding),)


class ConceptModelOutputs(nn.Module):
    """Graph outputs of a concept bottleneck model: image_embedding [B,E] → (concept_scores [B,C],
    concept_logit [B], concept_contributions [B,C]); contributions sum (over C) plus the classifier bias to the
    logit. See :class:`sid_edge.build.concept_model.ConceptBottleneck`."""

    output_names = ("concept_scores", "concept_logit", "concept_contributions")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, embedding: torch.Tensor):
        parts = self.model.decompose(embedding)
        return parts["similarities"], parts["logit"], parts["contributions"]


@dataclass
class ConceptPlan:
    """Everything export needs to fold concepts into an artifact.

    ``module`` maps image_embedding [B,E] to the extra graph outputs named ``output_names``; ``output_specs`` are
    their manifest entries; ``vocabulary`` / ``concept_model`` the manifest blocks; ``explanation`` the arrays
    written to ``explanation.npz`` for ``sid-edge explain`` (float32; see :func:`explanation_arrays`).
    """

    module: nn.Module
    concept_set: ConceptSet
    output_specs: list[dict]
    vocabulary: dict
    concept_model: dict | None
    explanation: dict[str, np.ndarray]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s["name"] for s in self.output_specs)


def _is_default(vocabulary) -> bool:
    return isinstance(vocabulary, str) and vocabulary == "default"


def _concept_model_set(model, cfg, vocabulary, where: str) -> ConceptSet:
    """The concept set of a concept model: its own vocabulary, or names from ``vocabulary`` for an unnamed
    (imported) checkpoint. Raises ValueError on a count mismatch or a conflicting vocabulary."""
    from sid_edge.build.concept_model import concepts_from_block

    block = dict(cfg.vocabulary or {})
    concepts = concepts_from_block(block)
    named = block.get("named", True) and len(concepts) == model.k
    directions = model.text_embeddings.detach().cpu().numpy().astype(np.float32)
    source, sha, template = block.get("source", cfg.source), block.get("sha256"), block.get("template", DEFAULT_TEMPLATE)
    if vocabulary is None:
        raise ValueError(f"{where}: a concept model needs its concept names; --vocabulary none is not possible with it")
    if not _is_default(vocabulary):
        given, given_source, given_sha = resolve_vocabulary(vocabulary)
        if len(given) != model.k:
            raise ValueError(f"{given_source}: {len(given)} concepts, but the concept model {where} has {model.k}")
        if named and [c.name for c in given] != [c.name for c in concepts]:
            raise ValueError(f"{where}: the concept model carries its own vocabulary ({source}); "
                             f"--vocabulary {given_source} names other concepts")
        if not named:
            concepts, source, sha, template, named = given, f"{given_source} (names for {cfg.source})", given_sha, "", True
    if len(concepts) != model.k:
        concepts = [Concept(f"concept_{i:03d}", "", "", "") for i in range(model.k)]
    check_concept_names(concepts, where)
    return ConceptSet(concepts, directions, template=template, source=source, sha256=sha, notes={"named": bool(named)})


def explanation_arrays(backbone: Backbone, head: nn.Module, head_kind: str, directions: np.ndarray,
                       concept_model: nn.Module | None) -> dict[str, np.ndarray]:
    """The weights ``sid-edge explain`` reads (torch-free) from ``explanation.npz``, all float32:

    * ``visual_projection`` [D,E]: pooled feature → joint space (open_clip ``visual.proj``);
    * ``concept_directions`` [C,E]: the unit concept directions of ``concept_scores``;
    * orthogonal/linear heads: ``head_directions`` [k,D] (rows of the first layer), ``head_to_logit`` [k] and
      ``head_logit_bias`` [1], so that logit = Σ_j head_to_logit[j]·head_activations[j] + head_logit_bias;
    * with a concept model: ``concept_classifier`` [C] and ``concept_classifier_bias`` [1].
    """
    proj = backbone.visual.proj
    arrays = {
        "visual_projection": (proj.detach() if proj is not None else torch.eye(backbone.feature_dim)).cpu().numpy(),
        "concept_directions": np.asarray(directions),
    }
    if head_kind == "orthogonal":
        arrays["head_directions"] = head.directions.weight.detach().cpu().numpy()
        arrays["head_to_logit"] = head.to_logit.weight.detach().cpu().numpy()[0]
        arrays["head_logit_bias"] = head.to_logit.bias.detach().cpu().numpy()
    elif head_kind == "linear":
        # A linear head is one direction whose activation is the logit itself (weight 1, bias folded in).
        arrays["head_directions"] = head.fc.weight.detach().cpu().numpy()
        arrays["head_to_logit"] = np.ones(1, np.float32)
        arrays["head_logit_bias"] = np.zeros(1, np.float32)
    if concept_model is not None:
        arrays["concept_classifier"] = concept_model.W_classifier.weight.detach().cpu().numpy()[0]
        arrays["concept_classifier_bias"] = concept_model.W_classifier.bias.detach().cpu().numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def plan_concepts(
    backbone: Backbone,
    head: nn.Module,
    head_cfg,
    *,
    vocabulary: str | os.PathLike | Sequence[Concept] | None = "default",
    concept_model: str | os.PathLike | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> ConceptPlan | None:
    """Decide the concept part of an artifact. Returns None when it has none (``vocabulary=None`` and no concept
    model), so the graph keeps exactly the four head outputs.

    * ``head`` is a concept model (kind ``concepts``) → it provides concept_scores, concept_logit and
      concept_contributions (the artifact's logit IS concept_logit);
    * ``concept_model`` given (a concept head directory or clip-cues concept ``.ckpt``) → the same three outputs
      next to the head's own logit;
    * otherwise ``vocabulary`` (``"default"`` = the packaged one, a CSV path, or Concept list) is embedded with
      the backbone's text tower → concept_scores only.

    For a concept model, ``vocabulary`` may only name an unnamed (imported) checkpoint's concepts.

    Raises ValueError: a concept model whose embedding size differs from the backbone's, ``concept_model`` that
    is not a concept model, a vocabulary of the wrong size, bad vocabulary files (message names the file).
    """
    from sid_edge.build.heads import load_head

    cm, cm_cfg, where = None, None, ""
    if head_cfg.kind == "concepts":
        cm, cm_cfg, where = head, head_cfg, "--head"
    elif concept_model is not None:
        cm, cm_cfg = load_head(concept_model)
        where = f"--concept-model {concept_model}"
        if cm_cfg.kind != "concepts":
            raise ValueError(f"{concept_model}: a {cm_cfg.kind} head, not a concept model")
    if cm is not None:
        if cm.embed_dim != backbone.embed_dim:
            raise ValueError(f"{where}: the concept model reads {cm.embed_dim}-d image embeddings but "
                             f"{backbone.identity.model_name} gives {backbone.embed_dim}-d ones")
        cset = _concept_model_set(cm, cm_cfg, vocabulary, where)
        module: nn.Module = ConceptModelOutputs(cm)
        c = cm.k
        specs = [{"name": "concept_scores", "shape": ["batch", c], "dtype": "float32"},
                 {"name": "concept_logit", "shape": ["batch"], "dtype": "float32"},
                 {"name": "concept_contributions", "shape": ["batch", c], "dtype": "float32"}]
        cm_block = {
            "source": cm_cfg.source,
            "is_head": cm is head,
            "concepts": c,
            "temperature": cm.temperature,
            "bias": float(cm.W_classifier.bias.detach()[0]),
            "logit": "concept_logit = sum_c concept_contributions[c] + bias; concept_contributions[c] = "
                     "w_c * concept_scores[c] * sigmoid(W_concepts x + b)_c (x: image_embedding)",
            "trained_on_backbone": cm_cfg.backbone,
            "training": cm_cfg.training,
        }
        top_by = "concept_contributions"
    elif vocabulary is not None:
        cset = build_concept_set(backbone, vocabulary, template=template)
        module = ConceptScores(cset.directions)
        specs = [{"name": "concept_scores", "shape": ["batch", len(cset.concepts)], "dtype": "float32"}]
        cm_block, top_by = None, "concept_scores"
    else:
        return None
    vocab_block = {**cset.to_manifest(), "top_concepts_by": top_by}
    arrays = explanation_arrays(backbone, head, head_cfg.kind, cset.directions, cm)
    return ConceptPlan(module, cset, specs, vocab_block, cm_block, arrays)
