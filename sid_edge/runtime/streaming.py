"""Micro-batching of an endless stream of in-memory frames for :meth:`Detector.stream` (torch-free).

A producer thread pulls frames from the caller's iterator and hands them to a pool of preprocessing threads (the
same :func:`sid_edge.runtime.images.preprocess` as still images; Pillow releases the GIL while resampling); the
consumer (the caller's thread) gathers them into a
micro-batch that is run as soon as it holds ``batch_size`` frames or its first frame has waited
``max_latency_ms``, whichever comes first. A bounded queue between the two keeps memory flat however long the
stream runs: at most ``2 * batch_size + 1`` frames are in flight at any time.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.runtime.batching import Batch, Item, default_workers
from sid_edge.runtime.images import preprocess

DEFAULT_STREAM_BATCH = 8
DEFAULT_MAX_LATENCY_MS = 100.0

_END = object()


@dataclass
class _Failure:
    exc: BaseException


def _split(item, index: int):
    """-> (source tag, image): an array is tagged with its position; a tuple ``(..., image)`` by the rest."""
    if isinstance(item, tuple) and len(item) >= 2:
        tag = item[:-1]
        return (tag[0] if len(tag) == 1 else tag), item[-1]
    return index, item


def _prepare(index: int, item, spec: Preprocessing, bgr: bool) -> Item:
    source, image = _split(item, index)
    try:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {type(image).__name__}"
                             + (f" of shape {shape} dtype {image.dtype}" if shape is not None else ""))
        if bgr:
            image = image[..., ::-1]
        return Item(index, source, preprocess(image, spec), None)
    except (ValueError, MemoryError) as e:  # one bad frame never stops a stream
        return Item(index, source, None, str(e))


def micro_batches(
    frames: Iterable,
    spec: Preprocessing,
    *,
    batch_size: int = DEFAULT_STREAM_BATCH,
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS,
    bgr: bool = False,
    clock: Callable[[], float] = time.monotonic,
    join_timeout_s: float = 15.0,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Yield :class:`~sid_edge.runtime.batching.Batch` es of preprocessed frames, in input order.

    Args:
        frames: HxWx3 uint8 arrays (RGB, or BGR with ``bgr=True``), or tuples whose LAST element is such an array
            (e.g. ``(frame_index, time_s, rgb)``; the rest of the tuple becomes ``Item.source``, a bare array's
            source is its 0-based position in the stream).
        spec: the preprocessing rule of the artifact.
        batch_size: a batch is released when it holds this many frames (>= 1).
        max_latency_ms: ... or when its first frame has waited this long (milliseconds, > 0), whichever first.
        bgr: frames are in OpenCV's BGR order; they are flipped to RGB (a view, no copy) before preprocessing.
        join_timeout_s: on close, wait at most this long (seconds) for the producer thread to stop.
        workers: preprocessing threads (default: one per core, at least 2).

    A frame of another shape or dtype becomes an ``Item`` with ``error`` set; an exception raised by the
    ``frames`` iterator itself is re-raised here after the frames before it were yielded. Closing this
    generator (``break``, Ctrl-C) stops the producer thread at its next frame.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not max_latency_ms > 0:
        raise ValueError(f"max_latency_ms must be > 0, got {max_latency_ms}")
    budget = max_latency_ms / 1000.0
    q: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    source = iter(frames)
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="sid-stream-pre")

    def produce() -> None:
        try:
            for i, item in enumerate(source):
                if stop.is_set() or not put(pool.submit(_prepare, i, item, spec, bgr)):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, re-raised there
            put(_Failure(e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator: run its cleanup (e.g. release the capture) in this thread
                close()

    worker = threading.Thread(target=produce, name="sid-stream", daemon=True)
    worker.start()
    try:
        done = False
        while not done:
            first = q.get()
            if first is _END:
                break
            if isinstance(first, _Failure):
                raise first.exc
            batch = [first.result()]
            deadline = clock() + budget
            failure = None
            while len(batch) < batch_size:
                left = deadline - clock()
                if left <= 0:
                    break
                try:
                    nxt = q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is _END:
                    done = True
                    break
                if isinstance(nxt, _Failure):
                    failure = nxt
                    break
                batch.append(nxt.result())
            yield Batch(batch)
            if failure is not None:
                raise failure.exc
    finally:
        stop.set()
        # Wait for the producer to leave the caller's iterator (a blocking camera read returns within its read
        # timeout), so that no thread is still inside a native decoder when the interpreter exits.
        worker.join(timeout=join_timeout_s)
        pool.shutdown(wait=False, cancel_futures=True)
