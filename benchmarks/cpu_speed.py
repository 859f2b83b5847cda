#!/usr/bin/env python
"""CPU speed per backend and precision: graph images/s at several batch sizes, the fraction of the CPU's FP32 peak,
and the whole-scan ratio against the paper's pipeline (issue 16).

For each model (the tiny test CLIP or ViT-L/14-336, RANDOM weights: speed does not depend on them) it builds (or,
with ``--reuse``, reuses) an artifact with FP32 and INT8 Q/DQ graphs (``benchmarks/precision_speed.py``'s builder),
then:

1. **graph**: for each configuration (backend:precision, e.g. ``onnxruntime:int8``, ``openvino:bf16``) and batch
   size, runs preprocessed random batches through ``Detector.run`` after one warm-up run and reports images/s,
   GFLOP/s (FLOP per image from the vision tower's shape: 2·(12·N·D² + 2·N²·D) per layer + patch embedding, N
   tokens, D width; ViT-L/14-336 ≈ 381 GFLOP) and the fraction of the FP32 peak printed at the start (cores ×
   clock × FP32 lanes × 2 × FMA units; INT8 and BF16 peaks are higher, so their fraction is of the FP32 figure),
   and max |Δlogit| against ONNX Runtime FP32 on the same inputs. ``onnxruntime:int8-exact`` forces the exact U8U8
   kernel (``session.x64quantprecision=1``) to show what baking it into the artifact cost.
2. **scan** (``--scan``): ``sid-edge scan``'s code path (model load + decode + preprocess + inference) over a folder
   of JPEG photographs against the paper's pipeline (Hugging Face ``CLIPVisionModel`` + torchvision ``Resize``,
   ``CenterCrop``, ``ToTensor``, ``Normalize`` on PIL images, batch 8, same images, same random-architecture
   size, PyTorch on the same threads), alternating runs, medians; and the share of the scan's wall time that
   decoding and preprocessing alone take (measured without inference, same decoder threads).

    python benchmarks/cpu_speed.py --models tiny                          # seconds
    python benchmarks/cpu_speed.py --models vitl --images 16 --batch-sizes 1 8 --reuse     # ViT-L: minutes

ViT-L on 2 cores: ~1-3 s an image in FP32; keep ``--images`` small on a shared machine. A measured figure, not a
test: it never runs in the test suite. Results: a table on stdout and ``WORK/cpu_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_CONFIGS = ["onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int8-exact", "openvino:fp32", "openvino:int8",
                   "openvino:bf16"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures go to stdout and WORK/cpu_speed.json.")
    p.add_argument("--models", nargs="+", choices=["tiny", "vitl"], default=["tiny"], help="models (default: tiny)")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="BACKEND:PRECISION",
                   help="backend:precision pairs (default: %(default)s); backends onnxruntime, openvino")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32], help="graph batch sizes (default: 1 8 32)")
    p.add_argument("--images", type=int, default=64, help="images per graph measurement and per scan (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the library's choice)")
    p.add_argument("--scan", action="store_true", help="also time whole scans against the paper's pipeline")
    p.add_argument("--scan-configs", nargs="+", default=["onnxruntime:fp32", "openvino:int8", "openvino:bf16"],
                   metavar="BACKEND:PRECISION", help="configurations for --scan (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="alternating scan runs per configuration (default: %(default)s)")
    p.add_argument("--fma-units", type=int, default=None, help="FMA units per core for the peak (default: 2)")
    p.add_argument("--work", type=Path, default=Path("build/bench-cpu"), help="working folder (default: %(default)s)")
    p.add_argument("--reuse", action="store_true", help="reuse artifacts already in WORK")
    p.add_argument("--vitl-calibration-size", type=int, default=4, help="INT8 calibration images, ViT-L (default: %(default)s)")
    p.add_argument("--tiny-calibration-size", type=int, default=32, help="INT8 calibration images, tiny (default: %(default)s)")
    return p.parse_args(argv)


def machine(args) -> dict:
    import onnxruntime as ort

    from sid_edge.runtime.cpu_features import detect
    from sid_edge.runtime.openvino_backend import openvino_version

    cpu = detect()
    peak, how = cpu.peak_fp32_gflops(args.fma_units)
    import os

    return {"cpu": cpu.describe(), "load_average": os.getloadavg(), "cores": cpu.cores, "mhz": cpu.mhz, "vector_bits": cpu.vector_bits,
            "int8_dot": cpu.int8_dot, "bf16": cpu.bf16, "peak_fp32_gflops": peak, "peak_how": how,
            "onnxruntime": ort.__version__, "openvino": openvino_version(),
            "torch": metadata.version("torch")}


def vision_shape(model_name: str) -> dict:
    """Vision tower shape (width, layers, patch, image size) from the open_clip config."""
    import open_clip

    from sid_edge.build.backbone import register_project_configs

    register_project_configs()
    v = open_clip.get_model_config(model_name)["vision_cfg"]
    width, layers, patch, size = v["width"], v["layers"], v["patch_size"], v["image_size"]
    return {"width": width, "layers": layers, "patch": patch, "image_size": size,
            "heads": width // v.get("head_width", 64), "mlp_ratio": v.get("mlp_ratio", 4.0)}


def gflop_per_image(s: dict) -> float:
    """2·MACs of the vision tower: per layer 12·N·D² (QKV, out-proj, MLP with ratio 4) + 2·N²·D (scores, weighted
    sum); patch embedding 3·P²·D per patch. The head and concept layers are negligible."""
    n_patches = (s["image_size"] // s["patch"]) ** 2
    n, d = n_patches + 1, s["width"]
    per_layer = (4 + 2 * s["mlp_ratio"]) * n * d * d + 2 * n * n * d
    return 2 * (s["layers"] * per_layer + n_patches * 3 * s["patch"] ** 2 * d) / 1e9


def load(artifact: Path, config: str, threads):
    from sid_edge.runtime.backends import OnnxRuntimeBackend
    from sid_edge.runtime.detector import Detector
    from sid_edge.artifact.manifest import read_manifest

    backend, precision = config.split(":")
    if precision == "int8-exact":  # the old artifact's baked setting, for comparison
        m = read_manifest(artifact)
        ort = OnnxRuntimeBackend(artifact / m.models["int8"].file, m, threads=threads, exact_int8=True, cpu=_no_vnni())
        return Detector(Path(artifact), m, ort, "int8")
    return Detector.load(artifact, precision=precision, backend={"onnxruntime": "cpu"}.get(backend, backend),
                         threads=threads)


def _no_vnni():
    from sid_edge.runtime.cpu_features import CpuFeatures

    return CpuFeatures(machine="x86_64")  # flags unknown: the exact kernel


def time_graph(det, batch: int, images: int, size: int, ref_logits=None) -> dict:
    import numpy as np

    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    out = det.run(x)  # warm-up
    runs = max(1, -(-images // batch))
    t = time.perf_counter()
    for _ in range(runs):
        det.run(x)
    dt = time.perf_counter() - t
    return {"images": runs * batch, "seconds": round(dt, 3), "images_per_s": runs * batch / dt, "logit": out["logit"]}


def graph_table(name: str, artifact: Path, args, shape: dict, peak: float | None) -> dict:
    from sid_edge.artifact.manifest import read_manifest

    size = read_manifest(artifact).preprocessing.size
    gflop = gflop_per_image(shape)
    print(f"[{name}] {gflop:.2f} GFLOP per image ({shape})", flush=True)
    results, ref = {}, {}
    for config in args.configs:
        try:
            det = load(artifact, config, args.threads)
        except ValueError as e:  # backend unavailable here
            print(f"[{name}] {config}: skipped ({e})", flush=True)
            continue
        for b in args.batch_sizes:
            r = time_graph(det, b, args.images, size)
            logits = r.pop("logit")
            if config == "onnxruntime:fp32":
                ref[b] = logits
            r["max_abs_dlogit_vs_ort_fp32"] = float(abs(logits - ref[b]).max()) if b in ref else None
            r["gflops"] = r["images_per_s"] * gflop
            r["fraction_of_fp32_peak"] = r["gflops"] / peak if peak else None
            results[f"{config}/b{b}"] = r
            print(f"[{name}] {config:24s} batch {b:3d}: {r['images_per_s']:8.3f} img/s, {r['gflops']:7.1f} GFLOP/s"
                  + (f" ({100 * r['fraction_of_fp32_peak']:.0f}% of FP32 peak)" if peak else "")
                  + (f", max |Δlogit| {r['max_abs_dlogit_vs_ort_fp32']:.2e}" if r["max_abs_dlogit_vs_ort_fp32"] is not None else ""),
                  flush=True)
        det.backend.close()
    return {"gflop_per_image": gflop, "runs": results}


# ------------------------------------------------------------------------------------------ whole scans
def sid_edge_scan(artifact: Path, config: str, folder: Path, threads) -> float:
    from sid_edge.runtime.scan import scan

    t = time.perf_counter()
    det = load(artifact, config, threads)
    summary = scan([folder], det, out=os.devnull, batch_size=8, progress=False)
    assert summary.errors == 0, summary
    return time.perf_counter() - t


def decode_only(artifact: Path, folder: Path) -> float:
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.runtime.batching import iter_batches
    from sid_edge.runtime.images import discover_images

    pre = read_manifest(artifact).preprocessing
    t = time.perf_counter()
    for _ in iter_batches([str(p) for p in discover_images([folder])], pre, 8):
        pass
    return time.perf_counter() - t


def paper_pipeline(shape: dict, folder: Path, threads) -> float:
    """The paper's pipeline: HF CLIPVisionModel (random weights, same shape, QuickGELU) + torchvision transform on
    PIL images (clip-cues: Resize(S) bilinear antialiased, CenterCrop(S), ToTensor, CLIP mean/std), batch 8, its
    pooler_output through a linear head. Wall time including model construction."""
    import torch
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=shape["width"], intermediate_size=int(shape["width"] * shape["mlp_ratio"]),
                           num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                           image_size=shape["image_size"], patch_size=shape["patch"], hidden_act="quick_gelu")
    model = CLIPVisionModel(cfg).eval()
    head = torch.nn.Linear(shape["width"], 1)
    s = shape["image_size"]
    tf = transforms.Compose([transforms.Resize(s), transforms.CenterCrop(s), transforms.ToTensor(),
                             transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    files = sorted(folder.iterdir())
    with torch.inference_mode():
        for i in range(0, len(files), 8):
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 8]])
            torch.sigmoid(head(model(pixel_values=x).pooler_output))
    return time.perf_counter() - t


def scan_table(name: str, artifact: Path, args, shape: dict) -> dict:
    from precision_speed import photo_folder

    folder = photo_folder(args.work / f"photos_{args.images}", args.images)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("[scan] transformers is not installed: no paper-pipeline comparison (pip install transformers)")
        return {}
    out = {"images": args.images, "decode_preprocess_only_s": round(decode_only(artifact, folder), 2)}
    for config in args.scan_configs:
        ours, theirs = [], []
        try:
            load(artifact, config, args.threads).backend.close()
        except ValueError as e:
            print(f"[{name}] scan {config}: skipped ({e})", flush=True)
            continue
        for _ in range(args.repeats):  # alternating, so drift in machine load hits both alike
            ours.append(sid_edge_scan(artifact, config, folder, args.threads))
            theirs.append(paper_pipeline(shape, folder, args.threads))
        o, p = statistics.median(ours), statistics.median(theirs)
        out[config] = {"sid_edge_s": round(o, 2), "paper_s": round(p, 2), "ratio": round(p / o, 2),
                       "decode_share": round(out["decode_preprocess_only_s"] / o, 3)}
        print(f"[{name}] scan {config}: sid-edge {o:.2f} s vs paper pipeline {p:.2f} s ({p / o:.2f}x), "
              f"{args.images} images; decode+preprocess alone {out['decode_preprocess_only_s']:.2f} s "
              f"({100 * out['decode_preprocess_only_s'] / o:.0f}% of the scan's wall time)", flush=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from precision_speed import MODELS, build_artifact

    from sid_edge.build.demo_data import write_synthclic_parquet

    args.work.mkdir(parents=True, exist_ok=True)
    # OpenVINO's compiled models (GBs for ViT-L) go to WORK, not the user's cache.
    os.environ.setdefault("SID_EDGE_CACHE", str((args.work / "cache").resolve()))
    info = machine(args)
    print(f"CPU: {info['cpu']}")
    print(f"FP32 peak: {info['peak_fp32_gflops'] or float('nan'):.0f} GFLOP/s = {info['peak_how']}")
    print(f"INT8 dot product: {info['int8_dot'] or 'none (no VNNI/AMX)'}; BF16: {info['bf16'] or 'none'}; "
          f"ONNX Runtime {info['onnxruntime']}, OpenVINO {info['openvino'] or 'not installed'}; load average "
          f"{info['load_average'][0]:.1f} (others' work on a shared machine slows every figure)", flush=True)
    results = {"machine": info, "command": " ".join(["cpu_speed.py", *(argv or sys.argv[1:])]), "models": {}}
    data = args.work / "synthclic"
    if not (data / "data").is_dir():
        write_synthclic_parquet(data, {"train": 24, "validation": 8})
    for name in args.models:
        bargs = argparse.Namespace(reuse=args.reuse, precisions=["int8"], vitl_calibration_size=args.vitl_calibration_size,
                                   tiny_calibration_size=args.tiny_calibration_size, fidelity_size=8)
        print(f"[{name}] artifact…", flush=True)
        artifact, build = build_artifact(name, args.work, data, bargs)
        shape = vision_shape(MODELS[name][0])
        res = {"build": build, "graph": graph_table(name, artifact, args, shape, info["peak_fp32_gflops"])}
        if args.scan:
            res["scan"] = scan_table(name, artifact, args, shape)
        results["models"][name] = res
        (args.work / "cpu_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.work / 'cpu_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
