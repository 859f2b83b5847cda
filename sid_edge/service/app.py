"""The HTTP API of the detection service: a FastAPI (ASGI) application around a :class:`BatchingDetector`.

Routes (the generated OpenAPI schema is at ``/openapi.json``, its pages at ``/docs``):

* ``POST /v1/detect`` — one image as the raw body (``Content-Type: image/*`` or ``application/octet-stream``), or
  several as ``multipart/form-data`` file parts (any field name). Answers :class:`DetectResponse`.
* ``GET /v1/model`` — the manifest summary (``sid-edge info``'s content) and the serving settings.
* ``GET /healthz`` — 200 while the process runs. ``GET /readyz`` — 200 once the model is warmed up, 503 before and
  while draining. ``GET /metrics`` — Prometheus text (:mod:`sid_edge.service.metrics`).

Status codes of ``/v1/detect``: 200 (every image answered; bad ones in a multi-image request carry ``error``), 400
(malformed multipart), 401 (``api_key`` set and no/wrong ``Authorization: Bearer`` header), 413 (body over
``max_body_bytes`` or more than ``max_images`` images), 415 (another content type), 422 (empty body, a form field that
is not a file, or the request's only image refused: the reason is in ``detail``), 503 + ``Retry-After`` (queue full,
warming up or draining), 504 (not answered within ``timeout_s``), 500 (the backend failed). Error bodies are
``{"detail": "<reason>"}``. The service reads only the request body: it never fetches a URL a client names.

Each request is logged as one JSON line on the ``sid_edge.service.access`` logger (method, path, status, duration,
image counts, request id; never image bytes or file names).
"""

from __future__ import annotations

import asyncio
import threading
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sid_edge import __version__
from sid_edge.artifact.files import sha256_file
from sid_edge.artifact.names import MANIFEST_NAME
from sid_edge.runtime.detector import Prediction
from sid_edge.service.core import BatchingDetector, NotAccepting, Overloaded
from sid_edge.service.metrics import outcome_of_status

access_log = logging.getLogger("sid_edge.service.access")
log = logging.getLogger(__name__)

__all__ = ["ServiceSettings", "create_app", "DetectResponse", "ImageResult", "ModelIdentity", "model_summary"]

RAW_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ServiceSettings:
    """Per-request limits of the HTTP layer.

    Attributes:
        max_body_bytes: largest request body in bytes (413 above; checked on Content-Length and while reading).
        max_images: most images in one multipart request (413 above).
        timeout_s: seconds from the start of a request to its answer, body reading included (504 after).
        api_key: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <api_key>`` (401 otherwise);
            ``/healthz`` and ``/readyz`` stay open for probes.
        retry_after_s: the ``Retry-After`` header of 503 answers, seconds.
        warmup: run one batch before reporting ready.
        drain_timeout_s: at shutdown, how long to wait for admitted images to be answered.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 64
    timeout_s: float = 30.0
    api_key: str | None = None
    retry_after_s: int = 1
    warmup: bool = True
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_images < 1 or not self.timeout_s > 0 or self.retry_after_s < 0:
            raise ValueError("ServiceSettings: max_body_bytes, max_images and timeout_s must be positive, "
                             "retry_after_s >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServiceSettings.api_key: empty")


# ------------------------------------------------------------------------------------------ response schema
class Concept(BaseModel):
    name: str
    score: float = Field(description="cosine concept score in [-1, 1]")
    contribution: float | None = Field(None, description="term in concept_logit (concept-model artifacts only)")


class ImageResult(BaseModel):
    index: int = Field(description="position of the image in the request (multipart order)")
    name: str | None = Field(None, description="the multipart part's file name, else null")
    p_synthetic: float | None = Field(None, description="probability the image is synthetic, sigmoid(logit)")
    logit: float | None = None
    prediction: str | None = Field(None, description='"synthetic" when p_synthetic >= threshold, else "real"; '
                                     '"uncertain" inside the artifact\'s uncertain band (manifest uncertain_band)')
    threshold: float = Field(description="decision threshold on p_synthetic")
    error: str | None = Field(None, description="why the image was not scored; null when scored")
    top_concepts: list[Concept] | None = Field(
        None, description="the image's top concepts when the artifact has a vocabulary, else null")
    provenance: list[dict] | None = Field(
        None, description="provenance signals read from the image's bytes (C2PA, IPTC digital source type, generator "
                          "metadata; each with kind, assertion, trust, label): separate evidence beside the pixel "
                          "score; null when the service runs with --no-provenance")


class ModelIdentity(BaseModel):
    artifact: str = Field(description="the artifact folder's name")
    manifest_sha256: str
    precision: str
    backend: str = Field(description='"onnxruntime-cpu", "onnxruntime-cuda" or "tensorrt"')


class DetectResponse(BaseModel):
    model: ModelIdentity
    results: list[ImageResult]


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, or several as multipart/form-data file parts (any field name).",
        "content": {
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        },
    }
}
_ERROR = {"content": {"application/json": {"example": {"detail": "reason"}}}}


# ------------------------------------------------------------------------------------------ the app
def model_identity(core: BatchingDetector) -> dict:
    det = core.detector
    return {"artifact": Path(det.directory).resolve().name,
            "manifest_sha256": sha256_file(Path(det.directory) / MANIFEST_NAME),
            "precision": det.precision, "backend": det.backend_name}


def model_summary(manifest) -> dict:
    """What ``sid-edge info`` shows of a manifest (a :class:`~sid_edge.artifact.manifest.Manifest` or its JSON
    dict), as JSON: backbone, head, preprocessing, threshold, concepts, graph I/O, model files (precision, file,
    size, sha256, fidelity), engines, libraries. No filesystem paths."""
    manifest = manifest.to_dict() if hasattr(manifest, "to_dict") else dict(manifest)
    keep = ("format", "schema_version", "created", "backbone", "preprocessing", "decoding", "threshold", "threshold_on",
            "threshold_choice", "input", "outputs", "default_precision", "calibration", "fidelity_set", "libraries")
    out = {k: manifest[k] for k in keep if k in manifest}
    head = manifest.get("head", {})
    out["head"] = {k: head.get(k) for k in ("kind", "k", "feature", "source") if k in head}
    vocab = manifest.get("vocabulary")
    out["vocabulary"] = ({k: vocab.get(k) for k in ("count", "source", "template", "top_concepts_by") if k in vocab}
                         if vocab else None)
    cm = manifest.get("concept_model")
    out["concept_model"] = {k: cm.get(k) for k in ("source", "is_head") if k in cm} if cm else None
    out["models"] = {p: {k: e.get(k) for k in ("file", "size_bytes", "sha256", "fidelity") if k in e}
                     for p, e in manifest.get("models", {}).items()}
    out["engines"] = [{k: e.get(k) for k in ("precision", "file", "size_bytes", "tensorrt_version", "gpu_name",
                                             "compute_capability", "profile") if k in e}
                      for e in manifest.get("engines", []) or []]
    return out


def create_app(core: BatchingDetector, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``core`` (see the module docstring).

    Its lifespan starts ``core`` (warm-up in the background: ``/healthz`` answers at once, ``/readyz`` once warm) and
    at shutdown drains it (:meth:`BatchingDetector.close`). ``app.state.core``/``app.state.settings`` hold both.
    """
    settings = settings or ServiceSettings()
    metrics = core.metrics
    identity = model_identity(core)
    metrics.model_info.labels(**identity).set(1)
    summary = model_summary(core.detector.manifest)
    has_concepts = bool(core.detector.concept_names) and core.detector.top_concepts > 0

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        start = asyncio.create_task(core.start(warmup=settings.warmup))

        def started(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is None:
                access_log.info(json.dumps({"event": "ready", **identity, "max_batch": core.max_batch,
                                            "max_wait_ms": core.max_wait_s * 1000}))
            elif not t.cancelled():
                core.warmup_error = f"{type(t.exception()).__name__}: {t.exception()}"
                log.error("warm-up failed: %s", core.warmup_error)

        start.add_done_callback(started)
        try:
            yield
        finally:
            core.stop_accepting()
            if not start.done():
                start.cancel()
            with contextlib.suppress(BaseException):
                await start
            await core.close(settings.drain_timeout_s)
            access_log.info(json.dumps({"event": "stopped", "batches": core.batches_run}))

    app = FastAPI(title="sid-edge detection service", version=__version__, lifespan=lifespan,
                  description="Synthetic image detection (frozen CLIP features + linear head) with cross-request "
                              "batching. POST an image, read back p_synthetic.")
    app.state.core = core
    app.state.settings = settings

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <key>)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": f"request body larger than the limit of {exc.limit} bytes"}, status_code=413)

    def unavailable(reason: str) -> HTTPException:
        return HTTPException(503, reason, headers={"Retry-After": str(settings.retry_after_s)})

    provenance_lock = threading.Lock()

    @app.post("/v1/detect", response_model=DetectResponse, openapi_extra=_REQUEST_BODY,
              dependencies=[Depends(authorize)],
              responses={c: _ERROR for c in (400, 401, 413, 415, 422, 503, 504)},
              summary="Score one image (raw body) or several (multipart form files)")
    async def detect(request: Request) -> dict:
        async def read_and_score():
            images, names = await _read_images(request, settings)
            request.state.images = len(images)
            return images, await core.detect(images, names)

        try:
            # wait_for, not asyncio.timeout (3.11+): the service runs on Python 3.10 too (JetPack 6)
            images, preds = await asyncio.wait_for(read_and_score(), settings.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            raise HTTPException(504, f"not answered within the request timeout of {settings.timeout_s:g} s") from None
        except Overloaded as e:
            raise unavailable(str(e)) from None
        except NotAccepting as e:
            raise unavailable(str(e)) from None
        except (StarletteHTTPException, BodyTooLarge, ClientDisconnect):
            raise
        except Exception as e:  # noqa: BLE001 - the backend failed on this request's batch
            log.error("inference failed: %s: %s", type(e).__name__, e)
            raise HTTPException(500, f"inference failed ({type(e).__name__}); see the service log") from None
        reader = core.detector.provenance_reader
        if reader is not None:  # metadata only (milliseconds an image); one reader, so one request at a time
            def read_all():
                with provenance_lock:
                    return [_provenance(reader, im) for im in images]

            for p, signals in zip(preds, await asyncio.get_running_loop().run_in_executor(None, read_all)):
                p.provenance = signals
        request.state.errors = sum(1 for p in preds if p.error)
        if len(preds) == 1 and preds[0].error:
            raise HTTPException(422, f"image refused: {preds[0].error}")
        return {"model": identity, "results": [_result(i, p, core.detector.threshold, has_concepts)
                                               for i, p in enumerate(preds)]}

    @app.get("/v1/model", dependencies=[Depends(authorize)], summary="The served model: manifest summary")
    async def model() -> dict:
        det = core.detector
        choice = det.backend_choice.describe() if det.backend_choice else None
        for path in {str(det.directory), str(Path(det.directory).resolve())}:  # no filesystem paths in answers
            choice = choice.replace(path, "DIR") if choice else choice
        serving = {**identity, "backend_choice": choice,
                   "threshold": det.threshold, "top_concepts": det.top_concepts, "max_batch": core.max_batch,
                   "max_wait_ms": core.max_wait_s * 1000, "max_queue": core.max_queue,
                   "limits": asdict(core.limits), "max_body_bytes": settings.max_body_bytes,
                   "max_images": settings.max_images, "timeout_s": settings.timeout_s}
        return {"serving": serving, "manifest": summary}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded, warmed up, not draining",
             responses={503: {"content": {"application/json": {"example": {"ready": False, "reason": "warming up"}}}}})
    async def readyz():
        if core.ready:
            return {"ready": True}
        reason = ("draining" if core.draining else f"warm-up failed: {core.warmup_error}" if core.warmup_error
                  else "warming up")
        return JSONResponse({"ready": False, "reason": reason}, status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", dependencies=[Depends(authorize)], summary="Prometheus metrics (text exposition)")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(_AccessLog, core=core)
    return app


async def _read_images(request: Request, settings: ServiceSettings) -> tuple[list[bytes], list[str | None]]:
    """The request's images (bytes) and names, within the body-size and image-count limits."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > settings.max_body_bytes:
                raise BodyTooLarge(settings.max_body_bytes)
        except ValueError:
            raise HTTPException(400, f"bad Content-Length header {declared[:40]!r}") from None
    limited = Request(request.scope, _limited_receive(request.receive, settings.max_body_bytes))
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await limited.form(max_files=settings.max_images, max_fields=settings.max_images)
        except StarletteHTTPException as e:  # what Request.form raises (FastAPI's HTTPException subclasses it)
            if "too many files" in str(e.detail).lower():
                raise HTTPException(413, f"more than {settings.max_images} images in one request") from None
            raise
        try:
            images, names = [], []
            for field, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    raise HTTPException(422, f"form field {field[:64]!r} is not a file (send images as file parts)")
                images.append(await value.read())
                names.append(_clean_name(value.filename))
        finally:
            await form.close()
        if not images:
            raise HTTPException(422, "the multipart form holds no file parts")
        return images, names
    if ctype.startswith(RAW_TYPES):
        body = await limited.body()
        if not body:
            raise HTTPException(422, "empty body: send the image bytes as the body")
        return [body], [None]
    raise HTTPException(415, f"content type {ctype[:64]!r}: send one image as image/* or application/octet-stream, "
                             "or several as multipart/form-data")


def _limited_receive(receive, limit: int):
    seen = 0

    async def inner():
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return inner


def _clean_name(name: str | None) -> str | None:
    """A client's file name, reduced to its last path component and 255 characters (it is echoed back only)."""
    if not name:
        return None
    return name.replace("\\", "/").rsplit("/", 1)[-1][:255] or None


def _result(index: int, p: Prediction, threshold: float, concepts: bool) -> dict:
    return {"index": index, "name": p.source if isinstance(p.source, str) else None, "p_synthetic": p.p_synthetic,
            "logit": p.logit, "prediction": p.prediction, "threshold": threshold, "error": p.error,
            "top_concepts": [h.to_dict() for h in p.top_concepts] if concepts else None,
            "provenance": p.provenance}


def _provenance(reader, image) -> list[dict]:
    try:
        return list(reader(image))
    except Exception as e:  # noqa: BLE001 - a reader problem costs the signals, never the score
        log.warning("provenance reader failed: %s: %s", type(e).__name__, e)
        return []


class _AccessLog:
    """ASGI middleware: one JSON log line per HTTP request, request id header, request metrics for /v1/detect."""

    def __init__(self, app, core: BatchingDetector):
        self.app, self.core = app, core

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        status = 500
        state = scope.setdefault("state", {})

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - t0
            path = scope.get("path", "")
            if path == "/v1/detect":
                self.core.metrics.requests.labels(outcome_of_status(status)).inc()
                self.core.metrics.request_seconds.observe(seconds)
            client = scope.get("client") or ("", 0)
            access_log.info(json.dumps({
                "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": "request", "id": rid, "method": scope.get("method"), "path": path[:200], "status": status,
                "ms": round(seconds * 1000, 2), "images": state.get("images"), "errors": state.get("errors"),
                "client": client[0]}))
