"""Head files: save, load (one loader for every kind) and import of the paper's checkpoints.

A saved head is a directory: ``head.safetensors`` (weights) + ``head.json`` (kind, k, feature, backbone
identity, training report; concept heads also their vocabulary). Never a pickle. The paper's released ``.ckpt``
files (github.com/marco-willi/clip-cues) are read with ``torch.load(weights_only=True)``.

The kinds themselves (orthogonal, linear, concepts: modules, losses, hyper-parameters) are the registry
:mod:`sid_edge.build.head_kinds`; the module classes are re-exported here for the code that builds heads by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sid_edge.artifact.names import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.build.concept_model import ConceptBottleneck, vocabulary_block
from sid_edge.build.head_kinds import POOLED_FEATURE, clip_cues_kind, head_kind
from sid_edge.build.linear_heads import LinearHead, OrthogonalHead, orthogonality_penalty
from sid_edge.build.vocabulary import Concept

__all__ = ["HeadConfig", "HEAD_FORMAT", "HEAD_FORMAT_VERSION", "CLIP_CUES_BACKBONE", "build_head",
           "head_config", "concept_head_config", "save_head", "load_head", "load_clip_cues_checkpoint",
           "head_preprocessing", "clip_cues_preprocessing",
           "OrthogonalHead", "LinearHead", "ConceptBottleneck", "orthogonality_penalty"]

HEAD_FORMAT = "sid-edge-head"
HEAD_FORMAT_VERSION = 1
#: The kinds :func:`build_head` builds from a size alone (a concept model also needs its text embeddings); every
#: kind is in :data:`sid_edge.build.head_kinds.HEAD_KINDS`.
_SIZED_KINDS = ("orthogonal", "linear")

#: The backbone the clip-cues checkpoints were trained on (Hugging Face openai/clip-vit-large-patch14-336 pooler_output).
CLIP_CUES_BACKBONE = {"model_name": DEFAULT_CLIP_MODEL, "pretrained": DEFAULT_CLIP_PRETRAINED, "feature_dim": 1024}


@dataclass
class HeadConfig:
    """The JSON half of a saved head."""

    kind: str
    k: int
    feature_dim: int
    feature: str = POOLED_FEATURE
    backbone: dict = field(default_factory=dict)
    threshold: float = 0.5
    source: str = "sid-edge train"
    training: dict = field(default_factory=dict)
    #: Concept heads only (kind ``concepts``): the concept vocabulary, see :mod:`sid_edge.build.concept_model`.
    vocabulary: dict | None = None
    #: The preprocessing rule the head's features were extracted with (:meth:`Preprocessing.to_dict`); None in
    #: head.json files written before heads recorded it (see :func:`head_preprocessing`).
    preprocessing: dict | None = None

    def to_dict(self) -> dict:
        return {"format": HEAD_FORMAT, "version": HEAD_FORMAT_VERSION, **self.__dict__}


#: The paper's image size (ViT-L/14-336) for the pipelines of imported clip-cues checkpoints.
CLIP_CUES_IMAGE_SIZE = 336


def clip_cues_preprocessing(model_type: str) -> Preprocessing:
    """The pipeline a clip-cues checkpoint of ``model_type`` was trained on: ``clip``/``linear`` heads on clip-cues'
    torchvision transform (bilinear resize, round crop offset), ``concept`` models on Hugging Face's
    ``CLIPImageProcessor`` (bicubic, floor crop offset); 336 px, CLIP mean/std. See
    :data:`sid_edge.artifact.preprocessing.PIPELINES` for the sources."""
    name = "hf-clip" if model_type == "concept" else "clip-cues"
    return Preprocessing.for_pipeline(name, CLIP_CUES_IMAGE_SIZE)


def head_preprocessing(cfg: HeadConfig, backbone_rule: Preprocessing) -> Preprocessing:
    """The preprocessing rule ``cfg``'s head was trained with, to serve it with.

    The recorded rule (``cfg.preprocessing``) when there is one; otherwise (a head.json written before heads
    recorded it) ``backbone_rule``, the backbone's open_clip transform every sid-edge head was trained on until then.
    A head exported on another backbone than its own (its scores then mean little; export warns) keeps its
    pipeline (resize filter, crop offset) at the backbone's size and mean/std, which the graph's input needs.

    Raises ValueError naming the head when the recorded rule is invalid.
    """
    if not cfg.preprocessing:
        return backbone_rule
    try:
        rule = Preprocessing.from_dict(cfg.preprocessing)
    except ValueError as e:
        raise ValueError(f"head ({cfg.source}): {e}") from None
    if rule.size != backbone_rule.size:
        rule = dataclasses.replace(rule, size=backbone_rule.size, mean=backbone_rule.mean, std=backbone_rule.std)
    return rule


def build_head(kind: str, feature_dim: int, k: int = 8) -> nn.Module:
    """A fresh head of ``kind`` ('orthogonal' or 'linear') on ``feature_dim``-d features. Raises ValueError for
    another kind (a concept model is built from text embeddings: :class:`ConceptBottleneck`)."""
    if kind not in _SIZED_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {_SIZED_KINDS}")
    return head_kind(kind).new_sized(feature_dim, k)


def head_config(module: nn.Module, backbone: dict, *, source: str = "sid-edge train", training: dict | None = None,
                vocabulary: dict | None = None) -> HeadConfig:
    """The HeadConfig of a trained or imported ``module`` of any kind: kind, k, input size and feature from the
    registry, plus what the loader needs back in ``training`` (a concept model's temperature)."""
    kind = head_kind(module.kind)
    return HeadConfig(kind=kind.name, k=module.k, feature_dim=module.feature_dim, feature=kind.feature,
                      backbone=dict(backbone), source=source,
                      training={**kind.saved_training(module), **(training or {})}, vocabulary=vocabulary)


def concept_head_config(model: ConceptBottleneck, vocabulary: dict, backbone: dict, *, source: str = "sid-edge train",
                        training: dict | None = None) -> HeadConfig:
    """A HeadConfig (kind ``concepts``, k = C, feature ``image_embedding`` of E dims) for ``model``;
    ``vocabulary`` from :func:`sid_edge.build.concept_model.vocabulary_block`."""
    return head_config(model, backbone, source=source, training=training, vocabulary=vocabulary)


def save_head(head: nn.Module, config: HeadConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``head.safetensors`` + ``head.json`` into ``out_dir`` (created). Returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(out / "head.safetensors"))
    (out / "head.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out


def load_head(path: str | os.PathLike) -> tuple[nn.Module, HeadConfig]:
    """Load a head of any kind from a sid-edge head directory (or its head.json / head.safetensors) or a
    clip-cues ``.ckpt``.

    Returns (head module in eval mode, config). Concept bottleneck models (sid-edge kind ``concepts``, clip-cues
    ``model_type == "concept"``) load as :class:`ConceptBottleneck`, which reads the projected image embedding
    instead of the pooled feature (``cfg.feature``). Raises FileNotFoundError for a missing path and ValueError
    naming the file for anything that is not a head this project can use (wrong format, unknown kind or keys,
    wrong shapes, a vocabulary whose size differs from the weights).
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: not a sid-edge head (a JSON object expected)")
    if raw.get("format") != HEAD_FORMAT:
        raise ValueError(f"{cfg_path}: format is {raw.get('format')!r}, expected {HEAD_FORMAT!r}")
    if raw.get("version") != HEAD_FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: head format version {raw.get('version')} is not supported")
    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(raw) - fields - {"format", "version"})
    if unknown:
        raise ValueError(f"{cfg_path}: unknown fields {unknown}")
    try:
        cfg = HeadConfig(**{k: v for k, v in raw.items() if k in fields})
    except TypeError as e:
        raise ValueError(f"{cfg_path}: {e}") from e
    _check_config_types(cfg, cfg_path)
    try:
        kind = head_kind(cfg.kind)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from e
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    bad = [name for name, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{weights_path}: non-finite weights (NaN or inf) in {', '.join(sorted(bad))}")
    try:
        head = kind.from_state(state, cfg.k, cfg.feature_dim, cfg.training if isinstance(cfg.training, dict) else {})
    except ValueError as e:
        raise ValueError(f"{weights_path}: {e}") from e
    names = (cfg.vocabulary or {}).get("concepts", []) if kind.name == "concepts" else []
    if names and len(names) != head.k:
        raise ValueError(f"{cfg_path}: {len(names)} concept names for {head.k} concept embeddings")
    return head, cfg


def _check_config_types(cfg: HeadConfig, where: Path) -> None:
    """Refuse a head.json field of the wrong type or out of range (ValueError naming the file and field)."""
    def fail(field: str, expected: str):
        raise ValueError(f"{where}: {field} must be {expected}, got {getattr(cfg, field)!r}")

    for name in ("k", "feature_dim"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            fail(name, "a positive integer")
    for name in ("kind", "feature", "source"):
        if not isinstance(getattr(cfg, name), str):
            fail(name, "a string")
    t = cfg.threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 1:
        fail("threshold", "a finite number in [0, 1]")
    for name in ("backbone", "training"):
        if not isinstance(getattr(cfg, name), dict):
            fail(name, "a JSON object")
    if cfg.vocabulary is not None and not isinstance(cfg.vocabulary, dict):
        fail("vocabulary", "a JSON object or null")
    if cfg.preprocessing is not None:
        if not isinstance(cfg.preprocessing, dict):
            fail("preprocessing", "a JSON object or null")
        try:
            Preprocessing.from_dict(cfg.preprocessing)
        except ValueError as e:
            raise ValueError(f"{where}: preprocessing: {e}") from None


def load_clip_cues_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, HeadConfig]:
    """Import a clip-cues checkpoint of any kind (github.com/marco-willi/clip-cues, ``data/checkpoints/*.ckpt``).

    Format (torch.save dict, read with ``weights_only=True``): ``{"model_type": "clip"|"linear"|"concept",
    "state_dict": ...}``; clip: ``layers.0`` (k,1024) + ``to_logits`` (1,k) -> an orthogonal head; linear: ``fc``
    (1,1024) -> a linear head; their feature is the 1024-d pooled CLS of ViT-L/14-336 (OpenAI weights) before the
    projection. concept: ``model.text_embeddings`` (C,768), ``model.W_concepts.{weight (C,768), bias (C)}``,
    ``model.W_classifier.{weight (1,C), bias (1)}`` -> a concept model on that backbone's 768-d projected image
    embedding; the checkpoint carries no concept names, so they are ``concept_000`` … until an export names them
    with the paper's vocabulary CSV (``--vocabulary antonyms.csv``).

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
    try:
        kind = clip_cues_kind(model_type)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from e
    mapping, state = kind.clip_cues_keys, ckpt["state_dict"]
    if not isinstance(state, dict) or set(state) != set(mapping):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{p}: state_dict keys {keys} do not match a clip-cues {model_type!r} model {sorted(mapping)}")
    new_state = {mapping[k]: torch.as_tensor(v).float() for k, v in state.items()}
    first_key = next(iter(mapping))  # the first layer: (k, D) weights, (1, D) for linear, (C, E) text embeddings
    first = new_state[mapping[first_key]]
    if first.ndim != 2:
        raise ValueError(f"{p}: {first_key} must be 2-d, got {tuple(first.shape)}")
    k, d = first.shape
    try:
        head = kind.from_state(new_state, k, d, {})
    except ValueError as e:
        raise ValueError(f"{p}: inconsistent shapes: {e}") from e
    source = f"clip-cues checkpoint {p.name}"
    vocabulary = None
    if kind.name == "concepts":
        names = [Concept(name=f"concept_{i:03d}", positive="", negative="", category="") for i in range(head.k)]
        vocabulary = vocabulary_block(names, template="", source=f"{source} (unnamed)", named=False)
    cfg = head_config(head, CLIP_CUES_BACKBONE, source=source, vocabulary=vocabulary)
    cfg.preprocessing = clip_cues_preprocessing(model_type).to_dict()  # the pipeline the paper trained it on
    return head.eval(), cfg
