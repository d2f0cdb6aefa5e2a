#!/usr/bin/env bash
# Memory-plan bench (docs/performance.md, "Memory plan"): the estimate `w2s gt-train --dry-run`
# prints against the peak RSS the same run reaches, at three shapes, one after the other:
#
#   gpt2-small  reward model, every weight trained, f32, no recompute, 2 x 256 tokens
#   gpt2-medium reward model, every weight trained, f32, --grad-checkpoint, 2 x 512 tokens
#   llama-1b    SimPO with LoRA r 8 on every projection, bf16, --grad-checkpoint, 2 x 512 tokens
#               (also the ~1B LoRA target: peak RSS against its weights plus adapters)
#
#   bash bench/memory_plan.sh                 # BIN defaults to target/release/w2s
#   ONLY=llama-1b bash bench/memory_plan.sh   # one shape
#
# Every side is longer than the context, so each sequence is exactly max_ctx tokens (the
# estimate's assumption). Needs .venv-ref (python3 with `tokenizers`) for the word-level
# tokenizer; random checkpoints come from `w2s bench checkpoint`. The llama-1b run takes a few
# minutes a step on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-ref/bin/python}
BIN=${BIN:-target/release/w2s}
WORK=${WORK:-target/bench-memory}
ONLY=${ONLY:-}
mkdir -p "$WORK"

# Synthetic pairs in HH format: a 300-word prompt, 700-word responses, words from a
# 20000-word vocabulary (fits every model's embedding).
"$PY" - "$WORK/pairs.jsonl" <<'PYEOF'
import json, random, sys
rng = random.Random(0)
words = [f"w{i}" for i in range(20000)]
say = lambda n: " ".join(rng.choice(words) for _ in range(n))
with open(sys.argv[1], "w") as f:
    for _ in range(4):
        prompt = f"\n\nHuman: {say(300)}\n\nAssistant:"
        f.write(json.dumps({"chosen": f"{prompt} {say(700)}", "rejected": f"{prompt} {say(700)}"}) + "\n")
PYEOF

# shape arch scenario ctx extra-args...
run() {
    local name=$1 arch=$2 scenario=$3 ctx=$4; shift 4
    [ -z "$ONLY" ] || [ "$ONLY" = "$name" ] || return 0
    local model
    model=$("$BIN" --log warn bench checkpoint --arch "$arch" --out "$WORK/models")
    [ -f "$model/tokenizer.json" ] || "$PY" bench/torch_e2e.py tokenizer --data "$WORK/pairs.jsonl" \
        --out "$model/tokenizer.json" --vocab 30000
    local root="$WORK/a-$name"
    rm -rf "$root"
    "$BIN" --log warn split --artifacts "$root" --gt "$WORK/pairs.jsonl" --w2s "$WORK/pairs.jsonl" \
        --test "$WORK/pairs.jsonl" --n-gt 1 --n-w2s 1 --n-test 1 >/dev/null
    local args=(--artifacts "$root" --scenario "$scenario" --model "$model" --batch 1 --micro-batch 1
        --max-ctx "$ctx" --save-every 0 "$@")
    local est
    est=$("$BIN" --log warn gt-train "${args[@]}" --dry-run | awk '$1 == "peak" {print $2}')
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/$name.rss" "$BIN" --log warn gt-train "${args[@]}" >/dev/null
    t1=$(date +%s.%N)
    local rss=$(( $(cat "$WORK/$name.rss") / 1024 ))
    local weights
    weights=$(du -m --apparent-size "$model"/*.safetensors | awk '{s += $1} END {print s}')
    echo "$name $est $rss $weights $(echo "$t1 - $t0" | bc -l)"
}

{
    run gpt2-small gpt2-small rm 256
    run gpt2-medium gpt2-medium rm 512 --grad-checkpoint
    run llama-1b llama-1b simpo 512 --lora-rank 8 --dtype bf16 --grad-checkpoint
} | tee "$WORK/results.txt"

"$PY" - "$WORK/results.txt" <<'PYEOF'
import sys
print("| shape | estimated peak MiB | measured peak RSS MiB | measured / estimate | checkpoint MiB | RSS / checkpoint | seconds |")
print("|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    name, est, rss, weights, secs = line.split()
    est, rss, weights = int(est), int(rss), int(weights)
    print(f"| {name} | {est} | {rss} | {rss / est:.2f} | {weights} | {rss / weights:.2f} | {float(secs):.0f} |")
PYEOF
