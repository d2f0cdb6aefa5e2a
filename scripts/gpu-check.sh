#!/usr/bin/env bash
# GPU check (item 3; docs/performance.md): the engine bench on one NVIDIA GPU, w2s
# (built with `--features cuda`) against PyTorch on the same GPU, side by side in one run.
#
#   bash scripts/gpu-check.sh            # GPT-2-small shapes, 3 repeats: about 3-4 minutes
#   ARCH=tiny REPEATS=1 bash scripts/gpu-check.sh
#   W2S=target-cuda/release/w2s.xz bash scripts/gpu-check.sh   # the compressed copy, as carried
#
# It needs, on the GPU machine:
#   - a w2s built with CUDA, at $W2S (default target-cuda/release/w2s): scripts/build-cuda.sh
#     builds it on any Linux machine (nvcc from PyPI, no GPU needed) and the binary can be
#     copied over (it loads libcuda at run time);
#   - a Python with a CUDA torch + transformers at $PY (default .venv-ref/bin/python).
# What it checks before measuring: the GPU is seen by both engines, and w2s was built with
# CUDA (`--device cuda` fails at once otherwise, naming the missing feature).
set -euo pipefail
cd "$(dirname "$0")/.."
W2S=${W2S:-target-cuda/release/w2s}
if [ -z "${PY:-}" ]; then
    if [ -x .venv-ref/bin/python ]; then PY=.venv-ref/bin/python; else PY=python3; fi
fi
ARCH=${ARCH:-gpt2-small}
REPEATS=${REPEATS:-3}
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The compressed binary build-cuda.sh writes (target-cuda/release/w2s.xz), as carried over.
if [ "${W2S%.xz}" != "$W2S" ] && [ -f "$W2S" ]; then
    xz -dc "$W2S" > "${TMPDIR:-/tmp}/w2s-cuda" && chmod +x "${TMPDIR:-/tmp}/w2s-cuda" && W2S="${TMPDIR:-/tmp}/w2s-cuda"
fi
[ -x "$W2S" ] || { echo "no w2s at $W2S: build it with scripts/build-cuda.sh first" >&2; exit 69; }
# The CUDA libraries the binary links (cuBLAS, cuBLASLt, cuRAND, NVRTC): this machine's own
# nvidia-* wheels (CUDA 13's share nvidia/cu13/lib, CUDA 12's have one lib folder each), ahead
# of the build machine's folder in the binary's RUNPATH.
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
if ldd "$W2S" | grep "not found"; then
    echo "libraries of $W2S not found (above): install the nvidia-* wheels of its CUDA version or set LD_LIBRARY_PATH" >&2
    exit 69
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'PyTorch sees no GPU')"

start=$(date +%s)
# The tiny shape first, one repeat: a quick end-to-end proof that every task runs on the GPU.
"$W2S" --log warn bench engine --device cuda --arch tiny --repeats 1 --python "$PY" \
    --models "$OUT/models" --out "$OUT/tiny.json"
"$W2S" --log warn bench engine --device cuda --arch "$ARCH" --repeats "$REPEATS" --python "$PY" \
    --models "$OUT/models" --out "$OUT/$ARCH.json" | tee "$OUT/$ARCH.md"
echo "gpu-check: $(( $(date +%s) - start )) s; tables in $OUT/"
