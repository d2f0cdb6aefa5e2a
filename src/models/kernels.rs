//! Slice-level CPU f32 kernels of the owned engine (`models::engine`): matrix products called
//! straight into `gemm` (transposes as strides, accumulation into the destination, no copy),
//! layer norm, `gelu_new` and blockwise attention, each forward and backward.
//!
//! They work on plain `&[f32]` buffers that the engine allocates once per shape and reuses, so
//! a layer's forward or backward is a dozen calls with no tensor, no graph node and no
//! zero-filled temporary. Row-parallel loops split work into fixed chunks and reduce partial
//! sums in chunk order, so results do not depend on the thread count's scheduling.

use gemm::Parallelism;

use super::fused::rows_per_task;
use crate::simd::{dispatch, lane_sum, lane_sum3};
use rayon::prelude::*;

mod attend;
mod llama;
pub mod packed;
pub use attend::{attention, attention_backward, Heads};
pub use llama::{rms_norm, rms_norm_backward, rope, swiglu, swiglu_backward};

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

/// `c (+)= x · B` for a layer weight `w` read as `B` `[k, n]`: `w` row-major `[k, n]` (`t`
/// false) or the transpose of a row-major `[n, k]` (`t` true). Through the weight's packed
/// form where the calling thread has a model's packs in scope ([`packed::scope`]), else [`mm`].
#[allow(clippy::too_many_arguments)]
pub fn mm_weight(
    c: &mut [f32],
    ldc: usize,
    m: usize,
    x: Mat,
    w: &[f32],
    (k, n): (usize, usize),
    t: bool,
    acc: bool,
) {
    if x.cs == 1 && m <= packed::MAX_ROWS {
        if let Some(p) = packed::in_scope(w, (k, n), t) {
            return packed::mm(c, ldc, m, x, &p, acc);
        }
    }
    let b = if t {
        Mat::rows(w, k).t()
    } else {
        Mat::rows(w, n)
    };
    mm(c, ldc, (m, n, k), x, b, 1.0, acc);
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
    if !inner && b.rs == 1 && b.cs > 1 && m <= TRANSPOSED_ROWS {
        return transposed_rhs(c, ldc, (m, n, k), a, b, scale, acc);
    }
    let par = parallelism(m, n, k, inner);
    gemm_into(c.0, (1, ldc), acc, (m, n, k), a, b, scale, par);
}

/// `gemm` into `dst` at strides `(column, row)`: `dst (+)= scale · a · b`.
///
/// # Safety
/// `dst` must hold `[m, n]` at those strides, written by no other thread during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    (cs, rs): (usize, usize),
    read: bool,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        cs as isize,
        rs as isize,
        read,
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
        par,
    );
}

/// Rows up to which a product with a transposed right operand goes through
/// [`transposed_rhs`].
const TRANSPOSED_ROWS: usize = 512;

thread_local! {
    /// [`transposed_rhs`]'s column-major product, kept for the thread's next call.
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`mm_raw`] for a right operand stored transposed (`b.rs == 1`: a `[n, k]` row-major weight
/// read as `[k, n]`, as `x · Wᵀ` and `dy · Wᵀ` read it) into a row-major destination. `gemm`
/// runs that combination at a fraction of its speed when the product is short (one pair's
/// ~110 tokens against a GPT-2 MLP weight: 103 GFLOP/s, against 228 into a column-major
/// destination, on the Intel host), so the product goes into a column-major scratch and is
/// then copied (or added) across, a pass over `[m, n]` against `m·n·k` of product work.
///
/// # Safety
/// As [`mm_raw`].
unsafe fn transposed_rhs(
    c: Out,
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    scale: f32,
    acc: bool,
) {
    COLUMNS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < m * n {
            t.resize(m * n, 0.0);
        }
        let par = parallelism(m, n, k, false);
        gemm_into(t.as_mut_ptr(), (m, 1), false, (m, n, k), a, b, scale, par);
        // Across in tiles, so that both sides stay in cache.
        const TILE: usize = 32;
        for i0 in (0..m).step_by(TILE) {
            for j0 in (0..n).step_by(TILE) {
                for i in i0..(i0 + TILE).min(m) {
                    let row = std::slice::from_raw_parts_mut(c.0.add(i * ldc), n);
                    for j in j0..(j0 + TILE).min(n) {
                        let v = t[j * m + i];
                        row[j] = if acc { row[j] + v } else { v };
                    }
                }
            }
        }
    });
}

/// `out[j] (+)= Σ_i x[i, j]` over the rows of `x` (`width` columns), in a fixed order.
pub fn col_sums(x: &[f32], width: usize, out: &mut [f32], acc: bool) {
    let per = rows_per_task(width) * width;
    let parts: Vec<Vec<f32>> = x
        .par_chunks(per)
        .map(|rows| {
            let mut s = vec![0f32; width];
            for r in rows.chunks(width) {
                add_slice(&mut s, r);
            }
            s
        })
        .collect();
    if !acc {
        out.fill(0.0);
    }
    for p in parts {
        add_slice(out, &p);
    }
}

dispatch! {
/// `y += x` over a slice, on the calling thread.
pub fn add_slice(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
}
}

/// `y[i, :] += b` for every row.
pub fn add_bias(y: &mut [f32], b: &[f32]) {
    let d = b.len();
    y.par_chunks_mut(rows_per_task(d) * d).for_each(|rows| {
        for r in rows.chunks_mut(d) {
            add_slice(r, b);
        }
    });
}

/// Moves rows `rows` (ascending and distinct) of the `[_, width]` buffer `buf` to its front,
/// in that order: the rows a readout needs, compacted in place for the token-wise rest of a
/// layer.
pub fn keep_rows(buf: &mut [f32], width: usize, rows: &[usize]) {
    for (j, &r) in rows.iter().enumerate() {
        assert!(r >= j, "rows to keep must be ascending and distinct");
        if r != j {
            buf.copy_within(r * width..(r + 1) * width, j * width);
        }
    }
}

/// `dst[j, :] = src[rows[j], :]` for rows of `width` values.
pub fn gather_rows(src: &[f32], width: usize, rows: &[usize], dst: &mut [f32]) {
    for (d, &r) in dst.chunks_mut(width).zip(rows) {
        d.copy_from_slice(&src[r * width..(r + 1) * width]);
    }
}

/// `y += x` elementwise.
pub fn add_into(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| add_slice(y, x));
}

/// Layer norm's row statistics, as the fused op computes them: mean and 1/sqrt(var + eps).
#[inline(always)]
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |x| x) / n;
    let var = lane_sum(x, |x| (x - mean) * (x - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

dispatch! {
/// [`stats`] of each row of `x` (rows of `mean.len()`).
fn stats_rows(x: &[f32], eps: f32, mean: &mut [f32], rstd: &mut [f32]) {
    let d = x.len() / mean.len().max(1);
    for ((x, m), r) in x.chunks(d).zip(mean).zip(rstd) {
        (*m, *r) = stats(x, eps);
    }
}
}

dispatch! {
/// Layer norm of rows `x` into `y`, keeping each row's mean and 1/σ.
fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    for (((y, x), m), r) in y.chunks_mut(d).zip(x.chunks(d)).zip(mean).zip(rstd) {
        let (mu, rs) = stats(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mu) * rs * w + b;
        }
        *m = mu;
        *r = rs;
    }
}
}

dispatch! {
/// Layer norm's backward over rows: `dx += ∂`, and each row's `g·x̂` and `g` added into the
/// partial weight and bias gradients `pw`, `pb`.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_rows(x: &[f32], w: &[f32], mean: &[f32], rstd: &[f32], g: &[f32], dx: &mut [f32], pw: &mut [f32], pb: &mut [f32]) {
    let d = w.len();
    for (((dx, x), g), (&mu, &rs)) in dx
        .chunks_mut(d)
        .zip(x.chunks(d))
        .zip(g.chunks(d))
        .zip(mean.iter().zip(rstd))
    {
        let s1 = lane_sum3(g, w, x, |g, w, _| g * w);
        let s2 = lane_sum3(g, w, x, |g, w, x| g * w * ((x - mu) * rs));
        for (((pw, pb), &g), &x) in pw.iter_mut().zip(pb.iter_mut()).zip(g).zip(x) {
            *pw += g * ((x - mu) * rs);
            *pb += g;
        }
        let (m1, m2) = (s1 / d as f32, s2 / d as f32);
        for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(w).zip(x) {
            let xh = (x - mu) * rs;
            *dx += rs * (g * w - m1 - xh * m2);
        }
    }
}
}

/// Each row's mean and 1/σ (rows of `d` values), as [`layer_norm`] computes them.
pub fn layer_norm_stats(x: &[f32], d: usize, eps: f32, (mean, rstd): (&mut [f32], &mut [f32])) {
    let rows = rows_per_task(d);
    x.par_chunks(rows * d)
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|(x, (mean, rstd))| stats_rows(x, eps, mean, rstd));
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
        .for_each(|((y, x), (mean, rstd))| layer_norm_rows(x, w, b, eps, y, mean, rstd));
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
            layer_norm_backward_rows(x, w, mean, rstd, g, dx, &mut pw, &mut pb);
            (pw, pb)
        })
        .collect();
    for (pw, pb) in parts {
        add_slice(dw, &pw);
        add_slice(db, &pb);
    }
}

/// `y = gelu_new(x)` (the fused op's formula and its fast tanh).
pub fn gelu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| super::fused::gelu_values(x, y));
}

/// `g *= gelu_new'(x)` in place.
pub fn gelu_backward(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(g, x)| super::fused::gelu_scale(x, g));
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

    /// Every kernel's outputs under each vector width the CPU has, as bits.
    fn kernel_bits() -> Vec<Vec<u32>> {
        let (n, d, inner) = (37, 40, 72);
        let x = rand(n * d, 10);
        let (w, b) = (rand(d, 11), rand(d, 12));
        let g = rand(n * d, 13);
        let mut out = Vec::new();
        let (mut y, mut mean, mut rstd) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
        layer_norm(&x, (&w, &b), 1e-5, &mut y, (&mut mean, &mut rstd));
        let (mut dx, mut dw, mut db) = (g.clone(), vec![0f32; d], vec![0f32; d]);
        layer_norm_backward(&x, &w, (&mean, &rstd), &g, &mut dx, &mut dw, &mut db);
        out.extend([y, mean, rstd, dx, dw, db]);
        let (mut y, mut rstd) = (vec![0f32; n * d], vec![0f32; n]);
        rms_norm(&x, &w, 1e-5, &mut y, &mut rstd);
        let (mut dx, mut dw) = (g.clone(), vec![0f32; d]);
        rms_norm_backward(&x, &w, &rstd, &g, &mut dx, &mut dw);
        out.extend([y, rstd, dx, dw]);
        let u: Vec<f32> = rand(n * inner, 14).iter().map(|v| v * 8.0).collect();
        let mut a = vec![0f32; n * inner];
        gelu(&u, &mut a);
        let mut du = rand(n * inner, 15);
        gelu_backward(&u, &mut du);
        let mut sums = vec![0f32; inner];
        col_sums(&du, inner, &mut sums, false);
        let mut yb = a.clone();
        add_bias(&mut yb, &sums);
        out.extend([a, du, sums, yb]);
        // Causal attention over 2 rows of 45 tokens, 2 heads of 8, the second row's last
        // 5 keys masked.
        let s = Heads {
            b: 2,
            t: 45,
            h: 2,
            kv: 2,
            hd: 8,
        };
        let qkv: Vec<f32> = rand(2 * 45 * 48, 16).iter().map(|v| v * 4.0).collect();
        let mut bias = vec![0f32; 2 * 45 * 45];
        for r in 0..2 {
            for i in 0..45 {
                for j in 0..45 {
                    if j > i || (r == 1 && j >= 40) {
                        bias[(r * 45 + i) * 45 + j] = -1e9;
                    }
                }
            }
        }
        let (mut o, mut lse) = (vec![0f32; 2 * 45 * 16], vec![0f32; 2 * 2 * 45]);
        attention(&qkv, &bias, s, 0.35, &mut o, &mut lse);
        let dout = rand(o.len(), 17);
        let mut dqkv = vec![0f32; qkv.len()];
        attention_backward(&qkv, &bias, s, 0.35, (&o, &lse), &dout, &mut dqkv);
        out.extend([o, lse, dqkv]);
        out.into_iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// The vector widths give the same bits (the `simd` module's promise): a table does not
    /// depend on which CPU ran it.
    #[test]
    fn every_tier_gives_the_same_bits() {
        let _lock = crate::simd::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut runs = Vec::new();
        for t in [
            crate::simd::Tier::Base,
            crate::simd::Tier::Avx2,
            crate::simd::Tier::Avx512,
        ] {
            crate::simd::set_tier(t);
            runs.push((crate::simd::tier(), kernel_bits()));
        }
        crate::simd::set_tier(crate::simd::Tier::Avx512);
        for (t, r) in &runs[1..] {
            for (i, (a, b)) in runs[0].1.iter().zip(r).enumerate() {
                assert!(
                    a == b,
                    "output {i} differs between {:?} and {t:?}",
                    runs[0].0
                );
            }
        }
    }
}
