"""FP16 and INT8 (explicit Q/DQ) variants: graphs, manifest, runtime, fidelity figures, CLI."""

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sid_edge.runtime.detector import Detector
from sid_edge.artifact.manifest import read_manifest, sha256_file


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _activation_scales(path) -> dict[str, float]:
    """QuantizeLinear scale per quantized activation tensor (the weights have DequantizeLinear only)."""
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_every_precision_is_listed_with_its_hash(precision_artifact):
    m = read_manifest(precision_artifact).to_dict()
    assert list(m["models"]) == ["fp32", "fp16", "int8"] and m["default_precision"] == "fp32"
    for precision, entry in m["models"].items():
        assert entry["file"] == f"model.{precision}.onnx" and entry["precision"] == precision
        assert entry["sha256"] == sha256_file(precision_artifact / entry["file"])
    sizes = {p: e["size_bytes"] for p, e in m["models"].items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]  # INT8 weights stored as int8, FP16 as float16
    assert m["libraries"]["nvidia-modelopt"].startswith("0.47")


def test_int8_graph_has_qdq_nodes_and_int8_weights(precision_artifact):
    path = precision_artifact / "model.int8.onnx"
    ops = _ops(path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights: DQ only
    model = onnx.load(str(path))
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_weights) >= 8  # every transformer GEMM weight of the tiny model
    q = read_manifest(precision_artifact).to_dict()["models"]["int8"]["quantization"]
    assert q["calibration_method"] == "max" and q["calibration_images"] == 64 and q["high_precision_dtype"] == "fp32"
    assert (q["quantize_linear"], q["dequantize_linear"]) == (ops["QuantizeLinear"], ops["DequantizeLinear"])
    assert q["dq_consumers"]["MatMul"] > 0


def test_fp16_graph_keeps_float32_io(precision_artifact):
    model = onnx.load(str(precision_artifact / "model.fp16.onnx"))
    io = [*model.graph.input, *model.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {onnx.TensorProto.FLOAT}
    fp16 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16) >= 8
    conv = read_manifest(precision_artifact).to_dict()["models"]["fp16"]["conversion"]
    assert conv["keep_io_types"] is True and conv["fp16_nodes"] > 50


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variants_load_and_run_on_onnxruntime_cpu(precision_artifact, precision):
    det = Detector.load(precision_artifact, precision=precision, backend="cpu")
    assert det.precision == precision and det.backend_name == "onnxruntime-cpu"
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    out = det.run(x)
    ref = Detector.load(precision_artifact, precision="fp32").run(x)
    assert out["p_synthetic"].dtype == np.float32 and out["head_activations"].shape == (3, 4)
    np.testing.assert_allclose(out["p_synthetic"], ref["p_synthetic"], atol=0.05)
    assert np.all((out["p_synthetic"] >= 0) & (out["p_synthetic"] <= 1))


def test_runtime_int8_on_cpu_is_the_exact_qdq_arithmetic(precision_artifact):
    # The manifest says the graph needs exact integer accumulation; the runtime picks the kernel for this CPU (exact
    # U8U8 GEMMs without VNNI, the default with VNNI/AMX), so its integer kernels give what the Q/DQ graph means;
    # ORT with graph optimisations off evaluates Q/DQ literally in float.
    entry = read_manifest(precision_artifact).to_dict()["models"]["int8"]
    assert entry["needs_exact_int8_accumulation"] is True and "onnxruntime" not in entry
    x = np.random.default_rng(1).normal(size=(8, 3, 64, 64)).astype(np.float32)
    got = Detector.load(precision_artifact, precision="int8").run(x)["p_synthetic"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    literal = ort.InferenceSession(str(precision_artifact / entry["file"]), opts, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, literal.run(["p_synthetic"], {"pixel_values": x})[0], atol=2e-3)


def test_fidelity_figures_on_the_fixture_set(precision_artifact):
    m = read_manifest(precision_artifact).to_dict()
    fset = m["fidelity_set"]
    assert (fset["split"], fset["images"], fset["real"], fset["synthetic"]) == ("validation", 200, 100, 100)
    assert fset["threshold"] == 0.5 and fset["runtime"] == "onnxruntime-cpu"
    fp32 = m["models"]["fp32"]["fidelity"]
    assert fp32["pytorch_parity"]["max_abs_logit_diff"] < 1e-4  # the export's own block is kept
    assert 0.7 < fp32["held_out"]["ap"] <= 1.0 and "delta_ap" not in fp32["held_out"]
    fp16 = m["models"]["fp16"]["fidelity"]["held_out"]
    assert fp16["max_abs_dp"] <= 5e-3 and fp16["decision_agreement"] == 1.0
    int8 = m["models"]["int8"]["fidelity"]["held_out"]
    assert int8["decision_agreement"] >= 0.99
    assert abs(int8["delta_ap"]) <= 0.01
    assert int8["head_activation_cosine_mean"] >= 0.999 and 0 < int8["mean_abs_dp"] < 0.01


def test_calibration_images_are_recorded_and_held_out(precision_artifact, synthclic_dir):
    cal = read_manifest(precision_artifact).to_dict()["calibration"]
    assert cal["images"] == 64 and cal["split"] == "train" and cal["by_label"] == {"real": 32, "synthetic": 32}
    assert set(cal["by_source"]) == {"real", "sdxl", "dalle3", "midjourney"}
    from sid_edge.calibration.selection import select_stratified
    from sid_edge.tools.datasets import read_labelled_images

    drawn = select_stratified(read_labelled_images(synthclic_dir, split="train"), 64, seed=0)  # the same draw again
    assert cal["image_ids"] == sorted({it.image_id for it in drawn})
    held_out_ids = {it.image_id for it in read_labelled_images(synthclic_dir, split="validation")}
    assert not held_out_ids & set(cal["image_ids"])


def test_held_out_set_excludes_calibration_image_ids(tmp_path):
    from sid_edge.calibration.fidelity import held_out_set
    from sid_edge.build.demo_data import write_demo_dataset

    root = write_demo_dataset(tmp_path / "d", crops_per_photo=1, n_rendered=6)  # no splits: one pool
    from sid_edge.tools.datasets import read_labelled_images

    pool = read_labelled_images(root)
    excluded = [pool[0].image_id, pool[-1].image_id]
    held = held_out_set(root, exclude=excluded)
    assert len(held.items) == len(pool) - 2 and not {it.image_id for it in held.items} & set(excluded)
    assert held.description["excluded_calibration_images"] == 2
    assert len(held_out_set(root, exclude=excluded, size=6).items) == 6


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(probe_artifact, synthclic_dir, tmp_path, method):
    from sid_edge.calibration.calibration_set import build_calibration_set
    from sid_edge.calibration.int8 import quantize_int8
    from sid_edge.artifact.preprocessing import Preprocessing

    spec = Preprocessing.from_dict(read_manifest(probe_artifact).to_dict()["preprocessing"])
    cal = build_calibration_set(synthclic_dir, spec, size=16, cache_dir=tmp_path)
    out = tmp_path / "q.onnx"
    info = quantize_int8(probe_artifact / "model.fp32.onnx", out, cal.pixel_values, method=method)
    assert info["calibration_method"] == method and _ops(out)["QuantizeLinear"] == info["quantize_linear"] > 0
    # ModelOpt rewrites the model it is given; quantize_int8 hands it a copy, so the artifact's graph is untouched
    assert sha256_file(probe_artifact / "model.fp32.onnx") == read_manifest(probe_artifact).to_dict()["models"]["fp32"]["sha256"]
    # activation scales (scalars) differ from max calibration's: percentile clips, entropy picks its own threshold
    reference = tmp_path / "max.onnx"
    quantize_int8(probe_artifact / "model.fp32.onnx", reference, cal.pixel_values, method="max")
    got, ref = _activation_scales(out), _activation_scales(reference)
    shared = sorted(set(got) & set(ref))
    assert len(shared) == info["quantize_linear"] and all(got[n] > 0 for n in shared)
    smaller = sum(got[n] < ref[n] * 0.999 for n in shared)
    assert smaller >= len(shared) // 2  # most ranges tighter than the max seen
    if method == "percentile":
        assert all(got[n] <= ref[n] * 1.0001 for n in shared)  # a percentile never exceeds the maximum


def test_only_the_requested_precisions_are_kept(probe_artifact, synthclic_dir, tmp_path):
    from sid_edge.calibration.variants import add_precision_variants

    out = tmp_path / "det"
    shutil.copytree(probe_artifact, out)
    m = add_precision_variants(out, ["int8"], calibration_data=synthclic_dir, calibration_size=16, fidelity_size=20).to_dict()
    assert list(m["models"]) == ["int8"] and m["default_precision"] == "int8"
    assert sorted(p.name for p in out.iterdir()) == ["explanation.npz", "head.npz", "manifest.json", "model.int8.onnx"]
    det = Detector.load(out)  # the manifest's default
    assert det.precision == "int8" and m["fidelity_set"]["images"] == 20
    assert m["models"]["int8"]["fidelity"]["held_out"]["images"] == 20
    with pytest.raises(ValueError, match="subset of fp32, fp16, int8"):
        add_precision_variants(out, ["int4"], calibration_data=synthclic_dir)


def test_cli_export_with_precisions_info_and_scan(trained_head, synthclic_dir, photo_dir, tmp_path, capsys):
    from sid_edge.cli import main

    out = tmp_path / "det"
    assert main(["export", "--head", str(trained_head), "--out", str(out), "--precision", "fp32", "int8",
                 "--calibration", str(synthclic_dir), "--calibration-size", "8", "--fidelity-size", "16"]) == 0
    m = read_manifest(out).to_dict()
    assert list(m["models"]) == ["fp32", "int8"] and m["calibration"]["images"] == 8
    assert m["models"]["int8"]["fidelity"]["held_out"]["images"] == 16
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Fidelity on held-out images" in text and "model.int8.onnx" in text and "calibration: 8 images" in text
    assert "max|Δlogit|" in text  # the PyTorch parity of the FP32 graph
    results = tmp_path / "r.jsonl"
    assert main(["scan", str(photo_dir), "--model", str(out), "--precision", "int8", "--out", str(results), "--no-progress"]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == len(list(photo_dir.iterdir())) and all(r["error"] == "" for r in rows)
    assert main(["scan", str(photo_dir), "--model", str(out), "--precision", "fp16"]) == 3  # not in this artifact


def test_cli_usage_errors(trained_head, synthclic_dir, tmp_path):
    from sid_edge.cli import main

    base = ["export", "--head", str(trained_head), "--out", str(tmp_path / "x")]
    assert main([*base, "--precision", "int8"]) == 2  # needs --calibration
    assert main([*base, "--precision", "fp16", "--calibration", str(tmp_path / "missing")]) == 2
    assert main([*base, "--precision", "int8", "--calibration", str(synthclic_dir), "--calibration-split", "dev"]) == 2
    assert main([*base, "--precision", "int8", "--calibration", str(synthclic_dir), "--calibration-size", "0"]) == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--precision", "int4"])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists()  # refused before any export work
