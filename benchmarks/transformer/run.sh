#!/usr/bin/env bash
# Issue 21: the learned aligner on transformers. Trains the aligner of preset $PRESET (only when it is not shipped)
# on its zoo $ZOO (digits-transformer: about 40 minutes on one core), then benchmarks it with every method on the
# same 100 seeded test pairs and on 200 planted test networks.
# Usage: bash benchmarks/transformer/run.sh [OUT]   (default benchmarks/transformer)
#        PRESET=transformers ZOO=transformers EXTRA=1 bash benchmarks/transformer/run.sh benchmarks/transformer/transformers
set -euo pipefail
OUT=${1:-benchmarks/transformer}
PRESET=${PRESET:-transformer}
ZOO=${ZOO:-digits-transformer}
ALIGNER=${ALIGNER:-$PRESET}
METHODS=${METHODS:-naive,wm,am,gnn,gnn+wm,auto}
mkdir -p "$OUT"
if [ "$ALIGNER" = "$PRESET" ] && [ ! -f "gnn_align/pretrained/$PRESET.safetensors" ]; then
  python train.py --preset "$PRESET" --threads 1 --checkpoint-every 100
  python -m gnn_align.pretrained "runs/$PRESET" --name "$PRESET" \
    --command "python train.py --preset $PRESET --threads 1 --checkpoint-every 100"
fi
gnn-align bench --zoo "$ZOO" --aligner "$ALIGNER" --methods "$METHODS" --pairs 100 \
  --threads 1 --json --out "$OUT" > "$OUT/bench.log" 2>&1
python benchmarks/transformer/planted.py --zoo "$ZOO" --networks 200 --aligner "$ALIGNER" --out "$OUT"
if [ "${EXTRA:-0}" = 1 ]; then  # the barriers by member
  python benchmarks/transformer/recipes.py --results "$OUT/results.json" --zoo "$ZOO" --networks 0 --out "$OUT"
fi
