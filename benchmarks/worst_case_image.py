"""Peak memory of the worst-case small image: a 20000x1 PNG (about 150 bytes) whose shortest side would be resized
to the model's input size, for the tiny model (64 px) and ViT-L-14-336 (336 px).

Each case runs in a fresh process and reports its peak resident memory (``ru_maxrss``) after decoding and
preprocessing one image, with sid-edge's bound (the image is refused: an aspect ratio above 32:1) and, where it
fits on this machine, without it (the resize actually done). Prints the CPU it ran on.

    python benchmarks/worst_case_image.py [--unbounded-max-size 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CASE = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
import sid_edge.runtime.images as images
from sid_edge.artifact.preprocessing import Preprocessing

size, bounded, path = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
data = open(path, "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if not bounded:
    images.MAX_ASPECT_RATIO = float("inf")
spec = Preprocessing(size, (0.5,) * 3, (0.5,) * 3)
try:
    images.load_and_preprocess(data, spec)
    outcome = "preprocessed"
except images.ImageDecodeError as e:
    outcome = "refused: " + e.reason
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"file_bytes": len(data), "outcome": outcome, "peak_rss_mib": peak / 1024,
                  "growth_mib": (peak - base) / 1024}))
"""


def cpu() -> str:
    from sid_edge.runtime.cpu_features import detect

    return detect().describe()


def _png(folder, w: int, h: int) -> str:
    # Made in a child process: ru_maxrss survives fork+exec, so a big allocation here would inflate every
    # measurement's baseline.
    path = f"{folder}/{w}x{h}.png"
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; Image.new('RGB', (int(sys.argv[1]), "
                    "int(sys.argv[2])), (120, 30, 200)).save(sys.argv[3], format='PNG', compress_level=1)",
                    str(w), str(h), path], check=True, timeout=600)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unbounded-max-size", type=int, default=64,
                    help="run the unbounded resize only for input sizes up to this (336 needs ~7 GB; default 64)")
    args = ap.parse_args()
    print(f"CPU: {cpu()}; Python {platform.python_version()}")
    import tempfile

    folder = tempfile.mkdtemp()
    strip = _png(folder, 20000, 1)
    h = int((89_478_485 / 32) ** 0.5)  # the worst image the bounds accept: the bomb pixel limit at 32:1
    worst = _png(folder, 32 * h, h)
    for size, model in ((64, "sid-edge-tiny"), (336, "ViT-L-14-336")):
        intermediate = 20000 * size * size  # pixels: long side 20000*size, short side size
        print(f"{model} ({size} px): the resize would need a {20000 * size}x{size} RGB intermediate "
              f"({intermediate * 3 / 2**30:.2f} GiB)")
        for bounded in (True, False):
            if not bounded and size > args.unbounded_max_size:
                print("  without the bound: not run (raise --unbounded-max-size to measure it)")
                continue
            r = subprocess.run([sys.executable, "-c", CASE, str(size), "1" if bounded else "0", strip],
                               capture_output=True, text=True, timeout=600)
            res = json.loads(r.stdout) if r.returncode == 0 else {"outcome": r.stderr.strip()[-200:]}
            label = "with the bound   " if bounded else "without the bound"
            print(f"  {label}: {res.get('outcome')}; peak RSS {res.get('peak_rss_mib', float('nan')):.0f} MiB "
                  f"(+{res.get('growth_mib', float('nan')):.0f} MiB for this image)")
        r = subprocess.run([sys.executable, "-c", CASE, str(size), "1", worst], capture_output=True, text=True,
                           timeout=600)
        w = 32 * h
        res = json.loads(r.stdout) if r.returncode == 0 else {"outcome": r.stderr.strip()[-200:]}
        print(f"  worst accepted image ({w}x{h}, {res.get('file_bytes', 0) / 2**20:.1f} MiB PNG): {res.get('outcome')}; "
              f"+{res.get('growth_mib', float('nan')):.0f} MiB for this image")


if __name__ == "__main__":
    main()
