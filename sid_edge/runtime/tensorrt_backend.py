"""TensorRT engine backend (torch-free): TensorRT runtime + CUDA through cuda-python.

Device buffers and pinned (page-locked) host buffers for the input and every output are allocated once, at the
optimization profile's max batch, and reused; each run copies host->device, enqueues the engine with
``IExecutionContext.execute_async_v3`` on a private CUDA stream, copies the outputs back and synchronises that
stream once. Batches larger than the profile's max batch are split; smaller than its min batch are zero-padded
(see :func:`sid_edge.runtime.tensorrt_engines.plan_chunks`). Engine inputs/outputs of another dtype (an FP16 engine with FP16 I/O)
are converted on the host: callers always pass and get float32.

Follows the TensorRT 10/11 Python API (``Runtime.deserialize_cuda_engine``, ``ICudaEngine.get_tensor_name`` /
``get_tensor_mode`` / ``get_tensor_profile_shape``, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``) and cuda-python's runtime bindings (``cudaMalloc``,
``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStreamCreate``/``Synchronize``), as in NVIDIA's TensorRT samples
(samples/python/common_runtime.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import numpy as np

from sid_edge.runtime.tensorrt_engines import (
    EngineError,
    cuda_check,
    import_cudart,
    import_tensorrt,
    plan_chunks,
    rebuild_command,
    trt_logger,
)
from sid_edge.artifact.manifest import EngineEntry, Manifest, ManifestError

log = logging.getLogger(__name__)


class _PinnedBuffer:
    """A page-locked host array and a device allocation of the same size, for up to ``max_rows`` rows of
    ``row_shape`` elements of ``dtype``."""

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype, max_rows: int):
        # The module that allocated frees too (also from __del__ at shutdown, after sys.modules changed).
        self._cudart = cudart = import_cudart()
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_elems = int(np.prod(self.row_shape, dtype=np.int64))
        self.row_bytes = self.row_elems * self.dtype.itemsize
        nbytes = max(self.row_bytes * max_rows, self.dtype.itemsize)
        self.host_ptr = self.device = self.host = None
        self.host_ptr = int(cuda_check(cudart.cudaMallocHost(nbytes), f"allocating {nbytes} bytes of pinned host memory"))
        try:
            raw = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
            self.host = raw.view(self.dtype)
            self.device = int(cuda_check(cudart.cudaMalloc(nbytes), f"allocating {nbytes} bytes of GPU memory"))
        except BaseException:
            self.free()  # the pinned block must not outlive a failed device allocation
            raise

    def rows(self, n: int) -> np.ndarray:
        """Host view of the first ``n`` rows, shape ``(n, *row_shape)``."""
        return self.host[: n * self.row_elems].reshape((n, *self.row_shape))

    def to_device(self, n: int, stream) -> None:
        cudart = self._cudart
        cuda_check(cudart.cudaMemcpyAsync(self.device, self.host_ptr, n * self.row_bytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "copy to GPU")

    def to_host(self, n: int, stream) -> None:
        cudart = self._cudart
        cuda_check(cudart.cudaMemcpyAsync(self.host_ptr, self.device, n * self.row_bytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "copy from GPU")

    def free(self) -> None:
        """Release both allocations (idempotent). A failing free is logged, not raised: it runs on error paths and
        at shutdown, where the original error matters more."""
        cudart = self._cudart
        if self.device is not None:
            _log_cuda_error(cudart.cudaFree(self.device), "cudaFree")
            self.device = None
        if self.host_ptr is not None:
            self.host = None
            _log_cuda_error(cudart.cudaFreeHost(self.host_ptr), "cudaFreeHost")
            self.host_ptr = None


def _log_cuda_error(result, what: str) -> None:
    err = result[0]
    if getattr(err, "value", err) != 0:  # cudaSuccess is 0 in every CUDA release
        log.warning("%s failed during clean-up: %s", what, getattr(err, "name", err))


class TensorRTBackend:
    """Runs a serialized TensorRT engine of the artifact.

    ``run(pixel_values float32 [B,3,S,S]) -> {name: float32 ndarray [B,...]}`` for every output in the manifest.

    Safe to share between threads, like the ONNX Runtime backend: one execution context, stream and set of pinned
    buffers serve every call, so ``run`` holds a lock from filling the input buffer until the outputs are copied
    out (concurrent callers queue; for parallel GPU work open one backend per thread).

    Args:
        engine_file: the ``.engine`` file (already checked against the manifest by the caller).
        manifest: the artifact manifest (input/output names).
        entry: its ``manifest["engines"]`` item, for messages.
        device: CUDA device ordinal.

    Raises:
        EngineError: TensorRT/cuda-python missing, no GPU, the engine does not deserialize here (another
            TensorRT release or GPU architecture), TensorRT cannot create an execution context or refuses the
            profile's max shape, a tensor type numpy cannot hold (BF16/FP8/INT4 I/O), or a CUDA call fails.
            Whatever was allocated before the failure is freed.
        ManifestError: the engine's inputs/outputs differ from the manifest.
    """

    name = "tensorrt"

    def __init__(self, engine_file: str | os.PathLike, manifest: Manifest, entry: EngineEntry | None = None, device: int = 0):
        self._buffers: dict[str, _PinnedBuffer] = {}
        self.stream = None
        self.context = self.engine = None
        self._lock = threading.Lock()
        try:
            self._open(Path(engine_file), manifest, entry, device)
        except BaseException:
            self.close()  # pinned and device memory, the stream: nothing outlives a failed open
            raise

    def _open(self, path: Path, manifest: Manifest, entry: EngineEntry | None, device: int) -> None:
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        cuda_check(cudart.cudaSetDevice(device), f"selecting CUDA device {device}")
        self._runtime = trt.Runtime(trt_logger())
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(
                f"{path}: TensorRT {trt.__version__} could not load this engine (it was built with TensorRT "
                f"{entry.tensorrt_version if entry else '?'} for compute capability {entry.compute_capability if entry else '?'}); "
                f"rebuild it with `{rebuild_command(path.parent, entry.precision if entry else 'fp32')}`"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT returns None when the context's activation memory cannot be allocated
            raise EngineError(f"{path}: TensorRT could not create an execution context (see the TensorRT log above; "
                              "usually too little free GPU memory for the profile's max batch)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if n not in inputs]
        expected_input = manifest.input.name
        if inputs != [expected_input]:
            raise ManifestError(f"{path}: engine inputs {inputs} do not match the manifest ({expected_input})")
        self.output_names = manifest.output_names
        missing = [n for n in self.output_names if n not in engine_outputs]
        if missing:
            raise ManifestError(f"{path}: engine lacks output(s) {missing} listed in the manifest")
        self.input_name = expected_input
        self._path = path
        pmin, _, pmax = self.engine.get_tensor_profile_shape(expected_input, 0)
        self.min_batch, self.max_batch = int(pmin[0]), int(pmax[0])
        self.input_row_shape = tuple(int(s) for s in pmax[1:])

        self.stream = cuda_check(cudart.cudaStreamCreate(), "creating a CUDA stream")
        # Shapes at the max batch size the allocation once and for all.
        self._set_input_shape(tuple(int(s) for s in pmax))
        for name in [expected_input, *engine_outputs]:
            shape = tuple(self.context.get_tensor_shape(name))
            trt_dtype = self.engine.get_tensor_dtype(name)
            try:
                dtype = np.dtype(trt.nptype(trt_dtype))
            except TypeError as e:  # BF16, FP8, INT4, FP4: tensorrt.nptype has no numpy type for them
                raise EngineError(f"{path}: tensor {name!r} has type {trt_dtype}, which numpy cannot hold; export "
                                  "the graph with float32/float16 inputs and outputs") from e
            self._buffers[name] = _PinnedBuffer(shape[1:], dtype, self.max_batch)
            if not self.context.set_tensor_address(name, self._buffers[name].device):
                raise EngineError(f"{path}: TensorRT refused the buffer address for {name!r}")
        self._engine_outputs = engine_outputs
        log.info("TensorRT engine %s: batch %d..%d, input %s", path.name, self.min_batch, self.max_batch,
                 self._buffers[expected_input].dtype)

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        """``IExecutionContext.set_input_shape``, which returns False (and logs) for a shape outside the engine's
        optimization profile or of the wrong rank: raise instead of running on the previous shape."""
        if not self.context.set_input_shape(self.input_name, tuple(int(s) for s in shape)):
            raise EngineError(f"{self._path}: TensorRT refused input shape {tuple(shape)} for {self.input_name!r} "
                              f"(the engine's profile takes batch {self.min_batch}..{self.max_batch} of "
                              f"{list(self.input_row_shape)}; see the TensorRT log above)")

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch: float32 (or anything numpy casts) ``[B, 3, S, S]`` -> float32 ``{output: [B, ...]}``.

        Raises:
            ValueError: another shape than ``[B, *input_row_shape]``.
            EngineError: the backend is closed, TensorRT refuses the shape or the run, or a CUDA call fails.
        """
        x = np.asarray(pixel_values)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_row_shape:
            raise ValueError(f"pixel_values shape {x.shape}: the engine takes [B, {', '.join(map(str, self.input_row_shape))}]")
        with self._lock:
            if self.context is None:
                raise EngineError("this TensorRT backend is closed")
            return self._run_locked(x)

    def _run_locked(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        inp = self._buffers[self.input_name]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for start, stop, run_batch in plan_chunks(len(x), self.min_batch, self.max_batch):
            k = stop - start
            rows = inp.rows(run_batch)
            rows[:k] = x[start:stop]  # casts to the engine's input dtype
            rows[k:] = 0  # padding up to the profile's min batch
            self._set_input_shape(rows.shape)
            inp.to_device(run_batch, self.stream)
            if not self.context.execute_async_v3(int(self.stream)):
                raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            for name in self._engine_outputs:
                self._buffers[name].to_host(run_batch, self.stream)
            # The copies and the engine run only when the stream gets to them: the pinned input rows are not
            # rewritten, nor the outputs read, before this.
            cuda_check(cudart.cudaStreamSynchronize(self.stream), "waiting for the GPU")
            for name in self.output_names:
                parts[name].append(self._buffers[name].rows(run_batch)[:k].astype(np.float32, copy=True))
        return {
            n: np.concatenate(v) if v else np.zeros((0, *self._buffers[n].row_shape), np.float32)
            for n, v in parts.items()
        }

    def close(self) -> None:
        """Free the GPU and pinned memory and the stream (idempotent; waits for a run in progress). A later
        ``run`` raises EngineError."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the lock existed
            return
        with lock:
            if getattr(self, "stream", None) is not None:
                # Work still queued (after a failed run) finishes before the memory it uses is freed.
                cudart = self._cudart
                _log_cuda_error(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
                _log_cuda_error(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
                self.stream = None
            buffers, self._buffers = getattr(self, "_buffers", {}), {}
            for buf in buffers.values():
                buf.free()
            self.context = self.engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have unloaded CUDA already
            pass

    def __str__(self) -> str:
        return self.name
