//! Slice-level CPU f32 kernels of the owned engine (`models::engine`): matrix products called
//! straight into `gemm` (transposes as strides, accumulation into the destination, no copy),
//! layer norm, `gelu_new` and blockwise attention, each forward and backward.
//!
//! They work on plain `&[f32]` buffers that the engine allocates once per shape and reuses, so
//! a layer's forward or backward is a dozen calls with no tensor, no graph node and no
//! zero-filled temporary. Row-parallel loops split work into fixed chunks and reduce partial
//! sums in chunk order, so results do not depend on the thread count's scheduling.

use gemm::Parallelism;

use super::fused::{exp_fast, exp_in_place, row_max, rows_per_task};
use rayon::prelude::*;

/// A read-only strided matrix: element `(i, j)` is `v[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub v: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix of `cols` columns starting at `v[0]`.
    pub fn rows(v: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { v, rs: cols, cs: 1 }
    }

    /// The transpose (a view: strides swapped).
    pub fn t(self) -> Mat<'a> {
        Mat {
            v: self.v,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The view starting `off` elements in.
    pub fn at(self, off: usize) -> Mat<'a> {
        Mat {
            v: &self.v[off..],
            ..self
        }
    }

    fn check(&self, m: usize, k: usize) {
        assert!(
            m == 0 || k == 0 || (m - 1) * self.rs + (k - 1) * self.cs < self.v.len(),
            "matrix view out of bounds"
        );
    }
}

/// A raw destination pointer that parallel tasks writing disjoint elements share.
#[derive(Clone, Copy)]
pub struct Out(pub *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the `Send` wrapper and not its field).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Work (m·n·k) below which a product runs on the calling thread: threads cost more than they
/// save on the tiny shapes.
const PARALLEL_WORK: usize = 1 << 18;

fn parallelism(m: usize, n: usize, k: usize, outer_parallel: bool) -> Parallelism {
    let threads = rayon::current_num_threads();
    if outer_parallel || threads < 2 || m * n * k < PARALLEL_WORK {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `c = (acc ? c : 0) + scale · a · b` for `a` `[m, k]`, `b` `[k, n]` and `c` row-major `[m, n]`
/// with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn mm(
    c: &mut [f32],
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "matrix product destination");
    // SAFETY: the destination holds `[m, n]` at stride `ldc` (checked above).
    unsafe { mm_raw(Out(c.as_mut_ptr()), ldc, (m, n, k), a, b, scale, acc, false) }
}

/// [`mm`] into a raw destination (parallel tasks writing disjoint blocks of one buffer);
/// `inner` says the caller is already one of several parallel tasks.
///
/// # Safety
/// `c` must point to `[m, n]` writable elements at row stride `ldc` that no other thread
/// reads or writes during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn mm_raw(
    c: Out,
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
    acc: bool,
    inner: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.0.add(i * ldc), n).fill(0.0);
            }
        }
        return;
    }
    a.check(m, k);
    b.check(k, n);
    gemm::gemm(
        m,
        n,
        k,
        c.0,
        1,
        ldc as isize,
        acc,
        a.v.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.v.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism(m, n, k, inner),
    );
}

/// `out[j] (+)= Σ_i x[i, j]` over the rows of `x` (`width` columns), in a fixed order.
pub fn col_sums(x: &[f32], width: usize, out: &mut [f32], acc: bool) {
    let per = rows_per_task(width) * width;
    let parts: Vec<Vec<f32>> = x
        .par_chunks(per)
        .map(|rows| {
            let mut s = vec![0f32; width];
            for r in rows.chunks(width) {
                s.iter_mut().zip(r).for_each(|(s, v)| *s += v);
            }
            s
        })
        .collect();
    if !acc {
        out.fill(0.0);
    }
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

/// `y[i, :] += b` for every row.
pub fn add_bias(y: &mut [f32], b: &[f32]) {
    let d = b.len();
    y.par_chunks_mut(rows_per_task(d) * d).for_each(|rows| {
        for r in rows.chunks_mut(d) {
            r.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    });
}

/// `y += x` elementwise.
pub fn add_into(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

/// Layer norm's row statistics, as the fused op computes them: mean and 1/sqrt(var + eps).
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Each row's mean and 1/σ (rows of `d` values), as [`layer_norm`] computes them.
pub fn layer_norm_stats(x: &[f32], d: usize, eps: f32, (mean, rstd): (&mut [f32], &mut [f32])) {
    let rows = rows_per_task(d);
    x.par_chunks(rows * d)
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|(x, (mean, rstd))| {
            for ((x, m), r) in x.chunks(d).zip(mean).zip(rstd) {
                (*m, *r) = stats(x, eps);
            }
        });
}

/// Layer norm over rows of `w.len()` values; keeps each row's mean and 1/σ for the backward.
pub fn layer_norm(
    x: &[f32],
    (w, b): (&[f32], &[f32]),
    eps: f32,
    y: &mut [f32],
    (mean, rstd): (&mut [f32], &mut [f32]),
) {
    let d = w.len();
    let rows = rows_per_task(d);
    y.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|((y, x), (mean, rstd))| {
            for (((y, x), m), r) in y.chunks_mut(d).zip(x.chunks(d)).zip(mean).zip(rstd) {
                let (mu, rs) = stats(x, eps);
                for i in 0..d {
                    y[i] = (x[i] - mu) * rs * w[i] + b[i];
                }
                *m = mu;
                *r = rs;
            }
        });
}

/// Layer norm's backward: `dx += ∂`, `dw += Σ g·x̂`, `db += Σ g` (partials in chunk order).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let d = w.len();
    let rows = rows_per_task(d);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d).zip(g.par_chunks(rows * d)))
        .zip(mean.par_chunks(rows).zip(rstd.par_chunks(rows)))
        .map(|((dx, (x, g)), (mean, rstd))| {
            let mut pw = vec![0f32; d];
            let mut pb = vec![0f32; d];
            for (((dx, x), g), (&mu, &rs)) in dx
                .chunks_mut(d)
                .zip(x.chunks(d))
                .zip(g.chunks(d))
                .zip(mean.iter().zip(rstd))
            {
                let (mut s1, mut s2) = (0f32, 0f32);
                for i in 0..d {
                    let xh = (x[i] - mu) * rs;
                    let gx = g[i] * w[i];
                    s1 += gx;
                    s2 += gx * xh;
                    pw[i] += g[i] * xh;
                    pb[i] += g[i];
                }
                let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                for i in 0..d {
                    let xh = (x[i] - mu) * rs;
                    dx[i] += rs * (g[i] * w[i] - m1 - xh * m2);
                }
            }
            (pw, pb)
        })
        .collect();
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
}

/// `y = gelu_new(x)` (the fused op's formula and its fast tanh).
pub fn gelu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = super::fused::gelu_new_value(x);
            }
        });
}

/// `g *= gelu_new'(x)` in place.
pub fn gelu_backward(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(g, x)| {
            for (g, &x) in g.iter_mut().zip(x) {
                *g *= super::fused::gelu_new_slope(x);
            }
        });
}

/// The shape of one attention call over packed `qkv` rows.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Batch rows and tokens a row.
    pub b: usize,
    pub t: usize,
    /// Query heads, key-value heads and the head size.
    pub h: usize,
    pub kv: usize,
    pub hd: usize,
}

impl Heads {
    /// Values of one token's `q | k | v` row.
    fn row(&self) -> usize {
        (self.h + 2 * self.kv) * self.hd
    }

    /// Offsets within a token's row of query head `hi`'s q, k and v.
    fn offsets(&self, hi: usize) -> (usize, usize, usize) {
        let g = hi / (self.h / self.kv);
        let q = hi * self.hd;
        let k = self.h * self.hd + g * self.hd;
        let v = (self.h + self.kv) * self.hd + g * self.hd;
        (q, k, v)
    }
}

/// The additive bias `[rows, T, T]` for batch row `bi` (one row broadcasts).
fn bias_row(bias: &[f32], t: usize, bi: usize) -> &[f32] {
    let rows = bias.len() / (t * t);
    let r = if rows == 1 { 0 } else { bi };
    &bias[r * t * t..(r + 1) * t * t]
}

/// `s = scale · q kᵀ + bias` for one head of one batch row, into `s` `[T, T]`.
fn scores(qkv: &[f32], bias: &[f32], s: Heads, bi: usize, hi: usize, scale: f32, out: &mut [f32]) {
    let (t, row) = (s.t, s.row());
    let (oq, ok, _) = s.offsets(hi);
    let base = bi * t * row;
    let q = Mat::rows(qkv, row).at(base + oq);
    let k = Mat::rows(qkv, row).at(base + ok).t();
    // SAFETY: `out` is this task's own `[T, T]` buffer.
    unsafe {
        mm_raw(
            Out(out.as_mut_ptr()),
            t,
            (t, t, s.hd),
            q,
            k,
            1.0,
            false,
            true,
        )
    };
    let b = bias_row(bias, t, bi);
    // Scaled after the product, as the composed path: (q kᵀ) · scale + bias.
    out.iter_mut().zip(b).for_each(|(v, b)| *v = *v * scale + b);
}

/// Scaled dot-product attention of every head of `qkv` (`[B·T, (H + 2·KV)·hd]`, queries then
/// keys then values, heads contiguous) under the additive `bias` into `out` `[B·T, H·hd]`.
/// One head of one row at a time per task, over a `[T, T]` scratch: no probability tensor
/// outlives its head. Keeps each query's log-sum-exp `lse` `[B, H, T]` so the backward can
/// recompute the probabilities.
pub fn attention(
    qkv: &[f32],
    bias: &[f32],
    s: Heads,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (t, d) = (s.t, s.h * s.hd);
    assert_eq!(out.len(), s.b * t * d, "attention output");
    assert_eq!(lse.len(), s.b * s.h * t, "attention log-sum-exp");
    let dst = Out(out.as_mut_ptr());
    lse.par_chunks_mut(t).enumerate().for_each_init(
        || vec![0f32; t * t],
        |p, (idx, lse)| {
            let (bi, hi) = (idx / s.h, idx % s.h);
            scores(qkv, bias, s, bi, hi, scale, p);
            for (row, l) in p.chunks_mut(t).zip(lse.iter_mut()) {
                let max = row_max(row);
                let sum = exp_in_place(row, max);
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
                *l = max + sum.ln();
            }
            let (_, _, ov) = s.offsets(hi);
            let v = Mat::rows(qkv, s.row()).at(bi * t * s.row() + ov);
            // SAFETY: head `hi` of row `bi` owns these `[T, hd]` elements of `out`.
            unsafe {
                let o = Out(dst.ptr().add(bi * t * d + hi * s.hd));
                mm_raw(o, d, (t, s.hd, t), Mat::rows(p, t), v, 1.0, false, true);
            }
        },
    );
}

/// The backward of [`attention`]: from the output's gradient `dout`, the gradient of `qkv`
/// into `dqkv` (overwritten; with key-value groups, the heads of a group add into it).
/// Recomputes each head's probabilities from `q`, `k` and the kept log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f32],
    bias: &[f32],
    s: Heads,
    scale: f32,
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    dqkv: &mut [f32],
) {
    let (t, d, row) = (s.t, s.h * s.hd, s.row());
    assert_eq!(dqkv.len(), s.b * t * row, "attention input gradient");
    let group = s.h / s.kv;
    let dst = Out(dqkv.as_mut_ptr());
    // With grouped keys and values several heads add into one k / v block: a task takes a
    // whole group of one batch row so no two tasks write the same elements.
    (0..s.b * s.kv).into_par_iter().for_each_init(
        || (vec![0f32; t * t], vec![0f32; t * t]),
        |(p, dp), idx| {
            let (bi, g) = (idx / s.kv, idx % s.kv);
            for hi in g * group..(g + 1) * group {
                let first = hi == g * group;
                scores(qkv, bias, s, bi, hi, scale, p);
                let lse = &lse[(bi * s.h + hi) * t..][..t];
                for (r, &l) in p.chunks_mut(t).zip(lse) {
                    r.iter_mut().for_each(|v| *v = exp_fast(*v - l));
                }
                let (oq, ok, ov) = s.offsets(hi);
                let base = bi * t * row;
                let o_off = bi * t * d + hi * s.hd;
                let dout_h = Mat::rows(dout, d).at(o_off);
                let v = Mat::rows(qkv, row).at(base + ov);
                // dP = dO · Vᵀ
                unsafe {
                    mm_raw(
                        Out(dp.as_mut_ptr()),
                        t,
                        (t, t, s.hd),
                        dout_h,
                        v.t(),
                        1.0,
                        false,
                        true,
                    )
                };
                // dS = P ∘ (dP − rowsum(dO ∘ O)), rowsum(P ∘ dP) being rowsum(dO ∘ O).
                for i in 0..t {
                    let o = &out[o_off + i * d..][..s.hd];
                    let go = &dout[o_off + i * d..][..s.hd];
                    let di: f32 = o.iter().zip(go).map(|(a, b)| a * b).sum();
                    let (pr, dr) = (&p[i * t..][..t], &mut dp[i * t..][..t]);
                    dr.iter_mut().zip(pr).for_each(|(g, p)| *g = p * (*g - di));
                }
                // SAFETY: this task owns head group `g` of row `bi`: the q block of each of its
                // heads and its shared k and v blocks.
                unsafe {
                    // dV (+)= Pᵀ · dO
                    let dv = Out(dst.ptr().add(base + ov));
                    mm_raw(
                        dv,
                        row,
                        (t, s.hd, t),
                        Mat::rows(p, t).t(),
                        dout_h,
                        1.0,
                        !first,
                        true,
                    );
                    // dQ = scale · dS · K
                    let k = Mat::rows(qkv, row).at(base + ok);
                    let dq = Out(dst.ptr().add(base + oq));
                    mm_raw(
                        dq,
                        row,
                        (t, s.hd, t),
                        Mat::rows(dp, t),
                        k,
                        scale,
                        false,
                        true,
                    );
                    // dK (+)= scale · dSᵀ · Q
                    let q = Mat::rows(qkv, row).at(base + oq);
                    let dk = Out(dst.ptr().add(base + ok));
                    mm_raw(
                        dk,
                        row,
                        (t, s.hd, t),
                        Mat::rows(dp, t).t(),
                        q,
                        scale,
                        !first,
                        true,
                    );
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::NumpyPcg64::new(seed);
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
            .collect()
    }

    #[test]
    fn products_follow_their_strides_and_accumulate() {
        let (m, n, k) = (5, 7, 3);
        let a = rand(m * k, 1);
        let b = rand(n * k, 2); // stored as [n, k]: used transposed
        let mut c = rand(m * n, 3);
        let c0 = c.clone();
        mm(
            &mut c,
            n,
            (m, n, k),
            Mat::rows(&a, k),
            Mat::rows(&b, k).t(),
            0.5,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let want =
                    c0[i * n + j] + 0.5 * (0..k).map(|r| a[i * k + r] * b[j * k + r]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-6);
            }
        }
    }
}
