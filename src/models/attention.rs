//! Scaled dot-product attention computed a few heads at a time, with its own backward.
//!
//! Composed from candle ops, attention keeps the scores and the softmax output (`[B, H, T, T]`
//! each) in the graph until the backward, and the backward adds their gradients: at 1 000
//! packed tokens and 32 heads that is 128 MiB per f32 tensor, more than the rest of a
//! recomputed layer. Here one op takes `q`, `k`, `v` and holds the (constant) additive bias;
//! the forward runs the same candle ops on a chunk of heads at a time and keeps only the output,
//! and the backward recomputes each chunk's softmax and forms its gradients before the next
//! chunk. No `[T, T]` tensor outlives its chunk, and none ever exists for more than
//! `SCORES_PER_CHUNK` scores at once. Every head is computed by exactly the ops of the composed
//! path (its matmuls, the fused softmax and its backward), so the values are those of the
//! composed path. CPU only (f32, bf16, f16); other devices keep the composed path.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::frozen::{plain, storage};

/// The most attention scores one chunk holds: 4 Mi f32 values, 16 MiB per `[h, T, T]` tensor.
const SCORES_PER_CHUNK: usize = 1 << 22;

/// Heads per chunk for `t` tokens: as many as fit `SCORES_PER_CHUNK`, at least one.
pub fn heads_per_chunk(t: usize, heads: usize) -> usize {
    (SCORES_PER_CHUNK / (t * t).max(1)).clamp(1, heads.max(1))
}

struct Chunked {
    /// `[B, 1, T, T]` (or broadcastable to `[B, H, T, T]` along the head axis).
    bias: Tensor,
    scale: f64,
    /// Heads per chunk (tests set a small one).
    chunk: usize,
}

/// The `(batch, first head, heads)` chunks of `[B, H, ..]`, never across a batch row (the
/// bias differs per row).
fn chunks(b: usize, h: usize, chunk: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for bi in 0..b {
        let mut h0 = 0;
        while h0 < h {
            let n = chunk.min(h - h0);
            out.push((bi, h0, n));
            h0 += n;
        }
    }
    out
}

impl Chunked {
    /// The bias for batch row `bi`, `[1, T, T]`.
    fn bias_row(&self, bi: usize) -> Result<Tensor> {
        let rows = self.bias.dim(0)?;
        let b = self.bias.narrow(0, if rows == 1 { 0 } else { bi }, 1)?;
        b.squeeze(0)
    }

    /// The softmax of one chunk's scores: what the composed path computes.
    fn probs(&self, q: &Tensor, k: &Tensor, bi: usize) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * self.scale)?.broadcast_add(&self.bias_row(bi)?)?;
        super::ops::softmax(&scores)
    }

    /// Runs `f` on each chunk of the `[B, H, T, d]` tensors `xs`, each chunk `[n, T, d]`, and
    /// concatenates the results of each output back to `[B, H, T, d]`.
    fn per_chunk(
        &self,
        xs: &[&Tensor],
        outs: usize,
        f: impl Fn(&[Tensor], usize) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let (b, h, t, d) = xs[0].dims4()?;
        let flat: Vec<Tensor> = xs
            .iter()
            .map(|x| x.contiguous()?.reshape((b * h, t, d)))
            .collect::<Result<_>>()?;
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); outs];
        for (bi, h0, n) in chunks(b, h, self.chunk) {
            let args: Vec<Tensor> = flat
                .iter()
                .map(|x| x.narrow(0, bi * h + h0, n))
                .collect::<Result<_>>()?;
            for (part, y) in parts.iter_mut().zip(f(&args, bi)?) {
                part.push(y);
            }
        }
        parts
            .into_iter()
            .map(|p| Tensor::cat(&p, 0)?.reshape((b, h, t, d)))
            .collect()
    }
}

impl CustomOp3 for Chunked {
    fn name(&self) -> &'static str {
        "chunked-attention"
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
        let op = self.name();
        let (q, k, v) = (plain(s1, l1, op)?, plain(s2, l2, op)?, plain(s3, l3, op)?);
        let y = self.per_chunk(&[&q, &k, &v], 1, |a, bi| {
            Ok(vec![self.probs(&a[0], &a[1], bi)?.matmul(&a[2])?])
        })?;
        Ok((storage(&y[0], op)?, q.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let g = grad.detach().to_dtype(q.dtype())?;
        let grads = self.per_chunk(&[&q, &k, &v, &g], 3, |a, bi| {
            let (q, k, v, g) = (&a[0], &a[1], &a[2], &a[3]);
            let p = self.probs(q, k, bi)?;
            // The composed path's backward, op by op: y = p·v, p = softmax(s),
            // s = q·kᵀ·scale + bias.
            let dv = p.t()?.matmul(g)?;
            let dp = g.matmul(&v.t()?)?;
            let ds = (super::fused::softmax_backward(&p, &dp)? * self.scale)?;
            let dq = ds.matmul(k)?;
            let dk = q.t()?.matmul(&ds)?.t()?;
            Ok(vec![dq, dk, dv])
        })?;
        let mut it = grads.into_iter();
        Ok((it.next(), it.next(), it.next()))
    }
}

/// Whether the chunked op applies: CPU tensors of one float dtype.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> bool {
    [q, k, v, bias].iter().all(|t| t.device().is_cpu())
        && q.dtype() == k.dtype()
        && q.dtype() == v.dtype()
        && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// `softmax(q kᵀ · scale + bias) v` over `[B, H, T, d]` tensors, `chunk` heads at a time (by
/// default as many as `SCORES_PER_CHUNK` allows). The bias is a constant: it gets no gradient.
pub fn chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    chunk: Option<usize>,
) -> Result<Tensor> {
    let (_, h, t, _) = q.dims4()?;
    let bias = bias.to_dtype(q.dtype())?;
    let op = Chunked {
        bias,
        scale,
        chunk: chunk.unwrap_or_else(|| heads_per_chunk(t, h)).max(1),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Composed attention (the reference): candle ops, autograd backward.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Tensor {
        let s = ((q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap())
            .broadcast_add(&bias.to_dtype(q.dtype()).unwrap())
            .unwrap();
        super::super::ops::softmax(&s).unwrap().matmul(v).unwrap()
    }

    #[test]
    fn chunks_give_the_composed_values_and_gradients() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 5, 7, 4);
        let mask = vec![vec![1u32; t], {
            let mut m = vec![1u32; t];
            m[0] = 0;
            m[1] = 0;
            m
        }];
        let bias = super::super::ops::attention_bias(&mask, None, &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let var = |seed: u64| {
                let x = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
                let x = (x + seed as f64 * 0.01).unwrap().to_dtype(dtype).unwrap();
                Var::from_tensor(&x).unwrap()
            };
            let (q, k, v) = (var(1), var(2), var(3));
            let w = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = composed(&q, &k, &v, &bias, 0.5);
            let want_g = (&want * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for chunk in [1, 2, 5] {
                let got = chunked(&q, &k, &v, &bias, 0.5, Some(chunk)).unwrap();
                assert_eq!(
                    max_diff(&got, &want),
                    0.0,
                    "{dtype:?} chunk {chunk} forward"
                );
                let got_g = (&got * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let tol = if dtype == DType::F32 { 1e-6 } else { 2e-2 };
                for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                    let (a, e) = (got_g.get(x).unwrap(), want_g.get(x).unwrap());
                    let diff = max_diff(a, e);
                    assert!(diff <= tol, "{dtype:?} chunk {chunk} d{name}: {diff}");
                }
            }
        }
    }

    #[test]
    fn heads_per_chunk_bounds_the_scores() {
        assert_eq!(heads_per_chunk(1024, 32), 4);
        assert_eq!(heads_per_chunk(16, 12), 12);
        assert_eq!(heads_per_chunk(4096, 32), 1);
    }
}
