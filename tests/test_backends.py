"""Backend selection and fallback, on this machine (ONNX Runtime CPU only: no TensorRT, no GPU) and as pure
decisions; the CLI's errors when TensorRT or a GPU is missing."""

import csv
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from sid_edge.runtime.backends import BackendUnavailable, choose_backend, probe_unavailable
from sid_edge.cli import main
from sid_edge.runtime.detector import Detector
from sid_edge.runtime.tensorrt_engines import GpuEnvironment, detect_environment
from sid_edge.artifact.manifest import EngineEntry, file_entry, read_manifest, write_manifest

S = "5" * 64  # a sha256 the tests agree on

ALL = {"tensorrt": None, "cuda": None, "openvino": None, "cpu": None}
NO_GPU = {"tensorrt": "no engine", "cuda": "no CUDA provider", "openvino": "not installed", "cpu": None}

HERE = detect_environment()
needs_no_gpu = pytest.mark.skipif(HERE.has_gpu and HERE.has_tensorrt,
                                  reason=f"asserts the no-TensorRT/no-GPU behaviour; this machine has {HERE.describe()}")


# ------------------------------------------------------------------------------------------ pure decisions
def test_auto_takes_the_fastest_available_and_says_what_it_passed_over():
    assert choose_backend("auto", ALL).backend == "tensorrt"
    c = choose_backend("auto", {"tensorrt": "engine for another GPU", "cuda": None, "cpu": None})
    assert (c.backend, c.fallback) == ("cuda", False)
    assert c.passed_over == [("tensorrt", "engine for another GPU")]
    c = choose_backend("auto", NO_GPU)
    assert c.backend == "cpu"
    assert c.describe() == ("onnxruntime-cpu (auto: fastest available; not tensorrt: no engine; not cuda: no CUDA "
                            "provider; not openvino: not installed)")


def test_explicit_backend_runs_when_available():
    for b in ("tensorrt", "cuda", "openvino", "cpu"):
        c = choose_backend(b, ALL)
        assert (c.backend, c.fallback, c.passed_over) == (b, False, [])
        assert c.describe().endswith("(requested)")


def test_explicit_backend_unavailable_is_refused_with_the_reason():
    with pytest.raises(BackendUnavailable) as e:
        choose_backend("tensorrt", {"tensorrt": "TensorRT is not installed", "cuda": None, "cpu": None})
    assert str(e.value) == ("backend 'tensorrt' is not available: TensorRT is not installed. Pass --allow-fallback "
                            "(allow_fallback=True) to run on ONNX Runtime instead.")
    with pytest.raises(BackendUnavailable, match="backend 'cuda' is not available: no CUDA provider"):
        choose_backend("cuda", NO_GPU)


def test_fallback_when_allowed_goes_to_onnx_runtime_gpu_first():
    c = choose_backend("tensorrt", {"tensorrt": "engine for Orin", "cuda": None, "cpu": None}, allow_fallback=True)
    assert (c.backend, c.fallback) == ("cuda", True)
    assert c.describe() == "onnxruntime-cuda (fell back from tensorrt; not tensorrt: engine for Orin)"
    c = choose_backend("tensorrt", NO_GPU, allow_fallback=True)
    assert (c.backend, c.fallback) == ("cpu", True)
    assert c.passed_over == [("tensorrt", "no engine"), ("cuda", "no CUDA provider")]  # openvino: not a fallback
    assert choose_backend("cuda", NO_GPU, allow_fallback=True).backend == "cpu"


def test_nothing_available_and_unknown_names():
    with pytest.raises(BackendUnavailable, match="no backend can run here: tensorrt: a; cuda: b; openvino: o; cpu: c"):
        choose_backend("auto", {"tensorrt": "a", "cuda": "b", "openvino": "o", "cpu": "c"})
    with pytest.raises(BackendUnavailable, match="neither is a fallback: cuda: b; cpu: c"):
        choose_backend("tensorrt", {"tensorrt": "a", "cuda": "b", "cpu": "c"}, allow_fallback=True)
    with pytest.raises(ValueError, match="unknown backend 'gpu'; expected one of auto, tensorrt, cuda, openvino, cpu"):
        choose_backend("gpu", ALL)


def test_probe_reports_each_backend_and_leaves_tensorrt_alone_without_engines():
    manifest = SimpleNamespace(models={"fp32": SimpleNamespace(sha256=S)}, engines=[])
    unavailable, entry = probe_unavailable(manifest, "fp32", "auto", "det", providers=["CPUExecutionProvider"])
    assert entry is None
    assert unavailable["cpu"] is None
    assert unavailable["cuda"] == ("this ONNX Runtime has no CUDAExecutionProvider (it has CPUExecutionProvider); "
                                   "install onnxruntime-gpu in place of onnxruntime")
    assert unavailable["tensorrt"] == ("the artifact has no TensorRT engine for fp32 (build one with "
                                       "`sid-edge build det --precision fp32`)")
    unavailable, _ = probe_unavailable(manifest, "fp32", "auto", "det",
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert unavailable["cuda"] is None


def test_probe_matches_engines_against_the_given_machine():
    engine = EngineEntry.model_validate({
        "precision": "fp16", "file": "e", "sha256": S, "size_bytes": 1, "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin", "compute_capability": "8.7", "source_model": "model.fp16.onnx", "source_sha256": S,
        "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 64}})
    manifest = SimpleNamespace(models={"fp16": SimpleNamespace(sha256=S)}, engines=[engine])
    orin = GpuEnvironment("10.3.0.30", "Orin", "8.7")
    unavailable, entry = probe_unavailable(manifest, "fp16", "tensorrt", env=orin, providers=["CPUExecutionProvider"])
    assert entry is engine and unavailable["tensorrt"] is None
    h200 = GpuEnvironment("10.3.0.30", "NVIDIA H200", "9.0")
    unavailable, entry = probe_unavailable(manifest, "fp16", "tensorrt", "det", env=h200, providers=["CPUExecutionProvider"])
    assert entry is None and "this GPU is NVIDIA H200 (compute capability 9.0)" in unavailable["tensorrt"]


# ------------------------------------------------------------------------------------------ Detector on this machine
@pytest.fixture
def artifact_copy(artifact, tmp_path):
    d = tmp_path / "detector"
    shutil.copytree(artifact, d)
    return d


def add_foreign_engine(d, trt="10.3.0.30", gpu="Orin", cc="8.7"):
    """Record an engine built elsewhere (its bytes stand in for a plan file: it is never deserialized here)."""
    (d / "model.fp32.sm87.trt10.3.0.engine").write_bytes(b"not built on this machine")
    m = read_manifest(d).to_dict()
    m["engines"] = [{"precision": "fp32", **file_entry(d, "model.fp32.sm87.trt10.3.0.engine"),
                     "source_model": m["models"]["fp32"]["file"], "source_sha256": m["models"]["fp32"]["sha256"],
                     "profile": {"input": "pixel_values", "min_batch": 1, "opt_batch": 8, "max_batch": 64},
                     "tensorrt_version": trt, "gpu_name": gpu, "compute_capability": cc}]
    write_manifest(d, m)


def test_auto_runs_on_cpu_here_and_scores_like_before(artifact, photo_dir):
    det = Detector.load(artifact)
    assert det.backend_name == "onnxruntime-cpu" and str(det.backend) == "onnxruntime-cpu"
    assert det.backend_choice.requested == "auto" and not det.backend_choice.fallback
    # OpenVINO, where installed, is passed over for fp32 (not faster than ONNX Runtime, the reference).
    assert [b for b, _ in det.backend_choice.passed_over] == (["tensorrt", "cuda", "openvino"] if det.backend_name == "onnxruntime-cpu" else [])
    cpu = Detector.load(artifact, backend="cpu")
    assert cpu.backend_choice.describe() == "onnxruntime-cpu (requested)"
    images = sorted(photo_dir.iterdir())
    a = [r.p_synthetic for r in det.predict(images)]
    b = [r.p_synthetic for r in cpu.predict(images, batch_size=3)]
    assert len(a) == len(images) and np.allclose(a, b, atol=1e-6)


@needs_no_gpu
def test_tensorrt_requested_without_engine_is_refused_then_falls_back_when_allowed(artifact_copy, photo_dir):
    with pytest.raises(BackendUnavailable) as e:
        Detector.load(artifact_copy, backend="tensorrt")
    assert str(e.value) == (
        f"backend 'tensorrt' is not available: the artifact has no TensorRT engine for fp32 (build one with "
        f"`sid-edge build {artifact_copy} --precision fp32`). Pass --allow-fallback (allow_fallback=True) to run "
        "on ONNX Runtime instead."
    )
    det = Detector.load(artifact_copy, backend="tensorrt", allow_fallback=True)
    assert det.backend_name == "onnxruntime-cpu" and det.backend_choice.fallback
    assert det.backend_choice.describe().startswith("onnxruntime-cpu (fell back from tensorrt; not tensorrt: the "
                                                    "artifact has no TensorRT engine for fp32")
    assert det.predict([photo_dir / "coffee.jpg"])[0].ok


@needs_no_gpu
def test_engine_built_elsewhere_is_refused_here_with_what_this_machine_lacks(artifact_copy):
    add_foreign_engine(artifact_copy)
    with pytest.raises(BackendUnavailable) as e:
        Detector.load(artifact_copy, backend="tensorrt")
    msg = str(e.value)
    assert msg.startswith("backend 'tensorrt' is not available: model.fp32.sm87.trt10.3.0.engine was built with "
                          "TensorRT 10.3.0.30 for Orin (compute capability 8.7), but this machine cannot run "
                          "TensorRT engines: ")
    assert "TensorRT" in msg.split("cannot run TensorRT engines: ")[1]
    assert msg.endswith("Pass --allow-fallback (allow_fallback=True) to run on ONNX Runtime instead.")
    # auto passes over it, says why, and still runs.
    det = Detector.load(artifact_copy)
    assert det.backend_name == "onnxruntime-cpu"
    assert "cannot run TensorRT engines" in dict(det.backend_choice.passed_over)["tensorrt"]


def test_cuda_requested_without_onnxruntime_gpu(artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(BackendUnavailable, match=r"^backend 'cuda' is not available: this ONNX Runtime has no "
                                                 r"CUDAExecutionProvider .*install onnxruntime-gpu in place of onnxruntime"):
        Detector.load(artifact, backend="cuda")
    assert Detector.load(artifact, backend="cuda", allow_fallback=True).backend_name == "onnxruntime-cpu"


def test_altered_engine_file_is_refused_before_loading(artifact_copy):
    add_foreign_engine(artifact_copy)
    (artifact_copy / "model.fp32.sm87.trt10.3.0.engine").write_bytes(b"tampered, other size")
    from sid_edge.runtime.backends import _start
    from sid_edge.artifact.manifest import ManifestError

    m = read_manifest(artifact_copy)
    with pytest.raises(ManifestError, match="size 20 bytes, the manifest says 25"):
        _start("tensorrt", artifact_copy, m, m.models["fp32"], m.engines[0], True, None)


# ------------------------------------------------------------------------------------------ CLI
def test_scan_says_which_backend_it_chose(artifact, photo_dir, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    # OpenVINO is passed over for fp32: not installed, or not faster than ONNX Runtime.
    assert "backend: onnxruntime-cpu (auto; not tensorrt, cuda, openvino: -v says why)" in " ".join(err.split())
    assert "fastest available" not in err  # one short line; the reasons under -v
    assert len(list(csv.DictReader(open(out)))) == len(list(photo_dir.iterdir()))
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--out", str(out), "--no-progress", "-v"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "auto: fastest available; not tensorrt: the artifact has no TensorRT engine" in err


@needs_no_gpu
def test_scan_backend_tensorrt_exit_3_then_fallback_exit_0(artifact, photo_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    rc = main(["scan", str(photo_dir), "--model", str(artifact), "--backend", "tensorrt", "--no-progress"])
    assert rc == 3
    assert "backend 'tensorrt' is not available" in " ".join(capsys.readouterr().err.split())
    rc = main(["scan", str(photo_dir), "--model", str(artifact), "--backend", "tensorrt", "--allow-fallback",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(photo_dir.iterdir())) and all(0 <= r["p_synthetic"] <= 1 for r in rows)
    assert "backend: onnxruntime-cpu (fell back from tensorrt" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("args, message", [
    (["--min-batch", "0"], "--min-batch/--opt-batch/--max-batch: optimization profile: min_batch must be an integer >= 1, got 0"),
    (["--opt-batch", "128"], "needs min_batch <= opt_batch <= max_batch, got 1 / 128 / 64"),
    (["--min-batch", "8", "--opt-batch", "4"], "got 8 / 4 / 64"),
    (["--opt-level", "6"], "--opt-level 6: must be between 0 and 5"),
    (["--workspace", "0"], "--workspace 0.0: must be a positive number of GiB"),
])
def test_build_rejects_bad_profile_arguments_with_exit_2(artifact, capsys, args, message):
    assert main(["build", str(artifact), *args]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_export_engine_checks_its_arguments_before_exporting(tmp_path, capsys):
    # The head does not even exist: the profile error comes first, before any export work.
    rc = main(["export", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "det"), "--engine",
               "--max-batch", "0"])
    assert rc == 2
    assert "max_batch must be an integer >= 1, got 0" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "det").exists()


def test_build_on_a_bad_artifact_or_precision_exits_3(artifact, tmp_path, capsys):
    assert main(["build", str(tmp_path / "missing")]) == 3
    assert "not a detector artifact directory" in " ".join(capsys.readouterr().err.split())
    assert main(["build", str(artifact), "--precision", "int8"]) == 3
    assert "the artifact has no 'int8' model (it has: fp32)" in " ".join(capsys.readouterr().err.split())


@needs_no_gpu
def test_build_without_tensorrt_or_gpu_exits_3_saying_what_is_missing(artifact_copy, capsys):
    assert main(["build", str(artifact_copy)]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot build a TensorRT engine on this machine:" in err
    assert "TensorRT is not installed; pip install 'sid-edge[tensorrt]'" in err or "no usable CUDA GPU" in err
    assert read_manifest(artifact_copy).to_dict()["engines"] == []  # nothing recorded
    assert not list(artifact_copy.glob("*.engine"))


def test_info_lists_engines(artifact_copy, capsys):
    assert main(["info", str(artifact_copy)]) == 0
    assert "engines: none" in capsys.readouterr().out
    add_foreign_engine(artifact_copy)
    assert main(["info", str(artifact_copy)]) == 0
    out = capsys.readouterr().out
    assert ("engine fp32: model.fp32.sm87.trt10.3.0.engine (0.0 MB), TensorRT 10.3.0.30, Orin (compute capability "
            "8.7), batch 1..64 (tuned for 8)") in out
