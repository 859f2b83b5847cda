"""Cross-request dynamic batching around one :class:`~sid_edge.runtime.detector.Detector` (asyncio, torch-free).

    >>> det = Detector.load("my-detector")
    >>> async with BatchingDetector(det, max_batch=16, max_wait_ms=5) as bd:   # warms up, starts the batcher
    ...     preds = await bd.detect([jpeg_bytes, png_bytes])                     # list[Prediction], input order

Many concurrent ``detect`` calls (HTTP requests, or coroutines of a pipeline in the same process) share inference
batches:

1. **Admission.** A call for n images is refused with :class:`Overloaded` when the images already admitted plus n
   would exceed ``max_queue``, and with :class:`NotAccepting` before warm-up ends or once draining has begun.
2. **Decoding** runs in a thread pool (``decode_workers`` threads) off the event loop, within
   :class:`~sid_edge.service.limits.ImageLimits`. A bad image becomes a Prediction with ``error`` set; the others go on.
3. **Batching.** Decoded images wait in one FIFO queue. A single batcher task takes the first waiting image and
   gathers more until it holds ``max_batch`` images or ``max_wait_ms`` have passed since it took the first, whichever
   comes first (images that arrived while the previous batch ran are taken at once). ``max_batch=1`` turns
   cross-request batching off.
4. **Inference** runs in ONE dedicated thread: one batch at a time per backend instance (ONNX Runtime sessions and
   TensorRT execution contexts are then never entered concurrently by this service).

Scores are those of ``Detector.predict`` on the same bytes: the same decoder, preprocessing and
``Detector``'s own scoring of a batch; only the batch composition differs (see the README on batch invariance).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sid_edge.runtime.batching import Batch, Item, default_workers
from sid_edge.runtime.detector import Detector, Prediction
from sid_edge.service.limits import ImageLimits, ImageRefused, prepare_image, source_name
from sid_edge.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

__all__ = ["BatchingDetector", "NotAccepting", "Overloaded", "ServiceError"]


class ServiceError(Exception):
    """Base of the batching core's refusals."""


class Overloaded(ServiceError):
    """Admitting the images would exceed ``max_queue`` images in flight; retry later (HTTP 503 + Retry-After)."""


class NotAccepting(ServiceError):
    """The service is warming up or draining (HTTP 503)."""


@dataclass
class _Waiting:
    pixels: np.ndarray
    name: str | None
    future: asyncio.Future
    enqueued: float


_STOP = object()


class BatchingDetector:
    """An async front of a Detector that batches concurrent calls (see the module docstring).

    Args:
        detector: a loaded Detector (its ``threshold`` and ``top_concepts`` apply).
        max_batch: most images per inference batch (>= 1; 1 = no cross-request batching).
        max_wait_ms: longest time the first image of a batch waits for company, in milliseconds (>= 0).
        max_queue: most images admitted at once (decoding, waiting or being inferred), >= max_batch.
        decode_workers: decoder threads (default: one per core, at least 2).
        limits: per-image bounds (source pixels, resize work).
        metrics: where to count (a fresh ServiceMetrics by default; ``self.metrics``).

    Use ``async with`` (or ``await start()`` / ``await close()``) inside a running event loop.

    Raises:
        ValueError: a bound out of range.
    """

    def __init__(self, detector: Detector, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 256,
                 decode_workers: int | None = None, limits: ImageLimits | None = None,
                 metrics: ServiceMetrics | None = None):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not (isinstance(max_wait_ms, (int, float)) and 0 <= max_wait_ms < float("inf")):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < max_batch:
            raise ValueError(f"max_queue must be an int >= max_batch ({max_batch}), got {max_queue!r}")
        if decode_workers is not None and decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {decode_workers!r}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.limits = limits or ImageLimits()
        self.metrics = metrics or ServiceMetrics()
        self._decode_workers = decode_workers or default_workers()
        self._decode_pool: ThreadPoolExecutor | None = None
        self._infer_pool: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._batcher: asyncio.Task | None = None
        self._in_flight = 0
        self._waiting = 0  # decoded images not yet handed to the backend (in the queue or a forming batch)
        self._idle: asyncio.Event | None = None
        self.ready = False
        self.draining = False
        self.warmup_error: str | None = None
        self.batches_run = 0

    # ------------------------------------------------------------------------------------------ life cycle
    async def start(self, warmup: bool = True) -> None:
        """Start the threads and the batcher; with ``warmup``, run one batch of zeros first (ONNX Runtime and
        TensorRT allocate and tune on their first run). Sets ``ready`` when done."""
        if self._batcher is not None:
            return
        self._decode_pool = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="sid-serve-decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="sid-serve-infer")
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        if warmup:
            s = self.detector.input_size
            t0 = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(
                self._infer_pool, self.detector.run, np.zeros((1, 3, s, s), np.float32))
            log.info("warm-up: one batch in %.3f s", time.perf_counter() - t0)
        self._batcher = asyncio.create_task(self._batch_loop(), name="sid-serve-batcher")
        self.ready = True
        self.metrics.ready.set(1)

    def stop_accepting(self) -> None:
        """Refuse new work from now on (:class:`NotAccepting`); admitted work still completes. Safe to call from a
        signal handler in the loop's thread."""
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)

    async def close(self, drain_timeout_s: float | None = 30.0) -> None:
        """Stop accepting, wait (up to ``drain_timeout_s``) until every admitted image is answered, then stop the
        batcher and the threads. Images still unanswered after the timeout fail with NotAccepting."""
        self.stop_accepting()
        if self._batcher is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("drain: %d image(s) still in flight after %s s; failing them", self._in_flight,
                        drain_timeout_s)
        self._queue.put_nowait(_STOP)
        await self._batcher
        self._batcher = None
        while not self._queue.empty():  # only after a drain timeout
            w = self._queue.get_nowait()
            if w is not _STOP:
                self._waiting -= 1
            if w is not _STOP and not w.future.done():
                w.future.set_exception(NotAccepting("the service stopped before this image was scored"))
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)

    async def __aenter__(self) -> "BatchingDetector":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        """Images admitted and not yet answered."""
        return self._in_flight

    @property
    def queue_depth(self) -> int:
        """Images decoded and waiting for inference (in the queue or in the batch being gathered)."""
        return self._waiting

    # ------------------------------------------------------------------------------------------ the API
    async def detect(self, images: Sequence, names: Sequence[str | None] | None = None) -> list[Prediction]:
        """Score images, batched with whatever other calls are in flight.

        Args:
            images: a sequence (list/tuple) of encoded image bytes (``bytes``/``bytearray``/``memoryview``), paths,
                PIL images or HxWx3 uint8 RGB arrays. A single item is refused (TypeError), not iterated.
            names: optional per-image names put in ``Prediction.source`` (default: the file name of a path, else
                None). Image bytes are never kept in the results.

        Returns:
            One Prediction per image, in order; a refused image has ``error`` set (reason text) and
            ``extra["error_category"]`` (one of :data:`~sid_edge.service.limits.ERROR_CATEGORIES`).

        Raises:
            NotAccepting: warming up or draining. Overloaded: ``max_queue`` would be exceeded.
            TypeError: ``images`` is not a sequence of supported items.
            Exception: an inference failure (the backend's own exception) fails the whole call.
        """
        if isinstance(images, (str, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            raise TypeError(f"detect: expected a list of images, got {type(images).__name__} "
                            "(wrap a single image in a list)")
        n = len(images)
        if names is not None and len(names) != n:
            raise ValueError(f"detect: {len(names)} names for {n} images")
        if not self.ready or self._batcher is None:
            raise NotAccepting("draining: the service is shutting down" if self.draining else
                               "not ready: the model is warming up")
        if n == 0:
            return []
        if self._in_flight + n > self.max_queue:
            raise Overloaded(f"queue full: {self._in_flight} image(s) in flight, {n} more would exceed "
                             f"--max-queue {self.max_queue}")
        self._admit(n)
        try:
            return await self._detect(images, names)
        finally:
            self._release(n)

    def _admit(self, n: int) -> None:
        self._in_flight += n
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _release(self, n: int) -> None:
        self._in_flight -= n
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()

    async def _detect(self, images: Sequence, names) -> list[Prediction]:
        loop = asyncio.get_running_loop()
        spec = self.detector.preprocessing
        names = list(names) if names is not None else [source_name(im) for im in images]
        decoded = await asyncio.gather(*(loop.run_in_executor(self._decode_pool, _prepare, im, spec, self.limits)
                                         for im in images))
        results: list[Prediction | None] = [None] * len(images)
        futures: list[tuple[int, asyncio.Future]] = []
        now = loop.time()
        for i, (pixels, refused) in enumerate(decoded):
            if refused is not None:
                results[i] = Prediction(names[i], None, None, None, None, error=refused.reason,
                                        extra={"error_category": refused.category})
                self.metrics.images.labels("error").inc()
                self.metrics.image_errors.labels(refused.category).inc()
                continue
            fut = loop.create_future()
            self._queue.put_nowait(_Waiting(pixels, names[i], fut, now))
            self._waiting += 1
            futures.append((i, fut))
        self.metrics.queue_depth.set(self._waiting)
        try:
            scored = await asyncio.gather(*(f for _, f in futures))
        except BaseException:
            for _, f in futures:
                f.cancel()  # a timed-out or failed call leaves nothing for the batcher to infer
            self.metrics.images.labels("failed").inc(sum(1 for _, f in futures))
            raise
        for (i, _), pred in zip(futures, scored):
            results[i] = pred
        self.metrics.images.labels("scored").inc(len(futures))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ the batcher
    async def _next_batch(self) -> tuple[list[_Waiting], bool]:
        """-> (waiting images, stop seen). Blocks for the first image, then gathers up to max_batch / max_wait."""
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = loop.time() + self.max_wait_s
        stop = False
        while len(batch) < self.max_batch:
            try:
                w = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    w = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if w is _STOP:
                stop = True
                break
            batch.append(w)
        return batch, stop

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, stop = await self._next_batch()
            self._waiting -= len(batch)
            self.metrics.queue_depth.set(self._waiting)
            batch = [w for w in batch if not w.future.done()]  # callers that timed out meanwhile
            if batch:
                now = loop.time()
                for w in batch:
                    self.metrics.queue_wait_seconds.observe(now - w.enqueued)
                t0 = time.perf_counter()
                try:
                    preds = await loop.run_in_executor(self._infer_pool, self._score, batch)
                except Exception as e:  # noqa: BLE001 - handed to every caller in the batch
                    log.error("inference failed on a batch of %d: %s", len(batch), e)
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(e)
                else:
                    self.metrics.inference_seconds.observe(time.perf_counter() - t0)
                    self.metrics.batch_size.observe(len(batch))
                    self.batches_run += 1
                    for w, p in zip(batch, preds):
                        if not w.future.done():
                            w.future.set_result(p)
            if stop:
                return

    def _score(self, batch: list[_Waiting]) -> list[Prediction]:
        # Detector's own scoring of a preprocessed batch: the same Predictions Detector.predict builds.
        items = [Item(j, w.name, w.pixels, None) for j, w in enumerate(batch)]
        return self.detector._score(Batch(items))


def _prepare(source, spec, limits) -> tuple[np.ndarray | None, ImageRefused | None]:
    try:
        return prepare_image(source, spec, limits), None
    except ImageRefused as e:
        return None, e
    except TypeError as e:
        return None, ImageRefused(str(e), "unsupported")
