"""Engine bookkeeping without a GPU: optimization profiles, batch splitting, compatibility decisions over manifest
entries and a machine record, engine names and manifest updates, the TensorRT 10/11 network flags."""

import hashlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sid_edge.artifact.manifest import EngineEntry, add_engine, read_manifest
from sid_edge.runtime.tensorrt_engines import (
    BatchProfile,
    GpuEnvironment,
    check_engine,
    detect_environment,
    engine_file_name,
    plan_chunks,
    select_engine,
    timing_cache_name,
)

H200 = GpuEnvironment("10.8.0.43", "NVIDIA H200", "9.0")
ORIN = GpuEnvironment("10.3.0.30", "Orin", "8.7")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def engine(precision="fp16", trt="10.8.0.43", gpu="NVIDIA H200", cc="9.0", source="abc", file=None) -> EngineEntry:
    return EngineEntry.model_validate({
        "precision": precision, "file": file or f"model.{precision}.engine", "sha256": sha("engine"), "size_bytes": 1,
        "tensorrt_version": trt, "gpu_name": gpu, "compute_capability": cc, "source_model": f"model.{precision}.onnx",
        "source_sha256": sha(source), "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 64}})


# ------------------------------------------------------------------------------------------ profile
def test_profile_accepts_ordered_sizes_and_gives_shapes():
    p = BatchProfile(1, 8, 64)
    assert p.shapes(336) == ((1, 3, 336, 336), (8, 3, 336, 336), (64, 3, 336, 336))
    assert BatchProfile.from_dict(p.to_dict()) == p
    assert BatchProfile(4, 4, 4).shapes(64)[2] == (4, 3, 64, 64)


@pytest.mark.parametrize("sizes, message", [
    ((0, 8, 64), "min_batch must be an integer >= 1, got 0"),
    ((1, -2, 64), "opt_batch must be an integer >= 1, got -2"),
    ((1, 8, 2.5), "max_batch must be an integer >= 1, got 2.5"),
    ((1, 16, 8), "needs min_batch <= opt_batch <= max_batch, got 1 / 16 / 8"),
    ((9, 8, 64), "needs min_batch <= opt_batch <= max_batch, got 9 / 8 / 64"),
])
def test_profile_rejects_bad_sizes(sizes, message):
    with pytest.raises(ValueError) as e:
        BatchProfile(*sizes)
    assert message in str(e.value)


# ------------------------------------------------------------------------------------------ batch splitting
def test_plan_chunks_splits_at_max_and_pads_to_min():
    assert plan_chunks(0, 1, 64) == []
    assert plan_chunks(1, 1, 64) == [(0, 1, 1)]
    assert plan_chunks(64, 1, 64) == [(0, 64, 64)]
    assert plan_chunks(130, 1, 64) == [(0, 64, 64), (64, 128, 64), (128, 130, 2)]
    # A profile whose min batch is 4: one image runs padded to 4 rows, the tail of a split too.
    assert plan_chunks(1, 4, 8) == [(0, 1, 4)]
    assert plan_chunks(10, 4, 8) == [(0, 8, 8), (8, 10, 4)]


def test_plan_chunks_covers_every_image_once():
    for n in range(0, 70):
        chunks = plan_chunks(n, 3, 16)
        covered = [i for start, stop, _ in chunks for i in range(start, stop)]
        assert covered == list(range(n))
        assert all(3 <= run <= 16 and run >= stop - start for start, stop, run in chunks)


def test_plan_chunks_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_chunks(-1, 1, 8)
    with pytest.raises(ValueError):
        plan_chunks(5, 9, 8)
    with pytest.raises(ValueError):
        plan_chunks(5, 0, 8)


# ------------------------------------------------------------------------------------------ compatibility
def test_same_release_and_gpu_is_compatible_even_with_another_build_number():
    assert check_engine(engine(), H200).ok
    assert check_engine(engine(trt="10.8.0.99"), H200).ok  # the 4th field is the build, not the release
    assert check_engine(engine(), H200).warnings == []


def test_other_tensorrt_release_is_refused_with_versions_and_rebuild_command():
    c = check_engine(engine(trt="10.3.0.30"), H200, directory="det")
    assert not c.ok
    assert c.reason == (
        "model.fp16.engine was built with TensorRT 10.3.0.30 for NVIDIA H200 (compute capability 9.0); this machine "
        "has TensorRT 10.8.0.43, and an engine only loads in the TensorRT release that built it: rebuild it here "
        "with `sid-edge build det --precision fp16`"
    )
    assert not check_engine(engine(trt="11.4.0.106"), H200).ok  # another major
    assert not check_engine(engine(trt="10.8.1.2"), H200).ok  # another patch release


def test_other_gpu_architecture_is_refused_naming_both():
    c = check_engine(engine(trt="10.8.0.43", gpu="Orin", cc="8.7", precision="int8"), H200, directory="det")
    assert not c.ok
    assert "built with TensorRT 10.8.0.43 for Orin (compute capability 8.7)" in c.reason
    assert "this GPU is NVIDIA H200 (compute capability 9.0)" in c.reason
    assert c.reason.endswith("rebuild it here with `sid-edge build det --precision int8`")


def test_same_architecture_other_gpu_model_loads_with_a_warning():
    # H100 and H200 are both compute capability 9.0: the engine runs, tuned for the other card.
    c = check_engine(engine(gpu="NVIDIA H100 80GB HBM3"), H200)
    assert c.ok
    assert len(c.warnings) == 1
    assert "built on NVIDIA H100 80GB HBM3 and runs on NVIDIA H200" in c.warnings[0]


def test_missing_tensorrt_or_gpu_is_refused_with_the_problems():
    env = GpuEnvironment(None, None, None, ("TensorRT is not installed; pip install ...",
                                            "no usable CUDA GPU: no driver"))
    c = check_engine(engine(), env)
    assert not c.ok
    assert c.reason.endswith("this machine cannot run TensorRT engines: TensorRT is not installed; pip install ...; "
                             "no usable CUDA GPU: no driver")
    assert not check_engine(engine(), GpuEnvironment("10.8.0.43", None, None, ("no GPU",))).ok


def test_engine_from_an_older_onnx_is_stale():
    c = check_engine(engine(source="old"), H200, source_sha256=sha("new"), directory="det")
    assert not c.ok and "built from an earlier model.fp16.onnx" in c.reason
    assert check_engine(engine(source="new"), H200, source_sha256=sha("new")).ok


def test_select_engine_picks_the_one_for_this_machine():
    manifest = SimpleNamespace(models={"fp16": SimpleNamespace(sha256=sha("abc"))},
                               engines=[engine(trt="10.3.0.30", gpu="Orin", cc="8.7"), engine(), engine(precision="int8")])
    entry, check = select_engine(manifest, "fp16", H200)
    assert entry.gpu_name == "NVIDIA H200" and check.ok
    entry, _ = select_engine(manifest, "fp16", ORIN)
    assert entry.gpu_name == "Orin"
    entry, check = select_engine(manifest, "fp16", GpuEnvironment("10.8.0.43", "NVIDIA A100", "8.0"), "det")
    assert entry is None
    # Each candidate's own reason: the Orin engine's TensorRT release, the H200 engine's architecture.
    orin_reason, h200_reason = check.reason.split(" | ")
    assert "this machine has TensorRT 10.8.0.43" in orin_reason and "Orin" in orin_reason
    assert "this GPU is NVIDIA A100 (compute capability 8.0)" in h200_reason
    entry, check = select_engine(manifest, "fp32", H200, "det")
    assert entry is None
    assert check.reason == ("the artifact has no TensorRT engine for fp32; build one with "
                            "`sid-edge build det --precision fp32`")


# ------------------------------------------------------------------------------------------ names, manifest
def test_engine_and_timing_cache_names_key_on_architecture_and_release():
    assert engine_file_name("fp16", H200) == "model.fp16.sm90.trt10.8.0.engine"
    assert engine_file_name("int8", ORIN) == "model.int8.sm87.trt10.3.0.engine"
    assert timing_cache_name(H200) == "timing.sm90.trt10.8.0.cache"


def test_add_engine_replaces_only_the_same_precision_architecture_and_release(artifact, tmp_path):
    d = tmp_path / "det"
    shutil.copytree(artifact, d)
    for e in (engine(), engine(gpu="Orin", cc="8.7", trt="10.3.0.30"), engine(precision="int8")):
        add_engine(d, e)
    add_engine(d, engine(trt="10.8.0.50", file="rebuilt.engine"))  # same release 10.8.0 (the 4th field is the build)
    engines = read_manifest(d).engines
    assert [e.file for e in engines] == ["model.fp16.engine", "model.int8.engine", "rebuilt.engine"]
    assert engines[0].gpu_name == "Orin"
    add_engine(d, engine(trt="11.0.0.1"))  # another release: kept beside the 10.8 one
    assert len(read_manifest(d).engines) == 4


# ------------------------------------------------------------------------------------------ TensorRT 10 vs 11
def test_network_flags_set_strongly_typed_where_the_enum_has_it():
    from sid_edge.export.engine import network_flags
    from tests.trt_standin import creation_flags

    # The enums of TensorRT 10.x (EXPLICIT_BATCH=0, STRONGLY_TYPED=1) and 11.x (STRONGLY_TYPED=0,
    # PREFER_JIT_PYTHON_PLUGINS=1): the same call sets the strongly typed bit in both, never the JIT plugin one.
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=creation_flags(10))) == 2
    trt11 = creation_flags(11)
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=trt11)) == 1
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=trt11)) & (1 << trt11.PREFER_JIT_PYTHON_PLUGINS) == 0
    # A TensorRT without the member (strong typing the only mode) gets no flags at all.
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())) == 0


@pytest.mark.parametrize("trt_major, bindings, driver, advice", [
    (13, "13.5.0", "13.0", None),
    (12, "12.9.4", "13.0", None),  # older wheels under a newer driver are fine
    (12, "12.9.4", "12.8", None),
    (None, "12.6.0", "12.6", None),  # Jetson: TensorRT from JetPack
    (13, "12.9.4", "12.8", "TensorRT 11.4.0.106 is the CUDA 13 build, but the driver supports CUDA 12.8: uninstall "
                           "them and pip install 'sid-edge[tensorrt-cu12]', or update the driver"),
    (None, "13.5.0", "12.6", "cuda-bindings 13.5.0 needs a CUDA 13 driver, but the driver supports CUDA 12.6: "
                             "uninstall them and pip install 'sid-edge[tensorrt-cu12]', or update the driver"),
    (12, "12.9.4", "11.8", "TensorRT 11.4.0.106 is the CUDA 12 build; cuda-bindings 12.9.4 needs a CUDA 12 driver, "
                           "but the driver supports CUDA 11.8: update the NVIDIA driver (the TensorRT 10/11 wheels "
                           "need CUDA 12 or 13)"),
    (13, "13.5.0", None, None),  # driver unknown: nothing to compare
])
def test_install_advice_names_the_extra_for_the_drivers_cuda(trt_major, bindings, driver, advice):
    env = GpuEnvironment("11.4.0.106", None, None, (), trt_major, bindings, driver)
    assert env.install_advice() == advice


# ------------------------------------------------------------------------------------------ this machine
def test_detect_environment_reports_what_is_missing_here():
    env = detect_environment()
    if env.has_tensorrt and env.has_gpu:
        pytest.skip(f"this machine has TensorRT and a GPU ({env.describe()})")
    assert env.problems, "a machine without TensorRT or a GPU must say why"
    if not env.has_tensorrt:
        assert any(p.startswith("TensorRT is not installed; pip install 'sid-edge[tensorrt]'") or
                   p.startswith("TensorRT could not be imported") for p in env.problems)
    if not env.has_gpu:
        assert any("cuda-python is not installed" in p or p.startswith("no usable CUDA GPU") or
                   p.startswith("no CUDA device") for p in env.problems)
    assert "no usable CUDA GPU" in env.describe() or "no TensorRT" in env.describe()


def test_detect_environment_without_cuda_python_says_so():
    code = (
        "import sys\n"
        "sys.modules['cuda'] = None; sys.modules['cuda.bindings'] = None; sys.modules['tensorrt'] = None\n"
        "from sid_edge.runtime.tensorrt_engines import detect_environment\n"
        "env = detect_environment()\n"
        "print(env.tensorrt_version, env.gpu_name)\n"
        "print('\\n'.join(env.problems))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "None None"
    assert lines[1].startswith("TensorRT is not installed; pip install 'sid-edge[tensorrt]'")
    assert lines[2].startswith("no usable CUDA GPU: cuda-python is not installed; pip install 'sid-edge[tensorrt]'")


def test_engine_builder_module_does_not_import_torch():
    code = ("import sys\nimport sid_edge.export.engine, sid_edge.runtime.backends, sid_edge.runtime.tensorrt_backend\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
