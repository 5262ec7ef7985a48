#!/usr/bin/env bash
# Issue 17: auto with a larger budget (auto@15: 15 s a pair) on the same seeded test pairs as run.sh
# (100 per digits family, BatchNorm reset, one torch thread, shipped aligner), beside the table of run.sh.
# Writes OUT/ZOO-rerun-budget/ (read by table.py as rows added on the same pairs).
# Usage: bash benchmarks/refine/budget.sh [OUT]   (default benchmarks/refine); then python benchmarks/refine/table.py
set -euo pipefail
OUT=${1:-benchmarks/refine}
for zoo in digits-mlp digits-cnn digits-resnet; do
  gnn-align bench --zoo "$zoo" --aligner mixed --methods auto@15 --pairs 100 --reset-bn --threads 1 --json \
    --out "$OUT/$zoo-rerun-budget" > "$OUT/$zoo-rerun-budget.log" 2>&1
done
