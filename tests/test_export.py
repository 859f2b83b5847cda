import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from sid_edge.runtime.detector import Detector
from sid_edge.artifact.manifest import ManifestError, read_manifest, sha256_file


def test_manifest_has_what_the_runtime_needs(artifact, tiny_backbone):
    m = read_manifest(artifact).to_dict()
    assert m["schema_version"] == 1 and m["format"] == "sid-edge-detector"
    assert m["backbone"]["model_name"] == "sid-edge-tiny" and m["backbone"]["pretrained"] == "none"
    assert m["backbone"]["feature"] == "pooled_pre_projection" and m["backbone"]["quick_gelu"] is True
    pre = m["preprocessing"]
    assert (pre["size"], pre["interpolation"], pre["resize_mode"], pre["colour_order"]) == (64, "bicubic", "shortest", "RGB")
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert m["threshold"] == 0.5 and m["head"]["kind"] == "orthogonal" and m["head"]["k"] == 4
    assert m["input"] == {"name": "pixel_values", "shape": ["batch", 3, 64, 64], "dtype": "float32"}
    assert [o["name"] for o in m["outputs"]] == ["logit", "p_synthetic", "head_activations", "image_embedding",
                                                 "features", "concept_scores"]  # the packaged vocabulary by default
    assert m["outputs"][4] == {"name": "features", "shape": ["batch", 64], "dtype": "float32"}
    entry = m["models"]["fp32"]
    assert entry["sha256"] == sha256_file(artifact / entry["file"])
    assert entry["size_bytes"] == (artifact / entry["file"]).stat().st_size
    assert {"torch", "open_clip_torch", "onnx", "onnxruntime", "sid_edge"} <= set(m["libraries"])
    assert m["vocabulary"]["count"] == 129 and len(m["vocabulary"]["concepts"]) == 129
    assert m["explanation"]["sha256"] == sha256_file(artifact / "explanation.npz")


def test_export_parity_figure_recorded_and_small(artifact):
    fid = read_manifest(artifact).to_dict()["models"]["fp32"]["fidelity"]["pytorch_parity"]
    assert fid["inputs"] >= 2
    assert 0.0 <= fid["max_abs_logit_diff"] < 1e-4
    assert 0.0 <= fid["max_abs_features_diff"] < 1e-4


def test_one_graph_with_dynamic_batch_and_named_outputs(artifact):
    model = onnx.load(str(artifact / "model.fp32.onnx"))
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["logit", "p_synthetic", "head_activations", "image_embedding",
                                                    "features", "concept_scores"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch(artifact, tiny_backbone, trained_head, batch):
    from sid_edge.export import FusedDetector
    from sid_edge.build.heads import load_head

    head, _ = load_head(trained_head)
    fused = FusedDetector(tiny_backbone, head)
    x = np.random.default_rng(batch).normal(size=(batch, 3, 64, 64)).astype(np.float32)
    det = Detector.load(artifact)
    got = det.run(x)
    with torch.inference_mode():
        logit, p, acts, emb, feats = fused(torch.from_numpy(x))
        pooled, _ = tiny_backbone(torch.from_numpy(x))
    assert got["logit"].shape == (batch,) and got["head_activations"].shape == (batch, 4)
    np.testing.assert_allclose(got["logit"], logit.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["p_synthetic"], p.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["head_activations"], acts.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got["image_embedding"], axis=1), 1.0, rtol=1e-5)
    assert got["features"].shape == (batch, 64)  # the pooled pre-projection feature the head reads
    np.testing.assert_allclose(got["features"], feats.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["features"], pooled.numpy(), atol=1e-4)


def test_head_weights_file_reproduces_the_graph(artifact, trained_head):
    # head.npz + the graph's `features` output give the graph's own logit in numpy (what evaluation relies on).
    from sid_edge.runtime.numpy_head import load_head_weights
    from sid_edge.build.heads import load_head

    m = read_manifest(artifact).to_dict()
    w = m["head"]["weights"]
    assert w["file"] == "head.npz" and w["sha256"] == sha256_file(artifact / "head.npz")
    assert w["arrays"] == {"directions.weight": [4, 64], "directions.bias": [4], "to_logit.weight": [1, 4],
                           "to_logit.bias": [1]}
    weights = load_head_weights(artifact / "head.npz", "orthogonal")
    head, _ = load_head(trained_head)
    np.testing.assert_array_equal(weights.arrays["directions.weight"], head.directions.weight.detach().numpy())
    np.testing.assert_array_equal(weights.arrays["to_logit.bias"], head.to_logit.bias.detach().numpy())
    x = np.random.default_rng(3).normal(size=(6, 3, 64, 64)).astype(np.float32)
    out = Detector.load(artifact).run(x)
    np.testing.assert_allclose(weights.logit(out["features"]), out["logit"], atol=1e-4)
    np.testing.assert_allclose(weights.p_synthetic(out["features"]), out["p_synthetic"], atol=1e-6)


def test_head_weights_file_is_checked(tmp_path):
    from sid_edge.runtime.numpy_head import load_head_weights, save_head_weights

    good = {"fc.weight": np.ones((1, 8)), "fc.bias": np.zeros(1)}
    save_head_weights(tmp_path, "linear", good)
    w = load_head_weights(tmp_path / "head.npz", "linear")
    assert w.arrays["fc.weight"].dtype == np.float32 and (w.k, w.feature_dim) == (1, 8)
    np.testing.assert_allclose(w.logit(np.full((2, 8), 0.5)), [4.0, 4.0])
    with pytest.raises(ValueError, match=r"reads \[N,8\] features"):
        w.logit(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="do not match a orthogonal head"):
        load_head_weights(tmp_path / "head.npz", "orthogonal")
    with pytest.raises(ValueError, match="fc.bias has shape"):
        save_head_weights(tmp_path, "linear", {"fc.weight": np.ones((1, 8)), "fc.bias": np.zeros(2)})
    with pytest.raises(ValueError, match="no numpy form"):
        save_head_weights(tmp_path, "concepts", good)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a readable head weights file"):
        load_head_weights(tmp_path / "bad.npz", "linear")


def test_head_backbone_dimension_mismatch_is_refused(tiny_backbone, tmp_path):
    from sid_edge.export import export_detector
    from sid_edge.build.heads import HeadConfig, OrthogonalHead, save_head

    save_head(OrthogonalHead(1024, 8), HeadConfig(kind="orthogonal", k=8, feature_dim=1024), tmp_path / "h")
    with pytest.raises(ValueError, match="1024-d"):
        export_detector(tmp_path / "h", tmp_path / "out", backbone=tiny_backbone)


def test_export_refuses_non_empty_out(artifact, trained_head, tiny_backbone):
    from sid_edge.export import export_detector

    with pytest.raises(ValueError, match="not empty"):
        export_detector(trained_head, artifact, backbone=tiny_backbone)


def test_large_graphs_use_external_data(tiny_backbone, trained_head, tmp_path, monkeypatch):
    # Force the external-data path with a tiny threshold; the artifact must list and verify the data file.
    import sid_edge.export.onnx_export as ox

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    m = ox.export_detector(trained_head, tmp_path / "ext", backbone=tiny_backbone).to_dict()
    extra = m["models"]["fp32"]["external_data"]
    assert extra and all((tmp_path / "ext" / f["file"]).is_file() for f in extra)
    graph_bytes = (tmp_path / "ext" / "model.fp32.onnx").stat().st_size
    assert sum(f["size_bytes"] for f in extra) > 2 * graph_bytes  # the weights moved out of the protobuf
    det = Detector.load(tmp_path / "ext")
    assert det.run(np.zeros((2, 3, 64, 64), np.float32))["logit"].shape == (2,)


# --- a wrong model file is refused before it runs -----------------------------------------------------------
@pytest.fixture
def artifact_copy(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def test_tampered_model_refused(artifact_copy):
    f = artifact_copy / "model.fp32.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256 does not match"):
        Detector.load(artifact_copy)


def test_truncated_model_refused(artifact_copy):
    f = artifact_copy / "model.fp32.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ManifestError, match="size"):
        Detector.load(artifact_copy)


def test_missing_or_bad_manifest(artifact_copy, tmp_path):
    with pytest.raises(ManifestError, match="missing"):
        Detector.load(tmp_path)
    (artifact_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Detector.load(artifact_copy)
    (artifact_copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="not a sid-edge detector manifest"):
        Detector.load(artifact_copy)


def test_newer_schema_refused(artifact_copy):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="newer"):
        Detector.load(artifact_copy)


def test_unknown_precision_refused(artifact):
    with pytest.raises(ManifestError, match="has no 'int8' model"):
        Detector.load(artifact, precision="int8")


def test_cli_export_and_info(trained_head, tmp_path, capsys):
    from sid_edge.cli import main

    out = tmp_path / "det"
    assert main(["export", "--head", str(trained_head), "--out", str(out)]) == 0  # backbone taken from the head
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sid-edge-tiny" in text and "orthogonal k=4" in text and "fp32" in text
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["head"]["k"] == 4
    assert main(["info", str(tmp_path)]) == 3
    assert main(["export", "--head", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def test_export_in_a_new_process_rebuilds_the_same_random_backbone(trained_head, tmp_path, caplog):
    # train and export are separate processes: with random weights the fixed seed must give the same backbone,
    # and a head from other weights is called out.
    from sid_edge.build.backbone import load_backbone
    from sid_edge.export import export_detector

    with caplog.at_level("WARNING"):
        export_detector(trained_head, tmp_path / "same", backbone=load_backbone("sid-edge-tiny", "none"), vocabulary=None)
    assert not any("was trained on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"):
        export_detector(trained_head, tmp_path / "other", backbone=load_backbone("sid-edge-tiny", "none", seed=7),
                        vocabulary=None)
    assert any("was trained on" in r.getMessage() for r in caplog.records)
