#!/usr/bin/env bash
# The reward-modeling chain of the PyTorch oracle's fixture on one device and dtype, for
# scripts/gpu-check.sh to compare between devices: split (tests/fixtures/rm_run: 12 gt, 12 w2s,
# 6 test, 12 helpful pairs), gt-train of the GPT-2 fixture as `teacher` (the oracle's batch 4,
# micro-batch 2, lr 1e-3, context 48 and head), weak-label, w2s-train with the explicit
# conflict as `explicit`, score of both. Prints what it measured as CSV lines `what,index,value`
# (each run's training losses, the weak labels' margins, each run's test margins), the same
# quantities tests/fixtures/rm_run/expected.json holds from PyTorch.
#
#   bash scripts/gpu-chain.sh ROOT DEVICE DTYPE     # e.g. target/chain-cuda cuda bf16
#   W2S=/tmp/w2s-cuda bash scripts/gpu-chain.sh ...  # another binary (default target/release/w2s)
#
# A few seconds on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 3 ] || { echo "usage: $0 ROOT DEVICE DTYPE" >&2; exit 64; }
ROOT=$1 DEVICE=$2 DTYPE=$3
W2S=${W2S:-target/release/w2s}
F=tests/fixtures/rm_run
MODEL=tests/fixtures/models/gpt2
rm -rf "$ROOT"
w2s() { "$W2S" --log warn "$@" >/dev/null; }
w2s split --artifacts "$ROOT" --gt $F/gt.jsonl --w2s $F/w2s.jsonl --test $F/test.jsonl \
    --helpful $F/helpful.jsonl --n-gt 12 --n-w2s 12 --n-test 6 --n-helpful 12
TRAIN=(--artifacts "$ROOT" --model $MODEL --batch 4 --micro-batch 2 --lr 1e-3 --max-ctx 48
    --init-head $F/head.safetensors --device "$DEVICE" --dtype "$DTYPE")
w2s gt-train "${TRAIN[@]}" --run-id teacher
w2s weak-label --artifacts "$ROOT" --run teacher --max-ctx 48 --device "$DEVICE"
w2s w2s-train "${TRAIN[@]}" --teacher teacher --objective explicit --run-id explicit
for run in teacher explicit; do
    w2s score --artifacts "$ROOT" --run-id $run --max-ctx 48 --device "$DEVICE" --dtype "$DTYPE"
done
"$W2S" --log warn sql --artifacts "$ROOT" --format csv "
    select 'loss:' || run_id as what, step as i, loss as value from train_log
    union all
    select 'w2s_margin' as what, split_index as i, margin as value from labels
        where run_id = 'teacher' and split = 'w2s'
    union all
    select 'test_margin:' || run_id as what, split_index as i, margin as value from scores
    order by what, i" | tail -n +2
