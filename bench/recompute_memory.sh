#!/usr/bin/env bash
# Activation-recompute memory bench (docs/performance.md, "Activation recompute"): one
# `w2s gt-train --scenario rm` of a GPT-2-medium-architecture reward model (random init, 355M
# parameters, every weight trained) on the N longest real pairs, run twice by one binary, without
# and with `--grad-checkpoint`, with peak RSS, wall time and the per-step losses of each.
#
#   bash bench/recompute_memory.sh            # BIN defaults to target/release/w2s
#
# Needs .venv-ref for the word-level tokenizer (as bench/e2e.sh) and the real harmless split.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-6}
CTX=${CTX:-512}
BATCH=${BATCH:-2}
MICRO=${MICRO:-2}
DATA=${DATA:-../shared/data/hh-single-turn/harmless_train_gt.jsonl}
PY=${PY:-.venv-ref/bin/python}
BIN=${BIN:-target/release/w2s}
WORK=${WORK:-target/bench-recompute}
[ -f "$DATA" ] || { echo "no data file $DATA (set DATA=)" >&2; exit 66; }

mkdir -p "$WORK"
model=$("$BIN" --log warn bench checkpoint --arch gpt2-medium --out "$WORK/models")
[ -f "$model/tokenizer.json" ] || "$PY" bench/torch_e2e.py tokenizer --data "$DATA" --out "$model/tokenizer.json"
# The N longest pairs: activation memory grows with length, and real pairs are short.
"$PY" - "$DATA" "$N" > "$WORK/gt.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows.sort(key=lambda r: -len(r["chosen"]) - len(r["rejected"]))
for r in rows[: int(sys.argv[2])]:
    print(json.dumps(r))
PYEOF

run() { # name extra-args...
    local name=$1; shift
    rm -rf "$WORK/a-$name"
    "$BIN" --log warn split --artifacts "$WORK/a-$name" --gt "$WORK/gt.jsonl" --w2s "$WORK/gt.jsonl" \
        --test "$WORK/gt.jsonl" --n-gt "$N" --n-w2s 1 --n-test 1 >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/$name.rss" "$BIN" --log warn gt-train --artifacts "$WORK/a-$name" \
        --scenario rm --model "$model" --batch "$BATCH" --micro-batch "$MICRO" --max-ctx "$CTX" \
        --save-every 0 "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$name $(echo "$t1 - $t0" | bc -l) $(( $(cat "$WORK/$name.rss") / 1024 ))"
    "$BIN" --log warn sql --artifacts "$WORK/a-$name" --format csv \
        "select step, loss, tokens from train_log order by step" > "$WORK/$name.losses"
}

{
    run plain
    run recompute --grad-checkpoint
} > "$WORK/results.txt"
"$PY" - "$WORK" <<'PYEOF'
import csv, sys
w = sys.argv[1]
rows = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in open(f"{w}/results.txt")}
print("| run | seconds | peak RSS MiB |")
print("|---|---|---|")
for k, (s, r) in rows.items():
    print(f"| {k} | {s:.1f} | {r} |")
(a_s, a_r), (b_s, b_r) = rows["plain"], rows["recompute"]
print(f"recompute/plain: peak RSS {b_r / a_r:.2f}, time {b_s / a_s:.2f}")
la = list(csv.DictReader(open(f"{w}/plain.losses")))
lb = list(csv.DictReader(open(f"{w}/recompute.losses")))
worst = max(abs(float(x["loss"]) - float(y["loss"])) / abs(float(x["loss"])) for x, y in zip(la, lb))
print(f"steps {len(la)}, tokens a step {[int(x['tokens']) for x in la]}")
print("losses plain     ", [float(x["loss"]) for x in la])
print("losses recompute ", [float(x["loss"]) for x in lb])
print(f"largest relative loss difference: {worst:.2e}")
PYEOF
