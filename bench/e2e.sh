#!/usr/bin/env bash
# End-to-end bench (docs/performance.md): `w2s gt-train` of a GPT-2-small-architecture
# reward model (random init) on the first N pairs of the real harmless split, against the same
# training done the reference way in PyTorch (bench/torch_e2e.py: micro-batch 1, batch 32).
# Both engines load the same checkpoint and the same word-level tokenizer, truncate to the same
# context, and are timed from process start to exit (loading, tokenizing, training, and for w2s
# publishing the trained checkpoint and tables).
#
#   bash bench/e2e.sh                     # N=256, DATA=../shared/data/hh-single-turn/harmless_train_gt.jsonl
#   N=64 bash bench/e2e.sh                # a quicker look
#
# Needs a release build (cargo build --release) and .venv-ref (torch, transformers, tokenizers).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-256}
DATA=${DATA:-../shared/data/hh-single-turn/harmless_train_gt.jsonl}
PY=${PY:-.venv-ref/bin/python}
W2S=${W2S:-target/release/w2s}
WORK=${WORK:-target/bench-e2e}
[ -f "$DATA" ] || { echo "no data file $DATA (set DATA=)" >&2; exit 66; }
[ -x "$PY" ] || { echo "no Python with torch at $PY (set PY=)" >&2; exit 69; }

mkdir -p "$WORK"
model=$("$W2S" --log warn bench checkpoint --arch gpt2-small --out "$WORK/models")
[ -f "$model/tokenizer.json" ] || "$PY" bench/torch_e2e.py tokenizer --data "$DATA" --out "$model/tokenizer.json"
head -n "$N" "$DATA" > "$WORK/gt.jsonl"
ctx=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['n_positions'])" "$model/config.json")

now() { date +%s.%N; }

rm -rf "$WORK/artifacts"
"$W2S" --log warn split --artifacts "$WORK/artifacts" --gt "$WORK/gt.jsonl" --w2s "$WORK/gt.jsonl" \
    --test "$WORK/gt.jsonl" --n-gt "$N" --n-w2s 1 --n-test 1 >/dev/null

t0=$(now)
/usr/bin/time -f "%M" -o "$WORK/w2s.rss" "$W2S" --log warn gt-train --artifacts "$WORK/artifacts" \
    --model "$model" --batch 32 --micro-batch 1 --max-ctx "$ctx" --lr 1e-5 >/dev/null
t1=$(now)
w2s_s=$(echo "$t1 - $t0" | bc -l)
w2s_rss=$(( $(cat "$WORK/w2s.rss") / 1024 ))

torch_json=$("$PY" bench/torch_e2e.py train --data "$WORK/gt.jsonl" --model "$model" --pairs "$N" --max-ctx "$ctx")
torch_s=$(echo "$torch_json" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['seconds'])")
torch_rss=$(echo "$torch_json" | "$PY" -c "import json,sys; print(round(json.load(sys.stdin)['peak_rss_mib']))")

pairs=$(( N / 32 * 32 ))
"$PY" - "$pairs" "$w2s_s" "$torch_s" "$w2s_rss" "$torch_rss" <<'PYEOF'
import sys
n, ws, ts, wr, tr = int(sys.argv[1]), *map(float, sys.argv[2:])
print("| pairs | w2s s | PyTorch s | w2s pairs/s | PyTorch pairs/s | speed w2s/PyTorch | w2s peak RSS MiB | PyTorch peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {n} | {ws:.1f} | {ts:.1f} | {n/ws:.3f} | {n/ts:.3f} | {ts/ws:.2f} | {wr:.0f} | {tr:.0f} |")
PYEOF
