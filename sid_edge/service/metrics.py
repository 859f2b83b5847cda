"""Prometheus metrics of the detection service (prometheus_client), on a registry of their own.

Every label takes values from a fixed set, so the number of series is bounded whatever clients send:

===============================================  ========  ==============================================================
name                                             type      labels / meaning
===============================================  ========  ==============================================================
``sid_edge_requests_total``                      counter   ``outcome``: one of :data:`REQUEST_OUTCOMES`
``sid_edge_images_total``                        counter   ``outcome``: ``scored``, ``error`` (bad image), ``failed``
                                                           (inference error or timeout)
``sid_edge_image_errors_total``                  counter   ``reason``: :data:`sid_edge.service.limits.ERROR_CATEGORIES`
``sid_edge_batch_size``                          histogram images per inference batch (warm-up not counted)
``sid_edge_request_duration_seconds``            histogram wall time per HTTP request, seconds
``sid_edge_inference_duration_seconds``          histogram backend time per batch, seconds
``sid_edge_queue_wait_seconds``                  histogram time an image waited between decoding and inference
``sid_edge_queue_depth``                         gauge     images decoded and waiting for an inference batch
``sid_edge_images_in_flight``                    gauge     images admitted and not yet answered (bounded by --max-queue)
``sid_edge_ready``                               gauge     1 when the model is loaded and warmed up and not draining
``sid_edge_model_info``                          gauge     1, labels ``artifact``, ``manifest_sha256``, ``precision``,
                                                           ``backend``
===============================================  ========  ==============================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from sid_edge.service.limits import ERROR_CATEGORIES

__all__ = ["CONTENT_TYPE_LATEST", "REQUEST_OUTCOMES", "ServiceMetrics"]

#: Values of the ``outcome`` label of ``sid_edge_requests_total`` (and the HTTP status each stands for).
REQUEST_OUTCOMES = {
    "ok": 200,
    "bad_image": 422,
    "bad_request": 400,
    "unsupported_media_type": 415,
    "too_large": 413,
    "unauthorized": 401,
    "overloaded": 503,
    "timeout": 504,
    "error": 500,
    "not_found": 404,
}

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def outcome_of_status(status: int) -> str:
    """The ``outcome`` label for an HTTP status code."""
    for name, code in REQUEST_OUTCOMES.items():
        if code == status:
            return name
    if 200 <= status < 300:
        return "ok"
    return "bad_request" if 400 <= status < 500 else "error"


class ServiceMetrics:
    """The metrics above, registered on ``self.registry`` (a private CollectorRegistry, so several services in one
    process, e.g. tests, do not collide). ``render()`` -> (Prometheus text exposition bytes, content type)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sid_edge_requests", "HTTP requests to /v1/detect by outcome", ["outcome"], registry=r)
        self.images = Counter("sid_edge_images", "Images received by outcome", ["outcome"], registry=r)
        self.image_errors = Counter("sid_edge_image_errors", "Images refused, by reason", ["reason"], registry=r)
        self.batch_size = Histogram("sid_edge_batch_size", "Images per inference batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.request_seconds = Histogram("sid_edge_request_duration_seconds", "Wall time per /v1/detect request",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("sid_edge_inference_duration_seconds", "Backend time per batch",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("sid_edge_queue_wait_seconds",
                                            "Time an image waited between decoding and its inference batch",
                                            buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("sid_edge_queue_depth", "Images decoded and waiting for an inference batch",
                                 registry=r)
        self.in_flight = Gauge("sid_edge_images_in_flight", "Images admitted and not yet answered", registry=r)
        self.ready = Gauge("sid_edge_ready", "1 when the model is warmed up and the service accepts work", registry=r)
        self.model_info = Gauge("sid_edge_model_info", "The served model (value 1)",
                                ["artifact", "manifest_sha256", "precision", "backend"], registry=r)
        # Series exist from the start (at 0), so a dashboard shows them before the first event.
        for outcome in REQUEST_OUTCOMES:
            self.requests.labels(outcome)
        for outcome in ("scored", "error", "failed"):
            self.images.labels(outcome)
        for reason in ERROR_CATEGORIES:
            self.image_errors.labels(reason)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
