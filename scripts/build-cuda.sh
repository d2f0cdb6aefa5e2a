#!/usr/bin/env bash
# Builds w2s with the `cuda` feature on a machine without a CUDA toolkit (item 3):
# nvcc, the CUDA runtime headers and CCCL come from PyPI into .venv-cuda, and the binary goes
# to target-cuda/release/w2s, apart from the CPU build. No GPU is needed to build; the binary
# loads the driver (libcuda) at run time, so it can be copied to a GPU machine that has no Rust
# toolchain and run there by scripts/gpu-check.sh (W2S=target-cuda/release/w2s).
#
#   bash scripts/build-cuda.sh            # release build (as long as the CPU one, plus ~15 min of kernels)
#   CHECK=1 bash scripts/build-cuda.sh    # cargo check only: type-checks the CUDA paths
#   CUDA_COMPUTE_CAP=80 bash scripts/build-cuda.sh   # another GPU generation (default 90: H100/H200)
#
# cudarc 0.19 knows CUDA up to 13.4: PyPI's newer nvcc builds against the 13.4 API
# (CUDARC_CUDA_VERSION), which the newer driver serves.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-cuda}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl
CUDA=$("$VENV/bin/python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
[ -x "$CUDA/bin/nvcc" ] || { echo "no nvcc under $CUDA" >&2; exit 69; }
export PATH="$CUDA/bin:$PATH" CUDA_ROOT="$CUDA" CUDA_PATH="$CUDA" CUDA_HOME="$CUDA"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
nvcc --version | tail -1
if [ "${CHECK:-0}" = 1 ]; then
    cargo check --release --locked --features cuda --bins
else
    cargo build --release --locked --features cuda
    echo "built $CARGO_TARGET_DIR/release/w2s (compute capability $CUDA_COMPUTE_CAP)"
fi
