//! Differentiable building blocks, composed from candle primitives that all have a backward
//! pass. candle's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `rope*` have none and
//! fail silently (the gradient is just missing), so none of them is used here; the tests in
//! this file check every op against finite differences.

use candle_core::{DType, Device, Result, Tensor, D};

/// Whether `x` is half precision: norms and softmax then compute in f32.
fn half(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::BF16 | DType::F16)
}

/// `x @ w^T + b` for `x` of any rank (PyTorch `nn.Linear` layout: `w` is `[out, in]`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = super::frozen::project(x, w, true)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x @ w + b` (GPT-2's `Conv1D` layout: `w` is `[in, out]`).
pub fn conv1d(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = super::frozen::project(x, w, false)?;
    y.broadcast_add(b)
}

/// Layer norm over the last dimension (biased variance, as PyTorch). Fused on the CPU in f32
/// (ours, with a backward); without a gradient elsewhere, candle-nn's fused kernel.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if super::fused::applies(&[x, w, b]) {
        return super::fused::layer_norm(x, w, b, eps);
    }
    if super::cuda_kernels::applies(&[x, w, b]) {
        return super::cuda_kernels::layer_norm(x, w, b, eps);
    }
    if inference(&[x, w, b]) {
        return candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32);
    }
    layer_norm_composed(x, w, b, eps)
}

/// Whether candle-nn's fused kernels may serve an op: they have CPU and CUDA forms in f32, bf16
/// and f16, one pass each (the composed forms launch five to eight kernels on a GPU), but no
/// backward, so only where no operand needs a gradient (a frozen model's scoring and
/// weak-labelling), and only with every operand in one of those dtypes.
fn inference(ts: &[&Tensor]) -> bool {
    let kernel_dtype = matches!(ts[0].dtype(), DType::F32 | DType::BF16 | DType::F16);
    kernel_dtype
        && ts
            .iter()
            .all(|t| !t.track_op() && t.dtype() == ts[0].dtype())
}

/// Layer norm from candle primitives (CUDA, half precision; the fused kernel's check). In
/// half precision it computes in f32 and returns the input's dtype, as PyTorch's kernels do.
pub fn layer_norm_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if half(x) {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return layer_norm_composed(&f(x)?, &f(w)?, &f(b)?, eps)?.to_dtype(x.dtype());
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    // Frozen (LoRA) weights through the frozen ops: candle's broadcast backward would keep a
    // `[B, T, d]` gradient for the broadcast view of each.
    super::frozen::add(&super::frozen::mul(&xn, w)?, b)
}

/// RMS norm over the last dimension (Llama / Mistral). Without a gradient off the CPU-f32
/// path, candle-nn's fused kernel (in half precision it applies the weight before rounding
/// back, one rounding where transformers' `LlamaRMSNorm` has two); else composed.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if super::cuda_kernels::applies(&[x, w]) {
        return super::cuda_kernels::rms_norm(x, w, eps);
    }
    if inference(&[x, w]) && !super::fused::applies(&[x, w]) {
        return candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32);
    }
    rms_norm_composed(x, w, eps)
}

/// RMS norm from candle primitives (training, and candle-nn's kernel's check). In half
/// precision the normalisation runs in f32 and is cast back before the weight, as
/// transformers' `LlamaRMSNorm`.
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if half(x) {
        let x32 = x.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let n = x32
            .broadcast_div(&(ms + eps)?.sqrt()?)?
            .to_dtype(x.dtype())?;
        return super::frozen::mul(&n, w);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    super::frozen::mul(&x.broadcast_div(&(ms + eps)?.sqrt()?)?, w)
}

/// Softmax over the last dimension. The max is subtracted for stability and detached: the
/// result does not depend on it, so neither does the gradient.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if super::fused::softmax_applies(x) {
        return super::fused::softmax_last(x);
    }
    if inference(&[x]) {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    softmax_composed(x)
}

/// Softmax from candle primitives (CUDA, half precision; the fused kernel's check). In half
/// precision it computes in f32 and returns the input's dtype.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    if half(x) {
        return softmax_composed(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension, always in f32 (half-precision log-probs over a large
/// vocabulary lose too much).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    if half(x) {
        return log_softmax(&x.to_dtype(DType::F32)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GPT-2's `gelu_new` (the tanh approximation). Fused on the CPU in f32; candle's `gelu`
/// (composed backward) elsewhere.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    if super::fused::applies(&[x]) {
        return super::fused::gelu_new(x);
    }
    if super::cuda_kernels::applies(&[x]) {
        return super::cuda_kernels::gelu_new(x);
    }
    x.gelu()
}

/// Additive attention bias `[B, 1, T, T]`: 0 where query `i` may attend key `j` (causal, key
/// not padding, and within `window` if given), a large negative number elsewhere.
pub fn attention_bias(mask: &[Vec<u32>], window: Option<usize>, device: &Device) -> Result<Tensor> {
    let b = mask.len();
    let t = mask.first().map_or(0, |m| m.len());
    let mut v = vec![-1e9f32; b * t * t];
    for (bi, m) in mask.iter().enumerate() {
        for i in 0..t {
            for j in 0..=i {
                let in_window = window.is_none_or(|w| i - j < w);
                if m[j] != 0 && in_window {
                    v[(bi * t + i) * t + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 1, t, t), device)
}

/// Scaled dot-product attention over `[B, H, T, d]` tensors with an additive bias: on the CPU
/// a few heads at a time (`attention::chunked`, no `[B, H, T, T]` tensor), elsewhere composed.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if super::attention::applies(q, k, v, bias) {
        return super::attention::chunked(q, k, v, bias, scale, None);
    }
    attention_composed(q, k, v, bias, scale)
}

/// Attention from candle ops (the chunked op's check, and every non-CPU device).
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    // On a GPU with the kernels on: the scale, the mask and the softmax in one op that keeps
    // only the probabilities (a bias with one head, broadcast over the heads).
    let one_head = bias.rank() == 4 && bias.dim(1)? == 1 && bias.device().is_cuda();
    if one_head && super::cuda_kernels::applies(&[q, k, v]) {
        let s = q.matmul(&k.t()?)?;
        return super::cuda_kernels::masked_softmax(&s, bias, scale)?.matmul(v);
    }
    let scores = super::frozen::add(&(q.matmul(&k.t()?)? * scale)?, bias)?;
    softmax(&scores)?.matmul(v)
}

/// `[B, T, H*d]` to `[B, H, T, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    x.reshape((b, t, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[B, H, T, d]` to `[B, T, H*d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

/// Repeats key/value heads for grouped-query attention: head `i` uses kv head `i / n_rep`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kvh, n_rep, t, d))?
        .reshape((b, kvh * n_rep, t, d))
}

/// Rotary embedding in the Hugging Face (rotate-half) layout. `cos`, `sin`: `[T, d]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.rank() == 4 && super::cuda_kernels::applies(&[x, cos, sin]) {
        return super::cuda_kernels::rope(x, cos, sin);
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    super::frozen::mul(x, cos)?.broadcast_add(&super::frozen::mul(&rotated, sin)?)
}

/// Token embedding lookup: `ids` `[B, T]` (u32) into `table` `[V, d]`, giving `[B, T, d]`.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let d = table.dim(1)?;
    table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, d))
}

/// A `[B, T]` u32 tensor from rows.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), device)
}

/// A `[B, T]` f32 mask tensor from rows of 0/1.
pub fn mask_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    ids_tensor(rows, device)?.to_dtype(DType::F32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Var;

    /// Checks d(sum(f(x) * r))/dx from backward() against central differences in f64.
    pub(crate) fn check_grad(f: impl Fn(&Tensor) -> Result<Tensor>, shape: &[usize], seed: u64) {
        let dev = Device::Cpu;
        let n: usize = shape.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
        };
        let xv: Vec<f64> = (0..n).map(|_| rnd()).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), shape, &dev).unwrap()).unwrap();
        let y = f(x.as_tensor()).unwrap();
        let rv: Vec<f64> = (0..y.elem_count()).map(|_| rnd()).collect();
        let r = Tensor::from_vec(rv, y.shape(), &dev).unwrap();
        let loss = |t: &Tensor| -> f64 {
            (f(t).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .expect("gradient reaches the input")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eps = 1e-6;
        for i in 0..n {
            let mut p = xv.clone();
            p[i] += eps;
            let mut m = xv.clone();
            m[i] -= eps;
            let tp = Tensor::from_vec(p, shape, &dev).unwrap();
            let tm = Tensor::from_vec(m, shape, &dev).unwrap();
            let fd = (loss(&tp) - loss(&tm)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-6 + 1e-5 * fd.abs(),
                "element {i}: finite difference {fd} vs backward {}",
                g[i]
            );
        }
    }

    fn dev() -> Device {
        Device::Cpu
    }

    /// The inference kernels (candle-nn's, taken without a gradient off the CPU-f32 path)
    /// give the composed forms' values: within 1e-5 in f32 and within bf16's rounding in
    /// bf16; with a gradient the composed forms run.
    #[test]
    fn inference_kernels_give_the_composed_values() {
        let n = 37;
        let x = ((param(&[3, 5, n], 2.0, 0.3) * 1.7).unwrap())
            .to_dtype(DType::F32)
            .unwrap();
        let w = param(&[n], 0.5, 1.0).to_dtype(DType::F32).unwrap();
        let b = param(&[n], 0.2, 0.1).to_dtype(DType::F32).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (x, w, b) = (c(&x), c(&w), c(&b));
            let pairs = [
                (
                    candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap(),
                    layer_norm_composed(&x, &w, &b, 1e-5).unwrap(),
                ),
                (
                    candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
                    rms_norm_composed(&x, &w, 1e-5).unwrap(),
                ),
                (
                    candle_nn::ops::softmax_last_dim(&x).unwrap(),
                    softmax_composed(&x).unwrap(),
                ),
            ];
            for (i, (got, want)) in pairs.iter().enumerate() {
                assert_eq!(got.dtype(), dtype);
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let scale = f(want).abs().unwrap().max_all().unwrap();
                let d = super::super::max_abs_diff(&f(got), &f(want));
                let rel = d / scale.to_scalar::<f32>().unwrap();
                assert!(rel <= tol, "op {i} in {dtype:?}: off by {rel}");
            }
            // The public ops route bf16 without a gradient through them.
            if dtype == DType::BF16 {
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let d = super::super::max_abs_diff(
                    &f(&layer_norm(&x, &w, &b, 1e-5).unwrap()),
                    &f(&pairs[0].0),
                );
                assert_eq!(d, 0.0);
            }
        }
        // With a gradient (a variable operand): the composed form, which has a backward.
        let v = Var::from_tensor(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        let wb = w.to_dtype(DType::BF16).unwrap();
        let y = rms_norm(v.as_tensor(), &wb, 1e-5).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(
            g.get(v.as_tensor()).is_some(),
            "the composed form's gradient"
        );
    }

    fn param(shape: &[usize], scale: f64, shift: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| shift + scale * ((i * 7 % 11) as f64 - 5.0) / 5.0)
            .collect();
        Tensor::from_vec(v, shape, &dev()).unwrap()
    }

    #[test]
    fn layer_norm_gradient() {
        let w = param(&[5], 0.5, 1.0);
        let b = param(&[5], 0.3, 0.0);
        check_grad(|x| layer_norm(x, &w, &b, 1e-5), &[2, 3, 5], 1);
    }

    #[test]
    fn rms_norm_gradient() {
        let w = param(&[6], 0.5, 1.0);
        check_grad(|x| rms_norm(x, &w, 1e-5), &[2, 6], 2);
    }

    #[test]
    fn softmax_and_log_softmax_gradients() {
        check_grad(softmax, &[3, 7], 3);
        check_grad(log_softmax, &[2, 2, 5], 4);
    }

    #[test]
    fn activations_gradients() {
        check_grad(gelu_new, &[4, 5], 5);
        check_grad(silu, &[4, 5], 6);
        check_grad(|x| x.relu(), &[4, 5], 7);
    }

    #[test]
    fn attention_gradient_through_q_k_v() {
        let mask = vec![vec![1, 1, 1, 0], vec![1, 1, 1, 1]];
        let bias = attention_bias(&mask, None, &dev())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let k = param(&[2, 2, 4, 3], 0.4, 0.1);
        let v = param(&[2, 2, 4, 3], 0.6, -0.1);
        check_grad(|q| attention(q, &k, &v, &bias, 0.5), &[2, 2, 4, 3], 8);
        let q = param(&[2, 2, 4, 3], 0.5, 0.0);
        check_grad(|k| attention(&q, k, &v, &bias, 0.5), &[2, 2, 4, 3], 9);
        check_grad(|v| attention(&q, &k, v, &bias, 0.5), &[2, 2, 4, 3], 10);
    }

    #[test]
    fn rope_repeat_kv_and_heads_gradients() {
        let cos = param(&[4, 6], 0.5, 0.2);
        let sin = param(&[4, 6], 0.4, -0.1);
        check_grad(|x| rope(x, &cos, &sin), &[1, 2, 4, 6], 11);
        check_grad(|x| repeat_kv(x, 3), &[1, 2, 3, 2], 12);
        check_grad(|x| merge_heads(&split_heads(x, 2)?), &[2, 3, 4], 13);
    }

    #[test]
    fn linear_and_embedding_gradients() {
        let w = param(&[4, 3], 0.5, 0.0);
        let b = param(&[4], 0.1, 0.0);
        check_grad(|x| linear(x, &w, Some(&b)), &[2, 5, 3], 14);
        let x = param(&[2, 5, 3], 0.5, 0.0);
        check_grad(|w| linear(&x, w, None), &[4, 3], 15);
        let ids = Tensor::new(&[[0u32, 2, 2], [1, 0, 3]], &dev()).unwrap();
        check_grad(|t| embed(t, &ids), &[4, 3], 16);
    }

    #[test]
    fn attention_bias_is_causal_padded_and_windowed() {
        let b = attention_bias(&[vec![1, 1, 0]], Some(2), &dev()).unwrap();
        let v: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let allowed: Vec<bool> = v.iter().map(|x| *x == 0.0).collect();
        // rows: query 0 sees key 0; query 1 sees 0,1; query 2 sees key 1 only (key 2 is padding,
        // key 0 is outside the window of 2).
        assert_eq!(
            allowed,
            vec![true, false, false, true, true, false, false, true, false]
        );
    }
}
