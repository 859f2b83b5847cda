"""Frozen CLIP vision backbone (open_clip) and the two features the heads read.

Needs torch and open_clip (the ``train`` extra); the runtime never imports this module.

Features, per image (source: open_clip ``VisionTransformer.forward``):

* ``pooled`` [B, D] float32 — the CLS token after ``ln_post``, BEFORE the visual projection ``proj``. For
  ViT-L/14-336 D = 1024; this equals Hugging Face ``CLIPVisionModel.pooler_output``, the feature the clip-cues
  checkpoints were trained on.
* ``embedding`` [B, E] float32 — ``pooled @ proj`` L2-normalised (E = 768 for ViT-L), the joint image-text space
  that concept scores live in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.artifact.manifest import sha256_file

log = logging.getLogger(__name__)

from sid_edge.artifact.names import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
#: A two-layer ViT shipped with the project for tests and offline demos; random weights only.
TINY_CLIP_MODEL = "sid-edge-tiny"

RANDOM_WEIGHTS_WARNING = (
    "--clip-pretrained none: the CLIP backbone has RANDOM weights. Every p_synthetic it produces is "
    "meaningless; use this only for pipeline, scale and speed checks."
)

_configs_registered = False


def register_project_configs() -> None:
    """Make the project's own open_clip model configs (``sid-edge-tiny``) known to open_clip. Idempotent."""
    global _configs_registered
    if _configs_registered:
        return
    import open_clip

    open_clip.add_model_config(Path(str(resources.files("sid_edge.build") / "model_configs")))
    _configs_registered = True


@dataclass(frozen=True)
class BackboneIdentity:
    """What a feature was computed with; heads, caches and manifests carry it so mismatches are caught.

    ``pretrained`` is the open_clip tag (e.g. ``openai``), ``none`` for random weights, or ``file:<name>`` for a
    local checkpoint whose sha256 is in ``pretrained_sha256``. For random weights ``pretrained_sha256`` is a sha256
    of the vision tower's weights, so two random initialisations never share a feature cache.
    """

    model_name: str
    pretrained: str
    pretrained_sha256: str | None
    quick_gelu: bool
    feature: str  # always "pooled_pre_projection" for the head input
    feature_dim: int
    embed_dim: int
    image_size: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneIdentity":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    @property
    def key(self) -> str:
        """Short stable hash used to key feature caches."""
        text = "|".join(str(getattr(self, k)) for k in sorted(self.__dataclass_fields__))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Backbone(nn.Module):
    """A frozen open_clip ViT that returns (pooled [B,D], embedding [B,E]) for pixel_values [B,3,S,S] float32.

    ``pixel_values`` are preprocessed per :attr:`preprocessing` (CLIP mean/std normalised, NCHW). Build with
    :func:`load_backbone`.
    """

    def __init__(self, model: nn.Module, identity: BackboneIdentity, preprocessing: Preprocessing):
        super().__init__()
        self.clip = model
        self.visual = model.visual
        self.identity = identity
        self.preprocessing = preprocessing
        self.eval().requires_grad_(False)

    @property
    def feature_dim(self) -> int:
        return self.identity.feature_dim

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        # open_clip's VisionTransformer.forward, stopped before `pooled @ proj` so the pooled feature is kept.
        tokens = v.transformer(v._embeds(pixel_values))
        pooled, _ = v._pool(tokens)
        projected = pooled @ v.proj if v.proj is not None else pooled
        embedding = projected / projected.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return pooled, embedding


def _resolve_pretrained(model_name: str, pretrained: str | None) -> tuple[str | None, str, str | None]:
    """Returns (value for open_clip, identity tag, sha256 of a local file or None)."""
    import open_clip

    if pretrained is None or str(pretrained).lower() in ("none", ""):
        return None, "none", None
    if os.path.exists(pretrained):
        if not os.path.isfile(pretrained):
            raise ValueError(f"--clip-pretrained {pretrained}: not a file")
        return str(pretrained), f"file:{Path(pretrained).name}", sha256_file(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise ValueError(
            f"--clip-pretrained {pretrained!r} is neither a local file nor an open_clip pretrained tag of "
            f"{model_name!r} (known tags: {', '.join(tags) or 'none'})"
        )
    return pretrained, pretrained, None


def load_backbone(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    *,
    device: str = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> Backbone:
    """Create a frozen open_clip backbone.

    Args:
        model_name: any open_clip model name, or ``sid-edge-tiny``. OpenAI weights need QuickGELU: use a
            ``-quickgelu`` name; with a plain name and ``pretrained='openai'`` QuickGELU is forced (open_clip 3.x
            only warns and silently computes wrong features).
        pretrained: an open_clip pretrained tag (downloaded through open_clip/Hugging Face hub), a path to a local
            open_clip state-dict file (works offline), or ``none``/None for random weights (loud warning).
        device: torch device string.
        cache_dir: open_clip download cache.
        seed: random-weight initialisation seed (``pretrained='none'`` only). Fixed, so that ``train`` and
            ``export`` run in separate processes build the same random backbone; the global torch RNG is untouched.

    Raises:
        ValueError: unknown model name, unknown tag, or a model whose vision tower is not an open_clip
            VisionTransformer (the pooled pre-projection feature is defined for ViTs).
        RuntimeError: weights could not be fetched (no network) — the message names the model and tag.
    """
    import open_clip

    register_project_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(f"--clip-model {model_name!r} is not an open_clip model name")
    source, tag, file_sha = _resolve_pretrained(model_name, pretrained)
    force_quick_gelu = tag == "openai" and "quickgelu" not in model_name.lower()
    if force_quick_gelu:
        log.warning("%s with OpenAI weights: forcing QuickGELU (the weights were trained with it)", model_name)
    if source is None:
        log.warning(RANDOM_WEIGHTS_WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(
                model_name,
                pretrained=source,
                force_quick_gelu=force_quick_gelu,
                device=device,
                cache_dir=cache_dir,
                weights_only=True,
            )
    except (OSError, ConnectionError) as e:  # hub download failures surface as OSError subclasses
        raise RuntimeError(
            f"could not load CLIP weights {model_name!r} / {pretrained!r}: {e}. Without a network, download the "
            f"open_clip weights elsewhere and pass the file with --clip-pretrained PATH"
        ) from e
    visual = model.visual
    if not all(hasattr(visual, a) for a in ("_embeds", "transformer", "_pool")):
        raise ValueError(f"{model_name}: vision tower {type(visual).__name__} is not an open_clip VisionTransformer")
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    preprocessing = Preprocessing(
        size=size,
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg.get("interpolation") or "bicubic",
        resize_mode=cfg.get("resize_mode") or "shortest",
    )
    if source is None:
        # Random weights differ per initialisation: fingerprint them so feature caches never mix two of them.
        file_sha = _weights_fingerprint(model.visual)
    quick_gelu = _uses_quick_gelu(model)
    feature_dim = int(visual.proj.shape[0]) if visual.proj is not None else int(visual.output_dim)
    embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else feature_dim
    identity = BackboneIdentity(
        model_name=model_name,
        pretrained=tag,
        pretrained_sha256=file_sha,
        quick_gelu=quick_gelu,
        feature="pooled_pre_projection",
        feature_dim=feature_dim,
        embed_dim=embed_dim,
        image_size=size,
    )
    return Backbone(model, identity, preprocessing).to(device)


def _weights_fingerprint(module: nn.Module) -> str:
    """sha256 over the names and bytes of ``module``'s state dict (CPU copies)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _uses_quick_gelu(model: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.visual.modules())
