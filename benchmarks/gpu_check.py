#!/usr/bin/env python
"""GPU check, one prepared script for a machine with an NVIDIA GPU (and TensorRT, cuda-python, ideally
onnxruntime-gpu):

  1. exports the tiny model and ViT-L-14-336 (random weights; architecture and speed are real, scores are not),
  2. adds the FP16 and INT8 graphs through the precision-variants API when this branch has it,
  3. builds a TensorRT engine per precision (strongly typed, profile 1/8/64, timing cache in the artifact),
  4. checks every backend x precision against ONNX Runtime CPU FP32 on the same images: max and mean |Δp_synthetic|
     and decision agreement (threshold = the reference's median p, so about half the images sit on each side:
     random weights put every p near one value, where a fixed 0.5 would test nothing),
  5. prints images/s at batch 1, 8 and 64 per backend and precision (``Detector.run`` on preprocessed host
     arrays: host->device copies included) beside PyTorch eager FP32 on the same GPU.

Designed to finish in under 8 minutes on a data-centre GPU: the builder optimization level defaults to 2, and a
time budget (``--budget-s``) skips what would overrun, saying so. Without a GPU it still runs what it can (ONNX
Runtime CPU, PyTorch on the CPU) and says what it skipped: ``--models tiny`` makes a quick dry run anywhere.

    python benchmarks/gpu_check.py                       # tiny + ViT-L-14-336
    python benchmarks/gpu_check.py --models tiny --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

MODELS = {"tiny": "sid-edge-tiny", "vit-l": "ViT-L-14-336-quickgelu"}
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def say(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ set-up
def export_random(model_key: str, out: Path) -> Path:
    """Export the fused graph of ``model_key`` with random backbone weights and a random orthogonal head (k=8)."""
    import torch

    from sid_edge.build.backbone import load_backbone
    from sid_edge.export import export_detector
    from sid_edge.build.heads import HeadConfig, OrthogonalHead, save_head

    torch.manual_seed(0)
    backbone = load_backbone(MODELS[model_key], "none")
    head = OrthogonalHead(backbone.feature_dim, 8)
    head_dir = save_head(head, HeadConfig(kind="orthogonal", k=8, feature_dim=backbone.feature_dim,
                                          backbone=backbone.identity.to_dict()), out / "head")
    artifact = out / "detector"
    export_detector(head_dir, artifact, backbone=backbone, overwrite=True)
    return artifact


def check_images(spec) -> np.ndarray:
    """16 preprocessed images [16,3,S,S] float32: scikit-image's 10 photographs and 6 rendered images."""
    from sid_edge.build.demo_data import rendered_image, skimage_photographs
    from sid_edge.runtime.images import preprocess

    arrays = [preprocess(a, spec) for a in skimage_photographs().values()]
    arrays += [preprocess(rendered_image(seed), spec) for seed in range(6)]
    return np.stack(arrays).astype(np.float32)


def add_precision_variants(artifact: Path, work: Path, model_key: str) -> list[str]:
    """FP16 (ModelOpt AutoCast) and INT8 (ModelOpt PTQ, max calibration) graphs written into the artifact through
    :func:`sid_edge.calibration.variants.add_precision_variants`, calibrated on the offline demo images (random
    weights: only the numerics matter here). Returns the precisions added; says why when it fails."""
    from sid_edge.calibration.variants import add_precision_variants as add_variants
    from sid_edge.build.demo_data import write_demo_dataset

    data = work / "calibration-data"
    if not (data / "real").is_dir():
        write_demo_dataset(data, crops_per_photo=1, n_rendered=8)
    # ViT-L calibration runs through ONNX Runtime (GPU providers when onnxruntime-gpu is installed): keep it small.
    size = 16 if model_key == "tiny" else 4
    try:
        manifest = add_variants(artifact, ["fp32", "fp16", "int8"], calibration_data=data, calibration_size=size,
                                fidelity_size=8, say=say)
    except Exception as e:  # noqa: BLE001 - report and go on with FP32
        say(f"FP16/INT8 variants failed: {type(e).__name__}: {e}")
        return []
    return [p for p in ("fp16", "int8") if p in manifest.models]


# ------------------------------------------------------------------------------------------ measurements
def fidelity(p: np.ndarray, p_ref: np.ndarray, threshold: float) -> dict:
    d = np.abs(p.astype(np.float64) - p_ref)
    agree = np.mean((p >= threshold) == (p_ref >= threshold))
    return {"max_abs_dp": float(d.max()), "mean_abs_dp": float(d.mean()), "decision_agreement": float(agree)}


def throughput(run, batch: int, image_size: int, min_seconds: float, max_iters: int = 200) -> float:
    """images/s of ``run(x)`` on a random [batch,3,S,S] float32 array: 2 warm-up runs, then timed runs until
    ``min_seconds`` have passed (at least one)."""
    x = np.random.default_rng(batch).normal(size=(batch, 3, image_size, image_size)).astype(np.float32)
    for _ in range(2):
        run(x)
    n, start = 0, time.perf_counter()
    while n < max_iters:
        run(x)
        n += 1
        if time.perf_counter() - start >= min_seconds:
            break
    return batch * n / (time.perf_counter() - start)


def torch_eager(artifact_backbone, model_key: str):
    """PyTorch eager FP32 forward of the same random model (same seed), on CUDA when torch has it. Returns
    (run(x) -> p_synthetic numpy, device name)."""
    import torch

    from sid_edge.build.backbone import load_backbone
    from sid_edge.export import FusedDetector
    from sid_edge.build.heads import load_head

    torch.manual_seed(0)
    backbone = load_backbone(MODELS[model_key], "none")
    head, _ = load_head(artifact_backbone)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = FusedDetector(backbone, head).to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            p = model(torch.from_numpy(x).to(device))[1]
            return p.float().cpu().numpy()

    return run, f"cuda ({torch.cuda.get_device_name(0)})" if device == "cuda" else "cpu"


def check_model(model_key: str, work: Path, args, env, report: dict) -> None:
    from sid_edge.runtime.detector import Detector
    from sid_edge.runtime.tensorrt_engines import BatchProfile
    from sid_edge.artifact.manifest import read_manifest

    rows = report.setdefault("rows", [])
    say(f"== {model_key} ({MODELS[model_key]}, random weights): exporting the fused ONNX graph")
    artifact = export_random(model_key, work / model_key)
    manifest = read_manifest(artifact)
    spec = manifest.preprocessing
    size = spec.size
    pixels = check_images(spec)
    say(f"exported to {artifact} ({manifest.models['fp32'].size_bytes / 1e6:.0f} MB FP32)")
    add_precision_variants(artifact, work / model_key, model_key)
    precisions = [p for p in ("fp16", "int8", "fp32") if p in read_manifest(artifact).models]

    ref = Detector.load(artifact, backend="cpu", precision="fp32")
    p_ref = ref.run(pixels)["p_synthetic"].astype(np.float64)
    threshold = float(np.median(p_ref))
    say(f"reference ONNX Runtime CPU FP32 on {len(pixels)} images: p in [{p_ref.min():.4f}, {p_ref.max():.4f}], "
        f"decision threshold for agreement = median {threshold:.4f}")

    engines_ok = env.has_tensorrt and env.has_gpu
    if not engines_ok:
        say("TensorRT engines skipped: " + "; ".join(env.problems))
    import onnxruntime as ort

    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if not has_cuda_ep:
        say("ONNX Runtime CUDA skipped: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")

    runs = []  # (backend, precision, run callable)
    for p in precisions:
        if engines_ok:
            if elapsed() > args.budget_s:
                say(f"budget of {args.budget_s:.0f} s spent: {p} engine not built")
            else:
                from sid_edge.export.engine import build_engine

                try:
                    entry = build_engine(artifact, p, profile=BatchProfile(1, 8, 64), optimization_level=args.opt_level,
                                         progress=False)
                    say(f"built {entry['file']} in {entry['build_seconds']:.1f} s ({entry['size_bytes'] / 1e6:.0f} MB)")
                    runs.append(("tensorrt", p, Detector.load(artifact, precision=p, backend="tensorrt").run))
                except Exception as e:  # noqa: BLE001 - report, go on
                    say(f"{p} engine failed: {e}")
        if has_cuda_ep:
            try:
                runs.append(("onnxruntime-cuda", p, Detector.load(artifact, precision=p, backend="cuda").run))
            except Exception as e:  # noqa: BLE001
                say(f"ONNX Runtime CUDA {p} failed: {e}")
    runs.append(("onnxruntime-cpu", "fp32", ref.run))
    torch_run, torch_device = torch_eager(work / model_key / "head", model_key)
    runs.append((f"pytorch-eager {torch_device}", "fp32", lambda x: {"p_synthetic": torch_run(x)}))

    for backend, p, run in runs:
        row = {"model": model_key, "backend": backend, "precision": p}
        try:
            row.update(fidelity(np.asarray(run(pixels)["p_synthetic"]), p_ref, threshold))
        except Exception as e:  # noqa: BLE001
            row["error"] = str(e)
            rows.append(row)
            say(f"{backend} {p}: {e}")
            continue
        slow = backend == "onnxruntime-cpu" or (backend.startswith("pytorch") and "cuda" not in backend)
        for b in args.batches:
            key = f"img_per_s_b{b}"
            if elapsed() > args.budget_s + 60:
                row[key] = None
                continue
            if slow and model_key != "tiny" and b > 8:
                row[key] = None  # a ViT-L batch of 64 on CPU takes minutes: not worth the budget
                continue
            row[key] = throughput(run, b, size, args.min_seconds)
        rows.append(row)
        say(f"{backend:>32} {p:>5}: max|Δp| {row['max_abs_dp']:.2e}, agree {row['decision_agreement']:.1%}, img/s "
            + ", ".join(f"b{b} {row[f'img_per_s_b{b}']:.1f}" if row[f"img_per_s_b{b}"] else f"b{b} -"
                        for b in args.batches))


def print_table(report: dict, batches) -> None:
    rows = report.get("rows", [])
    head = f"{'model':<6} {'backend':<36} {'prec':<5} {'max|Δp|':>9} {'mean|Δp|':>9} {'agree':>7} " + \
        " ".join(f"{'img/s b' + str(b):>11}" for b in batches)
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<6} {r['backend']:<36} {r['precision']:<5} error: {r['error']}")
            continue
        speeds = " ".join(f"{r[f'img_per_s_b{b}']:>11.1f}" if r.get(f"img_per_s_b{b}") else f"{'-':>11}" for b in batches)
        print(f"{r['model']:<6} {r['backend']:<36} {r['precision']:<5} {r['max_abs_dp']:>9.2e} {r['mean_abs_dp']:>9.2e} "
              f"{r['decision_agreement']:>7.1%} {speeds}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,vit-l", help="comma-separated: tiny, vit-l (default: %(default)s)")
    ap.add_argument("--batches", default="1,8,64", help="batch sizes for images/s (default: %(default)s)")
    ap.add_argument("--opt-level", type=int, default=2, help="TensorRT builder optimization level (default: %(default)s)")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per throughput figure (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=390.0,
                    help="after this many seconds, skip further engine builds and timings (default: %(default)s)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT if set)")
    ap.add_argument("--work", default=None, help="working folder for the artifacts (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    import onnxruntime as ort

    from sid_edge.runtime.tensorrt_engines import detect_environment

    env = detect_environment()
    report = {"environment": {"machine": env.describe(), "problems": list(env.problems),
                              "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                              "python": sys.version.split()[0]}, "rows": []}
    try:
        import torch

        report["environment"]["torch"] = torch.__version__
        report["environment"]["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        report["environment"]["torch"] = None
    say("environment: " + json.dumps(report["environment"]))

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sid-edge-gpu-check-"))
    status = 0
    for key in keys:
        try:
            check_model(key, work, args, env, report)
        except Exception:  # noqa: BLE001 - one model failing should not hide the other's figures
            status = 1
            say(f"{key} failed:\n{traceback.format_exc()}")
    print_table(report, args.batches)
    report["seconds"] = round(elapsed(), 1)
    print(f"\ntotal {report['seconds']:.0f} s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
