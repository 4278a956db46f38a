#!/bin/bash
# Sampled against full softmax on ml-latest-small: three seeds each, identical but for the loss and the seed.
#   docs/bench/sampled-softmax/run.sh PATH/TO/ml-latest-small OUT_DIR
# then: python docs/bench/sampled-softmax/compare.py PATH/TO/ml-latest-small OUT_DIR
set -euo pipefail
data=$1; out=$2; here=$(cd "$(dirname "$0")" && pwd)
for seed in 0 1 2; do for loss in full sampled; do
  run=$out/$loss-$seed
  [ -f "$run/report.json" ] && continue
  sed "s/^teacher_train: {/teacher_train: {seed: $seed, /; s/^distill: {/distill: {seed: $seed, /" "$here/$loss.yaml" > "$out/$loss-$seed.yaml"
  distilrec pipeline --dataset "movielens:$data" --output "$run" --config "$out/$loss-$seed.yaml"
done; done
