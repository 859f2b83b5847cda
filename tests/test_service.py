"""`sid-edge serve`: the HTTP API, cross-request batching, limits, auth, life cycle (SIGTERM drain) and the batching
core used without HTTP. Servers run on 127.0.0.1 only (free ports), in-process (uvicorn in a thread) or as a
subprocess; every wait is bounded. Needs the `serve` extra."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers
def png_bytes(w: int, h: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def strip_png(w: int = 20000, h: int = 1) -> bytes:
    """A tiny file (a few hundred bytes) whose resize to the model's side would be huge."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text exposition; ``labels`` e.g. 'outcome="ok"'."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def running(model_dir, *, settings=None, top_concepts: int = 3, backend: str = "cpu", **core_kw):
    """An in-process server (uvicorn in a thread) on a free 127.0.0.1 port; yields (base URL, BatchingDetector)."""
    from sid_edge.runtime.detector import Detector
    from sid_edge.service.app import create_app
    from sid_edge.service.core import BatchingDetector
    from sid_edge.service.server import DrainingServer, bind_socket

    import uvicorn

    det = Detector.load(model_dir, backend=backend)
    det.top_concepts = top_concepts
    core = BatchingDetector(det, **core_kw)
    app = create_app(core, settings)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = DrainingServer(uvicorn.Config(app, access_log=False, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=10), core)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "the server to be ready")
        yield url, core
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "server thread did not stop"


@pytest.fixture(scope="module")
def images(photo_dir) -> list[tuple[str, bytes]]:
    """(name, bytes) of the scikit-image photographs (JPEG and PNG, various sizes) plus two generated PNGs."""
    files = sorted(p for p in photo_dir.iterdir() if p.is_file())[:6]
    out = [(p.name, p.read_bytes()) for p in files]
    out += [("noise_a.png", png_bytes(80, 50, 1)), ("noise_b.png", png_bytes(33, 97, 2))]
    return out


# ------------------------------------------------------------------------------------------ the HTTP API
def test_scores_equal_detector_predict_raw_and_multipart(artifact, images):
    from sid_edge.artifact.files import sha256_file
    from sid_edge.runtime.detector import Detector

    ref = Detector.load(artifact, backend="cpu")
    want = ref.predict([b for _, b in images])
    with running(artifact, max_batch=4, max_wait_ms=2) as (url, core):
        with httpx.Client(base_url=url, timeout=30) as c:
            raw = [c.post("/v1/detect", content=b, headers={"Content-Type": "image/png" if n.endswith("png")
                                                              else "image/jpeg"}) for n, b in images]
            multi = c.post("/v1/detect", files=[("image", (n, b, "application/octet-stream")) for n, b in images])
    assert all(r.status_code == 200 for r in raw), [r.text for r in raw if r.status_code != 200]
    assert multi.status_code == 200, multi.text
    body = multi.json()
    assert body["model"] == {"artifact": artifact.name, "manifest_sha256": sha256_file(artifact / "manifest.json"),
                             "precision": "fp32", "backend": "onnxruntime-cpu"}
    assert [r["name"] for r in body["results"]] == [n for n, _ in images]
    assert [r["index"] for r in body["results"]] == list(range(len(images)))
    for (name, _), w, one, many in zip(images, want, raw, body["results"]):
        got = one.json()["results"][0]
        for r in (got, many):
            assert r["error"] is None
            assert r["p_synthetic"] == pytest.approx(w.p_synthetic, abs=1e-6), name
            assert r["logit"] == pytest.approx(w.logit, abs=1e-5), name
            assert r["prediction"] == w.prediction
            assert r["threshold"] == ref.threshold
            assert [h["name"] for h in r["top_concepts"]] == [h.name for h in w.top_concepts]
            assert [h["score"] for h in r["top_concepts"]] == pytest.approx([h.score for h in w.top_concepts], abs=1e-5)
    assert len(got["top_concepts"]) == 3


def test_plain_artifact_has_null_top_concepts(plain_artifact, images):
    with running(plain_artifact, max_batch=2, max_wait_ms=1) as (url, _):
        r = httpx.post(url + "/v1/detect", content=images[0][1], timeout=30)
    assert r.status_code == 200
    assert r.json()["results"][0]["top_concepts"] is None
    assert 0.0 <= r.json()["results"][0]["p_synthetic"] <= 1.0


def test_concurrent_requests_share_one_batch_and_metrics_show_it(artifact, images):
    # max_wait 10 s bounds the test only if fewer than 4 images arrive; 4 concurrent requests fill the batch at once.
    with running(artifact, max_batch=4, max_wait_ms=10_000) as (url, core):
        def post(i):
            with httpx.Client(timeout=30) as c:
                return c.post(url + "/v1/detect", content=images[i][1])

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        text = httpx.get(url + "/metrics", timeout=10).text
    assert core.batches_run == 1
    assert metric(text, "sid_edge_batch_size_count") == 1
    assert metric(text, "sid_edge_batch_size_sum") == 4
    assert metric(text, "sid_edge_batch_size_bucket", 'le="2.0"') == 0
    assert metric(text, "sid_edge_batch_size_bucket", 'le="4.0"') == 1
    assert metric(text, "sid_edge_requests_total", 'outcome="ok"') == 4
    assert metric(text, "sid_edge_images_total", 'outcome="scored"') == 4
    assert metric(text, "sid_edge_request_duration_seconds_count") == 4
    assert metric(text, "sid_edge_queue_depth") == 0
    assert metric(text, "sid_edge_images_in_flight") == 0
    assert metric(text, "sid_edge_ready") == 1
    assert 'sid_edge_model_info{artifact="' + artifact.name + '"' in text


def test_max_batch_one_turns_batching_off(artifact, images):
    with running(artifact, max_batch=1, max_wait_ms=10_000) as (url, core):
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda i: httpx.post(url + "/v1/detect", content=images[i][1], timeout=30),
                                    range(3)))
        text = httpx.get(url + "/metrics", timeout=10).text
    assert [a.status_code for a in answers] == [200] * 3
    assert metric(text, "sid_edge_batch_size_count") == 3
    assert metric(text, "sid_edge_batch_size_sum") == 3


def test_limits_answer_with_their_status_and_the_server_keeps_serving(artifact, images):
    from sid_edge.service.app import ServiceSettings

    big = png_bytes(300, 300, 3)
    settings = ServiceSettings(max_body_bytes=len(big) - 1, max_images=3)
    with running(artifact, settings=settings, max_batch=4, max_wait_ms=1, max_queue=4) as (url, core):
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/detect", content=big, headers={"Content-Type": "image/png"})
            assert r.status_code == 413 and str(len(big) - 1) in r.json()["detail"]
            # The same without Content-Length (chunked): counted while reading.
            r = c.post("/v1/detect", content=iter([big[:1000], big[1000:]]), headers={"Content-Type": "image/png"})
            assert r.status_code == 413
            r = c.post("/v1/detect", files=[("f", (f"{i}.png", images[-1][1])) for i in range(4)])
            assert r.status_code == 413 and "more than 3 images" in r.json()["detail"]
            r = c.post("/v1/detect", content=b"{}", headers={"Content-Type": "application/json"})
            assert r.status_code == 415 and "application/json" in r.json()["detail"]
            r = c.post("/v1/detect", content=b"", headers={"Content-Type": "image/png"})
            assert r.status_code == 422 and "empty body" in r.json()["detail"]
            r = c.post("/v1/detect", content=b"not an image at all", headers={"Content-Type": "image/png"})
            assert r.status_code == 422
            assert r.json()["detail"] == "image refused: not an image (unrecognised format)"
            r = c.post("/v1/detect", content=images[0][1][: len(images[0][1]) // 2])
            assert r.status_code == 422 and "truncated" in r.json()["detail"]
            r = c.post("/v1/detect", data={"url": "http://example.invalid/a.png"},
                       files=[("f", ("a.png", images[-1][1]))])
            assert r.status_code == 422 and "'url' is not a file" in r.json()["detail"]
            # A bad image among good ones: an error entry, the others scored.
            r = c.post("/v1/detect", files=[("f", ("good.png", images[-1][1])), ("f", ("bad.png", b"\x89PNG\r\n")),
                                            ("f", ("strip.png", strip_png()))])
            assert r.status_code == 200
            res = r.json()["results"]
            assert res[0]["error"] is None and res[0]["p_synthetic"] is not None
            assert res[1]["error"] and res[1]["p_synthetic"] is None and res[1]["prediction"] is None
            assert res[2]["error"].startswith("aspect ratio 20000:1 exceeds 32:1")
            # Still serving, nothing left in flight.
            assert core.in_flight == 0
            r = c.post("/v1/detect", content=images[-2][1])
            assert r.status_code == 200
            text = c.get("/metrics").text
    assert metric(text, "sid_edge_requests_total", 'outcome="too_large"') == 3
    assert metric(text, "sid_edge_requests_total", 'outcome="unsupported_media_type"') == 1
    assert metric(text, "sid_edge_requests_total", 'outcome="bad_image"') == 4
    assert metric(text, "sid_edge_image_errors_total", 'reason="resize_work"') == 1
    assert metric(text, "sid_edge_image_errors_total", 'reason="not_an_image"') == 2  # junk text, a bare PNG signature
    assert metric(text, "sid_edge_image_errors_total", 'reason="truncated"') == 1
    assert metric(text, "sid_edge_requests_total", 'outcome="ok"') == 2


def test_full_queue_is_503_with_retry_after(artifact, images):
    with running(artifact, max_batch=4, max_wait_ms=10_000, max_queue=4) as (url, core):
        with ThreadPoolExecutor(1) as pool:
            # 3 images wait for a 4th (up to 10 s) ...
            first = pool.submit(httpx.post, url + "/v1/detect", timeout=30,
                                files=[("f", (f"{i}.png", images[-1][1])) for i in range(3)])
            wait_until(lambda: core.queue_depth == 3, 20, "three queued images")
            # ... so 2 more would exceed --max-queue 4
            r = httpx.post(url + "/v1/detect", files=[("f", ("a.png", images[0][1])), ("f", ("b.png", images[1][1]))],
                           timeout=30)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "queue full" in r.json()["detail"]
            # 1 more fits, and completes the batch.
            r2 = httpx.post(url + "/v1/detect", content=images[0][1], timeout=30)
            assert r2.status_code == 200
            assert first.result().status_code == 200
        assert core.batches_run == 1
        text = httpx.get(url + "/metrics", timeout=10).text
    assert metric(text, "sid_edge_requests_total", 'outcome="overloaded"') == 1


def test_timeout_is_504_and_the_abandoned_image_is_not_inferred(artifact, images):
    from sid_edge.service.app import ServiceSettings

    with running(artifact, settings=ServiceSettings(timeout_s=0.3), max_batch=4, max_wait_ms=1_500) as (url, core):
        r = httpx.post(url + "/v1/detect", content=images[0][1], timeout=30)
        assert r.status_code == 504 and "0.3 s" in r.json()["detail"]
        wait_until(lambda: core.queue_depth == 0 and core.in_flight == 0, 20, "the queue to empty")
        time.sleep(1.6)  # past the batch deadline: the batcher found only a cancelled image
        assert core.batches_run == 0
        assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
        text = httpx.get(url + "/metrics", timeout=10).text
    assert metric(text, "sid_edge_requests_total", 'outcome="timeout"') == 1
    assert metric(text, "sid_edge_images_total", 'outcome="failed"') == 1


def test_bearer_token(artifact, images):
    from sid_edge.service.app import ServiceSettings

    with running(artifact, settings=ServiceSettings(api_key="s3cret-key"), max_wait_ms=1) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/detect", content=images[0][1])
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.post("/v1/detect", content=images[0][1],
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.post("/v1/detect", content=images[0][1],
                          headers={"Authorization": "Basic s3cret-key"}).status_code == 401
            assert c.get("/metrics").status_code == 401
            assert c.get("/v1/model").status_code == 401
            ok = c.post("/v1/detect", content=images[0][1], headers={"Authorization": "Bearer s3cret-key"})
            assert ok.status_code == 200 and ok.json()["results"][0]["p_synthetic"] is not None
            assert c.get("/metrics", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
            assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_model_health_ready_and_openapi(artifact):
    from sid_edge.artifact.manifest import read_manifest

    m = read_manifest(artifact).to_dict()
    with running(artifact, max_batch=5, max_wait_ms=7, backend="auto") as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            model = c.get("/v1/model").json()
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/readyz").json() == {"ready": True}
            schema = c.get("/openapi.json").json()
    assert model["serving"]["precision"] == "fp32"
    assert model["serving"]["backend"] in ("onnxruntime-cpu", "onnxruntime-cuda")  # auto; the artifact has no engine
    assert model["serving"]["max_batch"] == 5 and model["serving"]["max_wait_ms"] == 7
    assert model["manifest"]["models"]["fp32"]["sha256"] == m["models"]["fp32"]["sha256"]
    assert model["manifest"]["backbone"] == m["backbone"]
    assert model["manifest"]["vocabulary"]["count"] == m["vocabulary"]["count"] == 129
    assert "build one with `sid-edge build DIR" in model["serving"]["backend_choice"]  # auto says why not TensorRT
    assert str(artifact) not in json.dumps(model)  # no filesystem paths
    content = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert set(content) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert {"/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "DetectResponse" in schema["components"]["schemas"]


def test_readyz_is_503_until_warm_and_while_draining(artifact):
    import uvicorn  # noqa: F401

    from starlette.testclient import TestClient

    from sid_edge.runtime.detector import Detector
    from sid_edge.service.app import create_app
    from sid_edge.service.core import BatchingDetector

    core = BatchingDetector(Detector.load(artifact, backend="cpu"), max_wait_ms=1)
    app = create_app(core)
    with TestClient(app) as c:  # runs the lifespan: warm-up starts in the background
        wait_until(lambda: c.get("/readyz").status_code == 200, 30, "warm-up")
        core.stop_accepting()
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "reason": "draining"}
        r = c.post("/v1/detect", content=png_bytes(40, 40))
        assert r.status_code == 503 and "draining" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------------------ a real process
def _free_port() -> int:
    from sid_edge.service.server import bind_socket

    s = bind_socket("127.0.0.1", 0)
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def serve_process(model_dir, *args):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sid_edge", "serve", "--model", str(model_dir), "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 90, "the server process to be ready")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")
def test_hostile_strip_is_refused_without_memory_growth(artifact, images):
    strip = strip_png()
    assert len(strip) < 1000
    with serve_process(artifact, "--max-batch", "2", "--max-wait-ms", "1", "--decode-workers", "2") as (url, proc):
        assert httpx.post(url + "/v1/detect", content=images[0][1], timeout=30).status_code == 200
        before = _peak_rss_kib(proc.pid)
        for _ in range(3):
            r = httpx.post(url + "/v1/detect", content=strip, headers={"Content-Type": "image/png"}, timeout=30)
            assert r.status_code == 422
            assert r.json()["detail"] == (
                "image refused: aspect ratio 20000:1 exceeds 32:1 (resizing its short side to 64 px would need a "
                "1280000x64 intermediate)")
        grew_mib = (_peak_rss_kib(proc.pid) - before) / 1024
        # Resizing it would allocate 1280000x64 RGB pixels (>= 312 MiB); refusing it costs next to nothing.
        assert grew_mib < 50, f"peak RSS grew by {grew_mib:.0f} MiB"
        assert httpx.post(url + "/v1/detect", content=images[1][1], timeout=30).status_code == 200


def test_sigterm_drains_queued_requests_then_exits(artifact, images):
    # The batch waits up to 8 s for more images: SIGTERM arrives while 3 images sit in the queue.
    with serve_process(artifact, "--max-batch", "64", "--max-wait-ms", "8000") as (url, proc):
        def post(i):
            return httpx.post(url + "/v1/detect", content=images[i][1], timeout=60)

        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(post, i) for i in range(3)]

            def queued():
                text = httpx.get(url + "/metrics", timeout=5).text
                return metric(text, "sid_edge_queue_depth") == 3

            wait_until(queued, 30, "three queued images")
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in pending]
        assert [a.status_code for a in answers] == [200] * 3
        assert all(a.json()["results"][0]["p_synthetic"] is not None for a in answers)
        proc.wait(60)
        assert proc.returncode == -signal.SIGTERM  # uvicorn re-raises the signal after its graceful stop
        err = proc.stderr.read().decode()
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert events[-1] == {"event": "stopped", "batches": 1}
    detects = [e for e in events if e.get("path") == "/v1/detect"]
    assert [e["status"] for e in detects] == [200] * 3 and all(e["images"] == 1 for e in detects)
    assert all(set(e) >= {"ts", "id", "method", "status", "ms", "client"} for e in detects)


def test_cli_usage_and_model_errors(artifact, tmp_path, capsys):
    from sid_edge.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--model", str(artifact)])
    assert (args.host, args.port, args.max_batch, args.max_wait_ms) == ("127.0.0.1", 8000, 8, 5.0)
    assert main(["serve", "--model", str(artifact), "--max-batch", "0"]) == 2
    assert "--max-batch 0: must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(artifact), "--max-batch", "16", "--max-queue", "8"]) == 2
    assert main(["serve", "--model", str(artifact), "--api-key-file", str(tmp_path / "none")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--model", str(artifact), "--api-key-file", str(tmp_path / "empty")]) == 2
    assert main(["serve", "--model", str(tmp_path)]) == 3
    assert "manifest" in capsys.readouterr().err
    from sid_edge.service.server import bind_socket

    busy = bind_socket("127.0.0.1", 0)
    busy.listen(1)
    try:
        assert main(["serve", "--model", str(artifact), "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        busy.close()


# ------------------------------------------------------------------------------------------ without HTTP
def test_batching_core_in_process(artifact, images):
    from sid_edge.runtime.detector import Detector
    from sid_edge.service.core import BatchingDetector, NotAccepting, Overloaded

    det = Detector.load(artifact, backend="cpu")
    want = det.predict([b for _, b in images[:4]])

    async def main():
        bd = BatchingDetector(det, max_batch=4, max_wait_ms=10_000, max_queue=6)
        with pytest.raises(NotAccepting, match="warming up"):
            await bd.detect([images[0][1]])
        async with bd:
            # Two callers, 2 images each: one batch of 4.
            a, b = await asyncio.gather(bd.detect([images[0][1], images[1][1]]),
                                        bd.detect([images[2][1], images[3][1]], names=["x", "y"]))
            assert bd.batches_run == 1
            with pytest.raises(TypeError, match="wrap a single image in a list"):
                await bd.detect(images[0][1])
            with pytest.raises(Overloaded, match="--max-queue 6"):
                await bd.detect([images[0][1]] * 7)
            arr = np.asarray(Image.open(io.BytesIO(images[-1][1])).convert("RGB"))
            c = await asyncio.wait_for(bd.detect([arr, b"junk"]), 30)
        with pytest.raises(NotAccepting, match="draining"):
            await bd.detect([images[0][1]])
        return a + b, c

    got, mixed = asyncio.run(main())
    assert [p.source for p in got] == [None, None, "x", "y"]
    for g, w in zip(got, want):
        assert g.p_synthetic == pytest.approx(w.p_synthetic, abs=1e-6)
        assert g.prediction == w.prediction
    assert mixed[0].p_synthetic == pytest.approx(det.predict([images[-1][1]])[0].p_synthetic, abs=1e-6)
    assert mixed[1].error == "not an image (unrecognised format)"
    assert mixed[1].extra["error_category"] == "not_an_image"


def test_resize_work_and_pixel_bounds():
    from sid_edge.artifact.preprocessing import Preprocessing
    from sid_edge.service.limits import ImageLimits, ImageRefused, prepare_image

    spec = Preprocessing(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    squash = Preprocessing(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash")
    assert prepare_image(strip_png(), squash).shape == (3, 64, 64)  # squash does no long-side work
    with pytest.raises(ImageRefused) as e:
        prepare_image(strip_png(), spec)
    assert e.value.category == "resize_work"
    assert e.value.reason.startswith("aspect ratio 20000:1 exceeds 32:1")
    # The runtime's bound (32:1) applies to every kind of input, arrays included.
    assert prepare_image(strip_png(320, 10), spec).shape == (3, 64, 64)
    with pytest.raises(ImageRefused, match="aspect ratio 330:10 exceeds 32:1"):
        prepare_image(np.zeros((10, 330, 3), np.uint8), spec)
    with pytest.raises(ImageRefused, match="decompression bomb: 300x300 = 90000 pixels exceeds the limit of 89999"):
        prepare_image(png_bytes(300, 300), spec, ImageLimits(max_pixels=89999))
    with pytest.raises(ImageRefused, match="decompression bomb: 300x300"):
        prepare_image(Image.new("RGB", (300, 300)), spec, ImageLimits(max_pixels=89999))


# ------------------------------------------------------------------------------------------ TensorRT backend
def test_tensorrt_backend_serialises_concurrent_runs(monkeypatch, plain_artifact, tmp_path):
    """Concurrent run() calls share one execution context and one set of pinned buffers: they must take turns.
    The engine's execute waits on a 2-party barrier: if two runs could be inside at once, it would pass."""
    from tests import trt_standin

    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.runtime.tensorrt_backend import TensorRTBackend

    trt_standin.install(monkeypatch)
    spec = {"input_dtype": "float32", "min": 1, "opt": 2, "max": 4, "size": 64, "k": 4, "e": 32}
    path = tmp_path / "fp32.engine"
    path.write_bytes(b"STANDIN" + json.dumps(spec).encode())
    be = TensorRTBackend(path, read_manifest(plain_artifact))
    barrier = threading.Barrier(2, timeout=0.5)
    inside, most = [0], [0]
    execute = be.context.execute_async_v3

    def guarded(stream):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        ok = execute(stream)
        inside[0] -= 1
        return ok

    be.context.execute_async_v3 = guarded
    xs = [np.random.default_rng(i).normal(size=(3, 3, 64, 64)).astype(np.float32) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(be.run, xs))
    assert most[0] == 1
    for x, out in zip(xs, outs):
        np.testing.assert_allclose(out["p_synthetic"], trt_standin.engine_function(x, 4, 32)["p_synthetic"], rtol=1e-6)
    be.close()


def test_service_runs_with_torch_unimportable(artifact, images, tmp_path):
    # The service is part of the torch-free runtime side: block torch and serve a request in that interpreter.
    img = tmp_path / "a.png"
    img.write_bytes(images[-1][1])
    code = f"""
import sys
sys.modules['torch'] = None
from pathlib import Path
from starlette.testclient import TestClient
from sid_edge.runtime.detector import Detector
from sid_edge.service import BatchingDetector
from sid_edge.service.app import create_app
import sid_edge.cli.serve, sid_edge.service.server
core = BatchingDetector(Detector.load({str(artifact)!r}, backend='cpu'), max_wait_ms=1)
with TestClient(create_app(core)) as c:
    import time
    for _ in range(300):
        if c.get('/readyz').status_code == 200:
            break
        time.sleep(0.05)
    r = c.post('/v1/detect', content=Path({str(img)!r}).read_bytes())
    print(r.status_code, r.json()['results'][0]['prediction'] in ('real', 'synthetic'),
          *(m in sys.modules for m in ('open_clip', 'onnx')))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["200", "True", "False", "False"]


def test_serve_without_the_extra_says_what_to_install(artifact):
    code = f"""
import sys
sys.modules['fastapi'] = None
from sid_edge.cli import main
print('rc', main(['serve', '--model', {str(artifact)!r}]))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "rc 2" in r.stdout, r.stderr[-2000:]
    assert "needs the serve extra (fastapi is missing): pip install 'sid-edge[serve]'" in " ".join(r.stderr.split())


def test_backend_failure_is_500_for_that_batch_and_the_next_request_is_served(artifact, images):
    from starlette.testclient import TestClient

    from sid_edge.runtime.detector import Detector
    from sid_edge.service.app import create_app
    from sid_edge.service.core import BatchingDetector

    det = Detector.load(artifact, backend="cpu")
    core = BatchingDetector(det, max_wait_ms=1)
    working = det.backend

    class FailingOnce:
        name = working.name

        def run(self, x):
            det.backend = working
            raise RuntimeError("device lost")

    with TestClient(create_app(core)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 30, "warm-up")
        det.backend = FailingOnce()
        r = c.post("/v1/detect", content=images[0][1])
        assert r.status_code == 500 and r.json()["detail"] == "inference failed (RuntimeError); see the service log"
        r = c.post("/v1/detect", content=images[0][1])
        assert r.status_code == 200 and r.json()["results"][0]["p_synthetic"] is not None
        text = c.get("/metrics").text
    assert metric(text, "sid_edge_requests_total", 'outcome="error"') == 1
    assert metric(text, "sid_edge_images_total", 'outcome="failed"') == 1


def test_results_carry_provenance_beside_the_score(artifact, images):
    pytest.importorskip("defusedxml")
    from PIL import PngImagePlugin

    from sid_edge.provenance import attach

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Model: sd")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buf, format="PNG", pnginfo=info)
    generated = buf.getvalue()
    with running(artifact) as (url, core):
        plain = httpx.post(url + "/v1/detect", content=generated, headers={"content-type": "image/png"}).json()
        assert plain["results"][0]["provenance"] is None  # no reader attached: null, the score alone
        attach(core.detector)
        r = httpx.post(url + "/v1/detect", files=[("files", ("gen.png", generated, "image/png")),
                                                   ("files", ("photo", images[0][1], "image/jpeg"))]).json()
    signals = [s["label"] for s in r["results"][0]["provenance"]]
    assert signals == ["AUTOMATIC1111"] and r["results"][1]["provenance"] == []
    assert r["results"][0]["p_synthetic"] == pytest.approx(plain["results"][0]["p_synthetic"], abs=1e-7)
