import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import torch.nn.functional as F

from sid_edge.build.head_kinds import ConceptTrainConfig, ConceptTrainReport, TrainReport
from sid_edge.build.heads import orthogonality_penalty
from sid_edge.build.training import TrainConfig, stratified_split, train, train_head


def correlated_features(n=400, d=64, seed=0):
    """Features like CLIP's: a large shared mean and correlated dimensions, with a label signal on a few."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ mixing + 3.0
    x[:, :4] += labels[:, None] * 1.5
    return x.astype(np.float32), labels


def test_orthogonality_penalty_values():
    # Orthogonal columns -> 0; identical columns -> ‖I − 11ᵀ‖_F = sqrt(k² − k) for k columns.
    q, _ = torch.linalg.qr(torch.randn(50, 4))
    assert float(orthogonality_penalty(q * 3.0)) == pytest.approx(0.0, abs=1e-5)
    same = torch.randn(50, 1).repeat(1, 4)
    assert float(orthogonality_penalty(same)) == pytest.approx(np.sqrt(12), rel=1e-5)


def test_orthogonality_term_is_minimised():
    x, y = correlated_features()
    fixed = dict(k=8, max_epochs=60, patience=1000, batch_size=64)
    with_term, rep_with = train_head(x, y, TrainConfig(ortho_weight=0.33, **fixed))
    without, rep_without = train_head(x, y, TrainConfig(ortho_weight=0.0, **fixed))
    # Orthogonal *weights* do not give de-correlated *activations* on correlated features: the term starts high.
    assert rep_with.ortho_initial > 1.0
    assert rep_with.ortho_final < 0.35 * rep_with.ortho_initial
    assert rep_with.ortho_final < 0.5 * rep_without.ortho_final
    # ...and the detector still works.
    assert rep_with.val_ap > 0.9


def test_validation_ap_reported_and_correct():
    x, y = correlated_features(seed=1)
    head, report = train_head(x, y, TrainConfig(k=4, seed=3))
    tr, va = stratified_split(y, 0.2, 3)
    with torch.no_grad():
        logit, acts = head(torch.from_numpy(x[va]))
    assert report.n_val == len(va) and report.n_train == len(tr)
    assert report.val_ap == pytest.approx(average_precision_score(y[va], logit.numpy()), abs=1e-9)
    assert acts.shape == (len(va), 4)
    assert 1 <= report.best_epoch <= len(report.history)
    # Early stopping: training ended `patience` epochs after the best one (or hit max_epochs).
    assert len(report.history) in (report.best_epoch + 5, 200)


def test_early_stopping_on_a_given_validation_split():
    # The paper stops on the dataset's own validation split: all training data trains, the given split validates.
    x, y = correlated_features(seed=4)
    xv, yv = correlated_features(n=120, seed=5)
    head, report = train_head(x, y, TrainConfig(kind="linear", k=1, seed=0), validation=(xv, yv))
    assert (report.n_train, report.n_val) == (400, 120)
    with torch.no_grad():
        logit, _ = head(torch.from_numpy(xv))
    assert report.val_ap == pytest.approx(average_precision_score(yv, logit.numpy()), abs=1e-9) and report.val_ap > 0.9
    with pytest.raises(ValueError, match="validation features"):
        train_head(x, y, TrainConfig(kind="linear", k=1), validation=(xv[:, :10], yv))


def test_stratified_split_deterministic_and_stratified():
    y = np.array([0] * 30 + [1] * 10)
    a = stratified_split(y, 0.2, seed=7)
    b = stratified_split(y, 0.2, seed=7)
    c = stratified_split(y, 0.2, seed=8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert (y[a[1]] == 0).sum() == 6 and (y[a[1]] == 1).sum() == 2
    assert set(a[0]).isdisjoint(a[1]) and len(a[0]) + len(a[1]) == 40


def test_single_class_is_refused():
    with pytest.raises(ValueError, match="both classes"):
        train_head(np.zeros((10, 8), np.float32), np.zeros(10, int))
    with pytest.raises(ValueError, match="at least 2 images of each class; found 5 real and 1 synthetic"):
        stratified_split(np.array([0] * 5 + [1]), 0.2, seed=0)


def test_stratified_split_is_scikit_learns():
    from sklearn.model_selection import StratifiedShuffleSplit

    y = np.random.default_rng(0).integers(0, 2, 101)
    tr, va = stratified_split(y, 0.2, seed=5)
    ref_tr, ref_va = next(StratifiedShuffleSplit(n_splits=1, test_size=21, random_state=5).split(np.zeros((101, 1)), y))
    np.testing.assert_array_equal(va, np.sort(ref_va))
    np.testing.assert_array_equal(tr, np.sort(ref_tr))
    # At least one item per class on each side, even for a validation share that rounds to nothing.
    tr, va = stratified_split(np.array([0, 0, 1, 1, 0, 1]), 0.0, seed=0)
    assert sorted(np.array([0, 0, 1, 1, 0, 1])[va]) == [0, 1] and len(tr) == 4


@pytest.mark.parametrize("kind", ["orthogonal", "linear"])
def test_validation_loss_is_the_papers_objective(kind):
    # BCE with label smoothing 0.1 (+ 0.33 * ||I - A^T A||_F for the orthogonal head), recomputed here from the
    # kept weights on the validation split.
    x, y = correlated_features(seed=6)
    head, report = train_head(x, y, TrainConfig(kind=kind, k=4 if kind == "orthogonal" else 1, max_epochs=15))
    _, va = stratified_split(y, 0.2, 0)
    with torch.no_grad():
        logit, acts = head(torch.from_numpy(x[va]))
    target = torch.from_numpy(y[va]).float() * 0.9 + 0.05
    expected = float(F.binary_cross_entropy_with_logits(logit, target))
    if kind == "orthogonal":
        expected += 0.33 * float(orthogonality_penalty(acts))
        assert float(orthogonality_penalty(acts)) > 0.01  # the term is really in there
    assert report.history[report.best_epoch - 1]["val_loss"] == pytest.approx(expected, rel=1e-5)
    if kind == "linear":  # no regulariser: the training loss is the BCE
        assert all(r["train_loss"] == pytest.approx(r["bce"], rel=1e-9) for r in report.history)


def concept_problem(n=120, e=16, c=10, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(c, e)).astype(np.float32)
    y = rng.integers(0, 2, n)
    emb = rng.normal(size=(n, e)) + np.outer(y - 0.5, t[0] - t[1])
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), y, t


def test_one_loop_trains_every_kind_deterministically():
    x, y = correlated_features(n=120, seed=7)
    emb, ye, t = concept_problem()
    runs = {
        "orthogonal": lambda seed: train("orthogonal", x, y, TrainConfig(k=4, max_epochs=8, seed=seed)),
        "linear": lambda seed: train("linear", x, y, TrainConfig(kind="linear", k=1, max_epochs=8, seed=seed)),
        "concepts": lambda seed: train("concepts", emb, ye, ConceptTrainConfig(max_epochs=8, sparsity_weight=1e-2,
                                                                             seed=seed), text_embeddings=t),
    }
    for kind, run in runs.items():
        (a, ra), (b, rb), (c, _) = run(0), run(0), run(1)
        assert a.kind == kind and not a.training
        assert isinstance(ra, ConceptTrainReport if kind == "concepts" else TrainReport)
        assert ra.to_dict() == rb.to_dict()
        for (name, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
            assert torch.equal(va, vb), (kind, name)
        assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    # The concept model's loss is BCE + beta * KL (no label smoothing), averaged over the epoch's batches.
    _, rc = runs["concepts"](0)
    for row in rc.history:
        assert row["train_loss"] == pytest.approx(row["bce"] + 1e-2 * row["kl"], rel=1e-6)
    with pytest.raises(ValueError, match="unknown head kind 'mlp'"):
        train("mlp", x, y)
    with pytest.raises(ValueError, match="concept embeddings"):
        train("concepts", emb, ye, text_embeddings=t[:, :5])


def test_linear_head_trains():
    x, y = correlated_features(seed=2)
    head, report = train_head(x, y, TrainConfig(kind="linear", k=1))
    assert report.val_ap > 0.9
    logit, acts = head(torch.from_numpy(x[:3]))
    assert torch.allclose(logit, acts[:, 0])


def test_cli_train_writes_head_and_reports_ap(demo_data, tmp_path, capsys):
    from sid_edge.cli import main
    from sid_edge.build.heads import load_head

    out = tmp_path / "head"
    rc = main(["train", "--data", str(demo_data), "--out", str(out), "--clip-model", "sid-edge-tiny",
               "--clip-pretrained", "none", "--head-dim", "4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= summary["val_ap"] <= 1.0 and summary["n_val"] > 0
    head, cfg = load_head(out)
    assert (cfg.kind, cfg.k, cfg.feature_dim) == ("orthogonal", 4, 64)
    assert cfg.backbone["model_name"] == "sid-edge-tiny" and cfg.backbone["pretrained"] == "none"
    assert cfg.training["val_ap"] == pytest.approx(summary["val_ap"])
    assert sorted(p.name for p in out.iterdir()) == ["head.json", "head.safetensors"]


def test_cli_train_rejects_bad_head_dim(demo_data, tmp_path):
    from sid_edge.cli import main

    assert main(["train", "--data", str(demo_data), "--out", str(tmp_path / "h"), "--head-dim", "17"]) == 2


def test_cli_head_kind_flag_and_its_deprecated_aliases(demo_data, tmp_path, capsys):
    from sid_edge.cli import main

    tiny = ["--clip-model", "sid-edge-tiny", "--clip-pretrained", "none", "--epochs", "3"]
    assert main(["train", "--data", str(demo_data), "--out", str(tmp_path / "a"), "--head-kind", "linear", *tiny]) == 0
    out, err = capsys.readouterr()
    assert "deprecated" not in err
    assert json.loads((tmp_path / "a" / "head.json").read_text())["kind"] == "linear"
    first = json.loads(out.strip().splitlines()[-1])
    for flag in ("--model", "--head"):
        assert main(["train", "--data", str(demo_data), "--out", str(tmp_path / flag), flag, "linear", *tiny]) == 0
        out, err = capsys.readouterr()
        assert f"deprecated: `sid-edge train {flag} linear` is now `--head-kind linear`" in " ".join(err.split())
        again = json.loads(out.strip().splitlines()[-1])  # stdout stays one JSON line; same seed, same head
        assert json.loads((tmp_path / flag / "head.json").read_text())["kind"] == "linear"
        assert (again["val_ap"], again["best_epoch"]) == (first["val_ap"], first["best_epoch"])
    assert main(["train", "--data", str(demo_data), "--out", str(tmp_path / "x"), "--head-kind", "orthogonal",
                 "--model", "linear"]) == 2
    assert "--model linear contradicts --head-kind orthogonal" in capsys.readouterr().err


def test_features_are_cached(tiny_backbone, demo_data, tmp_path, monkeypatch):
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.build.features import extract_features

    paths = [it.path for it in read_labelled_images(demo_data)][:6]
    first = extract_features(tiny_backbone, paths, cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr(type(tiny_backbone), "forward", lambda self, x: calls.append(x) or (_ for _ in ()).throw(AssertionError))
    second = extract_features(tiny_backbone, paths, cache_dir=tmp_path)
    assert calls == []
    np.testing.assert_array_equal(first.pooled, second.pooled)
    assert first.pooled.shape == (6, 64) and first.embedding.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(first.embedding, axis=1), 1.0, rtol=1e-5)


def test_features_of_parquet_images_match_files_and_are_cached(tiny_backbone, synthclic_dir, tmp_path):
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.build.features import extract_features

    items = read_labelled_images(synthclic_dir, split="test")
    refs = extract_features(tiny_backbone, [it.image for it in items], cache_dir=tmp_path)
    files = []
    for i, it in enumerate(items):  # the same bytes as files give the same features and the same cache entry
        files.append(tmp_path / f"{i}.img")
        files[-1].write_bytes(it.image.resolve_image())
    from_files = extract_features(tiny_backbone, files, cache_dir=tmp_path / "other")
    np.testing.assert_array_equal(refs.pooled, from_files.pooled)
    assert refs.pooled.shape == (len(items), 64) and not refs.errors
    shard = lambda root: [p.relative_to(root) for p in root.glob("*/*.npz")]  # noqa: E731 - <backbone>/<key>.npz
    assert shard(tmp_path) == shard(tmp_path / "other") and len(shard(tmp_path)) == 1
