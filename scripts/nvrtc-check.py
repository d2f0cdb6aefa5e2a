"""Compiles w2s's CUDA kernels (the SOURCE string of src/models/cuda_kernels.rs) with NVRTC, as
the binary does at run time, on a machine without a GPU: NVRTC needs no device. Prints the
entry points of the PTX, or NVRTC's log and exits 1.

    python3 scripts/nvrtc-check.py LIBNVRTC   # e.g. .venv-cuda12/.../nvidia/cuda_nvrtc/lib/libnvrtc.so.12

scripts/build-cuda.sh installs the library (nvidia-cuda-nvrtc, nvidia-cuda-nvrtc-cu12). Standard
library only (ctypes).
"""

import ctypes
import pathlib
import re
import sys


def source():
    rs = pathlib.Path(__file__).resolve().parent.parent / "src/models/cuda_kernels.rs"
    text = rs.read_text()
    m = re.search(r'pub const SOURCE: &str = r#"(.*?)"#;', text, re.S)
    if not m:
        sys.exit(f"{rs}: no SOURCE string")
    return m.group(1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lib = ctypes.CDLL(sys.argv[1])
    prog = ctypes.c_void_p()
    src = source().encode()
    check = lambda rc, what: rc == 0 or sys.exit(f"{what}: NVRTC error {rc}")
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"w2s_kernels.cu", 0, None, None), "create")
    rc = lib.nvrtcCompileProgram(prog, 0, None)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        print(log.value.decode(errors="replace"))
        sys.exit(f"NVRTC could not compile w2s's kernels (error {rc})")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    check(lib.nvrtcGetPTX(prog, ptx), "get PTX")
    entries = re.findall(r"\.entry\s+(\w+)", ptx.value.decode())
    print(f"NVRTC compiled {len(entries)} kernels: {', '.join(entries)}")


if __name__ == "__main__":
    main()
