"""sid-edge explain: one chart per head direction, the Gram matrix, image reasons; numbers checked against torch."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sid_edge.cli import main
from tests.test_concepts import reference_directions


@pytest.fixture(scope="module")
def report_dir(concept_artifact, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "report"
    images = [str(photo_dir / "coffee.jpg"), str(photo_dir / "astronaut.png")]
    assert main(["explain", str(concept_artifact), "--images", *images, "--out", str(out), "--top", "5"]) == 0
    return out


def test_report_files_one_chart_per_direction(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    charts = report["charts"]
    assert [c for c in charts if c.startswith("direction_")] == [f"direction_0{j}.png" for j in range(1, 5)]  # k = 4
    assert {"gram.png", "concept_model.png"} <= set(charts)
    assert len([c for c in charts if c.startswith("image_")]) == 2
    for name in charts:
        with Image.open(report_dir / name) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 150
    md = (report_dir / "report.md").read_text()
    for j in range(1, 5):
        assert f"### Direction {j} " in md and f"](direction_0{j}.png)" in md
    assert "## How orthogonal the directions are" in md and "](gram.png)" in md
    assert "coffee.jpg: p_synthetic" in md and "astronaut.png: p_synthetic" in md


def test_direction_concepts_match_torch(report_dir, trained_head, tiny_backbone):
    """The aligned/opposed lists equal an independent computation: head weights through visual.proj vs the text
    tower's pair directions."""
    from sid_edge.build.heads import load_head
    from sid_edge.build.vocabulary import load_vocabulary

    head, _ = load_head(trained_head)
    concepts = load_vocabulary()
    d = reference_directions(tiny_backbone, concepts)
    with torch.no_grad():
        w, v = head.directions.weight.detach(), head.to_logit.weight[0].detach()
        u = (w @ tiny_backbone.visual.proj) * torch.sign(v)[:, None]
        cos = F.normalize(u, dim=1) @ d.T
        gram = F.normalize(w, dim=1) @ F.normalize(w, dim=1).T
    report = json.loads((report_dir / "report.json").read_text())
    for j, direction in enumerate(report["directions"]):
        order = torch.argsort(cos[j], descending=True)
        assert [n for n, _ in direction["aligned"]] == [concepts[i].name for i in order[:5]]
        assert [n for n, _ in direction["opposed"]] == [concepts[i].name for i in order.flip(0)[:5]]
        assert direction["aligned"][0][1] == pytest.approx(float(cos[j, order[0]]), abs=1e-4)
        assert direction["to_logit"] == pytest.approx(float(v[j]), abs=1e-6)
        assert 0.0 < direction["text_visible_share"] <= 1.0
    np.testing.assert_allclose(np.array(report["gram_pooled"]), gram.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.diag(report["gram_pooled"]), 1.0, atol=1e-5)


def test_image_reasons_are_the_concept_contributions(report_dir, concept_artifact, photo_dir):
    from sid_edge.runtime.detector import Detector

    det = Detector.load(concept_artifact)
    (pred,) = det.predict([photo_dir / "coffee.jpg"])
    img = next(i for i in json.loads((report_dir / "report.json").read_text())["images"] if i["source"].endswith("coffee.jpg"))
    assert img["method"] == "concept_contributions" and img["error"] is None
    c = pred.concept_contributions
    up = np.sort(c[c > 0])[::-1][:5]
    down = np.sort(c[c < 0])[:5]
    assert [v for _, v in img["up"]] == pytest.approx(up.tolist(), abs=1e-6)
    assert [v for _, v in img["down"]] == pytest.approx(down.tolist(), abs=1e-6)
    # The per-direction terms are an exact split of the head's logit.
    bias = float(np.load(concept_artifact / "explanation.npz")["head_logit_bias"][0])
    assert sum(img["direction_terms"]) + bias == pytest.approx(pred.logit, abs=1e-5)


def test_explain_without_concept_model_ranks_by_score_times_alignment(artifact, photo_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["explain", str(artifact), "--images", str(photo_dir / "coffee.jpg"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    img = report["images"][0]
    assert img["method"] == "score_x_alignment" and len(img["up"]) + len(img["down"]) > 0
    assert "concept_model.png" not in report["charts"] and len(report["directions"]) == 4


def test_explain_errors(artifact, tmp_path):
    assert main(["explain", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 3
    assert main(["explain", str(artifact), "--out", str(tmp_path / "r"), "--top", "0"]) == 2
    assert main(["explain", str(artifact), "--images", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "r")]) == 2
