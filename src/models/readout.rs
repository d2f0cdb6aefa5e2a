//! What the scenarios read off a causal LM: a reward at the last real token, and per-response
//! log-probabilities (reference-spec §3.2).

use candle_core::{Tensor, D};

use super::ops;
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
    let tok = if super::fused::applies(&[&logits]) {
        // One pass per row, forward and backward, no [B, T, V] log-softmax tensor.
        super::fused::token_logprobs(&logits, &targets)?
    } else {
        ops::log_softmax(&logits)?
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
    };
    let m = response_mask.narrow(1, 1, t - 1)?;
    let sum = (tok * &m)?.sum(1)?;
    let count = m.sum(1)?;
    let mean = sum.broadcast_div(&count)?;
    Ok(LogProbs { sum, mean, count })
}
