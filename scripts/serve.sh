#!/usr/bin/env bash
# Set up ./.venv and run the streaming daemon on embedded defaults:
# local SQLite store ($VOXGUARD_STORE or the user data dir), bundled Resemblyzer model, CPU
# (CUDA when present), ws://127.0.0.1:8765/v1/stream. Extra arguments go to `voxguard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/voxguard serve "$@"
