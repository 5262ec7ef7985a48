#!/usr/bin/env bash
# Issue 21: the learned aligner on transformers. Trains the `transformer` aligner (only when it is not shipped) on the
# digits-transformer zoo (about 40 minutes on one core), then benchmarks it with every method on the
# same 100 seeded test pairs and on 200 planted test networks.
# Usage: bash benchmarks/transformer/run.sh [OUT]   (default benchmarks/transformer)
set -euo pipefail
OUT=${1:-benchmarks/transformer}
ALIGNER=${ALIGNER:-transformer}
mkdir -p "$OUT"
if [ "$ALIGNER" = transformer ] && [ ! -f gnn_align/pretrained/transformer.safetensors ]; then
  python train.py --preset transformer --threads 1 --checkpoint-every 100
  python -m gnn_align.pretrained runs/transformer --name transformer \
    --command "python train.py --preset transformer --threads 1 --checkpoint-every 100"
fi
gnn-align bench --zoo digits-transformer --aligner "$ALIGNER" --methods naive,wm,am,gnn,gnn+wm,auto --pairs 100 \
  --threads 1 --json --out "$OUT" > "$OUT/bench.log" 2>&1
python benchmarks/transformer/planted.py --zoo digits-transformer --networks 200 --aligner "$ALIGNER" --out "$OUT"
