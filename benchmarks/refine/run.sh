#!/usr/bin/env bash
# Issue 17: refiners that keep the better answer, STE re-basin, Sinkhorn re-basin with BatchNorm on
# batch statistics, and auto, against the plain methods: 100 seeded test pairs of three digits
# families, BatchNorm statistics reset on training inputs for every method, the shipped aligner
# as gnn. Two lanes (ResNets; MLPs then CNNs), one torch thread each.
# Usage: bash benchmarks/refine/run.sh [OUT]   (default benchmarks/refine)
set -euo pipefail
OUT=${1:-benchmarks/refine}
M=wm,am,sinkhorn,ste,gnn,gnn+wm,gnn+sinkhorn,gnn+ste,auto
mkdir -p "$OUT"
bench() { gnn-align bench --zoo "$1" --aligner mixed --methods "$M" --pairs 100 --reset-bn --threads 1 --json \
          --out "$OUT/$1" > "$OUT/$1.log" 2>&1; }
bench digits-resnet &
bench digits-mlp && bench digits-cnn
wait
