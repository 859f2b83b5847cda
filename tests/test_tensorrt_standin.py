"""The engine build orchestration and the TensorRT backend's buffers, batch splitting, padding and dtype handling,
run against tests/trt_standin.py (a stand-in for the TensorRT and cuda-python calls; no GPU). What TensorRT itself
computes is checked on real GPUs by tests/test_tensorrt_gpu.py and benchmarks/gpu_check.py."""

import csv
import ctypes
import json
import shutil

import numpy as np
import pytest

from sid_edge.runtime.tensorrt_engines import BatchProfile
from sid_edge.runtime.images import load_and_preprocess
from tests import trt_standin


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def standin(request, monkeypatch):
    """The stand-in TensorRT of each major release (their NetworkDefinitionCreationFlag values differ)."""
    return trt_standin.install(monkeypatch, trt_major=request.param)


def release(state) -> str:
    return "trt" + ".".join(state.version.split(".")[:3])


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
    # 1 << STRONGLY_TYPED: bit 1 in TensorRT 10.x; bit 0 in 11.x, where bit 1 would ask for JIT Python plugins.
    flags = 2 if standin.trt_major == 10 else 1
    assert [c for c in calls if c[0] == "create_network"] == [("create_network", flags, ["STRONGLY_TYPED"])]
    assert ("parse_from_file", str(artifact_copy / "model.fp32.onnx")) in calls
    assert ("set_shape", "pixel_values", (2, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) in calls
    assert ("set_memory_pool_limit", "workspace", 1 << 30) in calls
    assert ("build", 1) in calls and ("create_timing_cache", b"") in calls
    m = read_manifest(artifact_copy).to_dict()
    assert m["engines"] == [entry]
    assert entry["file"] == f"model.fp32.sm90.{release(standin)}.engine"
    assert entry["sha256"] == sha256_file(artifact_copy / entry["file"])
    spec = json.loads((artifact_copy / entry["file"]).read_bytes()[len(b"STANDIN"):])
    assert spec["strongly_typed"] is True and spec["tensorrt_version"] == standin.version
    assert (entry["tensorrt_version"], entry["gpu_name"], entry["compute_capability"]) == (standin.version, "Stand-in GPU", "9.0")
    assert entry["profile"] == {"input": "pixel_values", "min_batch": 2, "opt_batch": 4, "max_batch": 8}
    assert (entry["source_model"], entry["source_sha256"]) == ("model.fp32.onnx", m["models"]["fp32"]["sha256"])
    assert entry["workspace_bytes"] == 1 << 30 and entry["builder_optimization_level"] == 1
    cache = artifact_copy / f"timing.sm90.{release(standin)}.cache"
    assert entry["timing_cache"] == cache.name
    assert json.loads(cache.read_bytes()[len(trt_standin.CACHE_MAGIC):])["entries"] == ["timed at level 1"]

    # A rebuild starts from the saved timing cache and replaces the entry.
    saved = cache.read_bytes()
    calls.clear()
    build_engine(artifact_copy, "fp32", profile=BatchProfile(1, 8, 16), progress=False)
    assert [c for c in calls if c[0] == "create_timing_cache"] == [("create_timing_cache", saved)]
    assert json.loads(cache.read_bytes()[len(trt_standin.CACHE_MAGIC):])["entries"] == ["timed at level 1",
                                                                                        "timed at level 3"]
    engines = read_manifest(artifact_copy).to_dict()["engines"]
    assert len(engines) == 1 and engines[0]["profile"]["max_batch"] == 16


def test_build_progress_monitor_follows_tensorrt_phases(standin, artifact_copy):
    from sid_edge.export.engine import _progress_monitor, build_engine

    calls, _ = standin
    build_engine(artifact_copy, "fp32", progress=True)
    assert ("monitor steps", [True, True, True, True]) in calls  # every step acknowledged; never cancels the build
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
    assert f"TensorRT {standin.version} could not load this engine" in str(e.value)
    assert f"rebuild it with `sid-edge build {artifact_copy} --precision fp32`" in str(e.value)
    det = Detector.load(artifact_copy)  # auto: logs why and runs on ONNX Runtime
    assert det.backend_name == "onnxruntime-cpu"
    assert "could not load this engine" in caplog.text


def test_cli_build_then_scan_on_tensorrt(standin, artifact_copy, photo_dir, tmp_path, capsys):
    from sid_edge.cli import main

    assert main(["build", str(artifact_copy), "--max-batch", "16", "--opt-batch", "4", "--opt-level", "0"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "Building the fp32 TensorRT engine" in err and f"model.fp32.sm90.{release(standin)}.engine" in err
    assert (f"this machine: Stand-in GPU (compute capability 9.0); TensorRT {standin.version} (CUDA 12 wheels), "
            "cuda-bindings 12.9.4, driver supports CUDA 12.8") in err
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(artifact_copy), "--backend", "tensorrt", "--out", str(out),
                 "--no-progress"]) == 0
    assert "backend: tensorrt (requested)" in " ".join(capsys.readouterr().err.split())
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(list(photo_dir.iterdir())) and all(r["error"] == "" for r in rows)


# ------------------------------------------------------------------------------------------ build failure returns
def test_unreadable_timing_cache_starts_a_fresh_one(standin, artifact_copy, caplog):
    from sid_edge.export.engine import build_engine

    calls, _ = standin
    cache = artifact_copy / f"timing.sm90.{release(standin)}.cache"
    cache.write_bytes(b"half a timing cache")  # create_timing_cache returns None for this
    entry = build_engine(artifact_copy, "fp32", progress=False)
    assert [c[1] for c in calls if c[0] == "create_timing_cache"] == [b"half a timing cache", b""]
    assert f"{cache.name} is not a timing cache TensorRT can read; starting a new timing cache" in caplog.text
    assert entry["timing_cache"] == cache.name
    assert cache.read_bytes().startswith(trt_standin.CACHE_MAGIC)  # replaced by a good one


def test_timing_cache_from_another_tensorrt_or_gpu_starts_a_fresh_one(standin, artifact_copy, caplog):
    from sid_edge.export.engine import build_engine

    cache = artifact_copy / f"timing.sm90.{release(standin)}.cache"
    cache.write_bytes(trt_standin.CACHE_MAGIC + json.dumps({"header": "9.9.9/Other GPU/8.0",
                                                            "entries": ["foreign"]}).encode())
    build_engine(artifact_copy, "fp32", progress=False)  # set_timing_cache returns False for it
    assert f"{cache.name} does not match this TensorRT/GPU; starting a new timing cache" in caplog.text
    assert json.loads(cache.read_bytes()[len(trt_standin.CACHE_MAGIC):])["entries"] == ["timed at level 3"]


def test_timing_cache_that_cannot_even_start_fresh_fails_the_build(standin, artifact_copy):
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.export.engine import build_engine
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("create_timing_cache")
    with pytest.raises(EngineError, match=r"could not create an empty timing cache .*--no-timing-cache"):
        build_engine(artifact_copy, "fp32", progress=False)
    assert read_manifest(artifact_copy).engines == [] and not list(artifact_copy.glob("*.engine"))
    standin.fail("create_timing_cache")
    build_engine(artifact_copy, "fp32", timing_cache=False, progress=False)  # the way round it


def test_refused_optimization_profile_says_so(standin, artifact_copy):
    from sid_edge.export.engine import build_engine
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("add_optimization_profile")  # returns -1
    with pytest.raises(EngineError) as e:
        build_engine(artifact_copy, "fp32", profile=BatchProfile(1, 2, 4), progress=False)
    assert ("TensorRT refused the optimization profile min/opt/max [(1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)] "
            "for 'pixel_values'") in str(e.value)
    assert "the graph's input [-1, 3, 64, 64] must take a dynamic batch" in str(e.value)
    assert ("build", 3) not in standin.calls


def test_inconsistent_profile_shapes_raise_in_set_shape_and_are_reported(standin, artifact_copy, monkeypatch):
    from sid_edge.export.engine import build_engine
    from sid_edge.runtime.tensorrt_engines import EngineError

    # BatchProfile never produces these; the TensorRT binding raises RuntimeError for them.
    monkeypatch.setattr(BatchProfile, "shapes", lambda self, s: ((4, 3, s, s), (2, 3, s, s), (8, 3, s, s)))
    with pytest.raises(EngineError, match=r"refused the optimization profile .*: Shape provided for opt is "
                                          r"inconsistent with other shapes\."):
        build_engine(artifact_copy, "fp32", progress=False)


def test_parser_failure_carries_the_parser_errors(standin, artifact_copy):
    from sid_edge.export.engine import build_engine
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("parse_from_file")
    with pytest.raises(EngineError, match=r"model\.fp32\.onnx: TensorRT's ONNX parser failed: ERROR: stand-in parser "
                                          r"failure \(injected\)"):
        build_engine(artifact_copy, "fp32", progress=False)


def test_failed_build_writes_and_records_nothing(standin, artifact_copy):
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.export.engine import build_engine
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("build_serialized_network")  # returns None
    with pytest.raises(EngineError, match="TensorRT could not build an engine from .*model.fp32.onnx"):
        build_engine(artifact_copy, "fp32", progress=False)
    assert read_manifest(artifact_copy).engines == []
    assert not list(artifact_copy.glob("*.engine")) and not list(artifact_copy.glob("*.tmp"))


def test_progress_display_errors_never_cancel_the_build(standin, artifact_copy, monkeypatch):
    import rich.progress

    from sid_edge.export.engine import build_engine

    def broken(self, *a, **k):
        raise RuntimeError("terminal went away")

    monkeypatch.setattr(rich.progress.Progress, "update", broken)
    entry = build_engine(artifact_copy, "fp32", progress=True)
    assert ("monitor steps", [True, True, True, True]) in standin.calls
    assert (artifact_copy / entry["file"]).is_file()


# ------------------------------------------------------------------------------------------ backend failure returns
def write_engine(tmp_path, **spec):
    spec = {"input_dtype": "float32", "min": 1, "opt": 2, "max": 4, "size": 64, "k": 4, "e": 32, **spec}
    path = tmp_path / "standin.engine"
    path.write_bytes(b"STANDIN" + json.dumps(spec).encode())
    return path


def open_backend(path, plain_artifact):
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(path, read_manifest(plain_artifact))


@pytest.mark.parametrize("after", [0, 1, 5])
def test_failed_gpu_allocation_frees_what_was_allocated(standin, plain_artifact, tmp_path, after):
    from sid_edge.runtime.tensorrt_engines import EngineError

    # cudaMalloc fails after cudaMallocHost succeeded (for the input, the first output, the last output).
    standin.fail("cudaMalloc", after=after)
    with pytest.raises(EngineError, match=r"allocating \d+ bytes of GPU memory failed: out of memory "
                                          r"\(cudaErrorMemoryAllocation\)"):
        open_backend(write_engine(tmp_path), plain_artifact)
    assert standin.allocations == {}  # no pinned block left behind
    assert standin.streams == {}


def test_failed_pinned_allocation_and_refused_address_free_everything(standin, plain_artifact, tmp_path):
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("cudaMallocHost", after=3)
    with pytest.raises(EngineError, match="pinned host memory failed: out of memory"):
        open_backend(write_engine(tmp_path), plain_artifact)
    assert standin.allocations == {} and standin.streams == {}
    standin.fail("set_tensor_address", after=2)
    with pytest.raises(EngineError, match="TensorRT refused the buffer address for 'p_synthetic'"):
        open_backend(write_engine(tmp_path), plain_artifact)
    assert standin.allocations == {} and standin.streams == {}


def test_engine_io_of_a_type_numpy_lacks_is_refused(standin, plain_artifact, tmp_path):
    from sid_edge.runtime.tensorrt_engines import EngineError

    for dtype in ("bfloat16", "fp8", "int4"):
        with pytest.raises(EngineError, match=r"tensor 'pixel_values' has type DataType\.\w+, which numpy cannot "
                                              "hold; export the graph with float32/float16"):
            open_backend(write_engine(tmp_path, input_dtype=dtype), plain_artifact)
        assert standin.allocations == {}


def test_no_execution_context_is_an_engine_error(standin, plain_artifact, tmp_path):
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("create_execution_context")
    with pytest.raises(EngineError, match="could not create an execution context"):
        open_backend(write_engine(tmp_path), plain_artifact)


def test_refused_input_shape_is_reported_as_such(standin, plain_artifact, tmp_path):
    from sid_edge.runtime.tensorrt_engines import EngineError

    standin.fail("set_input_shape")  # at open: the profile's max shape
    with pytest.raises(EngineError, match=r"TensorRT refused input shape \(4, 3, 64, 64\) for 'pixel_values' \(the "
                                          r"engine's profile takes batch 1\.\.4 of \[3, 64, 64\]"):
        open_backend(write_engine(tmp_path), plain_artifact)
    assert standin.allocations == {}

    be = open_backend(write_engine(tmp_path), plain_artifact)
    standin.fail("set_input_shape")  # at run
    with pytest.raises(EngineError, match=r"TensorRT refused input shape \(3, 3, 64, 64\)"):
        be.run(np.zeros((3, 3, 64, 64), np.float32))
    assert executed(standin.calls) == []  # nothing ran on the previous shape
    out = be.run(np.ones((3, 3, 64, 64), np.float32))  # the backend stays usable
    np.testing.assert_allclose(out["logit"], trt_standin.engine_function(np.ones((3, 3, 64, 64)), 4, 32)["logit"])
    be.close()


def test_failed_execution_and_synchronisation_raise(standin, plain_artifact, tmp_path):
    from sid_edge.runtime.tensorrt_engines import EngineError

    be = open_backend(write_engine(tmp_path), plain_artifact)
    standin.fail("execute_async_v3")
    with pytest.raises(EngineError, match="execute_async_v3 failed"):
        be.run(np.zeros((2, 3, 64, 64), np.float32))
    standin.fail("cudaStreamSynchronize", trt_standin.cudaError_t.cudaErrorLaunchFailure)
    with pytest.raises(EngineError, match=r"waiting for the GPU failed: unspecified launch failure "
                                          r"\(cudaErrorLaunchFailure\)"):
        be.run(np.zeros((2, 3, 64, 64), np.float32))
    be.close()
    assert standin.allocations == {}
    with pytest.raises(EngineError, match="this TensorRT backend is closed"):
        be.run(np.zeros((2, 3, 64, 64), np.float32))
    be.close()  # idempotent


def test_concurrent_runs_on_one_backend_queue_and_each_gets_its_own_outputs(standin, plain_artifact, tmp_path):
    import threading

    be = open_backend(write_engine(tmp_path, max=4), plain_artifact)
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    b = rng.normal(size=(2, 3, 64, 64)).astype(np.float32) + 5
    results, seen = {}, []

    def second_caller():
        results["b"] = be.run(b)

    def while_first_run_waits_for_the_gpu():
        # First run: between enqueueing its work and the GPU finishing it, another thread calls run() on the same
        # backend. Without the lock, that caller would rewrite the pinned input and the outputs.
        standin.on_synchronize = None
        t = threading.Thread(target=second_caller)
        t.start()
        t.join(timeout=1.0)
        seen.append(t.is_alive())  # still waiting for the first run to finish
        threads.append(t)

    threads = []
    standin.on_synchronize = while_first_run_waits_for_the_gpu
    results["a"] = be.run(a)
    threads[0].join(timeout=30)
    assert seen == [True] and not threads[0].is_alive()
    for key, x in (("a", a), ("b", b)):
        want = trt_standin.engine_function(x, 4, 32)
        np.testing.assert_allclose(results[key]["p_synthetic"], want["p_synthetic"], rtol=1e-6)
        np.testing.assert_allclose(results[key]["head_activations"], want["head_activations"], rtol=1e-6, atol=1e-7)
    be.close()


# ------------------------------------------------------------------------------------------ versions and installs
def test_cuda13_wheels_under_a_cuda12_driver_say_which_extra_fits(monkeypatch, artifact_copy, capsys):
    from sid_edge.cli import main
    from sid_edge.runtime.tensorrt_engines import detect_environment

    state = trt_standin.install(monkeypatch, trt_major=11, cuda_major=13, driver_cuda=12080)
    env = detect_environment()
    assert not env.has_gpu and env.has_tensorrt
    assert (env.tensorrt_cuda_major, env.cuda_bindings_version, env.driver_cuda_version) == (13, "13.5.0", "12.8")
    assert env.describe_versions() == ("TensorRT 11.4.0.106 (CUDA 13 wheels), cuda-bindings 13.5.0, driver supports "
                                       "CUDA 12.8")
    advice = ("TensorRT 11.4.0.106 is the CUDA 13 build; cuda-bindings 13.5.0 needs a CUDA 13 driver, but the driver "
              "supports CUDA 12.8: uninstall them and pip install 'sid-edge[tensorrt-cu12]', or update the driver")
    assert env.problems[-1] == advice
    assert "counting CUDA devices failed: CUDA driver version is insufficient" in env.problems[0]

    assert main(["build", str(artifact_copy)]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot build a TensorRT engine on this machine" in err and advice in err
    assert main(["info", str(artifact_copy)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("this machine: no usable CUDA GPU; TensorRT 11.4.0.106 (CUDA 13 wheels), cuda-bindings 13.5.0, driver "
            "supports CUDA 12.8; " + advice) in out
    assert state.allocations == {}


def test_matching_wheels_and_driver_give_no_advice(monkeypatch):
    from sid_edge.runtime.tensorrt_engines import detect_environment

    trt_standin.install(monkeypatch, trt_major=11, cuda_major=12, driver_cuda=13000)  # CUDA 12 wheels, newer driver
    env = detect_environment()
    assert env.has_gpu and env.problems == () and env.install_advice() is None
    assert env.describe_versions() == ("TensorRT 11.4.0.106 (CUDA 12 wheels), cuda-bindings 12.9.4, driver supports "
                                       "CUDA 13.0")


# ------------------------------------------------------------------------------------------ the stand-in itself
# It must refuse what the real bindings refuse and return what they return, or the tests above prove nothing.
def test_standin_cuda_calls_return_error_tuples_like_cuda_bindings(standin):
    cudart, E = standin.cudart, trt_standin.cudaError_t
    standin.fail("cudaMalloc")
    assert cudart.cudaMalloc(64) == (E.cudaErrorMemoryAllocation, None)  # (err, None), as cuda-bindings 13.5
    err, ptr = cudart.cudaMalloc(64)
    assert err == E.cudaSuccess and ptr in standin.allocations
    assert cudart.cudaFreeHost(ptr) == (E.cudaErrorInvalidValue,)  # a device pointer is no pinned block
    assert cudart.cudaFree(ptr) == (E.cudaSuccess,)
    assert cudart.cudaFree(ptr) == (E.cudaErrorInvalidValue,)  # double free
    assert cudart.cudaGetErrorString(E.cudaErrorInsufficientDriver) == (
        E.cudaSuccess, b"CUDA driver version is insufficient for CUDA runtime version")


def test_standin_stream_work_runs_only_at_synchronisation(standin):
    cudart = standin.cudart
    _, host = cudart.cudaMallocHost(4)
    _, dev = cudart.cudaMalloc(4)
    _, stream = cudart.cudaStreamCreate()
    ctypes.memmove(host, b"abcd", 4)
    kind = cudart.cudaMemcpyKind
    assert cudart.cudaMemcpyAsync(dev, host, 4, kind.cudaMemcpyHostToDevice, stream)[0] == 0
    assert ctypes.string_at(dev, 4) == b"\0\0\0\0"  # enqueued, not done
    ctypes.memmove(host, b"wxyz", 4)  # rewriting the pinned source before the sync changes what is copied
    assert cudart.cudaStreamSynchronize(stream)[0] == 0
    assert ctypes.string_at(dev, 4) == b"wxyz"
    assert cudart.cudaMemcpyAsync(dev, host, 8, kind.cudaMemcpyHostToDevice, stream)[0] != 0  # past the block
    assert cudart.cudaMemcpyAsync(host, dev, 4, kind.cudaMemcpyHostToDevice, stream)[0] != 0  # wrong direction
    for call in (cudart.cudaStreamDestroy(stream), cudart.cudaFree(dev), cudart.cudaFreeHost(host)):
        assert call[0] == 0


def test_standin_flags_types_and_timing_cache_follow_each_release(standin):
    trt = standin.trt
    flag = trt.NetworkDefinitionCreationFlag
    if standin.trt_major == 10:
        assert (int(flag.EXPLICIT_BATCH), int(flag.STRONGLY_TYPED)) == (0, 1)
    else:
        assert (int(flag.STRONGLY_TYPED), int(flag.PREFER_JIT_PYTHON_PLUGINS)) == (0, 1)
        assert not hasattr(flag, "EXPLICIT_BATCH")
    assert trt.nptype(trt.DataType.HALF) is np.float16
    for unsupported in (trt.DataType.BF16, trt.DataType.FP8, trt.DataType.INT4):
        with pytest.raises(TypeError, match="Could not resolve TensorRT datatype"):
            trt.nptype(unsupported)
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert config.create_timing_cache(b"not a cache") is None
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(None, False)
    assert config.set_timing_cache(config.create_timing_cache(b""), False) is True
    blob = config.get_timing_cache().serialize()
    with pytest.raises(TypeError):
        len(blob)  # IHostMemory: buffer protocol, nbytes, no len()
    assert memoryview(blob).nbytes == blob.nbytes > 0


def test_standin_profile_checks_shapes_and_config_returns_minus_one(standin):
    trt = standin.trt
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    assert config.add_optimization_profile(builder.create_optimization_profile()) == -1  # empty: not valid
    p = builder.create_optimization_profile()
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent with other shapes."):
        p.set_shape("pixel_values", (2, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))  # opt < min
    assert config.add_optimization_profile(p) == -1  # half set
    with pytest.raises(RuntimeError, match="Shape provided for max is inconsistent"):
        builder.create_optimization_profile().set_shape("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8))  # rank
    good = builder.create_optimization_profile()
    good.set_shape("pixel_values", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    assert config.add_optimization_profile(good) == 0 and config.add_optimization_profile(good) == 1


def test_standin_progress_monitor_needs_base_init_and_true_to_go_on(standin, capsys):
    trt = standin.trt

    class NoBaseInit(trt.IProgressMonitor):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match=r"NoBaseInit.__init__\(\) must be called when overriding __init__"):
        NoBaseInit()

    class Monitor(trt.IProgressMonitor):
        def __init__(self, answer):
            trt.IProgressMonitor.__init__(self)
            self.answer = answer

        def phase_start(self, phase_name, parent_phase, num_steps):
            raise ValueError("drawing failed")  # printed, ignored

        def step_complete(self, phase_name, step):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

        def phase_finish(self, phase_name):
            pass

    builder = trt.Builder(trt.Logger())
    network = builder.create_network(0)
    network.inputs = [type("T", (), {"name": "pixel_values", "shape": (-1, 3, 8, 8), "dtype": trt.DataType.FLOAT})()]
    for answer, built in ((True, True), (None, False), (False, False), (RuntimeError("boom"), False)):
        config = builder.create_builder_config()
        p = builder.create_optimization_profile()
        p.set_shape("pixel_values", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
        config.add_optimization_profile(p)
        config.progress_monitor = Monitor(answer)
        assert (builder.build_serialized_network(network, config) is not None) is built, answer
    err = capsys.readouterr().err
    assert "Exception caught in phase_start(): drawing failed" in err
    assert "Exception caught in step_complete(): boom" in err
