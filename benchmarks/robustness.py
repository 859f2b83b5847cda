#!/usr/bin/env python
"""AP and flip rate per perturbation for a head trained with and without augmentation (`train --augment`).

Data: the README's demo set (`sid_edge.build.demo_data.write_demo_dataset`: crops of scikit-image photographs as
real, rendered scenes as synthetic) for training, and a held-out demo set drawn with other crops/renders for the
table. Backbone: by default the tiny random-weight `sid-edge-tiny` the tests use, so the figures are about the
pipeline (perturbation, caching, band arithmetic), NOT about CLIP: random features have no reason to be stable.
With real weights (`--clip-model ViT-L-14-336-quickgelu --clip-pretrained openai`) the same script measures the
real thing; `benchmarks/reproduce_paper.py --perturb` runs the table on SynthCLIC. Prints a table and JSON with the
CPU and library versions. A measured figure, not a test.

    python benchmarks/robustness.py [--augment paper] [--views 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu() -> dict:
    """The CPU the figures were measured on (model, cores, SIMD features): sid_edge.runtime.cpu_features."""
    from sid_edge.runtime.cpu_features import detect

    return detect().summary()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip-model", default="sid-edge-tiny")
    p.add_argument("--clip-pretrained", default="none")
    p.add_argument("--augment", default="paper", choices=["paper", "delivery"])
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--perturb", nargs="+", default=None, metavar="SPEC")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)

    from sid_edge.build.backbone import load_backbone
    from sid_edge.build.demo_data import write_demo_dataset
    from sid_edge.build.features import augmented_training_set, extract_features
    from sid_edge.build.heads import HeadConfig, save_head
    from sid_edge.build.training import TrainConfig, train_head
    from sid_edge.export import export_detector
    from sid_edge.robustness import DEFAULT_PERTURBATIONS, library_versions, parse_perturbations
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.tools.evaluation.runner import NamedData, evaluate, load_detector

    work = args.out or Path(tempfile.mkdtemp(prefix="sid-robust-"))
    train_dir = write_demo_dataset(work / "train", crops_per_photo=2, n_rendered=16)
    test_dir = write_demo_dataset(work / "test", crops_per_photo=1, n_rendered=10, seed=7)
    backbone = load_backbone(args.clip_model, args.clip_pretrained)
    items = read_labelled_images(train_dir)
    clean = extract_features(backbone, [it.image for it in items], cache_dir=work / "features")
    labels = np.asarray([items[i].label for i in clean.kept])
    config = TrainConfig(k=4, seed=0)
    t0 = time.perf_counter()
    heads = {"plain": train_head(clean.pooled, labels, config)[0]}
    x, y, val = augmented_training_set(backbone, items, clean, args.augment, views=args.views, seed=0,
                                       cache_dir=work / "features")
    heads[f"augment-{args.augment}"] = train_head(x, y, config, validation=val)[0]
    detectors = []
    for name, head in heads.items():
        cfg = HeadConfig(kind="orthogonal", k=4, feature_dim=backbone.feature_dim, backbone=backbone.identity.to_dict())
        hd = save_head(head, cfg, work / "heads" / name)
        export_detector(hd, work / "artifacts" / name, backbone=backbone, vocabulary=None, overwrite=True)
        detectors.append(load_detector(name, work / "artifacts" / name))
    perts = parse_perturbations(args.perturb or DEFAULT_PERTURBATIONS)
    ev = evaluate(detectors, [NamedData("demo-test", str(test_dir))], split=None, perturbations=perts,
                  cache_root=work / "cache")
    seconds = time.perf_counter() - t0
    rows = [{"detector": r.detector, "perturbation": r.perturbation.name, "ap": r.metrics.ap,
             "flip_rate": r.flips.flip_rate, "mean_abs_dp": r.flips.mean_abs_dp} for r in ev.perturbed]
    print("| perturbation | " + " | ".join(f"{d} AP | flip rate | mean abs Δp" for d in ev.detectors) + " |")
    print("|---|" + "---|---|---|" * len(ev.detectors))
    print("| (none) | " + " | ".join(f"{ev.metrics[(d, 'demo-test')].ap:.3f} | | " for d in ev.detectors) + " |")
    for pert in perts:
        cells = {r["detector"]: r for r in rows if r["perturbation"] == pert.name}
        print(f"| {pert.name} | " + " | ".join(f"{cells[d]['ap']:.3f} | {cells[d]['flip_rate']:.3f} | "
                                              f"{cells[d]['mean_abs_dp']:.4f}" for d in ev.detectors) + " |")
    print(json.dumps({"backbone": f"{args.clip_model} / {args.clip_pretrained}",
                      "random_weights": args.clip_pretrained.lower() == "none", "augment": args.augment,
                      "views": args.views, "test_images": ev.metrics[(ev.detectors[0], "demo-test")].n,
                      "seconds": round(seconds, 1), "cpu": cpu(),
                      "libraries": library_versions(), "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
