"""The engine build orchestration and the TensorRT backend's buffers, batch splitting, padding and dtype handling,
run against tests/trt_standin.py (a stand-in for the TensorRT and cuda-python calls; no GPU). What TensorRT itself
computes is checked on real GPUs by tests/test_tensorrt_gpu.py and benchmarks/gpu_check.py."""

import csv
import json
import shutil

import numpy as np
import pytest

from sid_edge.runtime.tensorrt_engines import BatchProfile
from sid_edge.runtime.images import load_and_preprocess
from tests import trt_standin


@pytest.fixture
def standin(monkeypatch):
    return trt_standin.install(monkeypatch)


@pytest.fixture
def artifact_copy(plain_artifact, tmp_path):
    # The stand-in engine computes the four head outputs only, so the artifact has no concept outputs.
    d = tmp_path / "detector"
    shutil.copytree(plain_artifact, d)
    return d


def executed(calls):
    return [c[1] for c in calls if c[0] == "execute"]


def test_build_engine_asks_for_a_strongly_typed_network_profile_and_cache(standin, artifact_copy):
    from sid_edge.export.engine import build_engine
    from sid_edge.artifact.manifest import read_manifest, sha256_file

    calls, _ = standin
    entry = build_engine(artifact_copy, "fp32", profile=BatchProfile(2, 4, 8), workspace_bytes=1 << 30,
                         optimization_level=1, progress=False)
    assert ("create_network", 2) in calls  # 1 << STRONGLY_TYPED
    assert ("parse_from_file", str(artifact_copy / "model.fp32.onnx")) in calls
    assert ("set_shape", "pixel_values", (2, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) in calls
    assert ("set_memory_pool_limit", "workspace", 1 << 30) in calls
    assert ("build", 1) in calls and ("create_timing_cache", b"") in calls
    m = read_manifest(artifact_copy).to_dict()
    assert m["engines"] == [entry]
    assert entry["file"] == "model.fp32.sm90.trt10.8.0.engine"
    assert entry["sha256"] == sha256_file(artifact_copy / entry["file"])
    assert (entry["tensorrt_version"], entry["gpu_name"], entry["compute_capability"]) == ("10.8.0.43", "Stand-in GPU", "9.0")
    assert entry["profile"] == {"input": "pixel_values", "min_batch": 2, "opt_batch": 4, "max_batch": 8}
    assert (entry["source_model"], entry["source_sha256"]) == ("model.fp32.onnx", m["models"]["fp32"]["sha256"])
    assert entry["workspace_bytes"] == 1 << 30 and entry["builder_optimization_level"] == 1
    cache = artifact_copy / "timing.sm90.trt10.8.0.cache"
    assert entry["timing_cache"] == cache.name and cache.read_bytes() == b"+timed"

    # A rebuild starts from the saved timing cache and replaces the entry.
    calls.clear()
    build_engine(artifact_copy, "fp32", profile=BatchProfile(1, 8, 16), progress=False)
    assert ("create_timing_cache", b"+timed") in calls
    assert cache.read_bytes() == b"+timed+timed"
    engines = read_manifest(artifact_copy).to_dict()["engines"]
    assert len(engines) == 1 and engines[0]["profile"]["max_batch"] == 16


def test_build_progress_monitor_follows_tensorrt_phases(standin, artifact_copy):
    from sid_edge.export.engine import _progress_monitor, build_engine

    calls, _ = standin
    build_engine(artifact_copy, "fp32", progress=True)
    assert ("monitor steps", [True, True, True]) in calls  # every step acknowledged; never cancels the build
    import tensorrt  # the stand-in

    monitor = _progress_monitor(tensorrt)
    with monitor.progress:
        monitor.phase_start("Building engine", None, 2)
        monitor.phase_start("Tactic selection", "Building engine", 4)
        monitor.step_complete("Tactic selection", 1)
        [task] = [t for t in monitor.progress.tasks if t.description.strip() == "Tactic selection"]
        assert (task.completed, task.total, task.description) == (2, 4, "  Tactic selection")  # nested: indented
        monitor.phase_finish("Tactic selection")
        assert [t.description for t in monitor.progress.tasks] == ["Building engine"]
        monitor.phase_finish("Building engine")
        assert monitor.progress.tasks == [] and monitor.tasks == {}


def test_build_without_timing_cache_leaves_none(standin, artifact_copy):
    from sid_edge.export.engine import build_engine

    entry = build_engine(artifact_copy, "fp32", timing_cache=False, progress=False)
    assert entry["timing_cache"] is None and not list(artifact_copy.glob("timing.*"))


def test_detector_on_the_engine_splits_pads_and_returns_every_output(standin, artifact_copy, photo_dir):
    from sid_edge.runtime.detector import Detector
    from sid_edge.export.engine import build_engine

    calls, allocations = standin
    build_engine(artifact_copy, "fp32", profile=BatchProfile(2, 4, 8), progress=False)
    det = Detector.load(artifact_copy)  # auto: the engine fits this (stand-in) GPU and TensorRT
    assert det.backend_name == "tensorrt" and str(det.backend) == "tensorrt"
    assert det.backend_choice.describe() == "tensorrt (auto: fastest available)"
    n_buffers = len(allocations)
    assert n_buffers == 12  # pinned host + device buffer for the input and 5 outputs, allocated once
    rng = np.random.default_rng(0)
    for n, runs in ((1, [2]), (3, [3]), (8, [8]), (11, [8, 3]), (17, [8, 8, 2])):
        calls.clear()
        x = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
        out = det.run(x)
        assert executed(calls) == runs  # split at max 8, padded to min 2
        want = trt_standin.engine_function(x, 4, 32)
        for name in ("logit", "p_synthetic", "head_activations", "image_embedding", "features"):
            assert out[name].dtype == np.float32 and out[name].shape == want[name].shape
            np.testing.assert_allclose(out[name], want[name], rtol=1e-6, atol=1e-7)
    assert len(allocations) == n_buffers  # reused, nothing allocated per run
    images = sorted(photo_dir.iterdir())
    preds = det.predict(images, batch_size=16)
    pixels = np.stack([load_and_preprocess(p, det.preprocessing) for p in images])
    np.testing.assert_allclose([r.p_synthetic for r in preds], trt_standin.engine_function(pixels, 4, 32)["p_synthetic"],
                               rtol=1e-6)
    det.backend.close()
    assert allocations == {}


def test_fp16_engine_input_is_cast_on_the_host(standin, plain_artifact, tmp_path):
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.runtime.tensorrt_backend import TensorRTBackend

    spec = {"input_dtype": "float16", "min": 1, "opt": 2, "max": 4, "size": 64, "k": 4, "e": 32}
    path = tmp_path / "fp16.engine"
    path.write_bytes(b"STANDIN" + json.dumps(spec).encode())
    be = TensorRTBackend(path, read_manifest(plain_artifact))
    x = np.random.default_rng(1).normal(size=(5, 3, 64, 64)).astype(np.float32)
    out = be.run(x)
    want = trt_standin.engine_function(x.astype(np.float16), 4, 32)
    np.testing.assert_allclose(out["p_synthetic"], want["p_synthetic"], rtol=1e-6)
    assert not np.allclose(out["logit"], trt_standin.engine_function(x, 4, 32)["logit"], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"pixel_values shape \(2, 3, 32, 32\): the engine takes \[B, 3, 64, 64\]"):
        be.run(np.zeros((2, 3, 32, 32), np.float32))
    be.close()


def test_engine_that_does_not_deserialize_is_refused_or_skipped(standin, artifact_copy, caplog):
    from sid_edge.runtime.backends import BackendUnavailable
    from sid_edge.runtime.detector import Detector
    from sid_edge.export.engine import build_engine
    from sid_edge.artifact.manifest import file_entry, read_manifest, write_manifest

    entry = build_engine(artifact_copy, "fp32", progress=False)
    # Same recorded versions, but the plan inside is not one this TensorRT can load.
    (artifact_copy / entry["file"]).write_bytes(b"a plan from somewhere else")
    m = read_manifest(artifact_copy).to_dict()
    m["engines"][0].update(file_entry(artifact_copy, entry["file"]))
    write_manifest(artifact_copy, m)
    with pytest.raises(BackendUnavailable) as e:
        Detector.load(artifact_copy, backend="tensorrt")
    assert "TensorRT 10.8.0.43 could not load this engine" in str(e.value)
    assert f"rebuild it with `sid-edge build {artifact_copy} --precision fp32`" in str(e.value)
    det = Detector.load(artifact_copy)  # auto: logs why and runs on ONNX Runtime
    assert det.backend_name == "onnxruntime-cpu"
    assert "could not load this engine" in caplog.text


def test_cli_build_then_scan_on_tensorrt(standin, artifact_copy, photo_dir, tmp_path, capsys):
    from sid_edge.cli import main

    assert main(["build", str(artifact_copy), "--max-batch", "16", "--opt-batch", "4", "--opt-level", "0"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "Building the fp32 TensorRT engine" in err and "model.fp32.sm90.trt10.8.0.engine" in err
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(artifact_copy), "--backend", "tensorrt", "--out", str(out),
                 "--no-progress"]) == 0
    assert "backend: tensorrt (requested)" in " ".join(capsys.readouterr().err.split())
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(list(photo_dir.iterdir())) and all(r["error"] == "" for r in rows)
