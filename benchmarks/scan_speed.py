"""Scan throughput (images/s) of the fused FP32 ONNX graph on ONNX Runtime, end to end: discovery, Pillow decode
and preprocessing in worker threads, batched inference, CSV writing — exactly `sid-edge scan`.

Random backbone weights (`--clip-pretrained none`) are fine: speed does not depend on the weight values. Artifacts are
exported once into --work and reused on later runs.

    python benchmarks/scan_speed.py                                  # tiny model and ViT-L-14-336
    python benchmarks/scan_speed.py --models sid-edge-tiny --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def build_artifact(model_name: str, work: Path) -> Path:
    """Export (once) an artifact of ``model_name`` with random weights and a random orthogonal head (k=8)."""
    out = work / f"artifact-{model_name}"
    if (out / "manifest.json").is_file():
        return out
    import torch

    from sid_edge.backbone import load_backbone
    from sid_edge.export import export_detector
    from sid_edge.heads import HeadConfig, OrthogonalHead, save_head

    torch.manual_seed(0)
    backbone = load_backbone(model_name, "none")
    head_dir = save_head(OrthogonalHead(backbone.feature_dim, 8),
                         HeadConfig(kind="orthogonal", k=8, feature_dim=backbone.feature_dim,
                                    backbone=backbone.identity.to_dict()), work / f"head-{model_name}")
    t = time.perf_counter()
    export_detector(head_dir, out, backbone=backbone, overwrite=True)
    print(f"exported {model_name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def photo_folder(work: Path, n: int) -> Path:
    """``n`` real photographs of varied sizes (scikit-image's, cycled; JPEG and PNG)."""
    from PIL import Image

    from sid_edge.demo import skimage_photographs

    folder = work / f"photos-{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(skimage_photographs().items())
    for i in range(n):
        name, arr = photos[i % len(photos)]
        Image.fromarray(arr).save(folder / f"{i:05d}_{name}.{'jpg' if i % 2 else 'png'}", quality=92)
    return folder


def measure(artifact: Path, photos: Path, batch_size: int, out_csv: Path) -> dict:
    from sid_edge.detector import Detector
    from sid_edge.scan import scan

    det = Detector.load(artifact)
    det.run(__import__("numpy").zeros((batch_size, 3, det.input_size, det.input_size), "float32"))  # warm-up
    summary = scan([photos], det, out=out_csv, batch_size=batch_size, progress=False)
    return {"images": summary.files, "seconds": round(summary.seconds, 3),
            "images_per_second": round(summary.images_per_second, 2), "errors": summary.errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sid-edge-tiny", "ViT-L-14-336-quickgelu"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--images", type=int, default=None, help="photographs per scan (default: 200 tiny, 16 others)")
    p.add_argument("--work", type=Path, default=Path("build/bench"), help="artifacts and photos are kept here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        artifact = build_artifact(model, args.work)
        n = args.images or (200 if model == "sid-edge-tiny" else 16)
        photos = photo_folder(args.work, n)
        for bs in args.batch_sizes:
            r = {"model": model, "precision": "fp32", "backend": "onnxruntime-cpu", "batch_size": bs,
                 **measure(artifact, photos, bs, args.work / "results.csv")}
            rows.append(r)
            print(f"{model:28s} fp32 batch {bs:3d}: {r['images_per_second']:8.2f} images/s "
                  f"({r['images']} images in {r['seconds']} s)", flush=True)
    print(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
