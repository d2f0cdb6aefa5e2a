//! The kernels Llama and Mistral add to the owned engine: RMSNorm, rotary embeddings in the
//! Hugging Face rotate-half layout, and the SwiGLU gate, each forward and backward.

use rayon::prelude::*;

use super::super::fused::rows_per_task;
use crate::simd::{dispatch, lane_sum, lane_sum3};

/// `y = x / sqrt(mean(x²) + eps) · w` over rows of `w.len()` values, as the composed op;
/// keeps each row's `1 / sqrt(mean(x²) + eps)` for the backward.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    let rows = rows_per_task(d);
    y.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(rstd.par_chunks_mut(rows))
        .for_each(|((y, x), rstd)| rms_norm_rows(x, w, eps, y, rstd));
}

dispatch! {
/// [`rms_norm`] of rows `x` on the calling thread.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    for ((y, x), r) in y.chunks_mut(d).zip(x.chunks(d)).zip(rstd) {
        let ms = lane_sum(x, |v| v * v) / d as f32;
        let s = (ms + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x / s * w;
        }
        *r = 1.0 / s;
    }
}
}

dispatch! {
/// [`rms_norm_backward`] of rows on the calling thread, `g·x·rstd` added into `pw`.
fn rms_norm_backward_rows(x: &[f32], w: &[f32], rstd: &[f32], g: &[f32], dx: &mut [f32], pw: &mut [f32]) {
    let d = w.len();
    for (((dx, x), g), &rs) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)).zip(rstd) {
        // y = x·r·w with r = (mean(x²) + eps)^-1/2: dx = r·g·w − x·r³·mean(g·w·x).
        let s = lane_sum3(g, w, x, |g, w, x| g * w * x);
        for ((pw, &g), &x) in pw.iter_mut().zip(g).zip(x) {
            *pw += g * x * rs;
        }
        let m = s / d as f32 * rs * rs * rs;
        for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(w).zip(x) {
            *dx += rs * g * w - x * m;
        }
    }
}
}

/// RMSNorm's backward: `dx += ∂`, `dw += Σ g·x·rstd` (partials in chunk order).
pub fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let d = w.len();
    let rows = rows_per_task(d);
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d).zip(g.par_chunks(rows * d)))
        .zip(rstd.par_chunks(rows))
        .map(|((dx, (x, g)), rstd)| {
            let mut pw = vec![0f32; d];
            rms_norm_backward_rows(x, w, rstd, g, dx, &mut pw);
            pw
        })
        .collect();
    for pw in parts {
        super::add_slice(dw, &pw);
    }
}

/// Where one row's rotary tables start: `cos` / `sin` hold `[T, hd]` (every row at positions
/// 0..T) or `[B, T, hd]` (packed rows, each at its own positions).
fn table_row(tables: usize, t: usize, hd: usize, token: usize) -> usize {
    if tables == t * hd {
        (token % t) * hd
    } else {
        token * hd
    }
}

/// Rotates, in place, `heads` heads of `hd` values starting at column `col` of each token's
/// row (`row` values, `B·T` tokens): `x·cos + rotate_half(x)·sin` with `rotate_half(x)` =
/// `[−x₂, x₁]`, or with `inverse` the transposed rotation (the backward: `g·cos −
/// rotate_half(g)·sin` rearranged).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    row: usize,
    (col, heads, hd): (usize, usize, usize),
    (cos, sin): (&[f32], &[f32]),
    t: usize,
    inverse: bool,
) {
    let half = hd / 2;
    let per = rows_per_task(row);
    x.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(c, rows)| {
            for (i, r) in rows.chunks_mut(row).enumerate() {
                let at = table_row(cos.len(), t, hd, c * per + i);
                let (cs, sn) = (&cos[at..at + hd], &sin[at..at + hd]);
                for h in 0..heads {
                    let v = &mut r[col + h * hd..col + (h + 1) * hd];
                    for j in 0..half {
                        let (a, b) = (v[j], v[j + half]);
                        if inverse {
                            // dx₁ = g₁·cos + g₂·sin, dx₂ = g₂·cos − g₁·sin.
                            v[j] = a * cs[j] + b * sn[j + half];
                            v[j + half] = b * cs[j + half] - a * sn[j];
                        } else {
                            v[j] = a * cs[j] - b * sn[j];
                            v[j + half] = b * cs[j + half] + a * sn[j + half];
                        }
                    }
                }
            }
        });
}

/// `silu(x) = x / (1 + e^−x)`, as candle computes it.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `y = silu(gate) · up` from `gu` `[n, 2·inner]` (gate then up a row) into `y` `[n, inner]`.
pub fn swiglu(gu: &[f32], inner: usize, y: &mut [f32]) {
    let rows = rows_per_task(inner);
    y.par_chunks_mut(rows * inner)
        .zip(gu.par_chunks(rows * 2 * inner))
        .for_each(|(y, gu)| {
            for (y, gu) in y.chunks_mut(inner).zip(gu.chunks(2 * inner)) {
                let (g, u) = gu.split_at(inner);
                for i in 0..inner {
                    y[i] = silu(g[i]) * u[i];
                }
            }
        });
}

/// The backward of [`swiglu`]: from `dy` `[n, inner]`, overwrites `gu` with the gradients of
/// gate and up.
pub fn swiglu_backward(dy: &[f32], inner: usize, gu: &mut [f32]) {
    let rows = rows_per_task(inner);
    gu.par_chunks_mut(rows * 2 * inner)
        .zip(dy.par_chunks(rows * inner))
        .for_each(|(gu, dy)| {
            for (gu, dy) in gu.chunks_mut(2 * inner).zip(dy.chunks(inner)) {
                let (g, u) = gu.split_at_mut(inner);
                for i in 0..inner {
                    let s = 1.0 / (1.0 + (-g[i]).exp());
                    let a = g[i] * s;
                    let dg = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    u[i] = dy[i] * a;
                    g[i] = dg;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `grad` against central differences of `f` at `x`, entry by entry.
    fn check(what: &str, grad: &[f32], x: &[f32], f: impl Fn(&[f32]) -> f64) {
        let h = 1e-2f32;
        for i in 0..x.len() {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            let fd = (f(&a) - f(&b)) / (2.0 * h as f64);
            assert!(
                (grad[i] as f64 - fd).abs() < 2e-3,
                "{what} {i}: {} vs {fd}",
                grad[i]
            );
        }
    }

    /// Each kernel's backward against central differences of its forward, in f32 on values
    /// of order one (tolerances for f32 differences).
    #[test]
    fn backwards_match_differences_of_their_forwards() {
        let mut rng = crate::rng::NumpyPcg64::new(3);
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
                .collect()
        };
        let (n, d) = (3, 8);
        let (x, w, gy) = (rand(n * d), rand(d), rand(n * d));
        let f = |x: &[f32], w: &[f32]| -> f64 {
            let (mut y, mut r) = (vec![0f32; n * d], vec![0f32; n]);
            rms_norm(x, w, 1e-5, &mut y, &mut r);
            y.iter().zip(&gy).map(|(a, b)| (a * b) as f64).sum()
        };
        let (mut y, mut r) = (vec![0f32; n * d], vec![0f32; n]);
        rms_norm(&x, &w, 1e-5, &mut y, &mut r);
        let (mut dx, mut dw) = (vec![0f32; n * d], vec![0f32; d]);
        rms_norm_backward(&x, &w, &r, &gy, &mut dx, &mut dw);
        check("rms dx", &dx, &x, |x| f(x, &w));
        check("rms dw", &dw, &w, |w| f(&x, w));
        // The rotation's inverse is its transpose: <rope(x), g> = <x, rope⁻¹(g)>.
        let (t, hd, row) = (4, 4, 10);
        let angles: Vec<f32> = (0..t * hd)
            .map(|i| (i / hd * (i % 2 + 1)) as f32 * 0.3)
            .collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let (x, g) = (rand(2 * t * row), rand(2 * t * row));
        let (mut rx, mut rg) = (x.clone(), g.clone());
        rope(&mut rx, row, (1, 2, hd), (&cos, &sin), t, false);
        rope(&mut rg, row, (1, 2, hd), (&cos, &sin), t, true);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
        assert!((dot(&rx, &g) - dot(&x, &rg)).abs() < 1e-4);
        // Columns outside the rotated heads are untouched; a rotation keeps norms.
        for r in 0..2 * t {
            assert_eq!(rx[r * row], x[r * row]);
            assert_eq!(rx[r * row + 9], x[r * row + 9]);
        }
        assert!((dot(&rx, &rx) - dot(&x, &x)).abs() < 1e-4);
        // SwiGLU.
        let inner = 5;
        let (gu, dy) = (rand(n * 2 * inner), rand(n * inner));
        let f = |gu: &[f32]| -> f64 {
            let mut y = vec![0f32; n * inner];
            swiglu(gu, inner, &mut y);
            y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum()
        };
        let mut dgu = gu.clone();
        swiglu_backward(&dy, inner, &mut dgu);
        check("swiglu", &dgu, &gu, f);
    }
}
