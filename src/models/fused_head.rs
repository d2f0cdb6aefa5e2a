//! The LM head and the token log-probs as one CPU op: `log softmax(x Wᵀ)[target]` for hidden
//! states `x` `[n, d]` and the head `W` `[V, d]`, forward and backward, without a `[n, V]`
//! logits tensor.
//!
//! Composed, this is candle's matmul (which packs the whole `[V, d]` head into `gemm`'s layout
//! at every call: 150 MB for GPT-2's vocabulary, per chunk of tokens), a log-softmax pass and
//! a gather, and backward the same again plus the gradient sums. Here the vocabulary goes in
//! blocks of [`VOCAB_BLOCK`] entries: each block's logits for a block of rows are one product
//! straight into `gemm`, and each row keeps a running max and sum of exponentials (the online
//! log-sum-exp), so a head block is packed once per row block and the largest buffer is
//! `[ROW_BLOCK, VOCAB_BLOCK]`. The op keeps each row's log-sum-exp for its backward, which
//! recomputes a block's logits and turns them into the gradients of `x` and `W` in place.
//!
//! The composed path (chunked, in `head`) stays for other devices and dtypes and is the
//! oracle the tests compare this one with.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{input, neg_softmax_in_place, row_max, rows_per_task, sum_exp, with_f32};
use super::kernels::{mm, Mat};

/// Vocabulary entries a block.
const VOCAB_BLOCK: usize = 4096;
/// Rows a block: with [`VOCAB_BLOCK`], 16 MiB of f32 logits at once.
const ROW_BLOCK: usize = 1024;

/// Whether the op applies: f32 hidden states and head on the CPU.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    super::fused::applies(&[x, w]) && x.rank() == 2 && w.rank() == 2
}

/// `log softmax(x Wᵀ)[targets]` `[n]` for `x` `[n, d]`, `w` `[V, d]` and `targets` (ids below
/// `V`); differentiable in `x` and, when it is a variable, `w`.
pub fn logprobs(x: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let (v, dw) = w.dims2()?;
    if dw != d || targets.len() != n {
        candle_core::bail!(
            "lm-head log-probs: hidden {:?}, head {:?}, {} targets",
            x.dims(),
            w.dims(),
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("lm-head log-probs: target id {t} outside the vocabulary of {v}");
    }
    let op = HeadLogprob {
        targets: targets.iter().map(|&t| t as usize).collect(),
        stats: Mutex::new(Vec::new()),
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct HeadLogprob {
    targets: Vec<usize>,
    /// Each row's max logit and log Σ exp(logit − max), set by the forward.
    stats: Mutex<Vec<(f32, f32)>>,
}

/// The blocks `(start, len)` of `0..n` of `size` each (the last shorter).
fn spans(n: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(size.max(1))
        .map(move |s| (s, size.min(n - s)))
}

/// Logits of rows `x` `[r, d]` against head rows `w` `[vb, d]` into `out` `[r, vb]`.
fn block_logits(x: &[f32], w: &[f32], d: usize, out: &mut [f32]) {
    let (r, vb) = (x.len() / d, w.len() / d);
    mm(
        out,
        vb,
        (r, vb, d),
        Mat::rows(x, d),
        Mat::rows(w, d).t(),
        1.0,
        false,
    );
}

impl CustomOp2 for HeadLogprob {
    fn name(&self) -> &'static str {
        "lm-head-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "lm-head log-probs";
        let (x, w) = (input(s1, l1, op)?, input(s2, l2, op)?);
        let d = l1.dims()[1];
        let (n, v) = (x.len() / d.max(1), w.len() / d.max(1));
        let mut out = vec![0f32; n];
        let mut stats = vec![(0f32, 0f32); n];
        let mut logits = vec![0f32; ROW_BLOCK.min(n) * VOCAB_BLOCK.min(v)];
        for (r0, r) in spans(n, ROW_BLOCK) {
            // Running max and Σ exp(l − max) a row, and its target's logit.
            let mut run = vec![(f32::NEG_INFINITY, 0f32, 0f32); r];
            for (v0, vb) in spans(v, VOCAB_BLOCK) {
                let l = &mut logits[..r * vb];
                block_logits(&x[r0 * d..(r0 + r) * d], &w[v0 * d..(v0 + vb) * d], d, l);
                let per = rows_per_task(vb);
                l.par_chunks(per * vb)
                    .zip(run.par_chunks_mut(per))
                    .enumerate()
                    .for_each(|(c, (rows, run))| {
                        for (i, (row, (m, s, tl))) in rows.chunks(vb).zip(run).enumerate() {
                            let t = self.targets[r0 + c * per + i];
                            if (v0..v0 + vb).contains(&t) {
                                *tl = row[t - v0];
                            }
                            let bm = row_max(row);
                            if bm > *m {
                                // Earlier blocks' sum, rescaled to the new max.
                                *s *= (*m - bm).exp();
                                *m = bm;
                            }
                            *s += sum_exp(row, *m);
                        }
                    });
            }
            for (i, (m, s, tl)) in run.into_iter().enumerate() {
                let lse = s.ln();
                out[r0 + i] = tl - m - lse;
                stats[r0 + i] = (m, lse);
            }
        }
        *self.stats.lock().expect("stats lock") = stats;
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = x.dims2()?;
        let v = w.dim(0)?;
        let stats = std::mem::take(&mut *self.stats.lock().expect("stats lock"));
        if stats.len() != n {
            candle_core::bail!("lm-head log-probs: backward without its forward");
        }
        let g = grad.contiguous()?.to_vec1::<f32>()?;
        // A frozen head gets no gradient: its product is a third of the backward.
        let head_grad = w.is_variable();
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(w, |wv| Ok(self.backward(xs, wv, d, &stats, &g, head_grad)))
        })?;
        let dx = Tensor::from_vec(dx, (n, d), x.device())?;
        let dw = if head_grad {
            Some(Tensor::from_vec(dw, (v, d), w.device())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

impl HeadLogprob {
    /// The gradients of `x` and (with `head_grad`; else empty) of `w`, from each row's
    /// statistics and the gradient `g` of its log-prob.
    fn backward(
        &self,
        xs: &[f32],
        wv: &[f32],
        d: usize,
        stats: &[(f32, f32)],
        g: &[f32],
        head_grad: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let (n, v) = (xs.len() / d, wv.len() / d);
        let mut dx = vec![0f32; n * d];
        let mut dw = if head_grad {
            vec![0f32; v * d]
        } else {
            Vec::new()
        };
        let mut dl = vec![0f32; ROW_BLOCK.min(n) * VOCAB_BLOCK.min(v)];
        for (r0, r) in spans(n, ROW_BLOCK) {
            let xr = &xs[r0 * d..(r0 + r) * d];
            for (v0, vb) in spans(v, VOCAB_BLOCK) {
                let wb = &wv[v0 * d..(v0 + vb) * d];
                let l = &mut dl[..r * vb];
                block_logits(xr, wb, d, l);
                // d/dl_j of (l_t − lse) = 1[j = t] − softmax_j, times the row's gradient.
                let per = rows_per_task(vb);
                l.par_chunks_mut(per * vb)
                    .enumerate()
                    .for_each(|(c, rows)| {
                        for (i, row) in rows.chunks_mut(vb).enumerate() {
                            let k = r0 + c * per + i;
                            let gk = g[k];
                            if gk == 0.0 {
                                row.fill(0.0);
                                continue;
                            }
                            let (m, lse) = stats[k];
                            neg_softmax_in_place(row, m, lse, gk);
                            let t = self.targets[k];
                            if (v0..v0 + vb).contains(&t) {
                                row[t - v0] += gk;
                            }
                        }
                    });
                let dlm = Mat::rows(l, vb);
                mm(
                    &mut dx[r0 * d..(r0 + r) * d],
                    d,
                    (r, d, vb),
                    dlm,
                    Mat::rows(wb, d),
                    1.0,
                    true,
                );
                if head_grad {
                    mm(
                        &mut dw[v0 * d..(v0 + vb) * d],
                        d,
                        (vb, d, r),
                        dlm.t(),
                        Mat::rows(xr, d),
                        1.0,
                        true,
                    );
                }
            }
        }
        (dx, dw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{max_abs_diff, ops};
    use candle_core::{Device, Var, D};

    fn rand(shape: (usize, usize), seed: u64, scale: f32) -> Tensor {
        let mut rng = crate::rng::NumpyPcg64::new(seed);
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The composed ops: product, log-softmax, gather.
    fn composed(x: &Tensor, w: &Tensor, t: &[u32]) -> Tensor {
        let l = ops::linear(x, w, None).unwrap();
        let t = Tensor::new(t, &Device::Cpu).unwrap();
        ops::log_softmax(&l)
            .unwrap()
            .gather(&t.unsqueeze(D::Minus1).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(D::Minus1)
            .unwrap()
    }

    /// Values and both gradients against the composed ops, over several vocabulary and row
    /// blocks (the last of each partial), with a row whose gradient is zero; and a head that
    /// is not a variable gets no gradient.
    #[test]
    fn matches_the_composed_ops_across_blocks() {
        let (n, d, v) = (ROW_BLOCK + 37, 24, 2 * VOCAB_BLOCK + 301);
        let x = Var::from_tensor(&rand((n, d), 1, 2.0)).unwrap();
        let w = Var::from_tensor(&rand((v, d), 2, 2.0)).unwrap();
        let t: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let mut gw: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) * 0.3).collect();
        gw[3] = 0.0;
        let gw = Tensor::from_vec(gw, n, &Device::Cpu).unwrap();
        let run = |fused: bool| {
            let lp = if fused {
                logprobs(x.as_tensor(), w.as_tensor(), &t).unwrap()
            } else {
                composed(x.as_tensor(), w.as_tensor(), &t)
            };
            let g = (&lp * &gw).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = g.get(x.as_tensor()).unwrap().clone();
            let dw = g.get(w.as_tensor()).unwrap().clone();
            (lp, dx, dw)
        };
        let (a, b) = (run(false), run(true));
        assert!(
            max_abs_diff(&a.0, &b.0) < 2e-5,
            "{}",
            max_abs_diff(&a.0, &b.0)
        );
        assert!(
            max_abs_diff(&a.1, &b.1) < 2e-5,
            "{}",
            max_abs_diff(&a.1, &b.1)
        );
        assert!(
            max_abs_diff(&a.2, &b.2) < 2e-5,
            "{}",
            max_abs_diff(&a.2, &b.2)
        );
        // A frozen head: the hidden states' gradient only.
        let frozen = w.as_tensor().detach();
        let lp = logprobs(x.as_tensor(), &frozen, &t).unwrap();
        let g = lp.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&frozen).is_none());
        assert!(g.get(x.as_tensor()).is_some());
    }

    #[test]
    fn bad_targets_are_refused() {
        let (x, w) = (rand((2, 4), 1, 1.0), rand((5, 4), 2, 1.0));
        let e = logprobs(&x, &w, &[1, 5]).unwrap_err().to_string();
        assert!(e.contains("target id 5"), "{e}");
        assert!(logprobs(&x, &w, &[1]).is_err());
    }
}
