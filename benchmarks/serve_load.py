#!/usr/bin/env python
"""Load test of `sid-edge serve` on 127.0.0.1: images/s and p50/p99 latency for 1, 4 and 16 concurrent clients,
with cross-request batching on (--max-batch N, --max-wait-ms T) and off (--max-batch 1).

For each model (the tiny test CLIP and ViT-L/14-336, both with RANDOM weights: speed does not depend on them; or an
artifact given with --artifact) it exports an FP32 artifact with a random orthogonal head (needs the train extra),
starts `sid-edge serve` as a subprocess per batching setting, and runs closed-loop clients: each of C clients posts
one JPEG (raw body, 640x480..1024x768 camera-like crops of scikit-image's photographs) and posts the next as soon as
the answer arrives. A run stops after --requests answers or --time-limit-s seconds, whichever comes first (both
bounded). The clients run in this process (asyncio + httpx) and share the machine's cores with the server, as a
pipeline on the same host would. Figures are printed as a table and written to WORK/serve_load.json with the CPU's
features and library versions.

    python benchmarks/serve_load.py --models tiny                     # about a minute
    python benchmarks/serve_load.py --models vitl --requests 12       # ViT-L: ~1-3.4 s an image on 2 cores

A measured figure, not a test: it never runs in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

MODELS = {
    # name: (open_clip model, head k, default requests per run, max batch when batching is on)
    "tiny": ("sid-edge-tiny", 4, 400, 16),
    "vitl": ("ViT-L-14-336-quickgelu", 8, 12, 4),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures go to stdout (table) and WORK/serve_load.json.")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=["tiny"], help="models to build and measure "
                   "(default: tiny)")
    p.add_argument("--artifact", type=Path, default=None, help="measure this artifact instead of building models")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16], help="concurrent clients (default: 1 4 16)")
    p.add_argument("--requests", type=int, default=None, help="answers per run (default: 400 tiny, 12 ViT-L)")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="longest run, seconds (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=None, help="--max-batch with batching on (default: 16 tiny, 4 ViT-L)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="--max-wait-ms with batching on (default: %(default)s)")
    p.add_argument("--backend", default="cpu", help="serve --backend (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("build/bench-serve"), help="working folder (default: %(default)s)")
    p.add_argument("--reuse", action="store_true", help="reuse artifacts already in WORK instead of rebuilding them")
    return p.parse_args(argv)


def machine() -> dict:
    import onnxruntime as ort

    from sid_edge.runtime.cpu_features import detect

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": detect().summary(), "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
        **{lib: metadata.version(lib) for lib in ("fastapi", "uvicorn", "httpx")},
    }


def build_artifact(name: str, work: Path, reuse: bool) -> Path:
    import torch

    from sid_edge.build.backbone import load_backbone
    from sid_edge.build.heads import HeadConfig, OrthogonalHead, save_head
    from sid_edge.export import export_detector

    model_name, k, _, _ = MODELS[name]
    out = work / name / "detector"
    if reuse and (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    backbone = load_backbone(model_name, "none")
    head_dir = save_head(OrthogonalHead(backbone.feature_dim, k),
                         HeadConfig(kind="orthogonal", k=k, feature_dim=backbone.feature_dim,
                                    backbone=backbone.identity.to_dict()), work / name / "head")
    export_detector(head_dir, out, backbone=backbone, overwrite=True)
    return out


def photos(n: int = 16) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    from sid_edge.build.demo_data import skimage_photographs

    rng = np.random.default_rng(0)
    src = list(skimage_photographs().values())
    out = []
    for i in range(n):
        img = Image.fromarray(src[i % len(src)]).resize((int(rng.integers(640, 1024)), int(rng.integers(480, 768))),
                                                        Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, max_batch: int, max_wait_ms: float, backend: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sid_edge", "serve", "--model", str(artifact), "--port", str(port),
                             "--backend", backend, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                             "--max-queue", "1024", "--timeout-s", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"sid-edge serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("sid-edge serve did not become ready within 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, images: list[bytes], clients: int, requests: int, time_limit_s: float) -> dict:
    """Closed loop: ``clients`` tasks post images until ``requests`` answers or ``time_limit_s`` have passed."""
    import httpx

    latencies: list[float] = []
    failures = 0
    issued = 0
    t_end = time.perf_counter() + time_limit_s

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal issued, failures
        while issued < requests and time.perf_counter() < t_end:
            img = images[(issued + k) % len(images)]
            issued += 1
            t0 = time.perf_counter()
            r = await c.post("/v1/detect", content=img, headers={"Content-Type": "image/jpeg"})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        before = (await c.get("/metrics")).text
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(clients)))
        seconds = time.perf_counter() - t0
        text = (await c.get("/metrics")).text
    lat = sorted(latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] * 1000) if lat else (lambda q: float("nan"))
    count = _metric(text, "sid_edge_batch_size_count") - _metric(before, "sid_edge_batch_size_count")
    batched = _metric(text, "sid_edge_batch_size_sum") - _metric(before, "sid_edge_batch_size_sum")
    return {"clients": clients, "answers": len(lat), "failures": failures, "seconds": round(seconds, 2),
            "images_per_s": round(len(lat) / seconds, 2) if seconds else None,
            "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "mean_batch": round(batched / count, 2) if count else None}


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    args.work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "runs": []}
    print(json.dumps(results["machine"]), flush=True)
    images = photos()
    targets = [("artifact", args.artifact)] if args.artifact else [(m, None) for m in args.models]
    for name, artifact in targets:
        defaults = MODELS.get(name, MODELS["tiny"])
        if artifact is None:
            print(f"[{name}] building the artifact…", flush=True)
            artifact = build_artifact(name, args.work, args.reuse)
        requests = args.requests or defaults[2]
        for batching, (max_batch, wait) in {"on": (args.max_batch or defaults[3], args.max_wait_ms),
                                            "off": (1, 0.0)}.items():
            proc, url = start_server(artifact, max_batch, wait, args.backend)
            try:
                # Warm the client path and the server's first requests outside the figures.
                asyncio.run(load(url, images, 1, 2, args.time_limit_s))
                for clients in args.concurrency:
                    r = asyncio.run(load(url, images, clients, requests, args.time_limit_s))
                    r.update(model=name, batching=batching, max_batch=max_batch, max_wait_ms=wait)
                    results["runs"].append(r)
                    print(f"[{name}] batching {batching} (max {max_batch}, {wait:g} ms), {clients} clients: "
                          f"{r['images_per_s']} images/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms "
                          f"({r['answers']} answers in {r['seconds']} s, {r['failures']} failures)", flush=True)
            finally:
                stop_server(proc)
            (args.work / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")

    table = Table("model", "batching", "clients", "images/s", "p50 ms", "p99 ms", "mean batch", "answers",
                  title="sid-edge serve on 127.0.0.1, one JPEG per request")
    for r in results["runs"]:
        table.add_row(r["model"], f"{r['batching']} (max {r['max_batch']})", str(r["clients"]), f"{r['images_per_s']}",
                      f"{r['p50_ms']}", f"{r['p99_ms']}", f"{r['mean_batch']}", str(r["answers"]))
    Console(width=110).print(table)
    print(f"results: {args.work / 'serve_load.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
