#!/usr/bin/env bash
# The acceptance tables of the v2 aligner (issue 16), on 1 torch thread. Needs the zoos
# digits-mlp, digits-cnn, digits-resnet, recipes and mixed-recipes (python -m datasets build NAME)
# and the run folder of `python train.py --preset v2 --out runs/v2 --threads 1`.
# Usage: bash benchmarks/aligner-v2/run.sh [RUN_DIR]   (default runs/v2)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/v2}
OUT=benchmarks/aligner-v2
export OMP_NUM_THREADS=1
C="python benchmarks/compare.py --threads 1 --run v2=$RUN --run v1=pretrained --out $OUT"
$C --zoo digits-mlp --pairs 200 --heldout-pairs 0 --name digits-mlp
$C --zoo recipes --pairs 0 --heldout-pairs 100 --name heldout-recipes
$C --zoo mixed-recipes --pairs 0 --heldout-pairs 100 --name heldout-mixed
$C --zoo digits-cnn --pairs 100 --heldout-pairs 0 --name digits-cnn
$C --zoo digits-resnet --pairs 100 --heldout-pairs 0 --name digits-resnet
gnn-align speed --zoo digits-mlp --aligner "$RUN" --pairs 200 --batch 50 --threads 2 --out $OUT/speed
for z in digits-mlp digits-cnn digits-resnet; do
  python benchmarks/planted_accuracy.py --zoo $z --aligner "$RUN" --pairs 200 --out $OUT/planted-$z
done
