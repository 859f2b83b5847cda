"""TensorRT on a real NVIDIA GPU: build the tiny artifact's engine, run it behind the Detector, compare with ONNX
Runtime CPU. Skipped, with the reason, where TensorRT or a GPU is missing (as on the CPU-only dev machines)."""

import shutil

import numpy as np
import pytest

from sid_edge.runtime.tensorrt_engines import BatchProfile, detect_environment

ENV = detect_environment()
pytestmark = pytest.mark.skipif(
    not (ENV.has_tensorrt and ENV.has_gpu),
    reason="needs TensorRT and an NVIDIA GPU: " + ("; ".join(ENV.problems) or ENV.describe()),
)


@pytest.fixture(scope="module")
def built(artifact, tmp_path_factory):
    from sid_edge.export.engine import build_engine

    d = tmp_path_factory.mktemp("trt") / "detector"
    shutil.copytree(artifact, d)
    entry = build_engine(d, "fp32", profile=BatchProfile(2, 4, 8), optimization_level=1, progress=False)
    return d, entry


def test_engine_is_recorded_with_profile_versions_and_hash(built):
    from sid_edge.artifact.manifest import read_manifest, sha256_file

    d, entry = built
    m = read_manifest(d).to_dict()
    assert m["engines"] == [entry]
    assert entry["profile"] == {"input": "pixel_values", "min_batch": 2, "opt_batch": 4, "max_batch": 8}
    assert entry["tensorrt_version"] == ENV.tensorrt_version and entry["compute_capability"] == ENV.compute_capability
    assert entry["sha256"] == sha256_file(d / entry["file"]) and entry["strongly_typed"] is True
    assert (d / entry["timing_cache"]).stat().st_size > 0


def test_rebuild_reuses_the_timing_cache_and_replaces_the_entry(built):
    from sid_edge.export.engine import build_engine
    from sid_edge.artifact.manifest import read_manifest

    d, first = built
    second = build_engine(d, "fp32", profile=BatchProfile(2, 4, 8), optimization_level=1, progress=False)
    assert [e["file"] for e in read_manifest(d).to_dict()["engines"]] == [first["file"]]
    assert second["timing_cache"] == first["timing_cache"]


def test_tensorrt_backend_matches_onnx_runtime_cpu_across_split_and_padded_batches(built, photo_dir):
    from sid_edge.runtime.detector import Detector

    d, _ = built
    trt = Detector.load(d, backend="tensorrt")
    cpu = Detector.load(d, backend="cpu")
    assert trt.backend_name == "tensorrt"
    assert Detector.load(d).backend_name == "tensorrt"  # auto prefers the engine
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 11):  # 1 and 3 pad up to min 2 / run as is; 11 splits into 8 + 3
        x = rng.normal(size=(n, 3, trt.input_size, trt.input_size)).astype(np.float32)
        a, b = trt.run(x), cpu.run(x)
        assert a["p_synthetic"].shape == (n,) and a["head_activations"].shape == b["head_activations"].shape
        # FP32 engine: TF32 tensor cores may round matmul inputs to 10 mantissa bits.
        assert np.max(np.abs(a["p_synthetic"] - b["p_synthetic"])) < 5e-3
    images = sorted(photo_dir.iterdir())
    pa = [r.p_synthetic for r in trt.predict(images, batch_size=16)]
    pb = [r.p_synthetic for r in cpu.predict(images, batch_size=16)]
    assert np.max(np.abs(np.array(pa) - np.array(pb))) < 5e-3
    trt.backend.close()


def test_engine_from_another_release_is_refused_and_falls_back_when_allowed(built, tmp_path):
    from sid_edge.runtime.backends import BackendUnavailable
    from sid_edge.runtime.detector import Detector
    from sid_edge.artifact.manifest import read_manifest, write_manifest

    d = tmp_path / "other"
    shutil.copytree(built[0], d)
    m = read_manifest(d).to_dict()
    m["engines"][0]["tensorrt_version"] = "9.0.0.1"
    write_manifest(d, m)
    with pytest.raises(BackendUnavailable, match="built with TensorRT 9.0.0.1 .* rebuild it here with `sid-edge build"):
        Detector.load(d, backend="tensorrt")
    assert Detector.load(d, backend="tensorrt", allow_fallback=True).backend_name in ("onnxruntime-cuda", "onnxruntime-cpu")


def test_scan_on_tensorrt(built, photo_dir, tmp_path):
    import csv

    from sid_edge.cli import main

    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(built[0]), "--backend", "tensorrt", "--out", str(out),
                 "--no-progress", "--batch-size", "16"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(list(photo_dir.iterdir())) and all(r["error"] == "" for r in rows)
