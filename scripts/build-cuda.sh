#!/usr/bin/env bash
# Builds w2s with the `cuda` feature on a machine without a CUDA toolkit or a GPU: nvcc, the
# runtime headers, CCCL and the libraries candle links (cuBLAS, cuBLASLt, cuRAND, NVRTC) come
# from PyPI into a virtualenv, and the linked binary goes to its own target folder, apart from
# the CPU build.
#
#   bash scripts/build-cuda.sh                 # CUDA 13 (R580+ drivers): target-cuda/release/w2s
#   CUDA=12 bash scripts/build-cuda.sh         # CUDA 12.8 (R570+ drivers): target-cuda12/release/w2s
#   CHECK=1 bash scripts/build-cuda.sh         # cargo check only: type-checks the CUDA paths
#   CUDA_COMPUTE_CAP=80 bash scripts/build-cuda.sh   # another GPU generation (default 90: H100/H200)
#
# Time on a 2-core machine: the CPU build's dependencies again (~35 min) plus candle's kernels
# (~15 min). candle links cudarc against the libraries (`-lcuda -lnvrtc -lcurand -lcublas
# -lcublasLt`, and its kernels `-lcudart`): the wheels ship only versioned files (libcublas.so.13), so the script links
# through a folder of unversioned links to them, and against a stub libcuda.so.1 generated from
# cudarc's own list of driver functions (the driver is the GPU machine's; it is never shipped).
# The binary's RUNPATH names the wheels' library folder here; on another machine point
# LD_LIBRARY_PATH at that machine's nvidia wheels (scripts/gpu-check.sh does) or its toolkit.
# At the end `ldd` must resolve everything but libcuda.so.1.
#
# cudarc 0.19 knows CUDA up to 13.4; PyPI's newer nvcc builds against the 13.4 API
# (CUDARC_CUDA_VERSION), which a newer driver serves.
#
# CUDA 12: PyPI has no CUDA 12 nvcc (nvidia-cuda-nvcc-cu12 ships only ptxas and NVVM), so the
# kernels are compiled by CUDA 13's nvcc through a wrapper that stamps each PTX module with ISA
# 8.7 (the newest a CUDA 12.8 driver compiles) and has CUDA 12.8's own ptxas assemble it for
# its target (sm_90a for compute capability 90), failing the build if it cannot: a module
# 12.8's ptxas accepts is one an R570 driver's JIT (the same compiler) accepts. Everything
# linked is CUDA 12.8's (cuBLAS 12, cuRAND, the runtime 12), with cudarc's 12.8 driver API.
set -euo pipefail
cd "$(dirname "$0")/.."
MAJOR=${CUDA:-13}
case "$MAJOR" in
    13) VENV=${VENV:-.venv-cuda}; TARGET=${CARGO_TARGET_DIR:-target-cuda}; VERSION=${CUDARC_CUDA_VERSION:-13040}
        PKGS="nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cublas nvidia-curand nvidia-cuda-nvrtc" ;;
    12) VENV=${VENV:-.venv-cuda12}; TARGET=${CARGO_TARGET_DIR:-target-cuda12}; VERSION=${CUDARC_CUDA_VERSION:-12080}
        PKGS="nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl
              nvidia-cuda-nvcc-cu12==12.8.* nvidia-cuda-runtime-cu12==12.8.* nvidia-cuda-cccl-cu12==12.8.*
              nvidia-cublas-cu12==12.8.* nvidia-curand-cu12 nvidia-cuda-nvrtc-cu12==12.8.*" ;;
    *) echo "CUDA=$MAJOR: 12 or 13" >&2; exit 64 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check $PKGS
NV=$("$VENV/bin/python" -c "import nvidia, os; print(list(nvidia.__path__)[0])")

# One CUDA root: CUDA 13's wheels share nvidia/cu13; CUDA 12's each have their own folder, so
# their bin, include and lib are gathered by links. The linker's folder (unversioned names and
# the driver stub) is apart, so that nothing of it is found at run time.
LINK="$PWD/$TARGET/cuda-link"
rm -rf "$LINK" && mkdir -p "$LINK"
if [ "$MAJOR" = 13 ]; then
    ROOT="$NV/cu13"
else
    ROOT="$PWD/$TARGET/cuda-root"
    rm -rf "$ROOT" && mkdir -p "$ROOT/bin" "$ROOT/include" "$ROOT/lib"
    for d in "$NV"/*/; do
        d=${d%/}
        [ "$(basename "$d")" != cu13 ] || continue
        for sub in bin include lib; do
            [ -d "$d/$sub" ] || continue
            for f in "$d/$sub"/*; do ln -sfn "$f" "$ROOT/$sub/$(basename "$f")"; done
        done
        if [ -d "$d/nvvm" ]; then ln -sfn "$d/nvvm" "$ROOT/nvvm"; fi
    done
fi
if [ "$MAJOR" = 12 ]; then
    # CUDA 13's nvcc, each PTX module restamped and checked by 12.8's ptxas (see the top).
    NVCC13="$NV/cu13/bin/nvcc"
    PTXAS12="$NV/cuda_nvcc/bin/ptxas"
    [ -x "$NVCC13" ] && [ -x "$PTXAS12" ] || { echo "no CUDA 13 nvcc or CUDA 12 ptxas in $VENV" >&2; exit 69; }
    rm -rf "$ROOT/bin"  # 12.8's ptxas must not stand in for 13's
    WRAP="$PWD/$TARGET/nvcc-for-12"
    mkdir -p "$WRAP"
    cat > "$WRAP/nvcc" <<WRAPEOF
#!/usr/bin/env bash
# Written by scripts/build-cuda.sh (CUDA=12): CUDA 13's nvcc, PTX restamped for CUDA 12.8.
set -euo pipefail
"$NVCC13" "\$@"
ptx=0; dir=.; next=
for a in "\$@"; do
    if [ -n "\$next" ]; then dir=\$a; next=; continue; fi
    case "\$a" in --ptx|-ptx) ptx=1 ;; --output-directory|-odir) next=1 ;; --output-directory=*) dir=\${a#*=} ;; esac
done
[ \$ptx = 1 ] || exit 0
for a in "\$@"; do
    case "\$a" in
        *.cu)
            f="\$dir/\$(basename "\${a%.cu}").ptx"
            sed -i -E 's/^\.version [0-9]+\.[0-9]+\$/.version 8.7/' "\$f"
            arch=\$(sed -n -E 's/^\.target ([a-z0-9_]+).*/\1/p' "\$f" | head -1)
            "$PTXAS12" -arch="\$arch" "\$f" -o /dev/null \\
                || { echo "CUDA 12.8's ptxas rejects \$f" >&2; exit 1; } ;;
    esac
done
WRAPEOF
    chmod +x "$WRAP/nvcc"
    export NVCC="$WRAP/nvcc"
    PATH="$NV/cu13/bin:$PATH"
    "$NVCC" --version | tail -1
else
    [ -x "$ROOT/bin/nvcc" ] || { echo "no nvcc in $VENV" >&2; exit 69; }
fi
# Unversioned names for the linker (libcublas.so -> libcublas.so.13, ...).
for lib in cublas cublasLt curand nvrtc cudart; do
    real=$(ls "$ROOT/lib/lib$lib.so."* 2>/dev/null | grep -E "lib$lib\.so\.[0-9]+$" | head -1 || true)
    [ -n "$real" ] || { echo "no lib$lib.so.* in $VENV" >&2; exit 69; }
    ln -sfn "$(readlink -f "$real")" "$LINK/lib$lib.so"
done

# The driver stub: every cu* function cudarc's driver bindings declare, as an empty function,
# in a library whose soname is the real driver's (so the binary asks for libcuda.so.1).
CUDARC=$(awk '/^name = "cudarc"/ {getline; gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print; exit}' Cargo.lock)
CRATE=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/cudarc-"$CUDARC".crate 2>/dev/null | head -1 || true)
if [ -z "$CRATE" ]; then
    cargo fetch --locked >/dev/null
    CRATE=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/cudarc-"$CUDARC".crate | head -1)
fi
tar -xzOf "$CRATE" "cudarc-$CUDARC/src/driver/sys/mod.rs" \
    | grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' | awk '{print $4}' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$LINK/cuda.c"
gcc -shared -fPIC -o "$LINK/libcuda.so" -Wl,-soname,libcuda.so.1 "$LINK/cuda.c"
echo "libcuda stub: $(wc -l < "$LINK/cuda.c") driver functions (cudarc $CUDARC)"

export PATH="$ROOT/bin:$PATH" CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" CUDA_HOME="$ROOT"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=$VERSION
export CARGO_TARGET_DIR=$TARGET
# The stub only for linking; at run time the libraries from RUNPATH (here) or LD_LIBRARY_PATH.
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK -C link-arg=-Wl,--enable-new-dtags,-rpath,$(readlink -f "$ROOT/lib")"
[ "$MAJOR" = 12 ] || nvcc --version | tail -1
if [ "${CHECK:-0}" = 1 ]; then
    cargo check --release --locked --features cuda --bins
    exit 0
fi
cargo build --release --locked --features cuda --bin w2s
BIN="$TARGET/release/w2s"
strip -o "$TARGET/release/w2s-stripped" "$BIN"
# The kernels' PTX makes the stripped binary ~180 MiB; xz brings it to ~31 MiB, small enough to
# carry to a GPU machine (scripts/gpu-check.sh unpacks a W2S ending in .xz).
xz -T0 -6 -c "$TARGET/release/w2s-stripped" > "$TARGET/release/w2s.xz"
echo "built $BIN (CUDA $MAJOR, compute capability $CUDA_COMPUTE_CAP); stripped: $TARGET/release/w2s-stripped ($(du -m "$TARGET/release/w2s-stripped" | cut -f1) MiB), compressed: $TARGET/release/w2s.xz ($(du -m "$TARGET/release/w2s.xz" | cut -f1) MiB)"
ldd "$BIN" | tee "$TARGET/release/ldd.txt"
missing=$(grep "not found" "$TARGET/release/ldd.txt" | grep -v "libcuda.so.1" || true)
if [ -n "$missing" ]; then
    echo "unresolved libraries besides the driver:" >&2
    echo "$missing" >&2
    exit 70
fi
echo "ldd: every library resolves but the driver (libcuda.so.1), as intended"
