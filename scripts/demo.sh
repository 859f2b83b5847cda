#!/usr/bin/env bash
# The main job, offline: train a head on real photographs vs rendered images, export one fused ONNX graph,
# and scan a folder of real photographs. Uses the small `sid-edge-tiny` CLIP with RANDOM weights by default
# (scores are meaningless; the pipeline is real). Override with CLIP_MODEL / CLIP_PRETRAINED, e.g.
#   CLIP_MODEL=ViT-L-14-336-quickgelu CLIP_PRETRAINED=/path/open_clip_model.safetensors ./scripts/demo.sh
# PRECISIONS (default "fp32 fp16 int8") picks the variants; the FP16/INT8 ones are calibrated on the demo images
# (ViT-L INT8 calibration on a CPU adds ~25 min: PRECISIONS=fp32 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
CLIP_MODEL=${CLIP_MODEL:-sid-edge-tiny}
CLIP_PRETRAINED=${CLIP_PRETRAINED:-none}
OUT=${OUT:-build/demo}
PRECISIONS=${PRECISIONS:-fp32 fp16 int8}
SAMPLES=${SAMPLES:-../shared/samples/clip-cues}
export SID_EDGE_CACHE=${SID_EDGE_CACHE:-$PWD/build/cache}
sid() { .venv/bin/sid-edge "$@"; }

rm -rf "$OUT" && mkdir -p "$OUT"
.venv/bin/python - "$OUT" "$SAMPLES" <<'PY'
import sys
from sid_edge.build.demo_data import write_demo_dataset, write_photo_folder
out, samples = sys.argv[1], sys.argv[2]
write_demo_dataset(f"{out}/train", samples=samples)
write_photo_folder(f"{out}/photos")
PY
sid train --data "$OUT/train" --out "$OUT/head" --clip-model "$CLIP_MODEL" --clip-pretrained "$CLIP_PRETRAINED"
calibration=()
[ "$PRECISIONS" != "fp32" ] && calibration=(--calibration "$OUT/train")
# shellcheck disable=SC2086  # PRECISIONS is a word list
sid export --head "$OUT/head" --out "$OUT/detector" --clip-model "$CLIP_MODEL" --clip-pretrained "$CLIP_PRETRAINED" \
  --parity-images "$OUT"/photos/* --precision $PRECISIONS "${calibration[@]}"
sid info "$OUT/detector"
sid scan "$OUT/photos" --model "$OUT/detector" --out "$OUT/results.csv"
sid explain "$OUT/detector" --images "$OUT"/photos/coffee.jpg "$OUT"/photos/astronaut.png --out "$OUT/explain"
echo
cat "$OUT/results.csv"
echo "explanation report: $OUT/explain/report.md"
