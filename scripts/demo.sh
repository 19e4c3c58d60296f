#!/usr/bin/env bash
# Enrollment + identification demo on a folder of WAVs (one sub-folder per speaker).
# Usage: scripts/demo.sh [DIR]   (default: ../shared/datasets/an4)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DIR=${1:-../shared/datasets/an4/wav/an4_clstk}
STORE=${VOXGUARD_STORE:-demo/voxguard.db}
export VOXGUARD_STORE=$STORE
mkdir -p "$(dirname "$STORE")"
.venv/bin/voxguard enroll import "$DIR" --layout folders --per-speaker 5
.venv/bin/voxguard enroll stats
probe=$(find "$DIR" -mindepth 2 -type f \( -name '*.wav' -o -name '*.flac' \) | sort | sed -n 6p)
echo "identifying $probe"
.venv/bin/voxguard identify "$probe" -k 3
