#!/usr/bin/env bash
# A runtime-only install, measured: a fresh virtual environment with `pip install sid-edge` (no extras) on the
# Python given (default python3; e.g. PYTHON=python3.10 for JetPack 6), its size on disk, that torch/onnx/open_clip
# are absent, and a scan with an existing artifact.
#   PYTHON=python3.10 benchmarks/runtime_install.sh ARTIFACT_DIR IMAGE_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
artifact=${1:?usage: runtime_install.sh ARTIFACT_DIR IMAGE_DIR}
images=${2:?usage: runtime_install.sh ARTIFACT_DIR IMAGE_DIR}
venv=$(mktemp -d)/venv
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q .
echo "python: $("$venv/bin/python" --version)"
echo "venv size: $(du -sh "$venv" | cut -f1)"
"$venv/bin/python" - <<'PY'
import importlib.util
absent = [m for m in ("torch", "onnx", "open_clip", "torchvision", "modelopt") if importlib.util.find_spec(m) is None]
print("absent (as it should be):", ", ".join(absent))
PY
"$venv/bin/sid-edge" scan "$images" --model "$artifact" --out "$(dirname "$venv")/results.csv" --no-progress
echo "rows: $(($(wc -l < "$(dirname "$venv")/results.csv") - 1))"
