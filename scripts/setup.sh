#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with sid-edge (editable) and its train, test, explain,
# evaluate, provenance, ray, serve and openvino extras.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sid-edge-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision first, pinned: this pair is on the machines' local index; anything else pulls GBs.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[train,test,explain,evaluate,provenance,ray,serve,openvino]"
  # The SD watermark decoder without its declared torch/opencv-python (see the provenance extra in pyproject.toml).
  .venv/bin/python -m pip install -q --no-deps "invisible-watermark==0.2.0"
  echo "$want" > "$stamp"
fi
