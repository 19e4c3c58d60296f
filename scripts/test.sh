#!/usr/bin/env bash
# Set up ./.venv with the test and NeMo extras, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,nemo
exec .venv/bin/python -m pytest "$@"
