//! Blockwise attention of the owned engine, forward and backward, over packed `q | k | v` rows.
//!
//! Queries go in blocks of [`QUERY_BLOCK`] rows (a sequence of up to [`WHOLE`] tokens is one
//! block); a block reads only the span of keys that one of its queries sees under the additive
//! bias (below the diagonal for a causal mask, after the window's start for a sliding one), so
//! a causal layer does a little over half the products and exponentials of the full `[T, T]`
//! scores. A block's scores live in a `[block, T]` scratch; only each query's log-sum-exp outlives the head, and the backward recomputes the
//! probabilities from it.

use rayon::prelude::*;

use super::super::fused::{exp_fast, exp_in_place, row_max, scale_in_place};
use super::{mm_raw, Mat, Out};
use crate::simd::dispatch;

/// Query rows a block. 64 keeps the skipped triangle fine-grained (a causal `T = 256` does 62%
/// of the full products) while each block's products stay large enough for `gemm` (at 32, a
/// GPT-2-small layer's attention took 20% longer).
const QUERY_BLOCK: usize = 64;

/// Rows of a whole sequence up to which it is one block: below that, a block's products are
/// too small for `gemm` to run well and its call overhead dominates (tiny models: head size
/// 16, sequences of 64-104 tokens), so the skipped triangle is not worth more calls.
const WHOLE: usize = 128;

/// Query rows a block for sequences of `t` tokens.
fn qblock(t: usize) -> usize {
    if t <= WHOLE {
        t.max(1)
    } else {
        QUERY_BLOCK
    }
}

/// A bias at or below this masks its key. The masks put -1e9 there; a skipped key's
/// probability would be `exp(-1e9 + score - max)`, zero in f32.
const MASKED: f32 = -1e6;

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

/// Batch row `bi`'s `[T, T]` of the additive bias `[B or 1, T, T]` (one row broadcasts).
fn bias_row(bias: &[f32], t: usize, bi: usize) -> &[f32] {
    let r = if bias.len() == t * t { 0 } else { bi };
    &bias[r * t * t..(r + 1) * t * t]
}

/// For each bias row and each block of queries, the keys `[lo, hi)` some query of the block
/// sees. A query that sees no key keeps every key (the composed softmax spreads it uniformly
/// over the masked row), so its block keeps the full span.
struct Spans {
    /// Query rows a block, and blocks a batch row.
    qb: usize,
    blocks: usize,
    v: Vec<(usize, usize)>,
}

impl Spans {
    fn new(bias: &[f32], t: usize, qb: usize) -> Spans {
        let rows = bias.len() / (t * t);
        let blocks = t.div_ceil(qb);
        let mut v = Vec::with_capacity(rows * blocks);
        for r in 0..rows {
            let b = bias_row(bias, t, r);
            for blk in 0..blocks {
                let (mut lo, mut hi) = (t, 0);
                for i in blk * qb..((blk + 1) * qb).min(t) {
                    let q = &b[i * t..(i + 1) * t];
                    match q.iter().position(|&x| x > MASKED) {
                        Some(first) => {
                            let last = q.iter().rposition(|&x| x > MASKED).unwrap_or(first);
                            lo = lo.min(first);
                            hi = hi.max(last + 1);
                        }
                        None => (lo, hi) = (0, t),
                    }
                }
                v.push((lo, hi));
            }
        }
        Spans { qb, blocks, v }
    }

    /// The spans of batch row `bi`'s blocks (one bias row broadcasts).
    fn of(&self, bi: usize) -> &[(usize, usize)] {
        let r = if self.v.len() == self.blocks { 0 } else { bi };
        &self.v[r * self.blocks..(r + 1) * self.blocks]
    }
}

/// Softmax of one row of scores in place; returns its log-sum-exp.
fn normalise(row: &mut [f32]) -> f32 {
    let max = row_max(row);
    let sum = exp_in_place(row, max);
    scale_in_place(row, 1.0 / sum);
    max + sum.ln()
}

dispatch! {
/// `o = o · scale + b` over a row of scores.
fn scale_add(o: &mut [f32], b: &[f32], scale: f32) {
    o.iter_mut().zip(b).for_each(|(v, b)| *v = *v * scale + b);
}
}

dispatch! {
/// `r = exp(r − l)` over a row: probabilities again from scores and the log-sum-exp.
fn exp_shifted(r: &mut [f32], l: f32) {
    r.iter_mut().for_each(|v| *v = exp_fast(*v - l));
}
}

dispatch! {
/// `dr = p ∘ (dr − di)` over a row: the softmax's backward.
fn softmax_grad(dr: &mut [f32], p: &[f32], di: f32) {
    dr.iter_mut().zip(p).for_each(|(g, p)| *g = p * (*g - di));
}
}

/// One block of queries `[r0, r0 + m)` against keys `[c0, c0 + n)`.
#[derive(Clone, Copy)]
struct Block {
    r0: usize,
    m: usize,
    c0: usize,
    n: usize,
}

/// The blocks of batch row `bi`.
fn blocks(spans: &Spans, bi: usize, t: usize) -> impl Iterator<Item = Block> + '_ {
    let qb = spans.qb;
    spans.of(bi).iter().enumerate().map(move |(i, &(c0, c1))| {
        let r0 = i * qb;
        Block {
            r0,
            m: qb.min(t - r0),
            c0,
            n: c1 - c0,
        }
    })
}

/// `scale · q kᵀ + bias` of one block of head `hi` of batch row `bi`, into `out` `[m, n]`.
#[allow(clippy::too_many_arguments)]
fn scores(
    qkv: &[f32],
    bias: &[f32],
    s: Heads,
    (bi, hi): (usize, usize),
    blk: Block,
    scale: f32,
    out: &mut [f32],
) {
    let (t, row) = (s.t, s.row());
    let (oq, ok, _) = s.offsets(hi);
    let base = bi * t * row;
    let q = Mat::rows(qkv, row).at(base + blk.r0 * row + oq);
    let k = Mat::rows(qkv, row).at(base + blk.c0 * row + ok).t();
    let out = &mut out[..blk.m * blk.n];
    // SAFETY: `out` is this task's own scratch, `[m, n]` at stride `n`.
    unsafe {
        mm_raw(
            Out(out.as_mut_ptr()),
            blk.n,
            (blk.m, blk.n, s.hd),
            q,
            k,
            1.0,
            false,
            true,
        )
    };
    let b = bias_row(bias, t, bi);
    // Scaled after the product, as the composed path: (q kᵀ) · scale + bias.
    for (i, o) in out.chunks_mut(blk.n).enumerate() {
        scale_add(o, &b[(blk.r0 + i) * t + blk.c0..][..blk.n], scale);
    }
}

/// Scaled dot-product attention of every head of `qkv` (`[B·T, (H + 2·KV)·hd]`, queries then
/// keys then values, heads contiguous) under the additive `bias` (`[B or 1, T, T]`) into `out`
/// `[B·T, H·hd]`. One head of one row a task, blockwise (module doc). Keeps each query's
/// log-sum-exp `lse` `[B, H, T]` so the backward can recompute the probabilities.
pub fn attention(
    qkv: &[f32],
    bias: &[f32],
    s: Heads,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let spans = Spans::new(bias, s.t, qblock(s.t));
    attention_in(&spans, qkv, bias, s, scale, out, lse)
}

/// [`attention`] in the blocks of `spans`.
fn attention_in(
    spans: &Spans,
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
        || vec![0f32; spans.qb * t],
        |p, (idx, lse)| {
            let (bi, hi) = (idx / s.h, idx % s.h);
            let (_, _, ov) = s.offsets(hi);
            for blk in blocks(spans, bi, t) {
                scores(qkv, bias, s, (bi, hi), blk, scale, p);
                let p = &mut p[..blk.m * blk.n];
                for (row, l) in p.chunks_mut(blk.n).zip(&mut lse[blk.r0..]) {
                    *l = normalise(row);
                }
                let v = Mat::rows(qkv, s.row()).at((bi * t + blk.c0) * s.row() + ov);
                // SAFETY: head `hi` of row `bi` owns these `[m, hd]` elements of `out`.
                unsafe {
                    let o = Out(dst.ptr().add((bi * t + blk.r0) * d + hi * s.hd));
                    let p = Mat::rows(p, blk.n);
                    mm_raw(o, d, (blk.m, s.hd, blk.n), p, v, 1.0, false, true);
                }
            }
        },
    );
}

/// The backward of [`attention`]: from the output's gradient `dout`, the gradient of `qkv`
/// into `dqkv` (overwritten; with key-value groups, the heads of a group add into it).
/// Recomputes each block's probabilities from `q`, `k` and the kept log-sum-exp.
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
    let spans = Spans::new(bias, s.t, qblock(s.t));
    attention_backward_in(&spans, qkv, bias, s, scale, (out, lse), dout, dqkv)
}

/// [`attention_backward`] in the blocks of `spans`.
#[allow(clippy::too_many_arguments)]
fn attention_backward_in(
    spans: &Spans,
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
        || (vec![0f32; spans.qb * t], vec![0f32; spans.qb * t]),
        |(p, dp), idx| {
            let (bi, g) = (idx / s.kv, idx % s.kv);
            let base = bi * t * row;
            let (_, ok, ov) = s.offsets(g * group);
            // SAFETY: this task owns head group `g` of row `bi`: the q block of each of its
            // heads and its shared k and v blocks. Keys no query sees get no gradient but zero.
            unsafe {
                for i in 0..t {
                    for off in [ok, ov] {
                        std::slice::from_raw_parts_mut(dst.ptr().add(base + i * row + off), s.hd)
                            .fill(0.0);
                    }
                }
            }
            for hi in g * group..(g + 1) * group {
                let (oq, ok, ov) = s.offsets(hi);
                let lse = &lse[(bi * s.h + hi) * t..][..t];
                for blk in blocks(spans, bi, t) {
                    let (m, n) = (blk.m, blk.n);
                    scores(qkv, bias, s, (bi, hi), blk, scale, p);
                    let (p, dp) = (&mut p[..m * n], &mut dp[..m * n]);
                    for (r, &l) in p.chunks_mut(n).zip(&lse[blk.r0..]) {
                        if l > MASKED {
                            exp_shifted(r, l);
                        } else {
                            // A query that sees no key: every score is the mask's -1e9, and
                            // `ln(sum)` vanishes in its rounding (-1e9 + ln T is -1e9 in f32),
                            // so `exp(s - lse)` would give 1 instead of 1/T. Normalise the row
                            // itself, as the forward did.
                            normalise(r);
                        }
                    }
                    let o_off = (bi * t + blk.r0) * d + hi * s.hd;
                    let dout_h = Mat::rows(dout, d).at(o_off);
                    let kv_base = base + blk.c0 * row;
                    let v = Mat::rows(qkv, row).at(kv_base + ov);
                    // SAFETY: `dp` is this task's scratch; the destinations below belong to
                    // this task's head group (see above).
                    unsafe {
                        // dP = dO · Vᵀ
                        let dpo = Out(dp.as_mut_ptr());
                        mm_raw(dpo, n, (m, n, s.hd), dout_h, v.t(), 1.0, false, true);
                    }
                    // dS = P ∘ (dP − rowsum(dO ∘ O)), rowsum(P ∘ dP) being rowsum(dO ∘ O).
                    for i in 0..m {
                        let o = &out[o_off + i * d..][..s.hd];
                        let go = &dout[o_off + i * d..][..s.hd];
                        let di: f32 = o.iter().zip(go).map(|(a, b)| a * b).sum();
                        let (pr, dr) = (&p[i * n..][..n], &mut dp[i * n..][..n]);
                        softmax_grad(dr, pr, di);
                    }
                    let (p, dp) = (Mat::rows(p, n), Mat::rows(dp, n));
                    unsafe {
                        // dV += Pᵀ · dO
                        let dv = Out(dst.ptr().add(kv_base + ov));
                        mm_raw(dv, row, (n, s.hd, m), p.t(), dout_h, 1.0, true, true);
                        // dQ = scale · dS · K
                        let k = Mat::rows(qkv, row).at(kv_base + ok);
                        let dq = Out(dst.ptr().add(base + blk.r0 * row + oq));
                        mm_raw(dq, row, (m, s.hd, n), dp, k, scale, false, true);
                        // dK += scale · dSᵀ · Q
                        let q = Mat::rows(qkv, row).at(base + blk.r0 * row + oq);
                        let dk = Out(dst.ptr().add(kv_base + ok));
                        mm_raw(dk, row, (n, s.hd, m), dp.t(), q, scale, true, true);
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in f64, the plain way: every score, every key.
    fn naive(qkv: &[f64], bias: &[f32], s: Heads, scale: f64) -> Vec<f64> {
        let (t, row, d) = (s.t, s.row(), s.h * s.hd);
        let mut out = vec![0f64; s.b * t * d];
        for bi in 0..s.b {
            let b = bias_row(bias, t, bi);
            for hi in 0..s.h {
                let (oq, ok, ov) = s.offsets(hi);
                for i in 0..t {
                    let q = &qkv[(bi * t + i) * row + oq..][..s.hd];
                    let blind = b[i * t..(i + 1) * t].iter().all(|&x| x <= MASKED);
                    let sc: Vec<f64> = (0..t)
                        .map(|j| {
                            if blind {
                                // f32 loses the scores beside -1e9: the row is uniform.
                                return 0.0;
                            }
                            let k = &qkv[(bi * t + j) * row + ok..][..s.hd];
                            let dot: f64 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                            dot * scale + b[i * t + j] as f64
                        })
                        .collect();
                    let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, e) in e.iter().enumerate() {
                        let v = &qkv[(bi * t + j) * row + ov..][..s.hd];
                        for c in 0..s.hd {
                            out[(bi * t + i) * d + hi * s.hd + c] += e / z * v[c];
                        }
                    }
                }
            }
        }
        out
    }

    /// Batch row 0: causal with the last 3 keys padding (the last query sees nothing at all);
    /// row 1: a shared prefix of 10 and two branches that do not see each other, and a window.
    fn bias(t: usize) -> Vec<f32> {
        let mut b = vec![-1e9f32; 2 * t * t];
        for i in 0..t - 1 {
            for j in 0..=i.min(t - 4) {
                b[i * t + j] = 0.0;
            }
        }
        let branch = |i: usize| {
            if i < 10 {
                0
            } else if i < 25 {
                1
            } else {
                2
            }
        };
        for i in 0..t {
            for j in 0..=i {
                if (branch(j) == 0 || branch(j) == branch(i)) && i - j < 30 {
                    b[t * t + i * t + j] = 0.0;
                }
            }
        }
        b
    }

    #[test]
    fn blocks_skip_only_masked_keys_forward_and_backward() {
        let s = Heads {
            b: 2,
            t: 40, // one full block of queries and a ragged one
            h: 2,
            kv: 1,
            hd: 4,
        };
        let scale = 0.5;
        let n = s.b * s.t * s.row();
        let mut rng = crate::rng::NumpyPcg64::new(7);
        let mut rand = || ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        let qkv: Vec<f32> = (0..n).map(|_| 2.0 * rand()).collect();
        let bias = bias(s.t);
        // The blind query's output (uniform over masked keys) does not enter the loss.
        let d = s.h * s.hd;
        let w: Vec<f32> = (0..s.b * s.t * d)
            .map(|i| if i / d == s.t - 1 { 0.0 } else { rand() })
            .collect();
        let q64: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        let want = naive(&q64, &bias, s, scale as f64);
        // Blocks of 32 queries (one full, one ragged), and the whole sequence as one block
        // (what a sequence this short gets): the same values and gradients.
        let mut runs = Vec::new();
        for qb in [32, qblock(s.t)] {
            let spans = Spans::new(&bias, s.t, qb);
            let mut out = vec![0f32; w.len()];
            let mut lse = vec![0f32; s.b * s.h * s.t];
            attention_in(&spans, &qkv, &bias, s, scale, &mut out, &mut lse);
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "blocks of {qb}: forward {a} vs {b}"
                );
            }
            let mut dqkv = vec![f32::NAN; n];
            let io = (&out[..], &lse[..]);
            attention_backward_in(&spans, &qkv, &bias, s, scale, io, &w, &mut dqkv);
            runs.push(dqkv);
        }
        assert_eq!(qblock(s.t), s.t);
        for (a, b) in runs[0].iter().zip(&runs[1]) {
            assert!((a - b).abs() < 1e-5, "gradient by block size: {a} vs {b}");
        }
        // The gradient of Σ w ∘ out against central differences of the f64 attention.
        let dqkv = &runs[0];
        let loss = |x: &[f64]| -> f64 {
            let o = naive(x, &bias, s, scale as f64);
            o.iter().zip(&w).map(|(o, &w)| o * w as f64).sum()
        };
        let mut x = q64.clone();
        for i in 0..n {
            let h = 1e-5;
            x[i] = q64[i] + h;
            let up = loss(&x);
            x[i] = q64[i] - h;
            let down = loss(&x);
            x[i] = q64[i];
            let fd = (up - down) / (2.0 * h);
            assert!(
                (dqkv[i] as f64 - fd).abs() < 1e-4,
                "gradient {i}: {} vs {fd}",
                dqkv[i]
            );
        }
    }

    /// The blind query (row 0's last, every key masked) is uniform over every key in the
    /// forward, and its backward recomputes those probabilities, not `exp(s - lse)` (1 each,
    /// since `lse` rounds into the mask): its output's gradient reaches each key's value as
    /// `1 / T` of it, summed over the group's heads.
    #[test]
    fn a_query_that_sees_no_key_is_uniform_both_ways() {
        let s = Heads {
            b: 2,
            t: 40,
            h: 2,
            kv: 1,
            hd: 4,
        };
        let n = s.b * s.t * s.row();
        let qkv: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5)
            .collect();
        let bias = bias(s.t);
        let d = s.h * s.hd;
        let blind = (s.t - 1) * d;
        let w: Vec<f32> = (0..s.b * s.t * d)
            .map(|i| {
                if (blind..blind + d).contains(&i) {
                    1.0 + i as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mut out = vec![0f32; w.len()];
        let mut lse = vec![0f32; s.b * s.h * s.t];
        attention(&qkv, &bias, s, 0.5, &mut out, &mut lse);
        let mut dqkv = vec![f32::NAN; n];
        attention_backward(&qkv, &bias, s, 0.5, (&out, &lse), &w, &mut dqkv);
        let (_, _, ov) = s.offsets(0);
        for j in 0..s.t {
            for c in 0..s.hd {
                let want = (w[blind + c] + w[blind + s.hd + c]) / s.t as f32;
                let got = dqkv[j * s.row() + ov + c];
                assert!(
                    (got - want).abs() < 1e-5,
                    "key {j} value {c}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn spans_cover_what_each_block_sees() {
        let t = 40;
        let b = bias(t);
        let spans = Spans::new(&b, t, 32);
        // Row 0: the first block sees keys 0..32, the second has the blind last query: all.
        assert_eq!(spans.of(0), &[(0, 32), (0, 40)]);
        // Row 1: the window starts at query 32 - 29 = 3 for the second block.
        assert_eq!(spans.of(1), &[(0, 32), (3, 40)]);
    }
}
