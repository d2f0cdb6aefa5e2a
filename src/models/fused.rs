//! Fused CPU kernels with their own backward pass: GPT-2's `gelu_new`, the last-dimension
//! softmax of attention, layer norm, and the response log-probs (log-softmax gathered at the
//! target tokens).
//!
//! Composed from candle primitives, each of these is a dozen elementwise ops forward and more
//! backward, every one a fresh tensor (the tanh GELU alone was ~10% of a GPT-2-small training
//! step). Here each is one pass forward and one pass backward over rows, in parallel. They are
//! used for contiguous f32 tensors on the CPU; anything else (CUDA, half precision) takes the
//! composed path in `ops`, which the same tests check. Unlike candle's own fused ops, these
//! have a backward: `ops` tests compare both paths with finite differences and the parity
//! tests compare every parameter's gradient with PyTorch.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::simd::dispatch;

/// Rows per parallel task: enough work to be worth a task.
pub(super) fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

/// Runs `f` on a contiguous f32 CPU tensor's values.
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        candle_core::bail!("fused op: CPU tensors only");
    };
    f(input(s, l, "fused op")?)
}

pub(super) fn input<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only");
    };
    Ok(&v[a..b])
}

/// Whether the fused kernels apply to these tensors.
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// e^x for x in [-87, 88], exactly 0 below (clamped above), branch-free so that loops over
/// slices vectorize: Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, Cephes' degree-6
/// polynomial for e^r (relative error ~2e-7), then 2^n from the exponent bits. glibc's scalar
/// `tanhf` (through `expm1f`) was 7% of a GPT-2-small training step, and its `expf` takes a
/// slow path (errno and all) on every underflow, which the masked scores of attention (bias
/// -1e9) hit on every other entry: every softmax and log-softmax here uses this one.
///
/// Below -87 the result is 0, not e^-87: a masked probability of e^-87 ≈ 1.6e-38 times any
/// value below 1 is subnormal, and every product that makes a subnormal costs the CPU a
/// microcode assist. The attention's probability-times-value products over a span of masked
/// keys ran 10-50x slower for it (a third of a GPT-2-small scoring step on an Intel Xeon).
#[inline(always)]
pub(super) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round to nearest by the 1.5·2^23 trick (exact for |x·log2e| < 2^22), SSE2-vectorizable.
    const ROUND: f32 = 12_582_912.0;
    let under = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n from n's bits: n + ROUND is exact and its bits are ROUND's plus n. (`n as i32`
    // would be a scalar conversion per lane: the loops would not vectorize.)
    let n_int = (n + ROUND).to_bits().wrapping_sub(ROUND.to_bits());
    let e = er * f32::from_bits(n_int.wrapping_add(127) << 23);
    if under {
        0.0
    } else {
        e
    }
}

/// tanh(x) = 1 − 2 / (e^{2x} + 1): absolute error below 2e-7 everywhere (the GELU uses it as
/// 1 + tanh and 1 − tanh², where the absolute error is what counts), exact ±1 in the tails.
#[inline(always)]
fn tanh_fast(x: f32) -> f32 {
    1.0 - 2.0 / (exp_fast(2.0 * x) + 1.0)
}

/// `gelu_new(x)`.
#[inline(always)]
pub(super) fn gelu_new_value(x: f32) -> f32 {
    let t = tanh_fast(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    0.5 * x * (1.0 + t)
}

/// `gelu_new'(x)`.
#[inline(always)]
pub(super) fn gelu_new_slope(x: f32) -> f32 {
    let t = tanh_fast(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input(s, l, "gelu-new")?;
        let mut y = vec![0f32; x.len()];
        super::kernels::gelu(x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(arg, |x| {
            with_f32(grad, |g| {
                let mut dx = g.to_vec();
                super::kernels::gelu_backward(x, &mut dx);
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// GPT-2's `gelu_new`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluNew)
}

dispatch! {
/// `y = gelu_new(x)` over a slice.
pub(super) fn gelu_values(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_new_value(x);
    }
}
}

dispatch! {
/// `g *= gelu_new'(x)` over a slice.
pub(super) fn gelu_scale(x: &[f32], g: &mut [f32]) {
    for (g, &x) in g.iter_mut().zip(x) {
        *g *= gelu_new_slope(x);
    }
}
}

dispatch! {
/// The largest value of a row.
pub(super) fn row_max(x: &[f32]) -> f32 {
    crate::simd::lane_max(x)
}
}

dispatch! {
/// Σ exp(x − max) over a row.
pub(super) fn sum_exp(x: &[f32], max: f32) -> f32 {
    crate::simd::lane_sum(x, |v| exp_fast(v - max))
}
}

dispatch! {
/// `x ← exp(x − max)` over a row; returns the sum.
pub(super) fn exp_in_place(x: &mut [f32], max: f32) -> f32 {
    x.iter_mut().for_each(|v| *v = exp_fast(*v - max));
    crate::simd::lane_sum(x, |v| v)
}
}

dispatch! {
/// `x *= s` over a slice.
pub(super) fn scale_in_place(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}
}

dispatch! {
/// `l ← −g · exp(l − max − lse)` over a row of logits, in place (a log-softmax's backward off
/// its target).
pub(super) fn neg_softmax_in_place(l: &mut [f32], max: f32, lse: f32, g: f32) {
    l.iter_mut().for_each(|v| *v = -g * exp_fast(*v - max - lse));
}
}

struct Softmax;

fn softmax_rows(x: &[f32], d: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let per = rows_per_task(d) * d;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let max = row_max(x);
                y.copy_from_slice(x);
                let sum = exp_in_place(y, max);
                scale_in_place(y, 1.0 / sum);
            }
        });
    y
}

/// A half-precision float the fused softmax reads and writes (computing in f32).
trait Half: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Half for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}

impl Half for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}

/// Softmax of half-precision rows, each row converted to f32 on its own (no full-size f32
/// copy).
fn softmax_rows_half<T: Half>(x: &[T], d: usize) -> Vec<T> {
    let mut y = vec![T::from_f32(0.0); x.len()];
    let per = rows_per_task(d) * d;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(y, x)| {
            let mut buf = vec![0f32; d];
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let max = x
                    .iter()
                    .map(|v| v.to_f32())
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (b, &v) in buf.iter_mut().zip(x) {
                    *b = exp_fast(v.to_f32() - max);
                    sum += *b;
                }
                let inv = 1.0 / sum;
                for (y, b) in y.iter_mut().zip(&buf) {
                    *y = T::from_f32(b * inv);
                }
            }
        });
    y
}

/// The softmax backward `y · (g − Σ y g)` of half-precision rows, row by row in f32.
fn softmax_bwd_half<T: Half>(y: &[T], g: &[T], d: usize) -> Vec<T> {
    let mut dx = vec![T::from_f32(0.0); y.len()];
    let per = rows_per_task(d) * d;
    dx.par_chunks_mut(per)
        .zip(y.par_chunks(per).zip(g.par_chunks(per)))
        .for_each(|(dx, (y, g))| {
            for ((dx, y), g) in dx.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d)) {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y.to_f32() * g.to_f32()).sum();
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = T::from_f32(y.to_f32() * (g.to_f32() - dot));
                }
            }
        });
    dx
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("softmax-last: contiguous input only");
        };
        // Half precision: computed in f32 row by row, stored in the input's dtype (the graph
        // keeps only the input and this output, both half size).
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows(&v[a..b], d)),
            CpuStorage::BF16(v) => CpuStorage::BF16(softmax_rows_half(&v[a..b], d)),
            CpuStorage::F16(v) => CpuStorage::F16(softmax_rows_half(&v[a..b], d)),
            _ => candle_core::bail!("softmax-last: float input only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad).map(Some)
    }
}

/// The last-dimension softmax's backward `y · (g − Σ y g)` from its output `y` and the
/// output's gradient `g` (CPU; half precision computed row by row in f32).
pub fn softmax_backward(res: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let d = res.dims().last().copied().unwrap_or(1).max(1);
    if res.dtype() != candle_core::DType::F32 {
        let (res, grad) = (res.contiguous()?, grad.contiguous()?.to_dtype(res.dtype())?);
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Some((ra, rb)), Some((ga, gb))) = (rl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("softmax-last: contiguous tensors only");
        };
        let dx = match (&*rs, &*gs) {
            (Storage::Cpu(CpuStorage::BF16(y)), Storage::Cpu(CpuStorage::BF16(g))) => {
                Tensor::from_vec(
                    softmax_bwd_half(&y[ra..rb], &g[ga..gb], d),
                    res.shape(),
                    res.device(),
                )?
            }
            (Storage::Cpu(CpuStorage::F16(y)), Storage::Cpu(CpuStorage::F16(g))) => {
                Tensor::from_vec(
                    softmax_bwd_half(&y[ra..rb], &g[ga..gb], d),
                    res.shape(),
                    res.device(),
                )?
            }
            _ => candle_core::bail!("softmax-last: half CPU tensors expected"),
        };
        return Ok(dx);
    }
    let dx = with_f32(res, |y| {
        with_f32(grad, |g| {
            let mut dx = vec![0f32; y.len()];
            let per = rows_per_task(d) * d;
            dx.par_chunks_mut(per)
                .zip(y.par_chunks(per).zip(g.par_chunks(per)))
                .for_each(|(dx, (y, g))| {
                    for ((dx, y), g) in dx.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d)) {
                        let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                            *dx = y * (g - dot);
                        }
                    }
                });
            Ok(dx)
        })
    })?;
    Tensor::from_vec(dx, res.shape(), res.device())
}

/// Softmax over the last dimension (f32, or bf16 / f16 computed in f32).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// Whether the fused softmax applies: a CPU tensor of a float dtype.
pub fn softmax_applies(x: &Tensor) -> bool {
    use candle_core::DType;
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = input(s1, l1, "layer-norm")?;
        let w = input(s2, l2, "layer-norm")?;
        let b = input(s3, l3, "layer-norm")?;
        let d = w.len();
        if d == 0 || x.len() % d != 0 || b.len() != d {
            candle_core::bail!(
                "layer-norm: shapes {:?} {:?} {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let rows = x.len() / d;
        let mut y = vec![0f32; x.len()];
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        super::kernels::layer_norm(x, (w, b), self.eps, &mut y, (&mut mean, &mut rstd));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let eps = self.eps;
        let (dx, dw, db) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    // The row statistics again (the forward's are not kept), then the kernel
                    // the owned engine uses.
                    let rows = x.len() / d.max(1);
                    let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
                    super::kernels::layer_norm_stats(x, d, eps, (&mut mean, &mut rstd));
                    let mut dx = vec![0f32; x.len()];
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    let stats = (&mean[..], &rstd[..]);
                    super::kernels::layer_norm_backward(x, w, stats, g, &mut dx, &mut dw, &mut db);
                    Ok((dx, dw, db))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, w.shape(), w.device())?),
        ))
    }
}

/// Layer norm over the last dimension (biased variance, as PyTorch).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// log softmax(logits)[target] per row, without the `[rows, vocab]` log-softmax tensor.
struct TokenLogprob;

impl TokenLogprob {
    /// Per row: the max and log Σ exp(x − max).
    fn lse(x: &[f32]) -> (f32, f32) {
        let max = row_max(x);
        (max, sum_exp(x, max).ln())
    }
}

fn targets(s: &CpuStorage, l: &Layout) -> Result<Vec<usize>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("token-logprob: contiguous targets only");
    };
    Ok(match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&t| t as usize).collect(),
        CpuStorage::I64(v) => v[a..b].iter().map(|&t| t.max(0) as usize).collect(),
        _ => candle_core::bail!("token-logprob: u32 or i64 targets"),
    })
}

impl candle_core::CustomOp2 for TokenLogprob {
    fn name(&self) -> &'static str {
        "token-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = input(s1, l1, "token-logprob")?;
        let t = targets(s2, l2)?;
        let v = l1.dims().last().copied().unwrap_or(1).max(1);
        if x.len() != t.len() * v || t.iter().any(|&i| i >= v) {
            candle_core::bail!(
                "token-logprob: logits {:?}, targets {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let mut out = vec![0f32; t.len()];
        out.par_iter_mut()
            .zip(x.par_chunks(v).zip(t.par_iter()))
            .for_each(|(o, (x, &t))| {
                let (max, lse) = Self::lse(x);
                *o = x[t] - max - lse;
            });
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dims().last().copied().unwrap_or(1).max(1);
        let target = target.contiguous()?;
        let t = {
            let (s, l) = target.storage_and_layout();
            let Storage::Cpu(s) = &*s else {
                candle_core::bail!("token-logprob: CPU targets only");
            };
            targets(s, l)?
        };
        let dx = with_f32(logits, |x| {
            with_f32(grad, |g| {
                // d/dx_j of (x_t − lse) = 1[j = t] − softmax_j, times the row's gradient.
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(v)
                    .zip(x.par_chunks(v).zip(t.par_iter().zip(g.par_iter())))
                    .for_each(|(d, (x, (&t, &g)))| {
                        if g == 0.0 {
                            return;
                        }
                        let (max, lse) = Self::lse(x);
                        d.copy_from_slice(x);
                        neg_softmax_in_place(d, max, lse, g);
                        d[t] += g;
                    });
                Ok(dx)
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, logits.shape(), logits.device())?),
            None,
        ))
    }
}

/// `log_softmax(logits)` gathered at `targets` (`[.., V]` and `[..]`, u32 or i64).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TokenLogprob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ops;
    use candle_core::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64, scale: f64, shift: f64) -> Tensor {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (shift + scale * (((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0)) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and gradients (w.r.t. every input) of sum(f(inputs) · r).
    fn run(
        f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        r: &Tensor,
        dtype: DType,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let grads = (&y * r.to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        (
            flat(&y),
            ts.iter()
                .map(|t| flat(grads.get(t).expect("every input gets a gradient")))
                .collect(),
        )
    }

    /// The fused f32 kernel against the composed f64 path (itself checked against finite
    /// differences in `ops`): values and every input's gradient.
    fn same(f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], what: &str) {
        let y = f(inputs).unwrap();
        let r = rand(y.dims(), 99, 1.0, 0.0);
        let (fv, fg) = run(f, inputs, &r, DType::F32);
        let (cv, cg) = run(f, inputs, &r, DType::F64);
        let close = |a: &[f64], b: &[f64], name: &str| {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().map(|x| x.abs()).fold(1e-3, f64::max);
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 2e-5 * scale,
                    "{what} {name}[{i}]: fused {x}, composed {y}"
                );
            }
        };
        close(&fv, &cv, "value");
        for (k, (a, b)) in fg.iter().zip(&cg).enumerate() {
            close(a, b, &format!("grad {k}"));
        }
    }

    /// Oracle: f64 `tanh`/`exp` from the standard library, on a dense grid and at the edges.
    #[test]
    fn fast_tanh_and_exp_are_accurate() {
        let mut worst = (0f64, 0f32);
        for i in -400_000..=400_000 {
            let x = i as f32 * 5e-5; // [-20, 20]
            let err = (f64::from(tanh_fast(x)) - f64::from(x).tanh()).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 < 2.5e-7, "tanh error {} at {}", worst.0, worst.1);
        for x in [
            -1e30f32,
            -87.5,
            88.5,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(tanh_fast(x), x.signum(), "{x}");
        }
        assert!(tanh_fast(f32::NAN).is_nan());
        for i in -8_600..=8_700 {
            let x = i as f32 * 0.01;
            let want = f64::from(x).exp();
            let rel = (f64::from(exp_fast(x)) - want).abs() / want;
            assert!(rel < 3e-7, "exp({x}) relative error {rel}");
        }
    }

    /// A masked score's probability is exactly zero, never a tiny normal whose products with
    /// the values are subnormal (each such product is a microcode assist on Intel cores).
    #[test]
    fn masked_scores_give_exact_zeros() {
        for x in [-87.01f32, -100.0, -1e9, f32::NEG_INFINITY] {
            assert_eq!(exp_fast(x).to_bits(), 0, "exp({x})");
        }
        assert!(exp_fast(-86.9) > 0.0);
        let mut row = [0.5f32, -1e9, 1.0, -1e9, -1e9, 0.25, -1e9, -1e9, -1e9];
        let max = row_max(&row);
        let sum = exp_in_place(&mut row, max);
        assert!((sum - (1.0 + (-0.5f32).exp() + (-0.75f32).exp())).abs() < 1e-6);
        for (i, v) in row.iter().enumerate() {
            assert!(*v == 0.0 || v.is_normal(), "entry {i} is {v:e}");
            assert_eq!(*v == 0.0, [1, 3, 4, 6, 7, 8].contains(&i), "entry {i}");
        }
    }

    #[test]
    fn fused_kernels_match_the_composed_ops() {
        assert!(applies(&[&rand(&[2], 0, 1.0, 0.0)]));
        same(
            &|t| ops::gelu_new(&t[0]),
            &[rand(&[3, 70, 33], 1, 4.0, 0.0)],
            "gelu",
        );
        same(
            &|t| ops::softmax(&t[0]),
            &[rand(&[4, 9, 40], 2, 6.0, 0.0)],
            "softmax",
        );
        same(
            &|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            &[
                rand(&[3, 50, 48], 3, 2.0, 0.5),
                rand(&[48], 4, 0.5, 1.0),
                rand(&[48], 5, 0.3, 0.0),
            ],
            "layer norm",
        );
        // Token log-probs: the fused gather of log-softmax against the composed pair.
        let tg = Tensor::new(&[[3u32, 0, 7], [5, 5, 1]], &Device::Cpu).unwrap();
        same(
            &|t| {
                if t[0].dtype() == DType::F32 {
                    token_logprobs(&t[0], &tg)
                } else {
                    ops::log_softmax(&t[0])?
                        .gather(&tg.unsqueeze(2)?, 2)?
                        .squeeze(2)
                }
            },
            &[rand(&[2, 3, 8], 7, 5.0, 0.0)],
            "token log-probs",
        );
        // A transposed (non-contiguous) input goes through the same kernels.
        same(
            &|t| ops::softmax(&t[0].t()?),
            &[rand(&[9, 12], 6, 3.0, 0.0)],
            "softmax of a view",
        );
    }

    /// The half-precision softmax (computed in f32 row by row) against the composed f64 path:
    /// values and gradient within bf16 / f16 rounding.
    #[test]
    fn half_softmax_matches_the_composed_ops() {
        for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 2e-3)] {
            let x = rand(&[3, 5, 64], 11, 6.0, 0.0);
            let r = rand(&[3, 5, 64], 12, 1.0, 0.0);
            let f = |t: &[Tensor]| ops::softmax(&t[0]);
            let (hv, hg) = run(&f, std::slice::from_ref(&x), &r, dtype);
            let (cv, cg) = run(&f, std::slice::from_ref(&x), &r, DType::F64);
            for (name, a, b) in [("value", &hv, &cv), ("grad", &hg[0], &cg[0])] {
                let scale = b.iter().map(|x| x.abs()).fold(1e-3, f64::max);
                let worst = (a.iter().zip(b.iter()))
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst <= tol * scale,
                    "{dtype:?} {name}: off by {worst} of {scale}"
                );
            }
            assert!(softmax_applies(&x.to_dtype(dtype).unwrap()));
        }
    }
}
