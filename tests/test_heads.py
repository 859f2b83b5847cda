import pickle

import numpy as np
import pytest
import torch

from sid_edge.build.heads import HeadConfig, LinearHead, OrthogonalHead, load_clip_cues_checkpoint, load_head, save_head
from tests.conftest import clip_cues_file


def test_orthogonal_init_and_shapes():
    head = OrthogonalHead(32, 8)
    w = head.directions.weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    logit, acts = head(torch.randn(5, 32))
    assert logit.shape == (5,) and acts.shape == (5, 8)


def test_save_load_round_trip(tmp_path):
    head = OrthogonalHead(16, 4)
    save_head(head, HeadConfig(kind="orthogonal", k=4, feature_dim=16, backbone={"model_name": "x"}), tmp_path / "h")
    loaded, cfg = load_head(tmp_path / "h")
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x)[0], head(x)[0])
    assert cfg.backbone == {"model_name": "x"}
    assert b"pickle" not in (tmp_path / "h" / "head.safetensors").read_bytes()[:64]


@pytest.mark.parametrize("name,kind,k", [
    ("clip_orthogonal_synthclic.ckpt", "orthogonal", 8),
    ("clip_orthogonal_combined.ckpt", "orthogonal", 8),
    ("linear_probe_synthclic.ckpt", "linear", 1),
])
def test_clip_cues_checkpoints_import(name, kind, k):
    path = clip_cues_file(name)
    head, cfg = load_head(path)
    assert (cfg.kind, cfg.k, cfg.feature_dim) == (kind, k, 1024)
    assert cfg.backbone["model_name"] == "ViT-L-14-336-quickgelu"
    sd = torch.load(path, weights_only=True)["state_dict"]
    x = torch.randn(4, 1024)
    if kind == "orthogonal":
        w1, b1 = sd["model.classification_head.layers.0.weight"], sd["model.classification_head.layers.0.bias"]
        w2, b2 = sd["model.classification_head.to_logits.weight"], sd["model.classification_head.to_logits.bias"]
        expected_acts = x @ w1.T + b1
        expected = (expected_acts @ w2.T + b2)[:, 0]
    else:
        expected = (x @ sd["model.classification_head.fc.weight"].T + sd["model.classification_head.fc.bias"])[:, 0]
    logit, acts = head(x)
    torch.testing.assert_close(logit, expected, atol=1e-5, rtol=1e-5)
    if kind == "orthogonal":
        torch.testing.assert_close(acts, expected_acts, atol=1e-5, rtol=1e-5)


def test_clip_cues_sha256_of_shared_fixture():
    from sid_edge.export.default_detector import HEAD_SHA256
    from sid_edge.artifact.manifest import sha256_file

    assert sha256_file(clip_cues_file("clip_orthogonal_synthclic.ckpt")) == HEAD_SHA256


def _clip_cues_like(tmp_path, model_type="clip", k=3, d=12, extra=None):
    sd = {
        "model.classification_head.layers.0.weight": torch.randn(k, d),
        "model.classification_head.layers.0.bias": torch.randn(k),
        "model.classification_head.to_logits.weight": torch.randn(1, k),
        "model.classification_head.to_logits.bias": torch.randn(1),
    }
    sd.update(extra or {})
    p = tmp_path / "h.ckpt"
    torch.save({"model_type": model_type, "state_dict": sd}, p)
    return p, sd


def test_synthetic_clip_cues_checkpoint(tmp_path):
    p, sd = _clip_cues_like(tmp_path)
    head, cfg = load_clip_cues_checkpoint(p)
    assert isinstance(head, OrthogonalHead) and cfg.k == 3 and cfg.feature_dim == 12
    torch.testing.assert_close(head.directions.weight, sd["model.classification_head.layers.0.weight"])


def test_malformed_concept_checkpoint_is_refused(tmp_path):
    # Concept checkpoints import as concept models (tests/test_concepts.py); one missing its layers is refused.
    p = tmp_path / "c.ckpt"
    torch.save({"model_type": "concept", "state_dict": {"model.text_embeddings": torch.zeros(2, 4)}}, p)
    with pytest.raises(ValueError, match=r"c\.ckpt: state_dict keys .* do not match a clip-cues 'concept' model"):
        load_head(p)


def test_extra_keys_refused(tmp_path):
    p, _ = _clip_cues_like(tmp_path, extra={"model.backbone.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="do not match"):
        load_head(p)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    p = tmp_path / "evil.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"model_type": "clip", "state_dict": Evil()}, f)
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_head(p)
    assert "pwned" not in capsys.readouterr().out


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"hello")
    with pytest.raises(ValueError, match=str(p)):
        load_head(p)
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path / "missing.ckpt")


def test_linear_head_activation_is_logit():
    head = LinearHead(10)
    logit, acts = head(torch.randn(2, 10))
    assert acts.shape == (2, 1)
    np.testing.assert_allclose(logit.detach().numpy(), acts[:, 0].detach().numpy())


def test_one_loader_for_every_kind_round_trips(tmp_path):
    # A clip-cues-shaped concept checkpoint imports through the same importer as the heads, saves as a head
    # directory and loads back through the same loader with the same outputs.
    from sid_edge.build.heads import ConceptBottleneck, head_config

    g = torch.Generator().manual_seed(0)
    c, e = 5, 12
    sd = {"model.text_embeddings": torch.nn.functional.normalize(torch.randn(c, e, generator=g), dim=1),
          "model.W_concepts.weight": torch.randn(c, e, generator=g), "model.W_concepts.bias": torch.randn(c, generator=g),
          "model.W_classifier.weight": torch.randn(1, c, generator=g), "model.W_classifier.bias": torch.randn(1, generator=g)}
    torch.save({"model_type": "concept", "state_dict": sd}, tmp_path / "cm.ckpt")
    model, cfg = load_head(tmp_path / "cm.ckpt")
    assert isinstance(model, ConceptBottleneck) and not model.training
    assert (cfg.kind, cfg.k, cfg.feature_dim, cfg.feature) == ("concepts", c, e, "image_embedding")
    assert cfg.training == {"temperature": 0.1} and cfg.vocabulary["concepts"][4]["name"] == "concept_004"
    x = torch.randn(3, e, generator=g)
    expected = ((torch.nn.functional.normalize(x, dim=1) @ sd["model.text_embeddings"].T)
                * torch.sigmoid(torch.nn.functional.normalize(x, dim=1) @ sd["model.W_concepts.weight"].T
                                + sd["model.W_concepts.bias"])) @ sd["model.W_classifier.weight"][0] + sd["model.W_classifier.bias"]
    torch.testing.assert_close(model(x)[0], expected, atol=1e-5, rtol=0)
    for head in (model, OrthogonalHead(e, 3), LinearHead(e)):
        out = save_head(head, head_config(head, {"model_name": "x"}, vocabulary=cfg.vocabulary if head is model else None),
                        tmp_path / head.kind)
        loaded, loaded_cfg = load_head(out)
        assert type(loaded) is type(head) and loaded_cfg.kind == head.kind and loaded_cfg.k == head.k
        torch.testing.assert_close(loaded(x)[0], head.eval()(x)[0])


def test_bad_head_json_is_refused_with_the_file_name(tmp_path):
    import json

    out = save_head(LinearHead(4), HeadConfig(kind="linear", k=1, feature_dim=4), tmp_path / "h")
    raw = json.loads((out / "head.json").read_text())
    for change, message in [({"kind": "mlp"}, "unknown head kind 'mlp'"), ({"colour": 1}, r"unknown fields \['colour'\]"),
                            ({"k": 3, "kind": "orthogonal"}, "weights do not match a orthogonal head")]:
        (out / "head.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=message) as e:
            load_head(out)
        assert str(out) in str(e.value)
