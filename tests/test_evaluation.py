"""Detection metrics, per-generator AP, threshold choice, matrices, plots and reports (sid_edge.tools.evaluation.metrics), checked
against scikit-learn computed independently here."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sid_edge.tools.evaluation.metrics import (
    DetectionMetrics,
    cross_dataset_matrix,
    detection_metrics,
    json_report,
    markdown_report,
    plot_cross_matrix,
    plot_pr_curves,
    plot_score_histogram,
    rates_at_threshold,
    resolve_pairing,
    threshold_at_fpr,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def shared_set():
    """SynthCLIC-like: one real pool (source 'real'), three generators."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 36)
    sources = ["real"] * 30 + ["sdxl"] * 12 + ["dalle3"] * 12 + ["flux"] * 12
    scores = np.concatenate([rng.uniform(0, 0.7, 30), rng.uniform(0.3, 1, 12), rng.uniform(0.5, 1, 12),
                             rng.uniform(0, 0.6, 12)]).astype(np.float32)
    return labels, scores, sources


@pytest.fixture
def matched_set():
    """CNNSpot-like: every generator's real half carries the generator's name."""
    rng = np.random.default_rng(1)
    labels, sources, scores = [], [], []
    for gen, (lo, hi) in {"progan": (0.4, 1.0), "stylegan": (0.1, 0.8)}.items():
        labels += [0] * 10 + [1] * 10
        sources += [gen] * 20
        scores += list(rng.uniform(0, 0.6, 10)) + list(rng.uniform(lo, hi, 10))
    labels += [0] * 5  # a real-only pool (imagenet in CNNSpot): no generator, ignored by matched pairing
    sources += ["imagenet"] * 5
    scores += list(rng.uniform(0.5, 1.0, 5))
    return np.array(labels), np.array(scores, dtype=np.float32), sources


def test_metrics_match_sklearn_with_shared_reals(shared_set):
    labels, scores, sources = shared_set
    m = detection_metrics(labels, scores, 0.5, sources)
    assert m.pairing == "shared" and (m.n, m.n_real, m.n_synthetic) == (66, 30, 36)
    assert m.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    real = labels == 0
    for gen in ("sdxl", "dalle3", "flux"):
        mask = real | (np.array(sources) == gen)  # the generator's images against ALL real images
        gm = m.per_generator[gen]
        assert gm.ap == pytest.approx(average_precision_score(labels[mask], scores[mask]), abs=1e-12)
        assert (gm.n_synthetic, gm.n_real) == (12, 30)
        assert gm.synthetic_accuracy == pytest.approx(np.mean(scores[np.array(sources) == gen] >= 0.5))
    assert m.map == pytest.approx(np.mean([m.per_generator[g].ap for g in ("sdxl", "dalle3", "flux")]))
    assert m.map != pytest.approx(m.ap)  # the paper's mAP is not the pooled AP
    pred = scores >= 0.5
    assert m.accuracy == pytest.approx(np.mean(pred == labels))
    assert m.real_accuracy == pytest.approx(np.mean(~pred[real]))
    assert m.synthetic_accuracy == pytest.approx(np.mean(pred[~real]))
    assert m.balanced_accuracy == pytest.approx((m.real_accuracy + m.synthetic_accuracy) / 2)
    assert m.per_generator_ap == {g: gm.ap for g, gm in m.per_generator.items()}


def test_metrics_match_sklearn_with_matched_reals(matched_set):
    labels, scores, sources = matched_set
    src = np.array(sources)
    assert resolve_pairing(labels, src) == "matched"
    m = detection_metrics(labels, scores, 0.5, sources)
    assert m.pairing == "matched" and set(m.per_generator) == {"progan", "stylegan"}
    for gen in ("progan", "stylegan"):
        mask = src == gen  # its own real half only; the imagenet pool takes no part
        assert m.per_generator[gen].ap == pytest.approx(average_precision_score(labels[mask], scores[mask]), abs=1e-12)
        assert m.per_generator[gen].n_real == 10
    # a generator without real images of its own: no AP under matched pairing, left out of the mean
    extra = detection_metrics([*labels, 1, 1], [*scores, 0.9, 0.8], 0.5, [*sources, "biggan", "biggan"])
    assert extra.pairing == "matched" and math.isnan(extra.per_generator["biggan"].ap)
    assert extra.per_generator["biggan"].n_real == 0 and extra.map == pytest.approx(m.map)
    shared = detection_metrics(labels, scores, 0.5, sources, pairing="shared")
    mask = (labels == 0) | (src == "progan")
    assert shared.per_generator["progan"].ap == pytest.approx(average_precision_score(labels[mask], scores[mask]))
    assert shared.per_generator["progan"].n_real == 25
    assert shared.ap == m.ap  # pooled AP does not depend on the pairing


def test_metrics_edge_cases():
    only_real = detection_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
    assert math.isnan(only_real.ap) and math.isnan(only_real.map) and math.isnan(only_real.synthetic_accuracy)
    assert only_real.real_accuracy == pytest.approx(2 / 3) and only_real.balanced_accuracy == pytest.approx(2 / 3)
    assert only_real.to_dict()["ap"] is None  # NaN is null in JSON
    no_sources = detection_metrics([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.5], 0.5)
    assert no_sources.map == no_sources.ap and list(no_sources.per_generator) == ["unknown"]
    # p exactly at the threshold counts as synthetic (the runtime's rule)
    assert detection_metrics([0, 1], [0.5, 0.5], 0.5).real_accuracy == 0.0
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        detection_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="same length"):
        detection_metrics([0, 1], [0.1], 0.5)
    with pytest.raises(ValueError, match="unknown real pairing"):
        detection_metrics([0, 1], [0.1, 0.9], 0.5, ["a", "b"], pairing="closest")


def test_threshold_at_fpr_flags_at_most_the_target_share():
    rng = np.random.default_rng(2)
    real = rng.uniform(0, 1, 1000).astype(np.float32)
    for target in (0.0, 0.001, 0.01, 0.05, 0.5):
        t = threshold_at_fpr(real, target)
        flagged = int((real >= t).sum())
        assert flagged <= math.floor(target * 1000 + 1e-9)
        assert flagged == math.floor(target * 1000 + 1e-9)  # distinct scores: exactly the allowance
        assert int((real >= np.nextafter(np.float32(t), np.float32(0))).sum()) > flagged  # and t is the smallest such
    assert threshold_at_fpr(real, 1.0) == float(real.min())


def test_threshold_at_fpr_respects_ties_and_float32():
    # Ten reals, 10 % allowed: the top score is tied, so no threshold can flag exactly one; none is flagged.
    real = np.array([0.1] * 8 + [0.9, 0.9], dtype=np.float32)
    t = threshold_at_fpr(real, 0.1)
    assert int((real >= t).sum()) == 0 and t > 0.9
    # The threshold sits on the float32 grid: comparing float32 p_synthetic (the graph's dtype) with it, in float32
    # or in float64, flags the same images.
    real = np.array([0.2, 0.3, 0.7], dtype=np.float32)
    t = threshold_at_fpr(real, 0.34)  # one of three may be flagged: 0.7
    assert np.float32(t) == t
    assert int((real >= np.float32(t)).sum()) == 1 and int((real.astype(np.float64) >= t).sum()) == 1
    assert rates_at_threshold([0, 0, 0, 1, 1], [0.2, 0.3, 0.7, 0.2, 0.9], t) == (pytest.approx(1 / 3), 0.5)
    assert threshold_at_fpr([1.0, 1.0], 0.0) > 1.0  # nothing may be flagged, even at p = 1
    with pytest.raises(ValueError, match="at least one real"):
        threshold_at_fpr([], 0.1)
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        threshold_at_fpr([0.5], 1.5)


def _metrics(ap: float, map_: float) -> DetectionMetrics:
    return DetectionMetrics(n=4, n_real=2, n_synthetic=2, threshold=0.5, ap=ap, map=map_, accuracy=0.5,
                            balanced_accuracy=0.5, real_accuracy=0.5, synthetic_accuracy=0.5)


def test_cross_dataset_matrix_and_reports(tmp_path):
    results = {("a", "x"): _metrics(0.9, 0.8), ("a", "y"): _metrics(0.4, 0.3), ("b", "y"): _metrics(0.7, 0.6)}
    m = cross_dataset_matrix(results, ["a", "b"], ["x", "y"])
    assert m.shape == (2, 2) and np.isnan(m[1, 0])
    np.testing.assert_allclose(m[[0, 0, 1], [0, 1, 1]], [0.8, 0.3, 0.6])
    np.testing.assert_allclose(cross_dataset_matrix(results, ["a"], ["x", "y"], "ap"), [[0.9, 0.4]])
    rep = json_report(results, ["a", "b"], ["x", "y"], {("a", "x"): {"failed_images": 2}})
    assert rep["map_matrix"] == [[0.8, 0.3], [None, 0.6]] and rep["ap_matrix"][0] == [0.9, 0.4]
    assert json.loads(json.dumps(rep))["results"][0]["failed_images"] == 2
    md = markdown_report(results, ["a", "b"], ["x", "y"], {("b", "y"): ["3 images could not be decoded"]})
    assert "| a | 0.800 | 0.300 |" in md and "| b | – | 0.600 |" in md  # the mAP matrix
    assert "| a | 0.900 | 0.400 |" in md  # the pooled AP matrix
    assert "- y: 3 images could not be decoded" in md


def test_plots_are_png_files(tmp_path, shared_set):
    labels, scores, sources = shared_set
    paths = [
        plot_pr_curves({"all": (labels, scores), "one class": (labels[:30], scores[:30])}, "t", tmp_path / "pr.png"),
        plot_score_histogram(labels, scores, 0.5, "t", tmp_path / "h.png"),
        plot_cross_matrix(np.array([[0.9, np.nan], [0.37, 0.92]]), ["a", "b"], ["x", "y"], tmp_path / "sub" / "m.png"),
    ]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
