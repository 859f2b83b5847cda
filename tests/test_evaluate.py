"""sid-edge evaluate end to end on fixture datasets written here: scores against the artifacts' own graphs, metrics
against scikit-learn, the detector x dataset matrix, shared features and their cache, calibration exclusion,
threshold choice, reports and the CLI."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from sid_edge.tools.caches import content_sha256
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from sid_edge.tools.datasets import read_labelled_images
from sid_edge.runtime.detector import Detector
from sid_edge.tools.evaluation.runner import (
    NamedData,
    choose_thresholds,
    evaluate,
    load_detector,
    parse_named,
    write_report,
    write_threshold,
)
from sid_edge.tools.evaluation.metrics import threshold_at_fpr
from sid_edge.artifact.manifest import ManifestError, file_entry, read_manifest, write_manifest

GENERATORS = ("progan", "stylegan")


@pytest.fixture(scope="module")
def cnnspot_csv(tmp_path_factory) -> Path:
    """A CNNSpot-shaped CSV: each generator's real half carries the generator's name (matched pairing), plus one
    file that is not an image."""
    from sid_edge.build.demo_data import rendered_image, skimage_photographs

    root = tmp_path_factory.mktemp("cnnspot")
    photos = list(skimage_photographs().values())
    rows = []
    for g, gen in enumerate(GENERATORS):
        for i in range(5):
            arr = photos[(g * 5 + i) % len(photos)]
            Image.fromarray(arr[: 3 * arr.shape[0] // 4, i * 10 :]).save(root / f"{gen}_real_{i}.jpg", quality=90)
            rendered_image(100 * g + i, (200 + 20 * i, 180)).save(root / f"{gen}_fake_{i}.png")
            rows += [(f"{gen}_real_{i}.jpg", 0, gen), (f"{gen}_fake_{i}.png", 1, gen)]
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    rows.append(("broken.jpg", 1, "progan"))
    with open(root / "cnnspot.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "source"), *rows])
    return root / "cnnspot.csv"


@pytest.fixture(scope="module")
def linear_artifact(tiny_backbone, cnnspot_csv, tmp_path_factory) -> Path:
    """A linear head (logistic regression on the tiny backbone's features) fit on the CNNSpot-shaped set."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from sid_edge.export import export_detector
    from sid_edge.build.features import extract_features
    from sid_edge.build.heads import HeadConfig, LinearHead, save_head

    items = read_labelled_images(cnnspot_csv)
    feats = extract_features(tiny_backbone, [it.image for it in items])
    y = np.array([items[i].label for i in feats.kept])
    probe = LogisticRegression(C=0.1, max_iter=1000).fit(feats.pooled, y)
    head = LinearHead(tiny_backbone.feature_dim)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor(probe.coef_, dtype=torch.float32))
        head.fc.bias.copy_(torch.tensor(probe.intercept_, dtype=torch.float32))
    cfg = HeadConfig(kind="linear", k=1, feature_dim=tiny_backbone.feature_dim, backbone=tiny_backbone.identity.to_dict())
    head_dir = save_head(head, cfg, tmp_path_factory.mktemp("linear") / "head")
    out = tmp_path_factory.mktemp("linear-artifact") / "cnnspot_linear"
    export_detector(head_dir, out, backbone=tiny_backbone, vocabulary=None)
    return out


@pytest.fixture
def datasets(synthclic_dir, cnnspot_csv):
    return [NamedData("synthclic", str(synthclic_dir)), NamedData("cnnspot", str(cnnspot_csv))]


@pytest.fixture
def run_counter(monkeypatch):
    """Counts images run through any graph (Detector.run)."""
    seen = {"images": 0, "calls": 0}
    original = Detector.run

    def counting(self, pixel_values):
        seen["images"] += len(pixel_values)
        seen["calls"] += 1
        return original(self, pixel_values)

    monkeypatch.setattr(Detector, "run", counting)
    return seen


def graph_scores(artifact, items, precision=None):
    """p_synthetic of each decodable item from the artifact's own graph (the independent reference)."""
    det = Detector.load(artifact, precision=precision)
    preds = det.predict([it.image for it in items])
    return {it.key: p.p_synthetic for it, p in zip(items, preds) if p.ok}


def test_matrix_and_metrics_against_the_graphs_and_sklearn(probe_artifact, linear_artifact, datasets, tmp_path,
                                                             run_counter):
    dets = [load_detector("synthclic_probe", probe_artifact), load_detector("cnnspot_linear", linear_artifact)]
    assert [d.scoring for d in dets] == ["features+head", "features+head"]
    assert dets[0].namespace == dets[1].namespace  # one backbone: one features group
    ev = evaluate(dets, datasets, split="test", cache_root=tmp_path / "cache")
    assert ev.detectors == ["synthclic_probe", "cnnspot_linear"] and ev.datasets == ["synthclic", "cnnspot"]
    assert ev.matrix().shape == (2, 2) and ev.matrix("ap").shape == (2, 2)
    n_images = {"synthclic": 8, "cnnspot": 21}
    # features computed once per dataset and shared by both heads: each decodable image ran through one graph once
    assert run_counter["images"] == 8 + 20
    for i, (name, artifact) in enumerate([("synthclic_probe", probe_artifact), ("cnnspot_linear", linear_artifact)]):
        for j, data in enumerate(datasets):
            s, m = ev.scored[(name, data.name)], ev.metrics[(name, data.name)]
            items = read_labelled_images(data.data, split="test")
            reference = graph_scores(artifact, items)
            assert s.keys == list(reference) and len(s.keys) == n_images[data.name] - len(s.failed)
            np.testing.assert_allclose(s.p_synthetic, list(reference.values()), atol=1e-5)  # head.npz == the graph
            assert s.runner == "synthclic_probe" and s.computed == n_images[data.name] and s.cached == 0
            labels = np.array([it.label for it in items if it.key in reference])
            np.testing.assert_array_equal(s.labels, labels)
            assert m.ap == pytest.approx(average_precision_score(labels, s.p_synthetic), abs=1e-12)
            assert ev.matrix("ap")[i, j] == m.ap and ev.matrix()[i, j] == m.map
            src = np.array(s.sources)
            for gen, gm in m.per_generator.items():
                reals = (labels == 0) if m.pairing == "shared" else (labels == 0) & (src == gen)
                mask = reals | ((labels == 1) & (src == gen))
                assert gm.ap == pytest.approx(average_precision_score(labels[mask], s.p_synthetic[mask]), abs=1e-12)
            assert m.map == pytest.approx(np.nanmean([g.ap for g in m.per_generator.values()]))
            pred = s.p_synthetic >= m.threshold
            assert m.threshold == 0.5 and m.accuracy == pytest.approx(np.mean(pred == labels))
        sc, cn = ev.metrics[(name, "synthclic")], ev.metrics[(name, "cnnspot")]
        assert sc.pairing == "shared" and set(sc.per_generator) == {"sdxl", "dalle3", "midjourney"}
        assert sc.per_generator["sdxl"].n_real == 4  # against all four real images of the split
        assert cn.pairing == "matched" and set(cn.per_generator) == set(GENERATORS)
        assert cn.per_generator["progan"].n_real == 5 and cn.per_generator["progan"].n_synthetic == 5
    broken = ev.scored[("cnnspot_linear", "cnnspot")].failed
    assert len(broken) == 1 and broken[0][0].endswith("broken.jpg") and broken[0][1]


def test_second_run_reads_the_cache_and_keys_on_image_content(probe_artifact, linear_artifact, cnnspot_csv, tmp_path,
                                                              run_counter):
    dets = [load_detector("a", probe_artifact), load_detector("b", linear_artifact)]
    cache = tmp_path / "cache"
    first = evaluate(dets, [NamedData("cnnspot", str(cnnspot_csv))], cache_root=cache)
    assert run_counter["images"] == 20
    second = evaluate(dets, [NamedData("cnnspot", str(cnnspot_csv))], cache_root=cache)
    assert run_counter["images"] == 20  # the backbone did not run again
    for key, s in second.scored.items():
        assert (s.computed, s.cached, s.backend) == (0, 21, None)  # 20 features + the cached decode failure
        np.testing.assert_array_equal(s.p_synthetic, first.scored[key].p_synthetic)
        assert s.failed == first.scored[key].failed
        assert second.metrics[key] == first.metrics[key]
    # renamed files hit, an edited one misses
    moved = tmp_path / "moved"
    moved.mkdir()
    rows = list(csv.reader(open(cnnspot_csv)))
    for row in rows[1:]:
        shutil.copyfile(cnnspot_csv.parent / row[0], moved / f"renamed_{row[0]}")
        row[0] = f"renamed_{row[0]}"
    with open(moved / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    renamed = evaluate(dets, [NamedData("cnnspot", str(moved / "data.csv"))], cache_root=cache)
    assert run_counter["images"] == 20 and renamed.scored[("a", "cnnspot")].computed == 0
    Image.open(moved / "renamed_progan_real_0.jpg").save(moved / "renamed_progan_real_0.jpg", quality=50)
    edited = evaluate(dets, [NamedData("cnnspot", str(moved / "data.csv"))], cache_root=cache)
    assert run_counter["images"] == 21 and edited.scored[("a", "cnnspot")].computed == 1


def test_an_interrupted_run_keeps_what_it_computed(probe_artifact, cnnspot_csv, tmp_path, monkeypatch):
    import sid_edge.tools.evaluation.runner as evaluate_module

    monkeypatch.setattr(evaluate_module, "CACHE_FLUSH_IMAGES", 8)  # a shard every 8 images (one batch)
    det = [load_detector("a", probe_artifact)]
    original, calls = Detector.run, []

    def dies_on_the_third_batch(self, pixel_values):
        calls.append(len(pixel_values))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, pixel_values)

    monkeypatch.setattr(Detector, "run", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(det, [NamedData("cnnspot", str(cnnspot_csv))], cache_root=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("features-*/*.npz"))) == 2  # the first two batches were stored
    monkeypatch.setattr(Detector, "run", original)
    ev = evaluate(det, [NamedData("cnnspot", str(cnnspot_csv))], cache_root=tmp_path / "cache")
    s = ev.scored[("a", "cnnspot")]
    assert (s.computed, s.cached) == (21 - 16, 16) and len(s.labels) == 20


def test_artifacts_without_head_weights_and_quantised_variants_run_their_own_graph(
        probe_artifact, precision_artifact, synthclic_dir, tmp_path, run_counter):
    old = tmp_path / "old"  # an artifact exported before head.npz existed
    shutil.copytree(probe_artifact, old)
    (old / "head.npz").unlink()
    m = read_manifest(old).to_dict()
    del m["head"]["weights"]
    write_manifest(old, m)
    dets = [load_detector("old", old), load_detector("int8", precision_artifact, "int8"),
            load_detector("fp32", precision_artifact)]
    assert [d.scoring for d in dets] == ["graph", "graph", "features+head"]
    assert "no head.npz" in dets[0].scoring_reason and "int8" in dets[1].scoring_reason
    assert len({d.namespace for d in dets}) == 3
    ev = evaluate(dets, [NamedData("synthclic", str(synthclic_dir))], split="train", cache_root=tmp_path / "cache")
    items = read_labelled_images(synthclic_dir, split="train")
    assert run_counter["images"] == 3 * len(items)  # nothing shared between the three
    for det, artifact, precision in [("old", old, None), ("int8", precision_artifact, "int8")]:
        s = ev.scored[(det, "synthclic")]
        reference = graph_scores(artifact, [it for it in items if it.key in set(s.keys)], precision)
        np.testing.assert_array_equal(s.p_synthetic, np.float32(list(reference.values())))
    # the INT8 artifact was calibrated on this dataset's train split: those image ids are excluded, for every
    # precision of that artifact, and only there
    # (by the content of the calibration images, not by their image_id: a real photo's synthetic siblings share it)
    cal = read_manifest(precision_artifact).calibration
    hashes = set(cal.image_sha256)
    n_excluded = sum(content_sha256(it.image) in hashes for it in items)
    assert n_excluded == cal.images > 0
    for det in ("int8", "fp32"):
        s = ev.scored[(det, "synthclic")]
        assert s.excluded_calibration == n_excluded and len(s.labels) == len(items) - n_excluded
        kept = {it.key for it in items if content_sha256(it.image) not in hashes}
        assert set(s.keys) == kept
        assert f"{n_excluded} calibration images excluded" in s.notes()[0]
    assert ev.scored[("old", "synthclic")].excluded_calibration == 0


def test_head_weights_that_do_not_match_the_graph_are_refused(probe_artifact, synthclic_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(probe_artifact, bad)
    with np.load(bad / "head.npz") as z:
        arrays = dict(z)
    arrays["to_logit.bias"] = arrays["to_logit.bias"] + 1.0
    np.savez(bad / "head.npz", **arrays)
    m = read_manifest(bad).to_dict()
    m["head"]["weights"].update(file_entry(bad, "head.npz"))  # a consistent manifest, a wrong file
    write_manifest(bad, m)
    det = load_detector("bad", bad)
    with pytest.raises(ManifestError, match="do not reproduce the graph's logit"):
        evaluate([det], [NamedData("s", str(synthclic_dir))], use_cache=False)
    (bad / "head.npz").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="head.npz"):
        load_detector("bad", bad)


def test_threshold_at_target_fpr_is_chosen_and_written(probe_artifact, synthclic_dir, tmp_path):
    art = tmp_path / "det"
    shutil.copytree(probe_artifact, art)
    det = load_detector("det", art)
    data = NamedData("synthclic", str(synthclic_dir))
    (choice,) = choose_thresholds([det], data, split="validation", target_fpr=0.05, cache_root=tmp_path / "c").values()
    items = read_labelled_images(synthclic_dir, split="validation")
    p = graph_scores(art, items)
    labels = np.array([it.label for it in items])
    real, synth = np.array(list(p.values()))[labels == 0], np.array(list(p.values()))[labels == 1]
    assert choice.threshold == threshold_at_fpr(real, 0.05)
    assert choice.achieved_fpr == pytest.approx(np.mean(real >= choice.threshold)) and choice.achieved_fpr <= 0.05
    assert choice.tpr == pytest.approx(np.mean(synth >= choice.threshold))
    assert (choice.n_real, choice.n_synthetic, choice.split) == (100, 100, "validation")
    write_threshold(det, choice)
    m = read_manifest(art).to_dict()
    assert m["threshold"] == choice.threshold and Detector.load(art).threshold == choice.threshold
    assert m["threshold_choice"]["target_fpr"] == 0.05 and m["threshold_choice"]["n_real"] == 100
    assert m["threshold_choice"]["location"] == str(synthclic_dir.resolve())
    # the runtime flags exactly that share of those reals at the written threshold
    preds = Detector.load(art).predict([it.image for it in items if it.label == 0])
    assert np.mean([r.prediction == "synthetic" for r in preds]) == choice.achieved_fpr
    # and the evaluation decides at it (heads on shared features may differ from the graph in the last float32 bit,
    # so the image at the boundary may fall either way)
    ev = evaluate([load_detector("det", art)], [data], split="validation", cache_root=tmp_path / "c")
    assert ev.thresholds["det"] == choice.threshold
    assert abs(ev.metrics[("det", "synthclic")].real_accuracy - (1 - choice.achieved_fpr)) <= 0.01 + 1e-9


def test_report_files(probe_artifact, linear_artifact, datasets, tmp_path):
    dets = [load_detector("synthclic_probe", probe_artifact), load_detector("cnnspot_linear", linear_artifact)]
    ev = evaluate(dets, datasets, split="test", cache_root=tmp_path / "cache")
    files = write_report(ev, tmp_path / "report")
    assert {"report.md", "report.json", "scores.csv", "cross_dataset_map.png", "cross_dataset_ap.png",
            "pr_synthclic.png", "pr_cnnspot.png", "pr_cnnspot_linear__synthclic.png",
            "hist_synthclic_probe__cnnspot.png"} <= set(files)
    assert sum(name.endswith(".png") for name in files) == 2 + 2 + 4 + 4
    rep = json.loads(files["report.json"].read_text())
    assert rep["detectors"] == ev.detectors and rep["datasets"] == ev.datasets and rep["split"] == "test"
    np.testing.assert_allclose(np.array(rep["map_matrix"], dtype=float), ev.matrix(), equal_nan=True)
    cell = next(r for r in rep["results"] if (r["detector"], r["dataset"]) == ("cnnspot_linear", "cnnspot"))
    assert cell["failed_images"] == 1 and cell["pairing"] == "matched" and cell["runner"] == "synthclic_probe"
    assert set(cell["per_generator"]) == set(GENERATORS) and cell["per_generator"]["stylegan"]["n_real"] == 5
    rows = list(csv.DictReader(open(files["scores.csv"])))
    assert len(rows) == 2 * (8 + 21)  # every image per detector, the undecodable one with its error
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 2 and all(r["key"].endswith("broken.jpg") for r in bad)
    md = files["report.md"].read_text()
    assert "## mAP (mean per-generator AP), detector × dataset" in md
    assert "1 image could not be read or decoded and is left out" in md
    assert files["pr_cnnspot.png"].read_bytes().startswith(b"\x89PNG")


def test_parse_named():
    assert parse_named(["a=/x/y", "/data/synthclic", "hf:marco-willi/cnnspot-small", "data.csv"]) == [
        ("a", "/x/y"), ("synthclic", "/data/synthclic"), ("cnnspot-small", "hf:marco-willi/cnnspot-small"),
        ("data", "data.csv")]
    with pytest.raises(ValueError, match="two datasets are named 'x'"):
        parse_named(["/a/x", "/b/x"])


def test_cli_evaluate(probe_artifact, linear_artifact, synthclic_dir, cnnspot_csv, tmp_path, capsys):
    from sid_edge.cli import main

    out = tmp_path / "report"
    art = tmp_path / "probe"
    shutil.copytree(probe_artifact, art)
    args = ["evaluate", f"synthclic_probe={art}", str(linear_artifact), "--data", f"sc={synthclic_dir}",
            str(cnnspot_csv), "--out", str(out), "--no-progress"]
    assert main(args + ["--threshold-from", str(synthclic_dir), "--target-fpr", "0.1", "--write-threshold"]) == 0
    text = capsys.readouterr()
    assert "mAP (pooled AP), detector × dataset" in text.out and "cnnspot_linear" in text.out
    assert "Thresholds at the target false-positive rate" in text.out
    assert "1 image could not be read or decoded" in text.err and "threshold" in text.err
    rep = json.loads((out / "report.json").read_text())
    assert rep["detectors"] == ["synthclic_probe", "cnnspot_linear"] and rep["datasets"] == ["sc", "cnnspot"]
    chosen = read_manifest(art).to_dict()["threshold"]
    assert rep["thresholds"]["synthclic_probe"] == chosen != 0.5
    assert rep["threshold_choices"]["synthclic_probe"]["split"] == "validation"
    assert (out / "cross_dataset_map.png").is_file() and (out / "hist_cnnspot_linear__sc.png").is_file()
    # usage errors (2) and model errors (3)
    assert main(["evaluate", str(art)]) == 2  # nothing to do
    assert main(["evaluate", str(art), "--data", str(cnnspot_csv), "--write-threshold"]) == 2
    assert main(["evaluate", str(art), "--data", str(tmp_path / "missing")]) == 2
    assert main(["evaluate", str(art), "--data", str(synthclic_dir), "--split", "holdout"]) == 2
    assert main(["evaluate", str(art), "--threshold-from", str(synthclic_dir), "--target-fpr", "2"]) == 2
    assert main(["evaluate", str(art), str(art), "--data", str(cnnspot_csv)]) == 2  # two detectors named alike
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(cnnspot_csv)]) == 3
    assert main(["evaluate", str(art), "--data", str(cnnspot_csv), "--precision", "int8"]) == 3
    err = capsys.readouterr().err
    assert "no split 'holdout'" in err and "has no 'int8' model" in err
