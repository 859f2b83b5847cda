"""An in-process stand-in for the slice of the TensorRT and cuda-python APIs that sid-edge calls, so the engine
build orchestration and the TensorRT backend's buffer/batching logic run on machines without a GPU.

It is NOT TensorRT: "device" memory is host memory, the "engine" computes a fixed numpy function, and the builder
records what it was asked to do. Real TensorRT runs in tests/test_tensorrt_gpu.py and benchmarks/gpu_check.py on
GPU machines. Method names and return conventions follow the real APIs (TensorRT 10/11 Python API; cuda-python's
``(err, value)`` tuples) so the code under test takes the same paths.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np

VERSION = "10.8.0.43"
GPU = ("Stand-in GPU", 9, 0)


# ------------------------------------------------------------------------------------------ cuda-python runtime
class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def make_cudart(allocations: dict) -> types.ModuleType:
    m = types.ModuleType("cuda.bindings.runtime")
    m.cudaError_t, m.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    ok = cudaError_t.cudaSuccess

    def alloc(n):
        buf = ctypes.create_string_buffer(int(n))
        allocations[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def free(ptr):
        allocations.pop(int(ptr), None)
        return (ok,)

    def memcpy(dst, src, count, kind, stream):
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    m.cudaSetDevice = lambda d: (ok,)
    m.cudaGetDeviceCount = lambda: (ok, 1)
    m.cudaGetDeviceProperties = lambda d: (ok, types.SimpleNamespace(name=GPU[0].encode() + b"\x00" * 8,
                                                                     major=GPU[1], minor=GPU[2]))
    m.cudaMallocHost = m.cudaMalloc = alloc
    m.cudaFreeHost = m.cudaFree = free
    m.cudaMemcpyAsync = memcpy
    m.cudaStreamCreate = lambda: (ok, 7)
    m.cudaStreamSynchronize = m.cudaStreamDestroy = lambda s: (ok,)
    m.cudaGetErrorString = lambda e: (ok, b"stand-in error")
    return m


# ------------------------------------------------------------------------------------------ TensorRT
def engine_function(x: np.ndarray, k: int, e: int, d: int = 64) -> dict[str, np.ndarray]:
    """What a stand-in engine computes from pixel_values [B,3,S,S]: per-image channel means drive every output
    (``features`` [B,d] repeats the means; the stand-in's head does not read it)."""
    x = x.astype(np.float32)
    means = x.reshape(len(x), 3, -1).mean(axis=2)  # [B,3]
    head = np.concatenate([means, -means, means * 2, means * 3], axis=1)[:, :k]
    logit = head.sum(axis=1)
    emb = np.tile(means, (1, e // 3 + 1))[:, :e]
    features = np.tile(means, (1, d // 3 + 1))[:, :d]
    return {"logit": logit, "p_synthetic": 1 / (1 + np.exp(-logit)), "head_activations": head, "image_embedding": emb,
            "features": features}


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class Logger:
    WARNING = 2

    def __init__(self, level=2):
        self.level = level


class StandInEngine:
    """Deserialized from JSON bytes b'STANDIN' + {"input_dtype", "min", "opt", "max", "size", "k", "e"[, "d"]}."""

    def __init__(self, spec: dict, calls: list):
        self.spec, self.calls = spec, calls
        self.names = ["pixel_values", "logit", "p_synthetic", "head_activations", "image_embedding", "features"]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == "pixel_values" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return np.dtype(self.spec["input_dtype"]) if name == "pixel_values" else np.dtype(np.float32)

    def get_tensor_profile_shape(self, name, profile_index):
        s = self.spec["size"]
        return [(self.spec[b], 3, s, s) for b in ("min", "opt", "max")]

    def create_execution_context(self):
        return StandInContext(self)


class StandInContext:
    def __init__(self, engine: StandInEngine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        b = shape[0]
        if not self.engine.spec["min"] <= b <= self.engine.spec["max"]:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b, spec = self.shape[0], self.engine.spec
        return {"pixel_values": self.shape, "logit": (b,), "p_synthetic": (b,), "head_activations": (b, spec["k"]),
                "image_embedding": (b, spec["e"]), "features": (b, spec.get("d", 64))}[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def _array(self, name, dtype):
        shape = self.get_tensor_shape(name)
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.ctypeslib.as_array(ctypes.cast(self.addresses[name], ctypes.POINTER(ctypes.c_uint8)), (n,))
        return raw.view(dtype).reshape(shape)

    def execute_async_v3(self, stream):
        spec = self.engine.spec
        x = self._array("pixel_values", np.dtype(spec["input_dtype"]))
        self.engine.calls.append(("execute", self.shape[0], int(stream)))
        for name, value in engine_function(x, spec["k"], spec["e"], spec.get("d", 64)).items():
            self._array(name, np.float32)[...] = value
        return True


def make_tensorrt(calls: list) -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = VERSION
    m.Logger, m.TensorIOMode = Logger, TensorIOMode
    m.nptype = lambda dt: np.dtype(dt).type

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            if not data.startswith(b"STANDIN"):
                return None  # as TensorRT does for a plan from another release or GPU
            return StandInEngine(json.loads(data[len(b"STANDIN"):]), calls)

    m.Runtime = Runtime
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")

    class IProgressMonitor:
        def __init__(self):
            pass

    m.IProgressMonitor = IProgressMonitor

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = flags, []
            calls.append(("create_network", flags))

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            import onnx

            model = onnx.load(path, load_external_data=False)
            self.network.inputs = [Tensor(i.name) for i in model.graph.input]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))
            self.shapes = (mn, opt, mx)

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def __init__(self):
            self.builder_optimization_level = 3
            self.progress_monitor = None
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, p):
            self.profile = p

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            mn, opt, mx = config.profile.shapes
            calls.append(("build", config.builder_optimization_level))
            monitor = config.progress_monitor
            if monitor is not None:  # report phases the way TensorRT does: nested, stepwise
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic selection", "Building engine", 3)
                calls.append(("monitor steps", [monitor.step_complete("Tactic selection", i) for i in range(3)]))
                monitor.phase_finish("Tactic selection")
                monitor.step_complete("Building engine", 1)
                monitor.phase_finish("Building engine")
            spec = {"input_dtype": "float32", "min": mn[0], "opt": opt[0], "max": mx[0], "size": mn[2], "k": 4, "e": 32,
                    "d": 64}
            return b"STANDIN" + json.dumps(spec).encode()

    m.Builder, m.OnnxParser = Builder, OnnxParser
    return m


def install(monkeypatch) -> tuple[list, dict]:
    """Put the stand-ins in ``sys.modules`` (undone by monkeypatch). Returns (calls, allocations)."""
    import sid_edge.runtime.tensorrt_engines as engines

    calls, allocations = [], {}
    cudart = make_cudart(allocations)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = cudart, bindings
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart),
                      ("tensorrt", make_tensorrt(calls))):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(engines, "_TRT_LOGGER", None)
    return calls, allocations
