#!/usr/bin/env python
"""Scan throughput (images/s) of FP32 vs INT8 artifacts on this machine's CPU, batch 1 and 8.

For each model (the tiny test CLIP and ViT-L/14-336, both with RANDOM weights: speed does not depend on them) it
exports an artifact with a random orthogonal head, adds the INT8 Q/DQ variant calibrated on a small SynthCLIC-shaped
parquet set written here, then times ``sid_edge.runtime.scan.scan`` (decode in threads + preprocessing + ONNX Runtime CPU)
over a folder of photographs for each precision and batch size, after one warm-up batch. Results are printed as a
table and written to ``WORK/precision_speed.json`` with the machine's CPU flags and library versions.

    python benchmarks/precision_speed.py                      # tiny + ViT-L (ViT-L: ~20 min on 2 cores)
    python benchmarks/precision_speed.py --models tiny        # seconds

INT8 calibration of ViT-L on a CPU costs ~40 s an image plus ~4 min of graph work, hence the small default
``--vitl-calibration-size``. A measured figure, not a test: it never runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

MODELS = {
    # name: (open_clip model, head k, scan images)
    "tiny": ("sid-edge-tiny", 4, 256),
    "vitl": ("ViT-L-14-336-quickgelu", 8, 16),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures go to stdout (table) and WORK/precision_speed.json.")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to measure (default: all)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp32", "int8"],
                   help="precisions to time (default: fp32 int8; fp16 on a CPU runs through casts and is slow)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="scan batch sizes (default: 1 8)")
    p.add_argument("--images", type=int, default=None, help="images per scan (default: 256 tiny, 16 ViT-L)")
    p.add_argument("--tiny-calibration-size", type=int, default=32, help="INT8 calibration images, tiny (default: %(default)s)")
    p.add_argument("--vitl-calibration-size", type=int, default=4, help="INT8 calibration images, ViT-L (default: %(default)s)")
    p.add_argument("--fidelity-size", type=int, default=8, help="held-out images for the fidelity report (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("build/bench-precision"), help="working folder (default: %(default)s)")
    p.add_argument("--reuse", action="store_true", help="reuse artifacts already in WORK instead of rebuilding them")
    return p.parse_args(argv)


def machine() -> dict:
    import onnxruntime as ort

    from sid_edge.runtime.cpu_features import detect

    return {
        "cpu": detect().summary(), "python": platform.python_version(),
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
        "nvidia-modelopt": metadata.version("nvidia-modelopt"), "torch": metadata.version("torch"),
    }


def build_artifact(name: str, work: Path, data: Path, args) -> tuple[Path, dict]:
    import torch

    from sid_edge.build.backbone import load_backbone
    from sid_edge.calibration.variants import add_precision_variants
    from sid_edge.export import export_detector
    from sid_edge.build.heads import HeadConfig, OrthogonalHead, save_head
    from sid_edge.artifact.manifest import read_manifest

    model_name, k, _ = MODELS[name]
    out = work / name / "detector"
    if args.reuse and (out / "manifest.json").is_file():
        return out, {"reused": True}
    timings = {}
    torch.manual_seed(0)
    t = time.perf_counter()
    backbone = load_backbone(model_name, "none")
    head_dir = save_head(OrthogonalHead(backbone.feature_dim, k),
                         HeadConfig(kind="orthogonal", k=k, feature_dim=backbone.feature_dim, backbone=backbone.identity.to_dict()),
                         work / name / "head")
    export_detector(head_dir, out, backbone=backbone, overwrite=True)
    timings["export_fp32_s"] = round(time.perf_counter() - t, 1)
    del backbone
    wanted = list(dict.fromkeys(["fp32", *args.precisions]))
    size = args.vitl_calibration_size if name == "vitl" else args.tiny_calibration_size
    t = time.perf_counter()
    add_precision_variants(out, wanted, calibration_data=data, calibration_size=size, fidelity_size=args.fidelity_size,
                           cache_dir=work / "cache", say=lambda line: print(f"  [{name}] {line}", flush=True))
    timings["variants_s"] = round(time.perf_counter() - t, 1)
    timings["calibration_images"] = size
    m = read_manifest(out).to_dict()
    timings["sizes_mb"] = {p: round(e["size_bytes"] / 1e6, 1) for p, e in m["models"].items()}
    return out, timings


def photo_folder(out: Path, n: int) -> Path:
    """``n`` JPEG crops of scikit-image's photographs at camera-like sizes (decoding is part of a scan)."""
    import numpy as np
    from PIL import Image

    from sid_edge.build.demo_data import skimage_photographs

    if out.is_dir() and len(list(out.iterdir())) == n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = list(skimage_photographs().values())
    for i in range(n):
        arr = photos[i % len(photos)]
        img = Image.fromarray(arr).resize((int(rng.integers(640, 1024)), int(rng.integers(480, 768))), Image.BICUBIC)
        img.save(out / f"photo_{i:03d}.jpg", quality=90)
    return out


def time_scan(artifact: Path, precision: str, folder: Path, batch_size: int) -> dict:
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.images import discover_images
    from sid_edge.runtime.scan import scan

    det = Detector.load(artifact, precision=precision, backend="cpu")
    warm = [str(p) for p in discover_images([folder])[:batch_size]]
    det.predict(warm, batch_size=batch_size)  # warm-up: session allocations, prepacked weights
    summary = scan([folder], det, out=os.devnull, batch_size=batch_size, progress=False)
    return {"images": summary.files, "errors": summary.errors, "seconds": round(summary.seconds, 2),
            "images_per_s": round(summary.images_per_second, 3)}


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from sid_edge.build.demo_data import write_synthclic_parquet

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "synthclic"
    if not (data / "data").is_dir():
        write_synthclic_parquet(data, {"train": 24, "validation": 8})
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "models": {}}
    print(json.dumps(results["machine"]), flush=True)
    for name in args.models:
        print(f"[{name}] building the artifact…", flush=True)
        artifact, build = build_artifact(name, args.work, data, args)
        folder = photo_folder(args.work / f"photos_{args.images or MODELS[name][2]}", args.images or MODELS[name][2])
        runs = {}
        for precision in args.precisions:
            for b in args.batch_sizes:
                runs[f"{precision}/b{b}"] = r = time_scan(artifact, precision, folder, b)
                print(f"[{name}] {precision} batch {b}: {r['images_per_s']:.3f} images/s ({r['images']} images, {r['seconds']} s)", flush=True)
        results["models"][name] = {"open_clip": MODELS[name][0], "build": build, "scan": runs}
        (args.work / "precision_speed.json").write_text(json.dumps(results, indent=2) + "\n")

    table = Table("model", "precision", *[f"batch {b} img/s" for b in args.batch_sizes], title="sid-edge scan throughput, ONNX Runtime CPU")
    for name, res in results["models"].items():
        for precision in args.precisions:
            table.add_row(name, precision, *[f"{res['scan'][f'{precision}/b{b}']['images_per_s']:.3f}" for b in args.batch_sizes])
    Console(width=100).print(table)
    print(f"results: {args.work / 'precision_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
