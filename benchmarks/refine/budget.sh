#!/usr/bin/env bash
# Issue 17: auto with a larger budget (auto@15: 15 s a pair) against the default auto and the best
# single method of the table (digits-mlp: gnn+sinkhorn; digits-cnn: sinkhorn), on the same seeded
# test pairs (the first 30), BatchNorm reset, one torch thread each, shipped aligner; one lane per zoo.
# Usage: bash benchmarks/refine/budget.sh [OUT]   (default benchmarks/refine/budget)
set -euo pipefail
OUT=${1:-benchmarks/refine/budget}
mkdir -p "$OUT"
run() { gnn-align bench --zoo "$1" --aligner mixed --methods "$2" --pairs 30 --reset-bn --threads 1 --json \
          --out "$OUT/$1" > "$OUT/$1.log" 2>&1; }
run digits-mlp gnn+sinkhorn,auto,auto@15 &
run digits-cnn sinkhorn,auto,auto@15
wait
