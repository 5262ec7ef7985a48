#!/usr/bin/env bash
# The acceptance tables of a candidate aligner (issue 16) next to the shipped v1 (pretrained:mixed),
# weight matching and activation matching, 1 torch thread per process, two processes at a time;
# then the speed table alone on 2 threads. Needs the zoos digits-mlp, digits-cnn, digits-resnet,
# recipes and mixed-recipes (python -m datasets build NAME) and the run folder.
# Usage: bash benchmarks/aligner-v2/run.sh RUN_DIR [OUT]   (e.g. runs/v2 benchmarks/aligner-v2)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:?usage: run.sh RUN_DIR [OUT]}
OUT=${2:-benchmarks/aligner-v2}
export OMP_NUM_THREADS=1
C="python benchmarks/ablation/compare.py --threads 1 --run $(basename "$RUN")=$RUN --run v1=pretrained:mixed --out $OUT"
(
  $C --zoo digits-mlp --pairs 200 --heldout-pairs 0 --name digits-mlp
  $C --zoo recipes --pairs 0 --heldout-pairs 100 --name heldout-recipes
  $C --zoo digits-resnet --pairs 100 --heldout-pairs 0 --name digits-resnet
) &
A=$!
(
  $C --zoo mixed-recipes --pairs 0 --heldout-pairs 100 --name heldout-mixed
  $C --zoo digits-cnn --pairs 100 --heldout-pairs 0 --name digits-cnn
  for z in digits-mlp digits-cnn digits-resnet; do
    python benchmarks/planted/planted_accuracy.py --zoo $z --aligner "$RUN" --pairs 200 --out $OUT/planted-$z
  done
) &
B=$!
wait $A
wait $B
OMP_NUM_THREADS=2 gnn-align speed --zoo digits-mlp --aligner "$RUN" --pairs 200 --batch 50 --threads 2 --out $OUT/speed
