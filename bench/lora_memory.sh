#!/usr/bin/env bash
# LoRA memory bench (docs/performance.md, "LoRA"): one `w2s gt-train --scenario simpo
# --lora-rank 8` of a GPT-2-small-architecture policy (random init) on the first N real pairs,
# run by two w2s binaries one after the other, with peak RSS and wall time of each; then the
# same with full fine-tuning.
#
#   A=/path/to/baseline/w2s bash bench/lora_memory.sh       # B defaults to target/release/w2s
#
# A is the baseline binary (e.g. built from the commit before the change being measured), B the
# one measured. Needs .venv-ref for the word-level tokenizer (as bench/e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-16}
CTX=${CTX:-256}
DATA=${DATA:-../shared/data/hh-single-turn/harmless_train_gt.jsonl}
PY=${PY:-.venv-ref/bin/python}
A=${A:?set A to the baseline w2s binary}
B=${B:-target/release/w2s}
WORK=${WORK:-target/bench-lora}
[ -f "$DATA" ] || { echo "no data file $DATA (set DATA=)" >&2; exit 66; }

mkdir -p "$WORK"
model=$("$B" --log warn bench checkpoint --arch gpt2-small --out "$WORK/models")
[ -f "$model/tokenizer.json" ] || "$PY" bench/torch_e2e.py tokenizer --data "$DATA" --out "$model/tokenizer.json"
head -n "$N" "$DATA" > "$WORK/gt.jsonl"

run() { # name binary extra-args...
    local name=$1 bin=$2; shift 2
    rm -rf "$WORK/a-$name"
    "$bin" --log warn split --artifacts "$WORK/a-$name" --gt "$WORK/gt.jsonl" --w2s "$WORK/gt.jsonl" \
        --test "$WORK/gt.jsonl" --n-gt "$N" --n-w2s 1 --n-test 1 >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/$name.rss" "$bin" --log warn gt-train --artifacts "$WORK/a-$name" \
        --scenario simpo --model "$model" --batch 8 --micro-batch 4 --max-ctx "$CTX" --lr 1e-4 \
        --save-every 0 "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$name $(echo "$t1 - $t0" | bc -l) $(( $(cat "$WORK/$name.rss") / 1024 ))"
    "$bin" --log warn sql --artifacts "$WORK/a-$name" --format csv \
        "select step, loss from train_log order by step" > "$WORK/$name.losses"
}

{
    run lora-A "$A" --lora-rank 8
    run lora-B "$B" --lora-rank 8
    run full-A "$A"
    run full-B "$B"
} > "$WORK/results.txt"
same=yes
cmp -s "$WORK/lora-A.losses" "$WORK/lora-B.losses" || same=no
cmp -s "$WORK/full-A.losses" "$WORK/full-B.losses" || same=no
"$PY" - "$WORK/results.txt" "$same" <<'PYEOF'
import sys
rows = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in open(sys.argv[1])}
print("| run | seconds | peak RSS MiB |")
print("|---|---|---|")
for k, (s, r) in rows.items():
    print(f"| {k} | {s:.1f} | {r} |")
for kind in ["lora", "full"]:
    (a_s, a_r), (b_s, b_r) = rows[f"{kind}-A"], rows[f"{kind}-B"]
    print(f"{kind} B/A: peak RSS {b_r / a_r:.2f}, time {b_s / a_s:.2f}")
print(f"identical losses A and B: {sys.argv[2]}")
PYEOF
