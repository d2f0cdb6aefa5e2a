#!/usr/bin/env bash
# The GPU check (docs/performance.md, "The GPU check"): everything a first GPU session must
# show, in one command of about 8 minutes on one H100 / H200, each part reported even if an
# earlier one failed:
#
#   1. parity   every fixture family's loss and every parameter's gradient on the GPU against
#               the CPU in f32 and in bf16 mixed precision (`w2s bench parity`);
#   2. chain    the oracle's reward-modeling chain (split, gt-train, weak-label, w2s-train,
#               score; scripts/gpu-chain.sh) on the GPU in f32 and bf16 against the same chain
#               on the CPU, and the CPU's against PyTorch's numbers;
#   3. speed    the engine bench on the GPU beside PyTorch on the same GPU: every task at the
#               tiny shape, GPT-2 small in f32 (REPEATS runs each, default 1), and GPT-2 XL
#               reward-model training in bf16 with each process's peak GPU memory;
#   4. memory   a Llama-3-8B-shaped LoRA SimPO step and a Mistral-7B-shaped full fine-tune
#               step with recompute, 512 tokens a side, bf16, with their peak GPU memory
#               (bench/memory_plan.sh; random checkpoints of 16 and 14.5 GB written first).
#
#   bash scripts/gpu-check.sh
#   W2S=target-cuda/release/w2s.xz bash scripts/gpu-check.sh   # the compressed copy, as carried
#   ONLY="parity chain" bash scripts/gpu-check.sh                # some parts
#   DEVICE=cpu W2S=target/release/w2s ONLY="parity chain" bash scripts/gpu-check.sh
#                                        # the script itself, on a machine without a GPU
#
# It needs, on the GPU machine: a w2s built with CUDA at $W2S (default target-cuda/release/w2s;
# scripts/build-cuda.sh builds it on any Linux machine, no GPU needed), a python3 with a CUDA
# torch + transformers at $PY, and this repository's tests/fixtures, bench/ and scripts/. The
# CUDA libraries come from that python's nvidia-* wheels. Results go to $OUT (target/gpu-check):
# summary.md holds every table; the exit status is 1 if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
W2S=${W2S:-target-cuda/release/w2s}
if [ -z "${PY:-}" ]; then
    if [ -x .venv-ref/bin/python ]; then PY=.venv-ref/bin/python; else PY=python3; fi
fi
REPEATS=${REPEATS:-1}
OUT=${OUT:-target/gpu-check}
ONLY=${ONLY:-parity chain speed memory}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.md
: > "$SUMMARY"
say() { echo "$@" | tee -a "$SUMMARY"; }
FAILED=()

if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi
# The compressed binary build-cuda.sh writes (target-cuda/release/w2s.xz), as carried over.
if [ "${W2S%.xz}" != "$W2S" ] && [ -f "$W2S" ]; then
    xz -dc "$W2S" > "${TMPDIR:-/tmp}/w2s-cuda" && chmod +x "${TMPDIR:-/tmp}/w2s-cuda" && W2S="${TMPDIR:-/tmp}/w2s-cuda"
fi
[ -x "$W2S" ] || { echo "no w2s at $W2S: build it with scripts/build-cuda.sh first" >&2; exit 69; }
W2S=$(cd "$(dirname "$W2S")" && pwd)/$(basename "$W2S")
export W2S
# The CUDA libraries the binary links (cuBLAS, cuBLASLt, cuRAND, the runtime): this machine's
# own nvidia-* wheels (CUDA 13's share nvidia/cu13/lib, CUDA 12's have one lib folder each),
# ahead of the build machine's folder in the binary's RUNPATH.
NVLIB=$("$PY" - <<'PYEOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = []
for root in nvidia.__path__:
    dirs += sorted(glob.glob(os.path.join(root, "cu*", "lib"))) + sorted(glob.glob(os.path.join(root, "*", "lib")))
print(":".join(dict.fromkeys(d for d in dirs if os.path.isdir(d))))
PYEOF
)
[ -z "$NVLIB" ] || export LD_LIBRARY_PATH="$NVLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$W2S" | grep "not found" | grep -v "libcuda.so.1"; then
    echo "libraries of $W2S not found (above): install the nvidia-* wheels of its CUDA version or set LD_LIBRARY_PATH" >&2
    exit 69
fi
if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'PyTorch sees no GPU')" || exit 69
fi
say "w2s: $("$W2S" --version), $(ldd "$W2S" | grep -oE 'libcublas\.so\.[0-9]+' | head -1)"

start=$(date +%s)
part() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
stamp() { say "($1: $(( $(date +%s) - start )) s since the start)"; }

# Runs a command with nvidia-smi sampling GPU 0's used memory every 50 ms; writes the peak
# less what was in use before into the file named first.
with_gpu_peak() {
    local file=$1; shift
    if [ "$DEVICE" = cpu ]; then "$@"; local rc=$?; echo - > "$file"; return $rc; fi
    local base sampler
    base=$(nvidia-smi --id=0 --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --id=0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$file.samples" &
    sampler=$!
    "$@"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    awk -v b="$base" '$1 + 0 > m {m = $1 + 0} END {print m - b}' "$file.samples" > "$file"
    return $rc
}

if part parity; then
    say "## 1. Parity: $DEVICE against the CPU in f32"
    # candle's composed ops, then w2s's own CUDA kernels (--cuda-kernels) in their place.
    for kernels in false true; do
        for dtype in f32 bf16; do
            name=parity-$dtype$([ $kernels = true ] && echo -kernels)
            W2S_CUDA_KERNELS=$kernels "$W2S" --log warn bench parity --device "$DEVICE" --dtype "$dtype" \
                --out "$OUT/$name.json" --model tests/fixtures/models/{gpt2,opt,opt-350m,llama,mistral} \
                > "$OUT/$name.md" 2>&1 || FAILED+=("$name")
            say "### $dtype, w2s's CUDA kernels: $kernels"; cat "$OUT/$name.md" | tee -a "$SUMMARY"
        done
    done
    stamp parity
fi

if part chain; then
    say "## 2. The tiny chain on the GPU against the CPU"
    bash scripts/gpu-chain.sh "$OUT/chain-cpu" cpu f32 > "$OUT/chain-cpu.csv" || FAILED+=("chain cpu")
    for dtype in f32 bf16; do
        bash scripts/gpu-chain.sh "$OUT/chain-cuda-$dtype" "$DEVICE" "$dtype" > "$OUT/chain-cuda-$dtype.csv" \
            || FAILED+=("chain cuda $dtype")
    done
    # f32: float rounding and the order of a GPU's sums; bf16: measured on the CPU, the bf16
    # chain is within 0.014 of the f32 one.
    "$PY" scripts/compare-chains.py "$OUT/chain-cpu.csv" "$OUT/chain-cuda-f32.csv" --abs 1e-3 --rel 1e-3 \
        --name "$DEVICE f32 vs cpu f32" --oracle tests/fixtures/rm_run/expected.json | tee -a "$SUMMARY" \
        || FAILED+=("chain f32 parity")
    "$PY" scripts/compare-chains.py "$OUT/chain-cpu.csv" "$OUT/chain-cuda-bf16.csv" --abs 0.05 --rel 0.02 \
        --name "$DEVICE bf16 vs cpu f32" | tee -a "$SUMMARY" || FAILED+=("chain bf16 parity")
    stamp chain
fi

if part speed; then
    say "## 3. Speed beside PyTorch on the same GPU"
    "$W2S" --log warn bench engine --device "$DEVICE" --arch tiny --repeats 1 --python "$PY" \
        --models "$OUT/models" --out "$OUT/tiny.json" > "$OUT/tiny.md" || FAILED+=("bench tiny")
    cat "$OUT/tiny.md" | tee -a "$SUMMARY"
    "$W2S" --log warn bench engine --device "$DEVICE" --arch gpt2-small --repeats "$REPEATS" --python "$PY" \
        --models "$OUT/models" --out "$OUT/gpt2-small.json" > "$OUT/gpt2-small.md" || FAILED+=("bench gpt2-small")
    cat "$OUT/gpt2-small.md" | tee -a "$SUMMARY"
    # GPT-2 XL reward-model training in bf16: each engine in its own process, with its peak.
    xl=$("$W2S" --log warn bench checkpoint --arch gpt2-xl --out "$OUT/models") || FAILED+=("gpt2-xl checkpoint")
    say "### gpt2-xl rm-train, bf16"
    say "| engine | tokens/s | peak GPU MiB |"
    say "|---|---|---|"
    for engine in w2s w2s-kernels torch; do
        if [ $engine = w2s ]; then
            cmd=("$W2S" --log warn bench one --arch gpt2-xl --task rm-train --device "$DEVICE" --dtype bf16 --model "$xl")
        elif [ $engine = w2s-kernels ]; then
            cmd=("$W2S" --log warn --cuda-kernels bench one --arch gpt2-xl --task rm-train --device "$DEVICE" --dtype bf16 --model "$xl")
        else
            cmd=("$PY" bench/torch_engine.py --arch gpt2-xl --task rm-train --device "$DEVICE" --dtype bf16 --model "$xl")
        fi
        with_gpu_peak "$OUT/xl-$engine.gpu" "${cmd[@]}" > "$OUT/xl-$engine.json" || FAILED+=("gpt2-xl $engine")
        tps=$("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['tokens_per_s'], 1))" "$OUT/xl-$engine.json" 2>/dev/null || echo -)
        say "| $engine | $tps | $(cat "$OUT/xl-$engine.gpu") |"
    done
    "$PY" - "$OUT/xl-w2s.json" "$OUT/xl-w2s-kernels.json" "$OUT/xl-torch.json" <<'PYEOF' | tee -a "$SUMMARY" || FAILED+=("gpt2-xl speed target")
import json, sys
def tps(p):
    try:
        return json.load(open(p))["tokens_per_s"]
    except Exception:
        return 0.0
w, k, t = (tps(p) for p in sys.argv[1:4])
if not t:
    sys.exit("no PyTorch figure")
print(f"w2s / PyTorch: {w / t:.2f} with candle's ops, {k / t:.2f} with w2s's CUDA kernels (target >= 0.8)")
sys.exit(0 if max(w, k) / t >= 0.8 else 1)
PYEOF
    stamp speed
fi

if part memory; then
    say "## 4. Memory of the 7-8B shapes (one step, 2 x 512 tokens, bf16, recompute)"
    DEVICE="$DEVICE" ONLY="llama-8b mistral-7b" BIN="$W2S" PY="$PY" WORK="$OUT/memory" \
        bash bench/memory_plan.sh > "$OUT/memory.md" || FAILED+=("memory runs")
    cat "$OUT/memory.md" | tee -a "$SUMMARY"
    # Targets: Llama-3-8B LoRA within 40 GB; Mistral-7B full fine-tune within one 141 GB GPU.
    "$PY" - "$OUT/memory/results.txt" <<'PYEOF' | tee -a "$SUMMARY" || FAILED+=("memory targets")
import sys
limits = {"llama-8b": 40 * 1000**3 / 2**20, "mistral-7b": 141 * 1000**3 / 2**20}
ok = True
for line in open(sys.argv[1]):
    f = line.split()
    name, gpu = f[0], f[-1]
    if name in limits:
        fits = gpu != "-" and float(gpu) <= limits[name]
        ok &= fits
        print(f"{name}: peak GPU {gpu} MiB, limit {limits[name]:.0f} MiB: {'fits' if fits else 'DOES NOT FIT'}")
sys.exit(0 if ok else 1)
PYEOF
    stamp memory
fi

say "gpu-check: $(( $(date +%s) - start )) s; tables in $OUT/ (summary.md)"
if [ ${#FAILED[@]} -gt 0 ]; then
    say "FAILED: ${FAILED[*]}"
    exit 1
fi
say "every part passed"
