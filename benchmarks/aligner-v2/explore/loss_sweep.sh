#!/bin/bash
# Issue 16: which training losses help, on digits-mlp (48 validation pairs only, never the test pairs);
# one core, sequential; logs in logs/s16-NAME.log, runs in runs/s16-NAME (docs/aligner-v2.md section 9)
cd "$(dirname "$0")/../../.."
common="--zoo digits-mlp --epochs 10 --steps-per-epoch 100 --ema 0.995 --select wm_ratio --val-pairs 48 --bench-pairs 0 --threads 1"
mkdir -p logs runs
run() { name=$1; shift; [ -f runs/s16-$name/aligner.safetensors ] || OMP_NUM_THREADS=1 python train.py $common --out runs/s16-$name "$@" > logs/s16-$name.log 2>&1; }
run base
run l2low --w-l2 0.1 --task-batch 128
run taskonly --w-l2 0 --task-batch 128 --unlabelled-per-step 8
run wd2 --weight-decay 0.2
run taskonly40 --w-l2 0 --task-batch 128 --unlabelled-per-step 8 --epochs 40
