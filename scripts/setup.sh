#!/usr/bin/env bash
# Create ./.venv with voxguard installed (editable). Extras as arguments, e.g. `scripts/setup.sh test,nemo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
# torch first: 2.13.0 is the version voxguard is tested with (a CPU build where one is provided locally).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
extras=${1:-}
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
