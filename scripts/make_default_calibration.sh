#!/usr/bin/env bash
# Regenerate the default calibration shipped for the bundled Resemblyzer model
# (voxguard/data/default_calibration_resemblyzer.json): import the AN4 training split into a
# throwaway store and calibrate it with raw cosine, every trial type in both bands.
#   scripts/make_default_calibration.sh [AN4_DIR]     (default ../shared/datasets/an4)
set -euo pipefail
cd "$(dirname "$0")/.."
an4=${1:-${VOXGUARD_AN4:-../shared/datasets/an4}}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
vg=.venv/bin/voxguard
"$vg" --store "$tmp/an4.db" enroll import "$an4" --layout an4 --no-progress
"$vg" --store "$tmp/an4.db" calibrate --backend cosine --no-clone-detector --dry-run \
  --describe "AN4 training split: 74 speakers, 948 utterances, raw cosine" \
  --export voxguard/data/default_calibration_resemblyzer.json
