#!/usr/bin/env bash
# Issue 17: refiners that keep the better answer, STE re-basin, Sinkhorn re-basin with BatchNorm on
# batch statistics, and auto, against the plain methods: seeded test pairs (100 of each digits
# family, 30 of mnist1d-mlp and sine-inr), BatchNorm statistics reset on training inputs for every
# method, the shipped aligner as gnn, auto with its default budget.
# Two lanes, one torch thread each; then the summary table. SMALL=0 skips the 30-pair zoos.
# Usage: bash benchmarks/refine/run.sh [OUT]   (default benchmarks/refine)
set -euo pipefail
OUT=${1:-benchmarks/refine}
M=wm,am,sinkhorn,ste,gnn,gnn+wm,gnn+sinkhorn,gnn+ste,auto
SMALL=${SMALL:-1}
mkdir -p "$OUT"
bench() { gnn-align bench --zoo "$1" --aligner mixed --methods "$M" --pairs "$2" --reset-bn --threads 1 --json \
          --out "$OUT/$1" > "$OUT/$1.log" 2>&1; }
(bench digits-resnet 100 && if [ "$SMALL" = 1 ]; then bench sine-inr 30; fi) &
bench digits-mlp 100 && bench digits-cnn 100 && if [ "$SMALL" = 1 ]; then bench mnist1d-mlp 30; fi
wait
python benchmarks/refine/table.py "$OUT"
