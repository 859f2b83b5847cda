"""What forgetting OpenCV's BGR order costs: each image scored as RGB (right) and channel-swapped (BGR passed as if
RGB), with the mean and max |Δp_synthetic| and the verdicts that flip. Prints the CPU it ran on.

    python benchmarks/bgr_effect.py ARTIFACT_DIR IMAGE...
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from sid_edge.runtime.cpu_features import detect
from sid_edge.runtime.detector import Detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    print(f"CPU: {detect().describe()}")
    with Detector.load(args.artifact) as det:
        rgb = [np.asarray(Image.open(f).convert("RGB")) for f in args.images]
        right = det.predict(rgb)
        swapped = det.predict([x[..., ::-1].copy() for x in rgb])
    d = [abs(a.p_synthetic - b.p_synthetic) for a, b in zip(right, swapped)]
    flips = sum(a.prediction != b.prediction for a, b in zip(right, swapped))
    print(f"BGR passed as RGB on {len(d)} images: mean |dp| {np.mean(d):.4f}, max {np.max(d):.4f}, "
          f"verdict flips {flips}")


if __name__ == "__main__":
    main()
