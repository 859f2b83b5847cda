#!/usr/bin/env python
"""Video scanning speed: frames/s on a 1080p clip, the share of time in decoding vs preprocessing vs the model,
per-frame latency of the streaming API (``Detector.stream``), and memory over a long stream.

For each model (the tiny test CLIP and ViT-L/14-336, RANDOM weights: speed does not depend on them; artifacts are
built, or reused with ``--reuse``, by ``benchmarks/precision_speed.py``'s ``build_artifact``) and precision it:

1. writes a 1080p clip (``cv2.VideoWriter``, MPEG-4 Part 2, 30 fps) once;
2. decodes it with :func:`sid_edge.streams.read_frames` (every frame), timing decoding (incl. BGR->RGB) and
   preprocessing separately, then times the model alone on the preprocessed frames: the shares;
3. times the whole pipeline, ``Detector.stream(read_frames(clip))`` (decode + preprocess in the producer thread
   while the model runs), at each batch size: frames/s;
4. feeds decoded 1080p frames at ``--latency-fps`` (default 10) into ``Detector.stream`` and records the time from handing a frame in
   to getting its prediction: p50/p99 latency at batch 1 and at the largest batch (``--latency-ms`` budget);
5. (tiny only) streams ``--long-minutes`` of 30 fps 640x360 frames through ``Detector.stream`` and samples the
   process RSS: memory must stay flat.

    python benchmarks/video_throughput.py --models tiny                  # about a minute on 2 cores
    python benchmarks/video_throughput.py --models vitl --frames 4       # ViT-L: a few frames only on a CPU

On a GPU machine with TensorRT: run once, ``sid-edge build WORK/<model>/detector --precision fp32 int8``, then
rerun with ``--reuse --backend tensorrt``. A measured figure,
not a test: it never runs in the test suite. Results: stdout and ``WORK/video_throughput.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["tiny", "vitl"], default=["tiny"], help="default: tiny")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp32", "int8"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="default: 1 8")
    p.add_argument("--frames", type=int, default=60, help="1080p frames per measurement (default: %(default)s)")
    p.add_argument("--latency-frames", type=int, default=90, help="paced frames for the latency figures (default: %(default)s)")
    p.add_argument("--latency-fps", type=float, default=10.0, help="input frame rate of the latency run (default: %(default)s)")
    p.add_argument("--latency-ms", type=float, default=100.0, help="max_latency_ms of the batched stream (default: %(default)s)")
    p.add_argument("--long-minutes", type=float, default=5.0, help="minutes of 30 fps video for the memory run (default: %(default)s)")
    p.add_argument("--backend", default="cpu", help="runtime backend (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("build/bench-video"), help="working folder (default: %(default)s)")
    p.add_argument("--reuse", action="store_true", help="reuse artifacts already in WORK")
    p.add_argument("--artifact", action="append", default=[], metavar="MODEL=DIR",
                   help="use this existing artifact for MODEL (tiny or vitl) instead of building one; precisions it "
                        "lacks are skipped")
    p.add_argument("--tiny-calibration-size", type=int, default=32)
    p.add_argument("--vitl-calibration-size", type=int, default=4)
    p.add_argument("--fidelity-size", type=int, default=8)
    return p.parse_args(argv)


def _precision_speed():
    spec = importlib.util.spec_from_file_location("precision_speed", Path(__file__).with_name("precision_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_clip(path: Path, n: int, size=(1920, 1080), fps=30.0) -> Path:
    import cv2

    if path.is_file() and int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
    for i in range(n):
        w.write(np.roll(base, 8 * i, axis=1))  # a panning scene: real motion for the codec
    w.release()
    return path


def measure(det, clip: Path, n: int, batch_sizes, latency_frames: int, latency_ms: float, latency_fps: float) -> dict:
    from sid_edge.runtime.images import preprocess
    from sid_edge.streams import read_frames

    # 1-2: decode vs preprocess vs model, each alone
    t_dec = t_pre = 0.0
    pre = []
    t = time.perf_counter()
    for f in read_frames(clip, every=1, max_frames=n):
        t1 = time.perf_counter()
        t_dec += t1 - t
        pre.append(preprocess(f.rgb, det.preprocessing))
        t = time.perf_counter()
        t_pre += t - t1
    frames = len(pre)
    out = {"frames": frames, "decode_ms_per_frame": 1000 * t_dec / frames, "preprocess_ms_per_frame": 1000 * t_pre / frames}
    for b in batch_sizes:
        det.run(np.stack(pre[:b]))  # warm-up
        t = time.perf_counter()
        for i in range(0, frames, b):
            det.run(np.stack(pre[i:i + b]))
        model = (time.perf_counter() - t) / frames
        total = t_dec / frames + t_pre / frames + model
        # 3: the whole pipeline (producer thread decodes + preprocesses while the model runs)
        t = time.perf_counter()
        got = sum(1 for _ in det.stream(read_frames(clip, every=1, max_frames=n), batch_size=b, max_latency_ms=1000))
        wall = time.perf_counter() - t
        out[f"b{b}"] = {"model_ms_per_frame": 1000 * model, "pipeline_frames_per_s": got / wall,
                        "share_decode": t_dec / frames / total, "share_preprocess": t_pre / frames / total,
                        "share_model": model / total}
    # 4: latency at the clip's frame rate
    decoded = [f.rgb for f in read_frames(clip, every=1, max_frames=min(n, 30))]
    for b in sorted({1, max(batch_sizes)}) if latency_frames > 0 else ():
        handed: dict[int, float] = {}

        def paced():
            start = time.perf_counter()
            for i in range(latency_frames):
                delay = start + i / latency_fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                handed[i] = time.perf_counter()
                yield decoded[i % len(decoded)]

        lat = [1000 * (time.perf_counter() - handed[p.source]) for p in det.stream(paced(), batch_size=b, max_latency_ms=latency_ms)]
        out[f"latency_b{b}"] = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                                "max_latency_ms": latency_ms, "frames": len(lat), "input_fps": latency_fps}
    return out


def long_stream(det, minutes: float, batch: int = 8) -> dict:
    rng = np.random.default_rng(1)
    bases = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(4)]
    n = int(minutes * 60 * 30)
    samples = []

    def frames():
        for i in range(n):
            if i % max(1, n // 20) == 0:
                samples.append((i, rss_mb()))
            yield (i, np.roll(bases[i % 4], i % 640, axis=1))

    t = time.perf_counter()
    count = sum(1 for _ in det.stream(frames(), batch_size=batch, max_latency_ms=100))
    wall = time.perf_counter() - t
    after_warmup = [mb for i, mb in samples if i >= n // 10]
    return {"frames": count, "video_minutes": minutes, "seconds": wall, "frames_per_s": count / wall,
            "rss_mb_samples": samples, "rss_growth_after_10pct_mb": max(after_warmup) - min(after_warmup)}


def main(argv=None) -> int:
    args = parse_args(argv)
    from sid_edge.runtime.detector import Detector
    from sid_edge.build.demo_data import write_synthclic_parquet

    ps = _precision_speed()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "synthclic"
    if not (data / "data").is_dir():
        write_synthclic_parquet(data, {"train": 24, "validation": 8})
    results = {"machine": ps.machine(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "models": {}}
    results["machine"]["loadavg_1min_at_start"] = os.getloadavg()[0]
    print(json.dumps(results["machine"]), flush=True)
    clip = write_clip(args.work / "clip_1080p.mp4", max(args.frames, 30))
    for name in args.models:
        given = dict(a.split("=", 1) for a in args.artifact)
        if name in given:
            artifact = Path(given[name])
        else:
            print(f"[{name}] building the artifact…", flush=True)
            artifact, _ = ps.build_artifact(name, args.work, data, args)
        res = results["models"][name] = {"artifact": str(artifact)}
        from sid_edge.artifact.manifest import read_manifest

        available = set(read_manifest(artifact).models)
        for precision in args.precisions:
            if precision not in available:
                print(f"[{name}] {precision}: not in {artifact}, skipped", flush=True)
                continue
            det = Detector.load(artifact, precision=precision, backend=args.backend)
            r = res[precision] = measure(det, clip, args.frames, args.batch_sizes, args.latency_frames, args.latency_ms,
                                                 args.latency_fps)
            print(f"[{name} {precision}] decode {r['decode_ms_per_frame']:.1f} ms/frame, preprocess "
                  f"{r['preprocess_ms_per_frame']:.1f} ms/frame (1080p)", flush=True)
            for b in args.batch_sizes:
                x = r[f"b{b}"]
                print(f"[{name} {precision}] batch {b}: {x['pipeline_frames_per_s']:.3g} frames/s end to end; model "
                      f"{x['model_ms_per_frame']:.1f} ms/frame; time shares decode {x['share_decode']:.0%}, preprocess "
                      f"{x['share_preprocess']:.0%}, model {x['share_model']:.0%}", flush=True)
            for k in (k for k in r if k.startswith("latency_")):
                print(f"[{name} {precision}] stream latency at {r[k]['input_fps']:g} fps input, batch {k[9:]}: "
                      f"p50 {r[k]['p50_ms']:.1f} ms, p99 {r[k]['p99_ms']:.1f} ms", flush=True)
        if name == "tiny" and args.long_minutes > 0:
            det = Detector.load(artifact, precision="fp32", backend=args.backend)
            r = res["long_stream"] = long_stream(det, args.long_minutes)
            print(f"[{name}] long stream: {r['frames']} frames ({args.long_minutes:g} min at 30 fps) in {r['seconds']:.0f} s; "
                  f"RSS {r['rss_mb_samples'][0][1]:.0f} -> {r['rss_mb_samples'][-1][1]:.0f} MB, growth after the first "
                  f"10%: {r['rss_growth_after_10pct_mb']:.1f} MB", flush=True)
        (args.work / "video_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.work / 'video_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
