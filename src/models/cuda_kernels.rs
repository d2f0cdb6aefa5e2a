//! CUDA kernels with their own backward, for training on a GPU: `gelu_new`, layer norm, RMS
//! norm, the attention softmax with its scale and additive mask, the rotary embedding, and the
//! target tokens' log-probabilities over the vocabulary, in f32 and bf16.
//!
//! candle 0.11's fused CUDA kernels (candle-nn's norms and softmax) have no backward, so a
//! training step on the GPU runs each of these as five to eight composed kernels that each read
//! and write the whole activation (and keep it for the backward). These are one pass forward
//! and one backward each, and keep only what the backward reads: the attention softmax keeps
//! its probabilities in the input's dtype (bf16 under mixed precision) and nothing else; the
//! norms keep their input and recompute the row statistics.
//!
//! The kernels are CUDA C compiled at first use by NVRTC (which candle already links), for
//! the GPU of the process, so the build needs no nvcc for them and the PTX always suits the
//! driver. bf16 values are read and written as bits (round to nearest even), so no CUDA header
//! is needed either; every sum is in f32.
//!
//! Off unless `--cuda-kernels` (`W2S_CUDA_KERNELS`) turns them on: they have not yet run on a
//! GPU, and `scripts/gpu-check.sh` runs `w2s bench parity` with and without them (every
//! parameter's gradient against the CPU) before anyone relies on them.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the kernels on or off for this process (`--cuda-kernels`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the kernels serve these operands: turned on, on a CUDA device, all f32 or all bf16.
pub fn applies(ts: &[&Tensor]) -> bool {
    enabled()
        && ts.iter().all(|t| {
            t.device().is_cuda()
                && matches!(t.dtype(), DType::F32 | DType::BF16)
                && t.dtype() == ts[0].dtype()
        })
}

#[cfg(feature = "cuda")]
pub use imp::{gelu_new, layer_norm, masked_softmax, rms_norm, rope, target_logprobs};

/// Without the `cuda` feature nothing is on a CUDA device, so [`applies`] is false and these
/// are never reached.
#[cfg(not(feature = "cuda"))]
mod stubs {
    use candle_core::{Result, Tensor};

    fn none() -> Result<Tensor> {
        candle_core::bail!("w2s was built without `--features cuda`")
    }
    pub fn gelu_new(_: &Tensor) -> Result<Tensor> {
        none()
    }
    pub fn layer_norm(_: &Tensor, _: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        none()
    }
    pub fn rms_norm(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        none()
    }
    pub fn masked_softmax(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        none()
    }
    pub fn rope(_: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        none()
    }
    pub fn target_logprobs(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        none()
    }
}
#[cfg(not(feature = "cuda"))]
pub use stubs::{gelu_new, layer_norm, masked_softmax, rms_norm, rope, target_logprobs};

/// The kernels' source: `T` is `float` or `bf16_t` (bf16 bits); one block a row for the row
/// ops (sums through warp shuffles), one thread an element for GELU.
pub const SOURCE: &str = r#"
typedef unsigned short bf16_t;
#define W2S_INF __int_as_float(0x7f800000)
__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16_t)(u >> 16);
}

// Sum / max over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ float block_max(float v) {
    __shared__ float sh[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -W2S_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f
template <typename T> __device__ void gelu_fwd(const T* x, T* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ld(x, i);
    st(y, i, 0.5f * v * (1.f + tanhf(GELU_K * (v + GELU_C * v * v * v))));
}
template <typename T> __device__ void gelu_bwd(const T* x, const T* g, T* dx, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ld(x, i);
    float t = tanhf(GELU_K * (v + GELU_C * v * v * v));
    float d = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * GELU_K * (1.f + 3.f * GELU_C * v * v);
    st(dx, i, ld(g, i) * d);
}

// Layer norm (b != 0) or RMS norm (b == 0, no centring) of row blockIdx.x.
template <typename T> __device__ void norm_fwd(const T* x, const T* w, const T* b, T* y, int d, float eps) {
    long r = (long)blockIdx.x * d;
    float mean = 0.f;
    if (b) {
        float s = 0.f;
        for (int j = threadIdx.x; j < d; j += blockDim.x) s += ld(x, r + j);
        mean = block_sum(s) / d;
    }
    float q = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { float c = ld(x, r + j) - mean; q += c * c; }
    float rstd = rsqrtf(block_sum(q) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = (ld(x, r + j) - mean) * rstd * ld(w, j);
        st(y, r + j, b ? v + ld(b, j) : v);
    }
}
// dx of the norm from g; `centred`: layer norm. dx = rstd (gw - mean(gw) - x̂ mean(gw x̂)) with
// gw = g w (RMS norm: no mean(gw) term).
template <typename T> __device__ void norm_bwd(const T* x, const T* w, const T* g, T* dx, int d, float eps, int centred) {
    long r = (long)blockIdx.x * d;
    float mean = 0.f;
    if (centred) {
        float s = 0.f;
        for (int j = threadIdx.x; j < d; j += blockDim.x) s += ld(x, r + j);
        mean = block_sum(s) / d;
    }
    float q = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { float c = ld(x, r + j) - mean; q += c * c; }
    float rstd = rsqrtf(block_sum(q) / d + eps);
    float a = 0.f, c = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float gw = ld(g, r + j) * ld(w, j);
        a += gw;
        c += gw * (ld(x, r + j) - mean) * rstd;
    }
    a = centred ? block_sum(a) / d : 0.f;
    c = block_sum(c) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float xh = (ld(x, r + j) - mean) * rstd;
        st(dx, r + j, rstd * (ld(g, r + j) * ld(w, j) - a - xh * c));
    }
}

// p = softmax(scale s + bias) over rows of n keys; row blockIdx.x = ((b H + h) Tq + q); the
// bias holds one head, for each of `bb` batches (1: shared by all).
template <typename T> __device__ void msm_fwd(const T* s, const T* bias, T* p, int n, int heads, int tq, int bb, float scale) {
    long row = blockIdx.x;
    long bat = row / ((long)heads * tq), q = row % tq;
    long r = row * n, br = ((bb == 1 ? 0 : bat) * tq + q) * n;
    float m = -W2S_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, scale * ld(s, r + j) + ld(bias, br + j));
    m = block_max(m);
    float z = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) z += __expf(scale * ld(s, r + j) + ld(bias, br + j) - m);
    z = block_sum(z);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        st(p, r + j, __expf(scale * ld(s, r + j) + ld(bias, br + j) - m) / z);
}
// ds = scale p (g - Σ g p) over each row.
template <typename T> __device__ void msm_bwd(const T* p, const T* g, T* ds, int n, float scale) {
    long r = (long)blockIdx.x * n;
    float t = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) t += ld(g, r + j) * ld(p, r + j);
    t = block_sum(t);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        st(ds, r + j, scale * ld(p, r + j) * (ld(g, r + j) - t));
}

// Rotary embedding, rotate-half layout, of x [B, H, T, D] (one thread per (row, k < D/2) pair):
// y1 = x1 cos1 - x2 sin1, y2 = x2 cos2 + x1 sin2; the tables [T, D], or [B, 1, T, D] (cb: per
// batch). Backward (bwd): dx1 = g1 cos1 + g2 sin2, dx2 = g2 cos2 - g1 sin1.
template <typename T> __device__ void rope(const T* x, const T* c, const T* s, T* y, long pairs, int d, int t, int heads, int cb, int bwd) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    int h2 = d / 2;
    long row = i / h2;
    int k = (int)(i % h2);
    long pos = row % t, bat = row / ((long)heads * t);
    long tb = ((cb ? bat * t : 0) + pos) * d;
    float c1 = ld(c, tb + k), c2 = ld(c, tb + k + h2), s1 = ld(s, tb + k), s2 = ld(s, tb + k + h2);
    float a = ld(x, row * d + k), b = ld(x, row * d + k + h2);
    if (bwd) {
        st(y, row * d + k, a * c1 + b * s2);
        st(y, row * d + k + h2, b * c2 - a * s1);
    } else {
        st(y, row * d + k, a * c1 - b * s1);
        st(y, row * d + k + h2, b * c2 + a * s2);
    }
}

// Log-probability of each row's target (rows of n logits; out in f32), and its backward:
// dlogits = g (onehot(target) - softmax(logits)); the row's log-sum-exp is recomputed.
template <typename T> __device__ float row_lse(const T* x, long r, int n) {
    float m = -W2S_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, ld(x, r + j));
    m = block_max(m);
    float z = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) z += __expf(ld(x, r + j) - m);
    return m + __logf(block_sum(z));
}
template <typename T> __device__ void tlp_fwd(const T* x, const unsigned* tg, float* out, int n) {
    long r = (long)blockIdx.x * n;
    float lse = row_lse(x, r, n);
    if (threadIdx.x == 0) out[blockIdx.x] = ld(x, r + tg[blockIdx.x]) - lse;
}
template <typename T> __device__ void tlp_bwd(const T* x, const unsigned* tg, const float* g, T* dx, int n) {
    long r = (long)blockIdx.x * n;
    float lse = row_lse(x, r, n), gi = g[blockIdx.x];
    unsigned t = tg[blockIdx.x];
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        st(dx, r + j, gi * ((j == (int)t ? 1.f : 0.f) - __expf(ld(x, r + j) - lse)));
}

#define KERNELS(T, S) \
extern "C" __global__ void gelu_fwd_##S(const T* x, T* y, long n) { gelu_fwd(x, y, n); } \
extern "C" __global__ void gelu_bwd_##S(const T* x, const T* g, T* dx, long n) { gelu_bwd(x, g, dx, n); } \
extern "C" __global__ void norm_fwd_##S(const T* x, const T* w, const T* b, T* y, int d, float eps) { norm_fwd(x, w, b, y, d, eps); } \
extern "C" __global__ void norm_bwd_##S(const T* x, const T* w, const T* g, T* dx, int d, float eps, int centred) { norm_bwd(x, w, g, dx, d, eps, centred); } \
extern "C" __global__ void msm_fwd_##S(const T* s, const T* bias, T* p, int n, int heads, int tq, int bb, float scale) { msm_fwd(s, bias, p, n, heads, tq, bb, scale); } \
extern "C" __global__ void msm_bwd_##S(const T* p, const T* g, T* ds, int n, float scale) { msm_bwd(p, g, ds, n, scale); } \
extern "C" __global__ void rope_##S(const T* x, const T* c, const T* s, T* y, long pairs, int d, int t, int heads, int cb, int bwd) { rope(x, c, s, y, pairs, d, t, heads, cb, bwd); } \
extern "C" __global__ void tlp_fwd_##S(const T* x, const unsigned* tg, float* out, int n) { tlp_fwd(x, tg, out, n); } \
extern "C" __global__ void tlp_bwd_##S(const T* x, const unsigned* tg, const float* g, T* dx, int n) { tlp_bwd(x, tg, g, dx, n); }
KERNELS(float, f32)
KERNELS(bf16_t, bf16)
"#;

#[cfg(feature = "cuda")]
mod imp {
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{
        bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
        Result, Shape, Tensor, D,
    };

    const MODULE: &str = "w2s_kernels";
    /// Threads of a row block.
    const ROW_THREADS: u32 = 256;

    /// The kernels' PTX, compiled once a process by NVRTC.
    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let p = PTX.get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(super::SOURCE)
                .map(|p| p.to_src())
                .map_err(|e| format!("compiling w2s's CUDA kernels: {e:?}"))
        });
        match p {
            Ok(s) => Ok(s.as_str()),
            Err(e) => bail!("{e}"),
        }
    }

    fn suffix(dt: DType) -> Result<&'static str> {
        match dt {
            DType::F32 => Ok("f32"),
            DType::BF16 => Ok("bf16"),
            d => bail!("w2s's CUDA kernels take f32 or bf16, not {d:?}"),
        }
    }

    /// The contiguous values of a storage, or an error naming the op.
    fn view<'a, T: CudaDType + DeviceRepr>(
        s: &'a CudaStorage,
        l: &Layout,
        op: &str,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
            None => bail!("{op}: input not contiguous"),
        }
    }

    /// Kernel `base` for dtype `dt` (`norm_fwd` and f32: `norm_fwd_f32`), loaded once a
    /// device (a macro: candle does not export the function type).
    macro_rules! kernel {
        ($dev:expr, $base:expr, $dt:expr) => {
            $dev.get_or_load_custom_func(&format!("{}_{}", $base, suffix($dt)?), MODULE, ptx()?)?
        };
    }

    /// Launches `f` with `cfg` and these arguments, in the kernel's order.
    macro_rules! launch {
        ($f:expr, $cfg:expr; $($a:expr),+ $(,)?) => {{
            let mut b = $f.builder();
            $( b.arg($a); )+
            // SAFETY: each caller passes the kernel's arguments in its signature's order.
            unsafe { b.launch($cfg) }.w()?;
        }};
    }

    fn rows(l: &Layout) -> Result<(usize, usize)> {
        let d = l.shape().dims().last().copied().unwrap_or(1);
        Ok((l.shape().elem_count() / d.max(1), d))
    }

    fn row_cfg(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every element is written by the kernel launched next.
        unsafe { dev.alloc::<T>(n) }
    }

    fn cpu(name: &str) -> Result<(CpuStorage, Shape)> {
        bail!("{name} is a CUDA kernel (the CPU has its own fused ops)")
    }

    /// The `cpu_fwd` of a CUDA-only op of 2 or 3 operands.
    macro_rules! no_cpu {
        (2) => {
            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                cpu(self.name())
            }
        };
        (3) => {
            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                cpu(self.name())
            }
        };
    }

    /// Runs `f` typed by the storage's dtype (f32 or bf16).
    macro_rules! typed {
        ($dt:expr, $f:ident $(, $a:expr)*) => {
            match $dt {
                DType::F32 => $f::<f32>($($a),*),
                DType::BF16 => $f::<half::bf16>($($a),*),
                d => bail!("w2s's CUDA kernels take f32 or bf16, not {d:?}"),
            }
        };
    }

    // ---- GELU (tanh approximation) ----

    struct Gelu;
    struct GeluBwd;

    fn gelu_launch<T: CudaDType + DeviceRepr>(
        s: &CudaStorage,
        l: &Layout,
        g: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let x = view::<T>(s, l, "gelu")?;
        let out = alloc::<T>(&dev, n)?;
        let cfg = LaunchConfig::for_num_elems(n as u32);
        let nl = n as i64;
        match g {
            None => {
                let f = kernel!(dev, "gelu_fwd", s.dtype());
                launch!(f, cfg; &x, &out, &nl);
            }
            Some((gs, gl)) => {
                let gv = view::<T>(gs, gl, "gelu backward")?;
                let f = kernel!(dev, "gelu_bwd", s.dtype());
                launch!(f, cfg; &x, &gv, &out, &nl);
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    impl CustomOp1 for Gelu {
        fn name(&self) -> &'static str {
            "w2s-gelu-cuda"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu(self.name())
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let out = typed!(s.dtype(), gelu_launch, s, l, None)?;
            Ok((out, l.shape().clone()))
        }
        fn bwd(&self, x: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &GeluBwd)?))
        }
    }

    impl CustomOp2 for GeluBwd {
        fn name(&self) -> &'static str {
            "w2s-gelu-backward-cuda"
        }
        no_cpu!(2);
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(s.dtype(), gelu_launch, s, l, Some((g, gl)))?;
            Ok((out, l.shape().clone()))
        }
    }

    /// GPT-2's `gelu_new` with its backward.
    pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(Gelu)
    }

    // ---- Layer norm and RMS norm ----

    #[derive(Clone, Copy)]
    struct Norm {
        eps: f32,
        /// Layer norm (with a bias) rather than RMS norm.
        centred: bool,
    }

    fn norm_fwd<T: CudaDType + DeviceRepr>(
        n: Norm,
        (x, xl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
        b: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let dev = x.device().clone();
        let (r, d) = rows(xl)?;
        let xv = view::<T>(x, xl, "norm")?;
        let wv = view::<T>(w, wl, "norm weight")?;
        let out = alloc::<T>(&dev, r * d)?;
        let f = kernel!(dev, "norm_fwd", x.dtype());
        let (di, eps) = (d as i32, n.eps);
        let bv = match b {
            Some((bs, bl)) => Some(view::<T>(bs, bl, "norm bias")?),
            None => None,
        };
        let null: u64 = 0;
        match &bv {
            Some(v) => launch!(f, row_cfg(r); &xv, &wv, v, &out, &di, &eps),
            // RMS norm: a null bias pointer.
            None => launch!(f, row_cfg(r); &xv, &wv, &null, &out, &di, &eps),
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    fn norm_dx<T: CudaDType + DeviceRepr>(
        n: Norm,
        (x, xl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
        (g, gl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let dev = x.device().clone();
        let (r, d) = rows(xl)?;
        let xv = view::<T>(x, xl, "norm backward")?;
        let wv = view::<T>(w, wl, "norm backward weight")?;
        let gv = view::<T>(g, gl, "norm backward gradient")?;
        let out = alloc::<T>(&dev, r * d)?;
        let f = kernel!(dev, "norm_bwd", x.dtype());
        let (di, eps, centred) = (d as i32, n.eps, i32::from(n.centred));
        launch!(f, row_cfg(r); &xv, &wv, &gv, &out, &di, &eps, &centred);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    /// The weight's (and bias's) gradients: sums over rows of `g · x̂` (and `g`), in f32.
    fn norm_param_grads(n: Norm, x: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = x.dim(D::Minus1)?;
        let ones = Tensor::ones(d, x.dtype(), x.device())?;
        let xhat = if n.centred {
            let zeros = Tensor::zeros(d, x.dtype(), x.device())?;
            x.apply_op3_no_bwd(&ones, &zeros, &NormOp(n))?
        } else {
            x.apply_op2_no_bwd(&ones, &RmsOp(n))?
        };
        let f = |t: &Tensor| t.to_dtype(DType::F32)?.reshape(((), d));
        let gw = (f(g)? * f(&xhat)?)?.sum(0)?;
        let gb = f(g)?.sum(0)?;
        Ok((gw, gb))
    }

    struct NormOp(Norm);
    struct RmsOp(Norm);
    struct NormDx(Norm);

    impl CustomOp3 for NormOp {
        fn name(&self) -> &'static str {
            "w2s-layer-norm-cuda"
        }
        no_cpu!(3);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), norm_fwd, self.0, (x, xl), (w, wl), Some((b, bl)))?;
            Ok((out, xl.shape().clone()))
        }
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let g = g.contiguous()?;
            let dx = x.apply_op3_no_bwd(w, &g, &NormDx(self.0))?;
            let (gw, gb) = norm_param_grads(self.0, x, &g)?;
            Ok((
                Some(dx),
                Some(gw.to_dtype(w.dtype())?),
                Some(gb.to_dtype(b.dtype())?),
            ))
        }
    }

    impl CustomOp2 for RmsOp {
        fn name(&self) -> &'static str {
            "w2s-rms-norm-cuda"
        }
        no_cpu!(2);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), norm_fwd, self.0, (x, xl), (w, wl), None)?;
            Ok((out, xl.shape().clone()))
        }
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let g = g.contiguous()?;
            let dx = x.apply_op3_no_bwd(w, &g, &NormDx(self.0))?;
            let (gw, _) = norm_param_grads(self.0, x, &g)?;
            Ok((Some(dx), Some(gw.to_dtype(w.dtype())?)))
        }
    }

    impl CustomOp3 for NormDx {
        fn name(&self) -> &'static str {
            "w2s-norm-backward-cuda"
        }
        no_cpu!(3);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), norm_dx, self.0, (x, xl), (w, wl), (g, gl))?;
            Ok((out, xl.shape().clone()))
        }
    }

    /// Layer norm over the last dimension with its backward (x, weight and bias).
    pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let n = Norm {
            eps: eps as f32,
            centred: true,
        };
        x.contiguous()?.apply_op3(w, b, NormOp(n))
    }

    /// RMS norm over the last dimension with its backward (x and weight).
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let n = Norm {
            eps: eps as f32,
            centred: false,
        };
        x.contiguous()?.apply_op2(w, RmsOp(n))
    }

    // ---- The attention softmax with its scale and additive mask ----

    struct MaskedSoftmax {
        scale: f32,
    }
    struct MaskedSoftmaxBwd {
        scale: f32,
    }

    fn msm_fwd<T: CudaDType + DeviceRepr>(
        scale: f32,
        (s, sl): (&CudaStorage, &Layout),
        (b, bl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let (bs, h, tq, n) = sl.shape().dims4()?;
        let (bb, bh, btq, bn) = bl.shape().dims4()?;
        if bh != 1 || btq != tq || bn != n || (bb != 1 && bb != bs) {
            bail!(
                "masked softmax: bias {:?} does not fit scores {:?}",
                bl.shape(),
                sl.shape()
            );
        }
        let sv = view::<T>(s, sl, "masked softmax")?;
        let bv = view::<T>(b, bl, "masked softmax bias")?;
        let out = alloc::<T>(&dev, bs * h * tq * n)?;
        let f = kernel!(dev, "msm_fwd", s.dtype());
        let (ni, hi, tqi, bbi) = (n as i32, h as i32, tq as i32, bb as i32);
        launch!(f, row_cfg(bs * h * tq); &sv, &bv, &out, &ni, &hi, &tqi, &bbi, &scale);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    fn msm_bwd<T: CudaDType + DeviceRepr>(
        scale: f32,
        (p, pl): (&CudaStorage, &Layout),
        (g, gl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let dev = p.device().clone();
        let (r, n) = rows(pl)?;
        let pv = view::<T>(p, pl, "masked softmax backward")?;
        let gv = view::<T>(g, gl, "masked softmax backward gradient")?;
        let out = alloc::<T>(&dev, r * n)?;
        let f = kernel!(dev, "msm_bwd", p.dtype());
        let ni = n as i32;
        launch!(f, row_cfg(r); &pv, &gv, &out, &ni, &scale);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    impl CustomOp2 for MaskedSoftmax {
        fn name(&self) -> &'static str {
            "w2s-masked-softmax-cuda"
        }
        no_cpu!(2);
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            sl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(s.dtype(), msm_fwd, self.scale, (s, sl), (b, bl))?;
            Ok((out, sl.shape().clone()))
        }
        /// The scores' gradient; the mask is a constant (no gradient).
        fn bwd(
            &self,
            _: &Tensor,
            _: &Tensor,
            p: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let bwd = MaskedSoftmaxBwd { scale: self.scale };
            Ok((Some(p.apply_op2_no_bwd(&g.contiguous()?, &bwd)?), None))
        }
    }

    impl CustomOp2 for MaskedSoftmaxBwd {
        fn name(&self) -> &'static str {
            "w2s-masked-softmax-backward-cuda"
        }
        no_cpu!(2);
        fn cuda_fwd(
            &self,
            p: &CudaStorage,
            pl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(p.dtype(), msm_bwd, self.scale, (p, pl), (g, gl))?;
            Ok((out, pl.shape().clone()))
        }
    }

    /// `softmax(scale · s + bias)` over the last dimension of scores `[B, H, Tq, Tk]`, the
    /// bias `[B or 1, 1, Tq, Tk]`; keeps only the probabilities (in the scores' dtype) for the
    /// backward.
    pub fn masked_softmax(s: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
        let bias = bias.to_dtype(s.dtype())?.contiguous()?;
        s.contiguous()?.apply_op2(
            &bias,
            MaskedSoftmax {
                scale: scale as f32,
            },
        )
    }

    // ---- The rotary embedding ----

    /// `x` `[B, H, T, D]` rotated by tables `[T, D]` or `[B, 1, T, D]` (a constant: no
    /// gradient); `bwd` applies the transpose (the input's gradient from the output's).
    struct Rope {
        bwd: bool,
    }

    fn rope_launch<T: CudaDType + DeviceRepr>(
        bwd: bool,
        (x, xl): (&CudaStorage, &Layout),
        (c, cl): (&CudaStorage, &Layout),
        (s, sl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let dev = x.device().clone();
        let (b, h, t, d) = xl.shape().dims4()?;
        let per = t * d;
        let cb = match cl.shape().elem_count() {
            n if n == per => 0i32,
            n if n == b * per => 1,
            _ => bail!("rope: tables {:?} do not fit {:?}", cl.shape(), xl.shape()),
        };
        if sl.shape() != cl.shape() || d % 2 != 0 {
            bail!(
                "rope: sin {:?}, cos {:?}, head size {d}",
                sl.shape(),
                cl.shape()
            );
        }
        let xv = view::<T>(x, xl, "rope")?;
        let cv = view::<T>(c, cl, "rope cos")?;
        let sv = view::<T>(s, sl, "rope sin")?;
        let out = alloc::<T>(&dev, b * h * per)?;
        let f = kernel!(dev, "rope", x.dtype());
        let pairs = (b * h * per / 2) as i64;
        let (di, ti, hi, bi) = (d as i32, t as i32, h as i32, i32::from(bwd));
        let cfg = LaunchConfig::for_num_elems(pairs as u32);
        launch!(f, cfg; &xv, &cv, &sv, &out, &pairs, &di, &ti, &hi, &cb, &bi);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    impl CustomOp3 for Rope {
        fn name(&self) -> &'static str {
            "w2s-rope-cuda"
        }
        no_cpu!(3);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            c: &CudaStorage,
            cl: &Layout,
            s: &CudaStorage,
            sl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), rope_launch, self.bwd, (x, xl), (c, cl), (s, sl))?;
            Ok((out, xl.shape().clone()))
        }
        fn bwd(
            &self,
            _: &Tensor,
            c: &Tensor,
            s: &Tensor,
            _: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dx = g
                .contiguous()?
                .apply_op3_no_bwd(c, s, &Rope { bwd: !self.bwd })?;
            Ok((Some(dx), None, None))
        }
    }

    // ---- The target tokens' log-probabilities ----

    /// `log_softmax(x)[target]` per row of `x` `[n, V]` (targets `[n]` u32), in f32; keeps
    /// only the logits for the backward, which recomputes each row's log-sum-exp.
    struct TargetLogprobs;
    struct TargetLogprobsBwd;

    fn tlp_launch<T: CudaDType + DeviceRepr>(
        (x, xl): (&CudaStorage, &Layout),
        (t, tl): (&CudaStorage, &Layout),
        g: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let dev = x.device().clone();
        let (r, n) = rows(xl)?;
        if tl.shape().elem_count() != r {
            bail!(
                "target log-probs: {} targets for {r} rows",
                tl.shape().elem_count()
            );
        }
        let xv = view::<T>(x, xl, "target log-probs")?;
        let tv = view::<u32>(t, tl, "target log-probs targets")?;
        let ni = n as i32;
        match g {
            None => {
                let out = alloc::<f32>(&dev, r)?;
                let f = kernel!(dev, "tlp_fwd", x.dtype());
                launch!(f, row_cfg(r); &xv, &tv, &out, &ni);
                Ok(CudaStorage::wrap_cuda_slice(out, dev))
            }
            Some((gs, gl)) => {
                let gv = view::<f32>(gs, gl, "target log-probs gradient")?;
                let out = alloc::<T>(&dev, r * n)?;
                let f = kernel!(dev, "tlp_bwd", x.dtype());
                launch!(f, row_cfg(r); &xv, &tv, &gv, &out, &ni);
                Ok(CudaStorage::wrap_cuda_slice(out, dev))
            }
        }
    }

    impl CustomOp2 for TargetLogprobs {
        fn name(&self) -> &'static str {
            "w2s-target-logprobs-cuda"
        }
        no_cpu!(2);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            t: &CudaStorage,
            tl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), tlp_launch, (x, xl), (t, tl), None)?;
            let dims = xl.shape().dims();
            Ok((out, Shape::from(&dims[..dims.len() - 1])))
        }
        fn bwd(
            &self,
            x: &Tensor,
            t: &Tensor,
            _: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let dx = x.apply_op3_no_bwd(t, &g, &TargetLogprobsBwd)?;
            Ok((Some(dx), None))
        }
    }

    impl CustomOp3 for TargetLogprobsBwd {
        fn name(&self) -> &'static str {
            "w2s-target-logprobs-backward-cuda"
        }
        no_cpu!(3);
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            t: &CudaStorage,
            tl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let out = typed!(x.dtype(), tlp_launch, (x, xl), (t, tl), Some((g, gl)))?;
            Ok((out, xl.shape().clone()))
        }
    }

    /// `log_softmax(logits)` at `targets` (`[.., V]` and `[..]` u32), in f32, with the
    /// logits' backward; no `[.., V]` tensor is kept or made but the gradient.
    pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let t = targets.to_dtype(DType::U32)?.contiguous()?;
        logits.contiguous()?.apply_op2(&t, TargetLogprobs)
    }

    /// The rotary embedding (rotate-half layout) of `x` `[B, H, T, D]`, tables `[T, D]` or
    /// `[B, 1, T, D]` in `x`'s dtype, with the input's backward.
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (c, s) = (cos.contiguous()?, sin.contiguous()?);
        x.contiguous()?.apply_op3(&c, &s, Rope { bwd: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Turned on, the kernels still take nothing off a GPU: the CPU keeps its own ops.
    #[test]
    fn only_cuda_tensors_take_the_kernels() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let was = enabled();
        set_enabled(true);
        assert!(!applies(&[&x]));
        set_enabled(was);
        assert!(SOURCE.contains("extern \"C\" __global__ void msm_bwd_##S"));
    }
}
