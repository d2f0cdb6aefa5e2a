#!/usr/bin/env bash
# Memory-plan bench (docs/performance.md, "Memory plan"): the estimate `w2s gt-train --dry-run`
# prints against the peak RSS the same run reaches, at three shapes, one after the other:
#
#   gpt2-small  reward model, every weight trained, f32, no recompute, 2 x 256 tokens
#   gpt2-medium reward model, every weight trained, f32, --grad-checkpoint, 2 x 512 tokens
#   llama-1b    SimPO with LoRA r 8 on every projection, bf16, --grad-checkpoint, 2 x 512 tokens
#               (also the ~1B LoRA target: peak RSS against its weights plus adapters)
# and, only when ONLY names them (16 and 14.5 GB checkpoints; for a GPU):
#   llama-8b    Llama-3-8B's shape, SimPO with LoRA r 8, bf16, --grad-checkpoint, 2 x 512 tokens
#   mistral-7b  Mistral-7B's shape, SimPO fine-tuning every weight, bf16, --grad-checkpoint,
#               2 x 512 tokens
#
#   bash bench/memory_plan.sh                 # BIN defaults to target/release/w2s
#   ONLY=llama-1b bash bench/memory_plan.sh   # one shape
#   DEVICE=cuda ONLY="llama-8b mistral-7b" bash bench/memory_plan.sh   # on a GPU (gpu-check.sh)
#
# On a GPU (DEVICE cuda or cuda:N) each run also gets its peak GPU memory: nvidia-smi's
# memory.used of that GPU sampled every 50 ms, less what was in use before the run (the
# CUDA context is counted, as PyTorch's process would count its own).
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
DEVICE=${DEVICE:-cpu}
mkdir -p "$WORK"
GPU=
case "$DEVICE" in
    cuda) GPU=0 ;;
    cuda:*) GPU=${DEVICE#cuda:} ;;
esac
gpu_used() { nvidia-smi --id="$GPU" --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }

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
    if [ -z "$ONLY" ]; then
        case "$name" in llama-8b|mistral-7b) return 0 ;; esac
    else
        case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
    fi
    local model
    model=$("$BIN" --log warn bench checkpoint --arch "$arch" --out "$WORK/models")
    [ -f "$model/tokenizer.json" ] || "$PY" bench/torch_e2e.py tokenizer --data "$WORK/pairs.jsonl" \
        --out "$model/tokenizer.json" --vocab 30000
    local root="$WORK/a-$name"
    rm -rf "$root"
    "$BIN" --log warn split --artifacts "$root" --gt "$WORK/pairs.jsonl" --w2s "$WORK/pairs.jsonl" \
        --test "$WORK/pairs.jsonl" --n-gt 1 --n-w2s 1 --n-test 1 >/dev/null
    local args=(--artifacts "$root" --scenario "$scenario" --model "$model" --batch 1 --micro-batch 1
        --max-ctx "$ctx" --save-every 0 --device "$DEVICE" "$@")
    local est
    est=$("$BIN" --log warn gt-train "${args[@]}" --dry-run | awk '$1 == "peak" {print $2}')
    est=${est:-0}
    local t0 t1
    local sampler= base=0
    if [ -n "$GPU" ]; then
        base=$(gpu_used)
        nvidia-smi --id="$GPU" --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 \
            > "$WORK/$name.gpu" &
        sampler=$!
    fi
    t0=$(date +%s.%N)
    # Peak RSS from GNU time where the machine has it (a GPU machine's image may not: 0).
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$WORK/$name.rss" "$BIN" --log warn gt-train "${args[@]}" >/dev/null
    else
        "$BIN" --log warn gt-train "${args[@]}" >/dev/null
        echo 0 > "$WORK/$name.rss"
    fi
    t1=$(date +%s.%N)
    local gpu=-
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        gpu=$(awk -v b="$base" '$1 + 0 > m {m = $1 + 0} END {print m - b}' "$WORK/$name.gpu")
    fi
    local rss=$(( $(cat "$WORK/$name.rss") / 1024 ))
    local weights
    weights=$(du -m --apparent-size "$model"/*.safetensors | awk '{s += $1} END {print s}')
    echo "$name $est $rss $weights $(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') $gpu"
}

{
    run gpt2-small gpt2-small rm 256
    run gpt2-medium gpt2-medium rm 512 --grad-checkpoint
    run llama-1b llama-1b simpo 512 --lora-rank 8 --dtype bf16 --grad-checkpoint
    run llama-8b llama-8b simpo 512 --lora-rank 8 --dtype bf16 --grad-checkpoint
    run mistral-7b mistral-7b simpo 512 --dtype bf16 --grad-checkpoint
} | tee "$WORK/results.txt"

"$PY" - "$WORK/results.txt" <<'PYEOF'
import sys
print("| shape | estimated peak MiB | measured peak RSS MiB | measured / estimate | checkpoint MiB | RSS / checkpoint | seconds | peak GPU MiB |")
print("|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    name, est, rss, weights, secs, gpu = line.split()
    est, rss, weights = int(est), int(rss), int(weights)
    ratio = lambda x, y: f"{x / y:.2f}" if x and y else "-"
    print(f"| {name} | {est} | {rss or '-'} | {ratio(rss, est)} | {weights} | {ratio(rss, weights)} | {float(secs):.0f} | {gpu} |")
PYEOF
