//! What the scenarios read off a causal LM: a reward at the last real token, and per-response
//! log-probabilities (docs/reference.md §3.2).

use candle_core::{Tensor, D};

use super::pack::Packed;
use super::{ops, Model};
use crate::error::Result;

/// Index of the last position whose mask is 1, per row (0 for an all-padding row).
pub fn last_real_index(mask: &[Vec<u32>]) -> Vec<usize> {
    mask.iter()
        .map(|m| m.iter().rposition(|&x| x != 0).unwrap_or(0))
        .collect()
}

/// Rows `hidden[b, idx[b]]`, `[B, H]`.
pub fn gather_positions(hidden: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let flat: Vec<u32> = idx
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * t + p) as u32)
        .collect();
    let flat = Tensor::from_vec(flat, b, hidden.device())?;
    Ok(hidden.reshape((b * t, h))?.index_select(&flat, 0)?)
}

/// Linear reward head without bias (`head`: `[1, H]`) read at `idx`: rewards `[B]`.
pub fn reward(hidden: &Tensor, idx: &[usize], head: &Tensor) -> Result<Tensor> {
    let rows = gather_positions(hidden, idx)?.to_dtype(head.dtype())?;
    Ok(ops::linear(&rows, head, None)?.squeeze(1)?)
}

/// Response log-probabilities of each row.
pub struct LogProbs {
    /// S(y) = sum over t >= 1 of mask[t] * log p(ids[t] | ids[..t]), `[B]`.
    pub sum: Tensor,
    /// A(y) = S(y) / sum over t >= 1 of mask[t], `[B]`.
    pub mean: Tensor,
    /// Number of scored tokens, `[B]`.
    pub count: Tensor,
}

/// `log_softmax(logits)` at `targets` (`[.., V]` f32 and `[..]`): on the CPU one fused pass per
/// row, forward and backward, with no `[.., V]` log-softmax tensor; on a GPU with
/// `--cuda-kernels` the same as a CUDA op; elsewhere composed.
pub(super) fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if super::fused::applies(&[logits]) {
        return Ok(super::fused::token_logprobs(logits, targets)?);
    }
    if super::cuda_kernels::applies(&[logits]) {
        return Ok(super::cuda_kernels::target_logprobs(logits, targets)?);
    }
    Ok(ops::log_softmax(logits)?
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?)
}

/// Log-probabilities of the masked response tokens. As the reference, position 0 is never
/// scored (it has no prediction), whatever its mask says.
pub fn response_logprobs(
    logits: &Tensor,
    ids: &Tensor,
    response_mask: &Tensor,
) -> Result<LogProbs> {
    let t = logits.dim(1)?;
    // Always in f32: half-precision log-probs over a large vocabulary lose too much.
    let logits = logits.to_dtype(candle_core::DType::F32)?;
    let logits = logits.narrow(1, 0, t - 1)?;
    let targets = ids.narrow(1, 1, t - 1)?.contiguous()?;
    let tok = target_logprobs(&logits, &targets)?;
    let m = response_mask.narrow(1, 1, t - 1)?;
    let sum = (tok * &m)?.sum(1)?;
    let count = m.sum(1)?;
    let mean = sum.broadcast_div(&count)?;
    Ok(LogProbs { sum, mean, count })
}

/// [`response_logprobs`] of sequences `(ids, response mask)` through shared-prefix packing:
/// when `paired`, the first half and the second half are the two sides of pairs and share a
/// row where that saves work ([`Packed::pairs_or_rows`]). Logits are computed only where a
/// response token is predicted, so neither the prompt's logits nor a `[B, T, V]` tensor exist.
pub fn sequence_logprobs(
    model: &Model,
    seqs: &[(&[u32], &[u32])],
    paired: bool,
) -> Result<LogProbs> {
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.0).collect();
    let packed = if paired && seqs.len().is_multiple_of(2) {
        let n = seqs.len() / 2;
        Packed::pairs_or_rows(&ids[..n], &ids[n..], model.config.hidden_width())
    } else {
        Packed::rows(&ids)
    };
    let dev = model.device();
    // Source position, target id and owning sequence of every scored token.
    let (mut src, mut tgt, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = vec![0f32; seqs.len()];
    for (s, (ids, resp)) in seqs.iter().enumerate() {
        for t in 1..ids.len() {
            if resp.get(t).copied().unwrap_or(0) != 0 {
                src.push(packed.flat(s, t - 1) as u32);
                tgt.push(ids[t]);
                owner.push(s);
                count[s] += 1.0;
            }
        }
    }
    if src.is_empty() {
        // No response token at all: one dummy prediction with weight 0 keeps every parameter
        // in the graph (zero gradients rather than missing ones).
        src.push(0);
        tgt.push(0);
        owner.push(usize::MAX);
    }
    let n = src.len();
    let count = Tensor::from_vec(count, seqs.len(), dev)?;
    let hidden = model.hidden_packed(&packed)?;
    let (rows, t, h) = hidden.dims3()?;
    let picked = hidden
        .reshape((rows * t, h))?
        .index_select(&Tensor::from_vec(src, n, dev)?, 0)?;
    let targets = Tensor::from_vec(tgt, n, dev)?;
    let tok = model.token_logprobs(&picked, &targets)?;
    // Per-sequence sums as one product with a 0/1 ownership matrix [S, N].
    let mut own = vec![0f32; seqs.len() * n];
    for (k, &s) in owner.iter().enumerate().filter(|(_, &s)| s != usize::MAX) {
        own[s * n + k] = 1.0;
    }
    let own = Tensor::from_vec(own, (seqs.len(), n), dev)?;
    let sum = own.matmul(&tok.reshape((n, 1))?)?.squeeze(1)?;
    let mean = sum.broadcast_div(&count)?;
    Ok(LogProbs { sum, mean, count })
}
