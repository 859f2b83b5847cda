#!/usr/bin/env python
"""What Ray adds on one machine: images/s of ``sid-edge scan --ray`` (local Ray, 1 and 2 actors) vs a plain scan.

For each artifact it scans the same folder of JPEG photographs (camera-like sizes, written here) three ways and
prints images/s, wall time, and Ray's start-up time separately:

* ``scan``: :func:`sid_edge.runtime.scan.scan` (decoder threads + ONNX Runtime CPU, all cores), after one warm-up batch;
* ``ray/1``, ``ray/2``: :func:`sid_edge.distributed.scan.ray_scan` with 1 and 2 inference actors on a local Ray
  instance started once (``num_cpus`` = max(cores, actors + 1): one CPU slot per actor plus one for decode tasks).
  Its wall time includes planning, actor start-up (each loads and sha256-verifies the artifact) and writing the
  parquet partitions and the CSV; not Ray's own start-up, which is reported once. A first ray run (1 actor) warms
  Ray's worker processes and is reported on its own; ``first_row_s`` is the start-up part of each run (planning,
  workers, actors loading the artifact) until the first scored batch reaches the driver.

The tiny artifact (``sid-edge-tiny``, random weights: speed does not depend on them) is exported here; pass
``--model NAME=DIR`` for others (e.g. ``vitl-int8=build/bench-precision/vitl/detector`` with ``--precision int8``,
as written by benchmarks/precision_speed.py). A measured figure, not a test.

    python benchmarks/ray_scan.py                                   # tiny, 512 images
    python benchmarks/ray_scan.py --model vitl=DIR --precision int8 --images 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_speed import MODELS, photo_folder  # noqa: E402  (same photographs and tiny export as that benchmark)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="an existing artifact to measure (repeatable); without it the tiny one is exported")
    p.add_argument("--precision", default=None, help="model variant (default: the artifact's default)")
    p.add_argument("--images", type=int, default=512, help="images in the folder (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts (default: 1 2)")
    p.add_argument("--work", type=Path, default=Path("build/bench-ray"), help="working folder (default: %(default)s)")
    return p.parse_args(argv)


def machine() -> dict:
    import platform
    from importlib import metadata

    import onnxruntime as ort

    from sid_edge.runtime.cpu_features import detect

    return {"cpu": detect().summary(), "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "ray": metadata.version("ray"),
            "pyarrow": metadata.version("pyarrow")}


def tiny_artifact(work: Path) -> Path:
    import torch

    from sid_edge.build.backbone import load_backbone
    from sid_edge.build.heads import HeadConfig, OrthogonalHead, save_head
    from sid_edge.export import export_detector

    out = work / "tiny" / "detector"
    if (out / "manifest.json").is_file():
        return out
    model_name, k, _ = MODELS["tiny"]
    torch.manual_seed(0)
    backbone = load_backbone(model_name, "none")
    head_dir = save_head(OrthogonalHead(backbone.feature_dim, k),
                         HeadConfig(kind="orthogonal", k=k, feature_dim=backbone.feature_dim,
                                    backbone=backbone.identity.to_dict()), work / "tiny" / "head")
    export_detector(head_dir, out, backbone=backbone, overwrite=True)
    return out


def plain_scan(artifact: Path, precision: str | None, folder: Path, batch_size: int) -> dict:
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.images import discover_images
    from sid_edge.runtime.scan import scan

    t = time.perf_counter()
    det = Detector.load(artifact, precision=precision, backend="cpu")
    load_s = time.perf_counter() - t
    det.predict([str(p) for p in discover_images([folder])[:batch_size]], batch_size=batch_size)  # warm-up
    s = scan([folder], det, out=os.devnull, batch_size=batch_size, progress=False)
    return {"images": s.files, "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_second, 2),
            "model_load_s": round(load_s, 2)}


def ray_run(artifact: Path, precision: str | None, folder: Path, batch_size: int, actors: int, out: Path) -> dict:
    import shutil

    from sid_edge.distributed.scan import ray_scan

    shutil.rmtree(out.with_suffix(".parquet"), ignore_errors=True)
    s = ray_scan([folder], artifact, out=out, actors=actors, batch_size=batch_size, precision=precision,
                 backend="cpu", progress=False)
    return {"images": s.rows_this_run, "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_second, 2),
            "first_row_s": round(s.first_row_s, 2),
            "errors": s.errors, "actors_started": s.actors_started}


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    args.work.mkdir(parents=True, exist_ok=True)
    models = dict(m.split("=", 1) for m in args.model) or {"tiny": str(tiny_artifact(args.work))}
    folder = photo_folder(args.work / f"photos_{args.images}", args.images)
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
               "images": args.images, "batch_size": args.batch_size, "models": {}}
    print(json.dumps(results["machine"]), flush=True)
    t = time.perf_counter()
    cores = os.cpu_count() or 2
    ray.init(num_cpus=max(cores, max(args.actors) + 1), include_dashboard=False, logging_level="WARNING")
    results["ray_start_s"] = round(time.perf_counter() - t, 2)
    print(f"local Ray instance started in {results['ray_start_s']} s", flush=True)
    try:
        for name, artifact in models.items():
            runs = {"scan": plain_scan(Path(artifact), args.precision, folder, args.batch_size)}
            print(f"[{name}] scan: {runs['scan']}", flush=True)
            runs["ray/warm-up"] = r = ray_run(Path(artifact), args.precision, folder, args.batch_size, 1,
                                              args.work / f"{name}-warm-up.csv")
            print(f"[{name}] ray, first run (Ray workers start cold: imports): {r}", flush=True)
            for n in args.actors:
                runs[f"ray/{n}"] = r = ray_run(Path(artifact), args.precision, folder, args.batch_size, n,
                                               args.work / f"{name}-ray{n}.csv")
                print(f"[{name}] ray, {n} actor(s): {r}", flush=True)
            results["models"][name] = runs
            (args.work / "ray_scan.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        ray.shutdown()
    print(f"{'model':<12}{'scan img/s':>12}" + "".join(f"{'ray/' + str(n) + ' img/s':>14}" for n in args.actors)
          + "   (ray: seconds to the first scored batch)")
    for name, runs in results["models"].items():
        print(f"{name:<12}{runs['scan']['images_per_s']:>12.2f}"
              + "".join(f"{runs[f'ray/{n}']['images_per_s']:>14.2f}" for n in args.actors)
              + "   (" + ", ".join(f"{runs[f'ray/{n}']['first_row_s']:.1f} s" for n in args.actors) + ")")
    print(f"results: {args.work / 'ray_scan.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
