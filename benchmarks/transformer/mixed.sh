#!/usr/bin/env bash
# Issue 21: an aligner trained on the mixed zoo with transformers (zoo mixed-transformer, preset mixed-transformer)
# on the transformer zoo's 100 seeded test pairs and 200 planted test networks (as run.sh does for the
# transformer-only aligner), then next to the shipped v2 (trained on the same zoo without transformers) on
# the digits MLP, CNN and ResNet test pairs (with HELDOUT=1 also the held-out architectures and recipes), one
# torch thread.
# Usage: bash benchmarks/transformer/mixed.sh RUN_DIR [OUT]   (default OUT results/transformer-mixed)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:?usage: mixed.sh RUN_DIR [OUT]}
OUT=${2:-results/transformer-mixed}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
gnn-align bench --zoo digits-transformer --aligner "$RUN" --methods gnn,gnn+wm --pairs 100 --threads 1 --json \
  --out "$OUT" > "$OUT/bench.log" 2>&1
python benchmarks/transformer/planted.py --zoo digits-transformer --networks 200 --aligner "$RUN" --out "$OUT"
C="python benchmarks/ablation/compare.py --threads 1 --run $(basename "$RUN")=$RUN --run v2=pretrained:v2 --out $OUT"
$C --zoo digits-mlp --pairs 200 --heldout-pairs 0 --name digits-mlp
$C --zoo digits-cnn --pairs 100 --heldout-pairs 0 --name digits-cnn
$C --zoo digits-resnet --pairs 100 --heldout-pairs 0 --name digits-resnet
if [ "${HELDOUT:-0}" = 1 ]; then  # HELDOUT=1: also the held-out members (long)
  $C --zoo mixed-recipes --pairs 0 --heldout-pairs 100 --name heldout-mixed
  $C --zoo recipes --pairs 0 --heldout-pairs 100 --name heldout-recipes
fi
