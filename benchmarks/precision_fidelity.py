#!/usr/bin/env python
"""Fidelity of FP16 and of INT8 per calibration method on the test suite's fixture set (the README's table).

Builds exactly what ``tests/conftest.py`` builds — the tiny random-weight CLIP (seed 0), the SynthCLIC-shaped
parquet fixture (train 48 / validation 100 pairs), a probe head fit on its train split — then adds FP16 and INT8
variants with each calibration method (64 calibration images) and prints the held-out figures against FP32.

    python benchmarks/precision_fidelity.py [--methods max entropy percentile] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["max", "entropy", "percentile"], choices=["max", "entropy", "percentile"])
    p.add_argument("--calibration-size", type=int, default=64)
    p.add_argument("--work", type=Path, default=Path("build/bench-fidelity"))
    args = p.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from sid_edge.build.backbone import TINY_CLIP_MODEL, load_backbone
    from sid_edge.calibration.variants import add_precision_variants
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.build.demo_data import FIDELITY_FIXTURE_PAIRS, fit_probe_head, write_synthclic_parquet
    from sid_edge.export import export_detector
    from sid_edge.build.heads import save_head

    shutil.rmtree(args.work, ignore_errors=True)
    data = write_synthclic_parquet(args.work / "synthclic", FIDELITY_FIXTURE_PAIRS)
    torch.manual_seed(0)
    backbone = load_backbone(TINY_CLIP_MODEL, "none")
    head, cfg = fit_probe_head(backbone, read_labelled_images(data, split="train"))
    fp32 = args.work / "fp32"
    export_detector(save_head(head, cfg, args.work / "head"), fp32, backbone=backbone)

    table = Table("variant", "AP", "ΔAP", "agree", "max|Δp|", "mean|Δp|", "cos mean", "cos min",
                  title="Held-out fidelity vs FP32 on the test fixture (ONNX Runtime CPU)")
    results = {}
    for i, method in enumerate(args.methods):
        out = args.work / method
        shutil.copytree(fp32, out)
        m = add_precision_variants(out, ["fp32", "fp16", "int8"] if i == 0 else ["fp32", "int8"], calibration_data=data,
                                   calibration_size=args.calibration_size, calibration_method=method,
                                   cache_dir=args.work / "cache").to_dict()
        rows = [("fp16", "FP16")] if i == 0 else []
        for precision, label in [*rows, ("int8", f"INT8 {method}")]:
            h = m["models"][precision]["fidelity"]["held_out"]
            results[label] = h
            table.add_row(label, f"{h['ap']:.4f}", f"{h['delta_ap']:+.4f}", f"{h['decision_agreement']:.1%}",
                          f"{h['max_abs_dp']:.1e}", f"{h['mean_abs_dp']:.1e}", f"{h['head_activation_cosine_mean']:.5f}",
                          f"{h['head_activation_cosine_min']:.4f}")
        results["fidelity_set"] = m["fidelity_set"]
    Console(width=110).print(table)
    (args.work / "precision_fidelity.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
