"""How much the preprocessing pipeline moves the paper's scores (issue 10): p_synthetic of a clip-cues head and the
concept model's logit under each pipeline the runtime implements, on a few images.

    .venv/bin/python benchmarks/preprocessing_effect.py \\
        --head ../shared/fixtures/clip-cues/clip_orthogonal_synthclic.ckpt \\
        --concept-model ../shared/fixtures/clip-cues/cm_antonyms_synthclic.ckpt \\
        --images ../shared/samples/clip-cues/*

Pipelines (:data:`sid_edge.artifact.preprocessing.PIPELINES`): ``clip-cues`` (what the paper's orthogonal/linear
heads were trained on: bilinear, round crop offset), ``hf-clip`` (its concept model: bicubic, floor crop offset) and
``open_clip`` (what sid-edge served before heads recorded their rule: bicubic, round). Each image is decoded once
(:func:`sid_edge.runtime.images.decode_image`) and preprocessed by the torch-free runtime, which the tests check
bit-exact against torchvision, transformers and open_clip; the backbone and heads run in PyTorch FP32.

Without the real OpenAI weights (this workplace cannot download them) the backbone is ViT-L-14-336 with seeded
random weights (``--clip-pretrained none``): the figures are the sensitivity of this architecture + the paper's
heads, not of the trained CLIP (which is likely more sensitive: its synthetic-image cues live in the high
frequencies a resampling filter shapes). Prints a table and one JSON line with the CPU and library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

PIPELINE_NAMES = ("clip-cues", "hf-clip", "open_clip")


def _machine() -> dict:
    from sid_edge.runtime.cpu_features import detect

    versions = {}
    for dist in ("torch", "open_clip_torch", "pillow", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": detect().summary(), "python": platform.python_version(), **versions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", required=True, help="a clip-cues orthogonal/linear .ckpt (or a sid-edge head directory)")
    p.add_argument("--concept-model", default=None, help="a clip-cues cm_*.ckpt whose logit is measured too")
    p.add_argument("--images", nargs="+", required=True, help="images (keep it to a few: ViT-L costs 1-3 s an image)")
    p.add_argument("--clip-model", default="ViT-L-14-336-quickgelu")
    p.add_argument("--clip-pretrained", default="none", help="'none' (seeded random weights) or a weights file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s; the machine is shared)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from sid_edge.artifact.preprocessing import Preprocessing
    from sid_edge.build.backbone import load_backbone
    from sid_edge.build.heads import load_head
    from sid_edge.runtime.images import decode_image, preprocess

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backbone = load_backbone(args.clip_model, args.clip_pretrained, seed=args.seed).eval()
    head, head_cfg = load_head(args.head)
    cm = load_head(args.concept_model)[0] if args.concept_model else None
    base = backbone.preprocessing
    rules = {n: Preprocessing.for_pipeline(n, base.size, base.mean, base.std) for n in PIPELINE_NAMES}

    images = []
    for path in args.images:
        try:
            images.append((Path(path).name, decode_image(path)))
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"skipped {path}: {e}", file=sys.stderr)
    if not images:
        print("no decodable image", file=sys.stderr)
        return 2

    p_syn: dict[str, dict[str, float]] = {}
    c_logit: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, rule in rules.items():
            x = torch.from_numpy(np.stack([preprocess(img, rule) for _, img in images]))
            pooled, embedding = backbone(x)
            logit, _ = head(pooled)
            p_syn[name] = dict(zip([n for n, _ in images], torch.sigmoid(logit).double().tolist()))
            if cm is not None:
                c_logit[name] = dict(zip([n for n, _ in images], cm(embedding)[0].double().tolist()))

    trained = "hf-clip" if head_cfg.kind == "concepts" else (head_cfg.preprocessing or {}).get("pipeline", "clip-cues")
    print(f"p_synthetic of {Path(args.head).name} ({head_cfg.kind}, trained on {trained}) on {args.clip_model} / "
          f"{args.clip_pretrained} (seed {args.seed})")
    print(f"{'image':<26}" + "".join(f"{n:>12}" for n in PIPELINE_NAMES) + "   |Δp| vs " + trained)
    for n, img in images:
        row = [p_syn[r][n] for r in PIPELINE_NAMES]
        dev = max(abs(p_syn[r][n] - p_syn[trained][n]) for r in PIPELINE_NAMES)
        print(f"{n + f' {img.size[0]}x{img.size[1]}':<26}" + "".join(f"{v:12.5f}" for v in row) + f"   {dev:.2e}")
    summary = {r: max(abs(p_syn[r][n] - p_syn[trained][n]) for n, _ in images) for r in PIPELINE_NAMES}
    print("max |Δp_synthetic| vs the trained pipeline: " + ", ".join(f"{r} {v:.2e}" for r, v in summary.items()))
    c_summary = {}
    if cm is not None:
        print(f"\nconcept_logit of {Path(args.concept_model).name} (trained on hf-clip)")
        for n, _ in images:
            print(f"{n:<26}" + "".join(f"{c_logit[r][n]:12.4f}" for r in PIPELINE_NAMES))
        c_summary = {r: max(abs(c_logit[r][n] - c_logit['hf-clip'][n]) for n, _ in images) for r in PIPELINE_NAMES}
        print("max |Δconcept_logit| vs hf-clip: " + ", ".join(f"{r} {v:.3g}" for r, v in c_summary.items()))
    print(json.dumps({"head": str(args.head), "trained_pipeline": trained, "images": [n for n, _ in images],
                      "p_synthetic": p_syn, "max_abs_p_diff_vs_trained": summary, "concept_logit": c_logit,
                      "max_abs_concept_logit_diff_vs_hf_clip": c_summary, "clip_model": args.clip_model,
                      "clip_pretrained": args.clip_pretrained, "seed": args.seed,
                      "seconds": round(time.perf_counter() - started, 1), "machine": _machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
