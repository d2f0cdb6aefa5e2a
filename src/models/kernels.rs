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
use rayon::prelude::*;

mod attend;
mod llama;
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
