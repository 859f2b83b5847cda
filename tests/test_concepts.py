"""Concept scores in the graph, the concept bottleneck model (train, import, export) and top concepts in scans."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sid_edge.cli import main
from sid_edge.runtime.detector import Detector
from sid_edge.artifact.manifest import read_manifest
from sid_edge.runtime.concept_ranking import parse_csv_cell
from sid_edge.build.vocabulary import load_vocabulary
from tests.conftest import clip_cues_file

CM_SHA256 = "35f57de4b02a878a0376f6e0d0cbb175f34fc3acb7f99ff2aa4d6e8a04783c4d"


def reference_directions(backbone, concepts):
    """The pair rule computed directly with open_clip: normalize(normalize(pos) − normalize(neg))."""
    import open_clip

    tok = open_clip.get_tokenizer(backbone.identity.model_name)
    with torch.no_grad():
        pos = F.normalize(backbone.clip.encode_text(tok([c.positive for c in concepts])), dim=-1)
        neg = F.normalize(backbone.clip.encode_text(tok([c.negative for c in concepts])), dim=-1)
    return F.normalize(pos - neg, dim=-1)


def photo_pixels(det, photo_dir, n=3):
    from sid_edge.runtime.images import load_and_preprocess

    return np.stack([load_and_preprocess(p, det.preprocessing) for p in sorted(photo_dir.iterdir())[:n]])


# ---------------------------------------------------------------------------------------------------- scores
def test_graph_concept_scores_are_pytorch_cosines(artifact, tiny_backbone, photo_dir):
    det = Detector.load(artifact)
    concepts = load_vocabulary()
    assert det.concept_names == [c.name for c in concepts] and len(concepts) == 129
    x = np.concatenate([photo_pixels(det, photo_dir),
                        np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)])
    got = det.run(x)["concept_scores"]
    with torch.no_grad():
        image = F.normalize(tiny_backbone.clip.encode_image(torch.from_numpy(x)), dim=-1)
        ref = (image @ reference_directions(tiny_backbone, concepts).T).numpy()
    assert got.shape == (5, 129)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert got.std() > 0.05 and np.abs(got).max() <= 1.0  # real cosines, not a constant


def test_manifest_carries_concept_names_and_rule(artifact):
    m = read_manifest(artifact).to_dict()
    vocab = m["vocabulary"]
    assert vocab["count"] == 129 and vocab["template"] == "{}"
    assert vocab["concepts"][0] == {"name": "saturation_strong", "category": "colour",
                                   "positive": "a photo with strongly saturated colours",
                                   "negative": "a photo with muted, low-saturation colours"}
    assert "normalize(normalize(text(positive_c)) - normalize(text(negative_c)))" in vocab["score"]
    assert vocab["top_concepts_by"] == "concept_scores" and m.get("concept_model") is None
    assert m["outputs"][-1] == {"name": "concept_scores", "shape": ["batch", 129], "dtype": "float32"}
    assert m["models"]["fp32"]["fidelity"]["pytorch_parity"]["max_abs_concept_scores_diff"] < 1e-4
    assert m["explanation"]["arrays"]["concept_directions"] == [129, 32]


def test_export_without_vocabulary_keeps_the_head_outputs(tiny_backbone, trained_head, photo_dir, tmp_path):
    from sid_edge.export import export_detector

    m = export_detector(trained_head, tmp_path / "det", backbone=tiny_backbone, vocabulary=None).to_dict()
    assert [o["name"] for o in m["outputs"]] == ["logit", "p_synthetic", "head_activations", "image_embedding",
                                                 "features"]
    assert m.get("vocabulary") is None and m.get("explanation") is None
    assert not (tmp_path / "det" / "explanation.npz").exists()
    det = Detector.load(tmp_path / "det")
    (pred,) = det.predict([photo_dir / "coffee.jpg"])
    assert pred.concept_scores is None and pred.top_concepts == []
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(tmp_path / "det"), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "path,p_synthetic,prediction,error,provenance"
    assert main(["explain", str(tmp_path / "det"), "--out", str(tmp_path / "rep")]) == 3  # nothing to explain with


def test_paper_csv_vocabulary_and_bad_files(tiny_backbone, trained_head, tmp_path, capsys):
    csv_path = tmp_path / "paper.csv"
    csv_path.write_text(
        "attribute_name,positive,negative,positive_prompt,negative_prompt,category,explanation\n"
        "lens_flare,controlled flare,veiling flare,A photograph with controlled lens flare,"
        "A photograph with veiling flare and ghosts,lense,bright reflections\n"
        "sharpness,sharp detail,blurry detail,A photograph with sharp detail,A photograph with blurry detail,"
        "technique,fine detail\n")
    backbone = ["--clip-model", "sid-edge-tiny", "--clip-pretrained", "none"]
    out = tmp_path / "det"
    assert main(["export", "--head", str(trained_head), "--out", str(out), "--vocabulary", str(csv_path), *backbone]) == 0
    vocab = read_manifest(out).to_dict()["vocabulary"]
    assert [c["name"] for c in vocab["concepts"]] == ["lens_flare", "sharpness"]
    assert vocab["concepts"][1]["positive"] == "A photograph with sharp detail" and vocab["source"] == "paper.csv"
    assert vocab["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    bad = tmp_path / "bad.csv"
    bad.write_text("attribute,positive,negative\nx,a,b\n")
    assert main(["export", "--head", str(trained_head), "--out", str(tmp_path / "d2"), "--vocabulary", str(bad), *backbone]) == 3
    assert "bad.csv" in capsys.readouterr().err
    assert main(["export", "--head", str(trained_head), "--out", str(tmp_path / "d3"),
                 "--vocabulary", str(tmp_path / "missing.csv"), *backbone]) == 2


# ---------------------------------------------------------------------------------------------------- concept model
def test_paper_concept_checkpoint_reproduces_its_logit_formula():
    from sid_edge.build.concept_model import ConceptBottleneck
    from sid_edge.build.heads import load_head

    path = clip_cues_file("cm_antonyms_synthclic.ckpt")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CM_SHA256
    model, cfg = load_head(path)
    assert isinstance(model, ConceptBottleneck) and not model.training
    assert (cfg.kind, cfg.k, cfg.feature_dim, cfg.feature) == ("concepts", 168, 768, "image_embedding")
    assert cfg.vocabulary["named"] is False and cfg.vocabulary["concepts"][0]["name"] == "concept_000"

    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    text = sd["model.text_embeddings"]
    assert torch.allclose(text.norm(dim=1), torch.ones(168), atol=1e-5)  # real, unit CLIP text features
    emb = torch.randn(6, 768, generator=torch.Generator().manual_seed(0)) * 7.0  # not normalised on purpose
    # The paper's formula, written out from the raw checkpoint tensors.
    x = emb / emb.norm(dim=1, keepdim=True)
    sims = x @ (text / text.norm(dim=1, keepdim=True)).T
    gates = torch.sigmoid(x @ sd["model.W_concepts.weight"].T + sd["model.W_concepts.bias"])
    expected = (sims * gates) @ sd["model.W_classifier.weight"][0] + sd["model.W_classifier.bias"][0]
    with torch.no_grad():
        logit, gated = model(emb)
        parts = model.decompose(emb)
    torch.testing.assert_close(logit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(gated, sims * gates, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts["contributions"].sum(1) + sd["model.W_classifier.bias"][0], expected, atol=1e-5, rtol=0)
    assert expected.abs().max() > 0.1  # a formula that can fail


def test_paper_concept_checkpoint_refused_on_a_smaller_backbone(tiny_backbone, tmp_path):
    from sid_edge.export import export_detector

    with pytest.raises(ValueError, match="768-d"):
        export_detector(clip_cues_file("cm_antonyms_synthclic.ckpt"), tmp_path / "x", backbone=tiny_backbone)


def test_concept_model_trains_and_sparsity_lowers_active_gates(demo_features, concept_directions):
    from sid_edge.build.training import ConceptTrainConfig, train_concept_model

    feats, labels = demo_features
    _, directions = concept_directions
    dense, r_dense = train_concept_model(feats.embedding, labels, directions,
                                         ConceptTrainConfig(sparsity_weight=0.0, max_epochs=20))
    sparse, r_sparse = train_concept_model(feats.embedding, labels, directions,
                                           ConceptTrainConfig(sparsity_weight=1e-3, max_epochs=20))
    for r in (r_dense, r_sparse):
        assert 0.0 <= r.val_ap <= 1.0 and r.n_val > 0 and r.n_concepts == 129
        assert {"kl", "bce", "active_gates", "val_ap"} <= set(r.history[0])
    assert r_dense.active_gates >= 10
    assert r_sparse.active_gates < 0.25 * r_dense.active_gates
    assert r_sparse.history[-1]["kl"] < r_dense.history[-1]["kl"]


def test_gates_are_binary_concrete_while_training_and_sigmoid_at_inference(concept_head, demo_features):
    from sid_edge.build.heads import load_head

    model, _ = load_head(concept_head)
    x = torch.from_numpy(demo_features[0].embedding)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        a, b = model.decompose(x)["gates"], model.decompose(x)["gates"]
        model.eval()
        parts = model.decompose(x)
    assert not torch.equal(a, b)  # sampled
    assert ((a < 0.05) | (a > 0.95)).float().mean() > 0.7  # temperature 0.1: nearly binary
    torch.testing.assert_close(parts["gates"], torch.sigmoid(parts["gate_logits"]))
    assert model.temperature == 0.1


def test_concept_head_files_round_trip(concept_head):
    from sid_edge.build.heads import load_head

    model, cfg = load_head(concept_head)
    raw = json.loads((concept_head / "head.json").read_text())
    assert raw["kind"] == "concepts" and raw["feature"] == "image_embedding" and raw["k"] == 129
    assert [c["name"] for c in cfg.vocabulary["concepts"]] == [c.name for c in load_vocabulary()]
    assert "val_ap" in raw["training"] and "active_gates" in raw["training"]
    assert not any(p.suffix in (".pt", ".pkl", ".ckpt") for p in concept_head.iterdir())


# ---------------------------------------------------------------------------------------------------- graphs
def test_concept_model_outputs_in_the_graph(concept_artifact, artifact, concept_head, tiny_backbone, photo_dir):
    from sid_edge.build.heads import load_head

    m = read_manifest(concept_artifact).to_dict()
    assert [o["name"] for o in m["outputs"]][5:] == ["concept_scores", "concept_logit", "concept_contributions"]
    assert m["concept_model"]["is_head"] is False and m["vocabulary"]["top_concepts_by"] == "concept_contributions"
    det = Detector.load(concept_artifact)
    x = photo_pixels(det, photo_dir, n=4)
    got = det.run(x)
    model, _ = load_head(concept_head)
    with torch.no_grad():
        _, emb = tiny_backbone(torch.from_numpy(x))
        ref = model.decompose(emb)
    np.testing.assert_allclose(got["concept_logit"], ref["logit"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["concept_contributions"], ref["contributions"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["concept_scores"], ref["similarities"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["concept_contributions"].sum(1) + m["concept_model"]["bias"], got["concept_logit"], atol=1e-5)
    # p_synthetic is still the orthogonal head's: the same as in the artifact without the concept model.
    np.testing.assert_allclose(got["logit"], Detector.load(artifact).run(x)["logit"], atol=1e-5)


def test_concept_head_artifact_named_by_the_paper_csv(tiny_backbone, photo_dir, tmp_path):
    # A clip-cues-format concept checkpoint sized for the tiny backbone (E=32), unnamed until the CSV names it.
    from sid_edge.export import export_detector

    g = torch.Generator().manual_seed(1)
    c = 5
    ckpt = tmp_path / "cm_tiny.ckpt"
    torch.save({"model_type": "concept", "state_dict": {
        "model.text_embeddings": F.normalize(torch.randn(c, 32, generator=g), dim=1),
        "model.W_concepts.weight": torch.randn(c, 32, generator=g), "model.W_concepts.bias": torch.zeros(c),
        "model.W_classifier.weight": torch.randn(1, c, generator=g) * 5, "model.W_classifier.bias": torch.tensor([0.1]),
    }}, ckpt)
    names = ["lens_flare", "bokeh_quality", "sharpness", "symmetry", "film_grain"]
    vocab = tmp_path / "antonyms.csv"
    vocab.write_text("attribute_name,positive,negative,positive_prompt,negative_prompt,category,explanation\n"
                     + "".join(f"{n},p,n,A photograph with {n},A photograph without {n},cat,x\n" for n in names))
    short = tmp_path / "short.csv"
    short.write_text("\n".join(vocab.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(ValueError, match="short.csv: 2 concepts"):
        export_detector(ckpt, tmp_path / "bad", backbone=tiny_backbone, vocabulary=short)
    with pytest.raises(ValueError, match="vocabulary none"):
        export_detector(ckpt, tmp_path / "bad", backbone=tiny_backbone, vocabulary=None)

    m = export_detector(ckpt, tmp_path / "det", backbone=tiny_backbone, vocabulary=vocab).to_dict()
    assert [x["name"] for x in m["vocabulary"]["concepts"]] == names and m["concept_model"]["is_head"] is True
    assert m["head"]["kind"] == "concepts" and m["head"]["k"] == c
    # its p_synthetic comes from gated concept scores: no head.npz, evaluation runs its own graph
    assert m["head"].get("weights") is None and not (tmp_path / "det" / "head.npz").exists()
    from sid_edge.tools.evaluation.runner import load_detector

    under_test = load_detector("cm", tmp_path / "det")
    assert under_test.scoring == "graph" and "'concepts'" in under_test.scoring_reason
    det = Detector.load(tmp_path / "det")
    det.top_concepts = 2
    preds = det.predict(sorted(photo_dir.iterdir())[:3])
    for p in preds:
        assert p.logit == pytest.approx(p.concept_logit, abs=1e-6)  # the concept model IS the head
        order = np.argsort(-np.abs(p.concept_contributions))[:2]
        assert [h.name for h in p.top_concepts] == [names[i] for i in order]
        assert p.top_concepts[0].contribution == pytest.approx(float(p.concept_contributions[order[0]]), abs=1e-6)


# ---------------------------------------------------------------------------------------------------- scan
def test_scan_rows_carry_top_concepts(concept_artifact, photo_dir, tmp_path):
    det = Detector.load(concept_artifact)
    det.top_concepts = 129
    by_path = {str(p.source): p for p in det.predict([str(p) for p in sorted(photo_dir.iterdir())])}
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(concept_artifact), "--out", str(out), "--top-concepts", "2"]) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["path", "p_synthetic", "prediction", "error", "top_concepts", "provenance"]
    for r in rows:
        hits = parse_csv_cell(r["top_concepts"])
        expected = by_path[r["path"]].top_concepts[:2]
        assert [n for n, _ in hits] == [h.name for h in expected]
        assert [v for _, v in hits] == pytest.approx([h.contribution for h in expected], abs=1e-4)
        assert abs(hits[0][1]) >= abs(hits[1][1])

    jl = tmp_path / "r.jsonl"
    assert main(["scan", str(photo_dir), "--model", str(concept_artifact), "--out", str(jl)]) == 0
    row = json.loads(jl.read_text().splitlines()[0])
    assert len(row["top_concepts"]) == 3 and set(row["top_concepts"][0]) == {"name", "score", "contribution"}
    assert row["concept_logit"] == pytest.approx(by_path[row["path"]].concept_logit, abs=1e-6)

    out0 = tmp_path / "r0.csv"
    assert main(["scan", str(photo_dir), "--model", str(concept_artifact), "--out", str(out0), "--top-concepts", "0"]) == 0
    assert out0.read_text().splitlines()[0] == "path,p_synthetic,prediction,error,provenance"
    assert main(["scan", str(photo_dir), "--model", str(concept_artifact), "--top-concepts", "-1"]) == 2


def test_top_concepts_by_score_without_a_concept_model(artifact, photo_dir):
    det = Detector.load(artifact)
    (p,) = det.predict([photo_dir / "coffee.jpg"])
    assert len(p.top_concepts) == 3 and p.concept_contributions is None
    top = np.sort(np.abs(p.concept_scores))[::-1][:3]
    assert [abs(h.score) for h in p.top_concepts] == pytest.approx(top.tolist())
    assert all(h.name in det.concept_names for h in p.top_concepts)


# ---------------------------------------------------------------------------------------------------- CLI train
def test_cli_train_concepts(demo_data, tmp_path, capsys):
    backbone = ["--clip-model", "sid-edge-tiny", "--clip-pretrained", "none"]
    out = tmp_path / "cm"
    assert main(["train", "--data", str(demo_data), "--out", str(out), "--head-kind", "concepts", "--epochs", "5",
                 "--sparsity-weight", "1e-3", *backbone]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_concepts"] == 129 and 0.0 <= report["val_ap"] <= 1.0
    assert report["active_gates"] < report["active_gates_initial"]
    cfg = json.loads((out / "head.json").read_text())
    assert cfg["kind"] == "concepts" and cfg["training"]["config"]["sparsity_weight"] == 1e-3
    assert main(["train", "--data", str(demo_data), "--out", str(tmp_path / "x"), "--head-kind", "concepts",
                 "--vocabulary", str(tmp_path / "missing.csv"), *backbone]) == 2
    assert main(["export", "--head", str(out), "--out", str(tmp_path / "e"), "--vocabulary", "none", *backbone]) == 2
