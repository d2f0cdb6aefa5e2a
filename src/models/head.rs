//! Token log-probabilities over the vocabulary, computed a chunk of tokens at a time.
//!
//! A policy's log-probs need the logits of every scored token, `[n, V]`: with Llama's 128K
//! vocabulary that is 0.5 GB per thousand tokens in f32, and the autograd graph keeps it, its
//! f32 copy and the log-softmax's intermediates until the backward pass. Here the logits exist
//! one chunk of tokens at a time (about 32 MB of f32 each):
//! - without a graph (scoring, labelling, the DPO reference): each chunk's log-probs are
//!   computed and its logits dropped;
//! - in training under recompute (`--grad-checkpoint`): the forward does the same on a
//!   detached copy of the hidden states and hands out the log-probs as a leaf variable; the
//!   loss's backward gives their gradient, and [`backward`] rebuilds one chunk's logits at a
//!   time to turn it into the gradient of the hidden states (and of the LM head when it
//!   trains), which then flows into the model's graph.
//!
//! Rows are independent, so the forward values are exactly those of the one-shot path; the
//! gradients equal it up to the order of sums over chunks.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// The logits of about this many f32 values exist at once.
const CHUNK_VALUES: usize = 8 << 20;

/// Tokens per chunk for a vocabulary of `vocab`.
pub fn chunk_tokens(vocab: usize) -> usize {
    (CHUNK_VALUES / vocab.max(1)).max(1)
}

/// What a chunked training forward keeps for its backward.
pub struct HeadTape {
    /// The hidden states the log-probs were computed from, with their graph.
    hidden: Tensor,
    /// The log-probs as the loss saw them (a leaf variable).
    out: Var,
    targets: Tensor,
}

/// `log softmax(x Wᵀ)[target]` of one chunk, in f32.
pub(super) fn chunk_logprobs(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let l = logits(&x.unsqueeze(0)?)?.squeeze(0)?;
    let l = l.to_dtype(candle_core::DType::F32)?;
    let t = targets.unsqueeze(0)?;
    let lp = super::readout::target_logprobs(&l.unsqueeze(0)?, &t)?;
    Ok(lp.squeeze(0)?)
}

/// Log-probs `[n]` of `targets` `[n]` (u32) under the logits of `hidden` `[n, d]`, one chunk
/// of `chunk` tokens at a time, with no graph (the caller holds none).
pub(super) fn logprobs_no_graph(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    hidden: &Tensor,
    targets: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = hidden.narrow(0, start, len)?.detach();
        parts.push(chunk_logprobs(&logits, &x, &targets.narrow(0, start, len)?)?.detach());
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The training forward under recompute: the log-probs as a leaf variable (so the loss's graph
/// ends there) and the tape [`backward`] needs.
pub(super) fn logprobs_taped(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    hidden: &Tensor,
    targets: &Tensor,
    chunk: usize,
) -> Result<(Tensor, HeadTape)> {
    let values = logprobs_no_graph(logits, &hidden.detach(), targets, chunk)?;
    let out = Var::from_tensor(&values)?;
    let t = out.as_tensor().clone();
    Ok((
        t,
        HeadTape {
            hidden: hidden.clone(),
            out,
            targets: targets.clone(),
        },
    ))
}

/// Turns the gradient of a tape's log-probs (in `grads`) into gradients of the model, one chunk
/// of logits at a time; gradients of `frozen` tensors are dropped as they appear.
pub(super) fn backward(
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    tape: HeadTape,
    grads: &mut GradStore,
    frozen: &[&Tensor],
    trainable: &std::collections::HashSet<candle_core::TensorId>,
    chunk: usize,
) -> Result<()> {
    let HeadTape {
        hidden,
        out,
        targets,
    } = tape;
    let Some(g) = grads.remove(out.as_tensor()) else {
        return Ok(());
    };
    drop(out);
    let n = hidden.dim(0)?;
    let mut dx = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = Var::from_tensor(&hidden.narrow(0, start, len)?.detach())?;
        let lp = chunk_logprobs(&logits, x.as_tensor(), &targets.narrow(0, start, len)?)?;
        let gc = g.narrow(0, start, len)?;
        let mut cg = super::recompute::detached((lp * &gc)?.sum_all()?.backward()?);
        super::recompute::drop_grads(&mut cg, frozen);
        let d = cg
            .remove(x.as_tensor())
            .ok_or_else(|| crate::error::Error::Model {
                file: "training".into(),
                msg: "chunked log-probs gave no hidden-state gradient".into(),
            })?;
        super::recompute::retain(&mut cg, trainable);
        dx.push(d);
        grads.extend(cg)?;
        start += len;
    }
    let dx = Tensor::cat(&dx, 0)?;
    if hidden.track_op() {
        let dx = dx.to_dtype(hidden.dtype())?;
        let mut rest = super::recompute::detached((hidden * &dx)?.sum_all()?.backward()?);
        // Not only the model's variables: the gradient of a recompute tape's output goes on
        // to the layers' backward. The constant `dx` gets one too: dropped.
        super::recompute::drop_grads(&mut rest, frozen);
        super::recompute::drop_grads(&mut rest, &[&dx]);
        grads.extend(rest)?;
    }
    Ok(())
}
