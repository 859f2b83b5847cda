from pathlib import Path

import pytest
import torch

import sid_edge

from sid_edge.build.backbone import TINY_CLIP_MODEL, load_backbone


def test_pooled_is_pre_projection_and_embedding_is_encode_image(tiny_backbone):
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        pooled, emb = tiny_backbone(x)
        ref = tiny_backbone.clip.encode_image(x, normalize=True)
        visual = tiny_backbone.visual
        # pooled = ln_post(CLS token), exactly what VisionTransformer.forward projects.
        tokens = visual.transformer(visual._embeds(x))
        cls = visual.ln_post(tokens)[:, 0]
    assert pooled.shape == (3, 64) and emb.shape == (3, 32)
    torch.testing.assert_close(pooled, cls)
    torch.testing.assert_close(emb, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_identity_and_preprocessing(tiny_backbone):
    ident = tiny_backbone.identity
    assert (ident.model_name, ident.pretrained, ident.quick_gelu) == (TINY_CLIP_MODEL, "none", True)
    assert (ident.feature_dim, ident.embed_dim, ident.image_size) == (64, 32, 64)
    pre = tiny_backbone.preprocessing
    assert (pre.size, pre.interpolation, pre.resize_mode) == (64, "bicubic", "shortest")


def test_local_weights_file_loads_offline(tiny_backbone, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_backbone.clip.state_dict(), path)
    other = load_backbone(TINY_CLIP_MODEL, str(path))
    assert other.identity.pretrained == "file:weights.pt" and len(other.identity.pretrained_sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(other(x)[0], tiny_backbone(x)[0])


def test_unknown_tag_and_model_are_refused():
    with pytest.raises(ValueError, match="neither a local file nor an open_clip pretrained tag"):
        load_backbone(TINY_CLIP_MODEL, "laion2b_no_such_tag")
    with pytest.raises(ValueError, match="not an open_clip model name"):
        load_backbone("ViT-Nope-99", "none")


def test_random_weights_warn_loudly(caplog):
    with caplog.at_level("WARNING"):
        load_backbone(TINY_CLIP_MODEL, "none")
    assert any("RANDOM weights" in r.getMessage() and "meaningless" in r.getMessage() for r in caplog.records)


def test_quickgelu_detected_from_the_modules(tmp_path):
    # A config without quick_gelu uses nn.GELU; the identity must say so (OpenAI weights would need QuickGELU).
    import json

    import open_clip

    cfg = json.loads((Path(sid_edge.__file__).parent / "build" / "model_configs" / "sid-edge-tiny.json").read_text())
    cfg["quick_gelu"] = False
    (tmp_path / "sid-edge-tiny-gelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "sid-edge-tiny-gelu.json")
    assert load_backbone("sid-edge-tiny-gelu", "none").identity.quick_gelu is False


def test_random_initialisations_do_not_share_a_cache_key():
    a = load_backbone(TINY_CLIP_MODEL, "none", seed=1)
    b = load_backbone(TINY_CLIP_MODEL, "none", seed=2)
    torch.manual_seed(123)  # the global RNG does not matter: train and export in two processes agree
    c = load_backbone(TINY_CLIP_MODEL, "none", seed=1)
    assert a.identity.key != b.identity.key
    assert a.identity.key == c.identity.key and len(a.identity.pretrained_sha256) == 64
