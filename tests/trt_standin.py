"""An in-process stand-in for the slice of the TensorRT (10.x and 11.x) and cuda-python (cuda-bindings 12.x/13.x)
APIs that sid-edge calls, so the engine build orchestration and the TensorRT backend's buffer, stream, batching and
failure handling run on machines without a GPU.

It is NOT TensorRT: "device" memory is host memory, the "engine" computes a fixed numpy function, and the builder
records what it was asked to do. Real TensorRT runs in tests/test_tensorrt_gpu.py and benchmarks/gpu_check.py on
GPU machines. What it does copy from the real bindings, so that the code under test takes the same paths:

* return conventions: cuda-python calls return ``(err, value)`` -- ``(err, None)`` on failure -- or ``(err,)``
  (checked against cuda-bindings 13.5 on a machine without a driver); TensorRT returns None/False/-1 where the
  C++ API returns nullptr/false/-1 (``create_timing_cache``, ``set_timing_cache``, ``add_optimization_profile``,
  ``build_serialized_network``, ``create_execution_context``, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``, ``deserialize_cuda_engine``) and raises where the Python binding raises
  (``IOptimizationProfile.set_shape``: RuntimeError "Shape provided for opt is inconsistent with other shapes.",
  python/src/infer/pyCore.cpp; ``set_timing_cache(None, ...)``: TypeError; ``tensorrt.nptype`` of BF16/FP8/INT4:
  TypeError, python/packaging/bindings_wheel/tensorrt/__init__.py);
* enum values per release: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is 1 in 10.x (0 = deprecated
  EXPLICIT_BATCH) and 0 in 11.x (deprecated, always on; 1 = PREFER_JIT_PYTHON_PLUGINS), NvInfer.h of 10.3/10.8/11;
* ``IProgressMonitor``: a subclass must call the base ``__init__`` (pybind11 raises TypeError otherwise);
  ``step_complete`` returning anything pybind11 does not convert to True (False, None) or raising cancels the build
  (``build_serialized_network`` then returns None); an exception in ``phase_start``/``phase_finish`` is printed and
  ignored;
* streams: ``cudaMemcpyAsync`` and ``execute_async_v3`` only enqueue; the work runs at ``cudaStreamSynchronize``, so
  a missing synchronisation or a pinned buffer rewritten before it shows as wrong numbers;
* ``IHostMemory`` has the buffer protocol and ``nbytes`` but no ``len()``.

Stricter than the real ones, on purpose: ``set_tensor_address`` refuses an address that is not a live device
allocation, ``cudaMemcpyAsync`` one outside an allocation, ``cudaFree``/``cudaFreeHost`` an unknown or already freed
pointer (the real calls may crash or corrupt memory instead).

``StandIn.fail(name, ...)`` makes the named call fail the way the real one does (see ``FAILURE_VALUES``).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np

VERSIONS = {10: "10.8.0.43", 11: "11.4.0.106"}
VERSION = VERSIONS[10]
GPU = ("Stand-in GPU", 9, 0)
CACHE_MAGIC = b"STANDIN-TIMING-CACHE\n"


# ------------------------------------------------------------------------------------------ cuda-python runtime
class cudaError_t(enum.IntEnum):  # values as in CUDA's driver_types.h
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorLaunchFailure = 719


ERROR_TEXT = {
    cudaError_t.cudaSuccess: b"no error",
    cudaError_t.cudaErrorInvalidValue: b"invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidResourceHandle: b"invalid resource handle",
    cudaError_t.cudaErrorLaunchFailure: b"unspecified launch failure",
}


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    """Like cuda-bindings' stream handle: ``int(stream)`` is the address TensorRT takes."""

    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self):
        return self._handle

    def getPtr(self):
        return self._handle


#: cuda-python calls whose value is returned beside the error (``(err, None)`` on failure); the rest return ``(err,)``.
VALUE_CALLS = {"cudaMalloc", "cudaMallocHost", "cudaStreamCreate", "cudaGetDeviceCount", "cudaGetDeviceProperties",
               "cudaDriverGetVersion", "cudaRuntimeGetVersion"}

#: What a TensorRT call returns when it fails, for ``StandIn.fail``.
FAILURE_VALUES = {"create_timing_cache": None, "set_timing_cache": False, "add_optimization_profile": -1,
                  "build_serialized_network": None, "create_execution_context": None, "set_input_shape": False,
                  "set_tensor_address": False, "execute_async_v3": False, "deserialize_cuda_engine": None,
                  "parse_from_file": False}


class StandIn:
    """State shared by the stand-in modules: ``calls`` (what TensorRT was asked to do), ``allocations``
    (live "device" and pinned blocks: address -> (kind, buffer)), ``streams`` (handle -> pending work) and the
    failures to inject. Iterates as ``(calls, allocations)``."""

    def __init__(self, trt_major: int = 10, cuda_major: int = 12, driver_cuda: int = 12080):
        self.trt_major, self.cuda_major, self.driver_cuda = trt_major, cuda_major, driver_cuda
        self.version = VERSIONS[trt_major]
        self.calls: list = []
        self.allocations: dict[int, tuple[str, ctypes.Array]] = {}
        self.streams: dict[int, list] = {}
        self.failures: dict[str, list] = {}
        self.on_synchronize = None  # callable run at the start of cudaStreamSynchronize (tests of concurrency)
        self.cudart = make_cudart(self)
        self.trt = make_tensorrt(self)

    def __iter__(self):
        return iter((self.calls, self.allocations))

    def fail(self, name: str, error: cudaError_t | None = None, *, after: int = 0, times: int = 1) -> None:
        """Make call ``name`` fail ``times`` times once ``after`` calls succeeded: a cuda-python call returns
        ``(error, None)`` or ``(error,)`` (default cudaErrorMemoryAllocation), a TensorRT call its failure value
        (``FAILURE_VALUES``)."""
        self.failures[name] = [after, times, error if error is not None else cudaError_t.cudaErrorMemoryAllocation]

    def _failing(self, name: str) -> bool:
        f = self.failures.get(name)
        if not f:
            return False
        if f[0] > 0:
            f[0] -= 1
            return False
        if f[1] <= 0:
            return False
        f[1] -= 1
        return True

    def cuda_error(self, name: str):
        return self.failures[name][2]

    def device_block(self, ptr: int, nbytes: int) -> bool:
        """Whether ``[ptr, ptr + nbytes)`` lies inside one live device allocation."""
        return self._inside(ptr, nbytes, "device")

    def _inside(self, ptr: int, nbytes: int, kind: str | None = None) -> bool:
        for base, (k, buf) in self.allocations.items():
            if (kind is None or k == kind) and base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buf):
                return True
        return False


def make_cudart(state: StandIn) -> types.ModuleType:
    m = types.ModuleType("cuda.bindings.runtime")
    m.cudaError_t, m.cudaMemcpyKind, m.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
    ok = cudaError_t.cudaSuccess
    no_device = state.driver_cuda // 1000 < state.cuda_major  # bindings newer than the driver: nothing works

    def call(name, value_call=None):
        def wrapper(fn):
            value = name in VALUE_CALLS if value_call is None else value_call

            def f(*args):
                if state._failing(name):
                    err = state.cuda_error(name)
                    if name == "cudaStreamSynchronize":  # the stream's work failed: it never completes
                        state.streams.get(int(args[0]), []).clear()
                    return (err, None) if value else (err,)
                if no_device and name not in ("cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaGetErrorString"):
                    err = cudaError_t.cudaErrorInsufficientDriver
                    return (err, None) if value else (err,)
                return fn(*args)

            setattr(m, name, f)
            return f
        return wrapper

    def alloc(kind):
        def f(n):
            if int(n) <= 0:
                return cudaError_t.cudaErrorInvalidValue, None
            buf = ctypes.create_string_buffer(int(n))
            state.allocations[ctypes.addressof(buf)] = (kind, buf)
            return ok, ctypes.addressof(buf)
        return f

    def free(kind):
        def f(ptr):
            for queue in state.streams.values():  # cudaFree/cudaFreeHost synchronise the device first
                while queue:
                    queue.pop(0)()
            entry = state.allocations.get(int(ptr))
            if entry is None or entry[0] != kind:
                return (cudaError_t.cudaErrorInvalidValue,)
            del state.allocations[int(ptr)]
            return (ok,)
        return f

    call("cudaMalloc")(alloc("device"))
    call("cudaMallocHost")(alloc("host"))
    call("cudaFree")(free("device"))
    call("cudaFreeHost")(free("host"))

    @call("cudaMemcpyAsync")
    def memcpy(dst, src, count, kind, stream):
        dst, src, count = int(dst), int(src), int(count)
        src_kind, dst_kind = {cudaMemcpyKind.cudaMemcpyHostToDevice: ("host", "device"),
                              cudaMemcpyKind.cudaMemcpyDeviceToHost: ("device", "host")}.get(kind, (None, None))
        if src_kind is None or not state._inside(src, count, src_kind) or not state._inside(dst, count, dst_kind):
            return (cudaError_t.cudaErrorInvalidValue,)
        queue = state.streams.get(int(stream))
        if queue is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        queue.append(lambda: ctypes.memmove(dst, src, count))  # runs when the stream gets to it
        return (ok,)

    @call("cudaStreamCreate")
    def stream_create():
        handle = 0x7000 + len(state.streams) + 1
        state.streams[handle] = []
        return ok, cudaStream_t(handle)

    def drain(stream):
        queue = state.streams.get(int(stream))
        if queue is None:
            return cudaError_t.cudaErrorInvalidResourceHandle
        while queue:
            queue.pop(0)()
        return ok

    @call("cudaStreamSynchronize")
    def stream_sync(stream):
        if state.on_synchronize is not None:
            state.on_synchronize()
        return (drain(stream),)

    @call("cudaStreamDestroy")
    def stream_destroy(stream):
        err = drain(stream)  # pending work completes, then the stream's resources go
        state.streams.pop(int(stream), None)
        return (err,)

    call("cudaSetDevice")(lambda d: (ok,) if int(d) == 0 else (cudaError_t.cudaErrorInvalidValue,))
    call("cudaGetDeviceCount")(lambda: (ok, 1))
    call("cudaGetDeviceProperties")(
        lambda d: (ok, types.SimpleNamespace(name=GPU[0].encode() + b"\x00" * 8, major=GPU[1], minor=GPU[2]))
        if int(d) == 0 else (cudaError_t.cudaErrorInvalidValue, None))
    call("cudaDriverGetVersion")(lambda: (ok, state.driver_cuda))
    call("cudaRuntimeGetVersion")(lambda: (ok, state.cuda_major * 1000 + 90))
    call("cudaGetErrorString", value_call=True)(lambda e: (ok, ERROR_TEXT.get(e, b"unknown error")))
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


class DataType(enum.IntEnum):  # tensorrt.DataType, values of NvInferRuntimeBase.h
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9

    def __str__(self):  # as pybind11 prints its enums
        return f"DataType.{self.name}"

    def __format__(self, spec):
        return format(str(self), spec)


DTYPE_NAMES = {"float32": DataType.FLOAT, "float16": DataType.HALF, "int8": DataType.INT8, "int32": DataType.INT32,
               "bfloat16": DataType.BF16, "fp8": DataType.FP8, "int4": DataType.INT4, "int64": DataType.INT64}
NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def nptype(trt_type):
    """tensorrt.nptype: FP8, BF16 and INT4 have no numpy equivalent."""
    if trt_type in NUMPY_TYPES:
        return NUMPY_TYPES[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def creation_flags(major: int) -> type[enum.IntEnum]:
    if major >= 11:
        return enum.IntEnum("NetworkDefinitionCreationFlag",
                            {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
    return enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=2):
        self.min_severity = min_severity


class IHostMemory(bytes):
    """Serialized engine or timing cache: buffer protocol and ``nbytes``, no ``len()`` (as the binding)."""

    def __len__(self):
        raise TypeError("object of type 'tensorrt.IHostMemory' has no len()")

    @property
    def nbytes(self):
        return memoryview(self).nbytes


class _MonitorMeta(type):
    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        if not getattr(obj, "_trt_base_initialised", False):
            raise TypeError(f"{cls.__name__}.__init__() must be called when overriding __init__")
        return obj


class IProgressMonitor(metaclass=_MonitorMeta):
    def __init__(self):
        self._trt_base_initialised = True


def _pybind_bool(value) -> bool:
    """How pybind11 converts a Python override's result to C++ bool (with conversion): True/False as they are,
    None as False, objects with __bool__ by it; anything else is a cast error (which TensorRT reads as False)."""
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if hasattr(type(value), "__bool__"):
        return bool(value)
    raise TypeError(f"Unable to cast Python instance of type {type(value)} to C++ type 'bool'")


class StandInEngine:
    """Deserialized from b'STANDIN' + JSON {"input_dtype", "min", "opt", "max", "size", "k", "e"[, "d",
    "output_dtype", "tensorrt_version", "strongly_typed"]}."""

    def __init__(self, spec: dict, state: StandIn):
        self.spec, self.state = spec, state
        self.names = ["pixel_values", "logit", "p_synthetic", "head_activations", "image_embedding", "features"]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        if name not in self.names:
            return TensorIOMode.NONE
        return TensorIOMode.INPUT if name == "pixel_values" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        key = "input_dtype" if name == "pixel_values" else "output_dtype"
        return DTYPE_NAMES[self.spec.get(key, "float32")]

    def get_tensor_profile_shape(self, name, profile_index):
        s = self.spec["size"]
        return [(self.spec[b], 3, s, s) for b in ("min", "opt", "max")]

    def create_execution_context(self):
        if self.state._failing("create_execution_context"):
            return None
        return StandInContext(self)


class StandInContext:
    def __init__(self, engine: StandInEngine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        spec = self.engine.spec
        if self.engine.state._failing("set_input_shape"):
            return False
        shape = tuple(int(s) for s in shape)
        if name != "pixel_values" or len(shape) != 4 or shape[1:] != (3, spec["size"], spec["size"]):
            return False  # TensorRT logs the error and returns False
        if not spec["min"] <= shape[0] <= spec["max"]:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name):
        b = -1 if self.shape is None else self.shape[0]
        spec = self.engine.spec
        s = spec["size"]
        return {"pixel_values": self.shape or (-1, 3, s, s), "logit": (b,), "p_synthetic": (b,),
                "head_activations": (b, spec["k"]), "image_embedding": (b, spec["e"]),
                "features": (b, spec.get("d", 64))}[name]

    def set_tensor_address(self, name, ptr):
        if self.engine.state._failing("set_tensor_address") or name not in self.engine.names:
            return False
        nbytes = int(np.prod(self.get_tensor_shape(name))) * np.dtype(nptype(self.engine.get_tensor_dtype(name))).itemsize
        if not int(ptr) or not self.engine.state.device_block(int(ptr), max(nbytes, 1)):
            return False  # stricter than TensorRT: only live device allocations
        self.addresses[name] = int(ptr)
        return True

    def _array(self, name, shape):
        dtype = np.dtype(nptype(self.engine.get_tensor_dtype(name)))
        n = int(np.prod(shape)) * dtype.itemsize
        raw = np.ctypeslib.as_array(ctypes.cast(self.addresses[name], ctypes.POINTER(ctypes.c_uint8)), (n,))
        return raw.view(dtype).reshape(shape)

    def execute_async_v3(self, stream_handle):
        state, spec = self.engine.state, self.engine.spec
        if state._failing("execute_async_v3"):
            return False
        if self.shape is None or set(self.addresses) != set(self.engine.names):
            return False  # TensorRT: "not all input dimensions/addresses specified"
        queue = state.streams.get(int(stream_handle))
        if queue is None:
            return False
        shape = self.shape  # shapes and addresses are read at enqueue time, the memory when the stream runs
        batch = shape[0]
        shapes = {n: (batch, *self.get_tensor_shape(n)[1:]) for n in self.engine.names}
        state.calls.append(("execute", batch, int(stream_handle)))

        def run():
            x = self._array("pixel_values", shape)
            for name, value in engine_function(x, spec["k"], spec["e"], spec.get("d", 64)).items():
                self._array(name, shapes[name])[...] = value

        queue.append(run)
        return True


def make_tensorrt(state: StandIn) -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = state.version
    m.Logger, m.TensorIOMode, m.DataType, m.nptype = Logger, TensorIOMode, DataType, nptype
    m.float32, m.float16, m.bfloat16, m.int8 = DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT8
    m.IHostMemory, m.IProgressMonitor = IHostMemory, IProgressMonitor
    m.NetworkDefinitionCreationFlag = flags_enum = creation_flags(state.trt_major)
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    calls = state.calls

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            data = bytes(memoryview(data))
            if state._failing("deserialize_cuda_engine") or not data.startswith(b"STANDIN"):
                return None  # as TensorRT does for a plan from another release or GPU
            spec = json.loads(data[len(b"STANDIN"):])
            if spec.get("tensorrt_version", state.version) != state.version:
                return None
            return StandInEngine(spec, state)

    m.Runtime = Runtime

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = int(flags), []
            names = [f.name for f in flags_enum if self.flags & (1 << int(f))]
            # TensorRT 11 networks are always strongly typed; 10.x ones only with the flag.
            self.strongly_typed = state.trt_major >= 11 or "STRONGLY_TYPED" in names
            calls.append(("create_network", self.flags, names))

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i] if 0 <= i < len(self.inputs) else None

    class ParserError:
        def __init__(self, desc):
            self._desc = desc

        def desc(self):
            return self._desc

        def __str__(self):
            return f"ERROR: {self._desc}"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, model):
            calls.append(("parse_from_file", model))
            if state._failing("parse_from_file"):
                self.errors.append(ParserError("stand-in parser failure (injected)"))
                return False
            import onnx

            try:
                graph = onnx.load(model, load_external_data=False).graph
            except Exception as e:  # noqa: BLE001 - the real parser reports, never raises
                self.errors.append(ParserError(f"Failed to parse ONNX model from file: {model}: {e}"))
                return False
            onnx_types = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16}
            self.network.inputs = [
                Tensor(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                                     for d in i.type.tensor_type.shape.dim),
                       onnx_types.get(i.type.tensor_type.elem_type, DataType.FLOAT))
                for i in graph.input]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index] if 0 <= index < len(self.errors) else None

        def clear_errors(self):
            self.errors.clear()

    class OptimizationProfile:
        def __init__(self):
            self.shapes: dict[str, list] = {}

        def set_shape(self, input, min, opt, max):
            # IOptimizationProfile::setDimensions per selector, each checked against the ones already set; the
            # binding turns a false into RuntimeError.
            dims = self.shapes.setdefault(input, [None, None, None])
            for i, (label, shape) in enumerate((("min", min), ("opt", opt), ("max", max))):
                shape = tuple(int(s) for s in shape)
                others = [d for d in dims[:i] if d is not None]
                consistent = all(s >= 0 for s in shape) and all(
                    len(o) == len(shape) and all(a <= b for a, b in zip(o, shape)) for o in others)
                if not consistent:
                    raise RuntimeError(f"Shape provided for {label} is inconsistent with other shapes.")
                dims[i] = shape
            calls.append(("set_shape", input, *dims))

        def __bool__(self):  # IOptimizationProfile::isValid
            return bool(self.shapes) and all(None not in d for d in self.shapes.values())

    class TimingCache:
        def __init__(self, entries: list, header: str):
            self.entries, self.header = entries, header

        def serialize(self):
            return IHostMemory(CACHE_MAGIC + json.dumps({"header": self.header, "entries": self.entries}).encode())

        def combine(self, other, ignore_mismatch):
            if other.header != self.header and not ignore_mismatch:
                return False
            self.entries += other.entries
            return True

        def reset(self):
            self.entries = []
            return True

    cache_header = f"{state.version}/{GPU[0]}/{GPU[1]}.{GPU[2]}"

    class BuilderConfig:
        def __init__(self):
            self.builder_optimization_level = 3
            self.profiles: list = []
            self.cache = None
            self._monitor = None

        @property
        def progress_monitor(self):
            return self._monitor

        @progress_monitor.setter
        def progress_monitor(self, monitor):
            if monitor is not None and not isinstance(monitor, IProgressMonitor):
                raise TypeError("progress_monitor: incompatible type, expected tensorrt.IProgressMonitor")
            self._monitor = monitor

        def set_memory_pool_limit(self, pool, pool_size):
            calls.append(("set_memory_pool_limit", pool, pool_size))

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        def add_optimization_profile(self, profile):
            if state._failing("add_optimization_profile") or not profile:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(memoryview(serialized_timing_cache))
            calls.append(("create_timing_cache", data))
            if state._failing("create_timing_cache"):
                return None
            if not data:
                return TimingCache([], cache_header)
            if not data.startswith(CACHE_MAGIC):
                return None  # TensorRT logs "corrupted timing cache" and returns nullptr
            try:
                blob = json.loads(data[len(CACHE_MAGIC):])
                return TimingCache(list(blob["entries"]), str(blob["header"]))
            except (ValueError, KeyError, TypeError):
                return None

        def set_timing_cache(self, cache, ignore_mismatch):
            if not isinstance(cache, TimingCache):  # pybind11: None is no ITimingCache const&
                raise TypeError("set_timing_cache(): incompatible function arguments. The following argument types "
                                "are supported: (self, cache: tensorrt.ITimingCache, ignore_mismatch: bool) -> bool")
            if state._failing("set_timing_cache") or (cache.header != cache_header and not ignore_mismatch):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def _run_monitor(self, monitor) -> bool:
            """Report phases the way TensorRT does (nested, stepwise); False when the monitor cancelled."""
            def guarded(fn, *args):
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001 - TensorRT prints and goes on
                    print(f"[ERROR] Exception caught in {fn.__name__}(): {e}", file=sys.stderr)

            def step(phase, i):
                try:
                    return _pybind_bool(monitor.step_complete(phase, i))
                except Exception as e:  # noqa: BLE001 - TensorRT prints it and cancels the build
                    print(f"[ERROR] Exception caught in step_complete(): {e}", file=sys.stderr)
                    return False

            guarded(monitor.phase_start, "Building engine", None, 2)
            guarded(monitor.phase_start, "Tactic selection", "Building engine", 3)
            results = []
            for i in range(3):
                results.append(step("Tactic selection", i))
                if not results[-1]:
                    break
            guarded(monitor.phase_finish, "Tactic selection")
            if all(results):
                results.append(step("Building engine", 1))
            guarded(monitor.phase_finish, "Building engine")
            calls.append(("monitor steps", results))  # what step_complete returned, as TensorRT read it
            return all(results)

        def build_serialized_network(self, network, config):
            calls.append(("build", config.builder_optimization_level))
            if state._failing("build_serialized_network"):
                return None
            if not network.inputs or not config.profiles:
                return None  # TensorRT: "Network must have at least one input" / "no optimization profile"
            shapes = config.profiles[0].shapes
            for tensor in network.inputs:
                dims = shapes.get(tensor.name)
                if any(s == -1 for s in tensor.shape) and dims is None:
                    return None  # a dynamic input without a profile
                if dims is not None and any(len(d) != len(tensor.shape) or any(
                        t not in (-1, v) for t, v in zip(tensor.shape, d)) for d in dims):
                    return None  # the profile contradicts the network's fixed dimensions
            if config.progress_monitor is not None and not self._run_monitor(config.progress_monitor):
                return None  # cancelled by the monitor
            if config.cache is not None:
                config.cache.entries.append(f"timed at level {config.builder_optimization_level}")
            mn, opt, mx = shapes[network.inputs[0].name]
            spec = {"input_dtype": next(k for k, v in DTYPE_NAMES.items() if v == network.inputs[0].dtype),
                    "min": mn[0], "opt": opt[0], "max": mx[0], "size": mn[2], "k": 4, "e": 32, "d": 64,
                    "tensorrt_version": state.version, "strongly_typed": network.strongly_typed}
            return IHostMemory(b"STANDIN" + json.dumps(spec).encode())

    m.Builder, m.OnnxParser = Builder, OnnxParser
    return m


def install(monkeypatch, trt_major: int = 10, cuda_major: int = 12, driver_cuda: int = 12080) -> StandIn:
    """Put the stand-ins in ``sys.modules`` (undone by monkeypatch): TensorRT ``trt_major`` (10 or 11),
    cuda-bindings of CUDA ``cuda_major`` under a driver supporting CUDA ``driver_cuda`` (12080 = 12.8). Returns the
    StandIn (iterates as ``(calls, allocations)``)."""
    import sid_edge.runtime.tensorrt_engines as engines

    state = StandIn(trt_major, cuda_major, driver_cuda)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.__version__ = {12: "12.9.4", 13: "13.5.0"}.get(cuda_major, f"{cuda_major}.0.0")
    bindings.runtime, cuda.bindings = state.cudart, bindings
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", state.cudart),
                      ("tensorrt", state.trt)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(engines, "_TRT_LOGGER", None)
    monkeypatch.setattr(engines, "tensorrt_cuda_major", lambda: cuda_major)
    return state
