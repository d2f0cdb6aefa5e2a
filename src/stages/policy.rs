//! A policy's response statistics on every pair of a split, shared by the stages that read a
//! policy (`score` on the test split, `weak-label` on the w2s split): not a stage itself.

use std::path::Path;

use candle_core::DType;

use crate::error::Result;
use crate::models::readout::sequence_logprobs;
use crate::models::Model;
use crate::progress;
use crate::scenarios::po::Loss;
use crate::stages::common::PairText;
use crate::tokenize::{Tokenization, Tokenizer};

/// Per-side log-prob results: (sum, mean, count).
type SideScores = Vec<(f64, f64, i64)>;

/// Scores `rows`: chosen sides first, then rejected (pairs share their prompt's states).
fn score_batch(model: &Model, rows: &[(Vec<u32>, Vec<u32>)]) -> Result<SideScores> {
    let seqs: Vec<(&[u32], &[u32])> = rows.iter().map(|r| (&r.0[..], &r.1[..])).collect();
    let lp = sequence_logprobs(model, &seqs, true)?;
    let sum: Vec<f32> = lp.sum.to_dtype(DType::F32)?.to_vec1()?;
    let mean: Vec<f32> = lp.mean.to_dtype(DType::F32)?.to_vec1()?;
    let count: Vec<f32> = lp.count.to_dtype(DType::F32)?.to_vec1()?;
    Ok((0..rows.len())
        .map(|i| (sum[i] as f64, mean[i] as f64, count[i] as i64))
        .collect())
}

/// A policy's response statistics for one pair (file orientation: `c` is the ground-truth
/// chosen answer).
pub struct SideStats {
    pub sum_c: f64,
    pub sum_r: f64,
    pub mean_c: f64,
    pub mean_r: f64,
    pub tokens_c: i64,
    pub tokens_r: i64,
}

pub struct PolicyScores {
    pub sides: Vec<SideStats>,
    pub tokens: usize,
    pub truncated: usize,
}

/// Scores every pair with a policy, each side tokenized as `mode` says.
pub fn policy_scores(
    model: &Model,
    tok: &Tokenizer,
    pairs: &[PairText],
    max_ctx: usize,
    mode: Tokenization,
    batch_pairs: usize,
    what: &'static str,
) -> Result<PolicyScores> {
    let bar = progress::items(pairs.len() as u64, what);
    let (mut tokens, mut truncated) = (0usize, 0usize);
    let mut sides = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_pairs) {
        let mut rows = Vec::with_capacity(chunk.len() * 2);
        for p in chunk {
            let c = tok.encode_pair_side(&p.prompt, &p.chosen, max_ctx, mode)?;
            truncated += usize::from(c.truncated > 0);
            tokens += c.ids.len();
            rows.push((c.ids, c.response_mask));
        }
        for p in chunk {
            let r = tok.encode_pair_side(&p.rejected_prompt, &p.rejected, max_ctx, mode)?;
            truncated += usize::from(r.truncated > 0);
            tokens += r.ids.len();
            rows.push((r.ids, r.response_mask));
        }
        let scored = score_batch(model, &rows)?;
        let n = chunk.len();
        for i in 0..n {
            let (sc, mc, nc) = scored[i];
            let (sr, mr, nr) = scored[n + i];
            sides.push(SideStats {
                sum_c: sc,
                sum_r: sr,
                mean_c: mc,
                mean_r: mr,
                tokens_c: nc,
                tokens_r: nr,
            });
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(PolicyScores {
        sides,
        tokens,
        truncated,
    })
}

/// The preference loss a policy checkpoint was trained with and its tokenization
/// (`w2s.json`); SimPO and the joint default for a checkpoint w2s did not train (its
/// confidence is the paper's default).
pub fn policy_kind(dir: &Path) -> (Loss, Tokenization) {
    let v = std::fs::read(dir.join("w2s.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let field = |ptr: &str| {
        v.as_ref()
            .and_then(|v| v.pointer(ptr))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    let loss = match field("/provenance/scenario").as_deref() {
        Some("dpo") => Loss::Dpo,
        _ => Loss::Simpo,
    };
    let tokenization = match field("/provenance/settings/tokenization").as_deref() {
        Some("reference") => Tokenization::Reference,
        _ => Tokenization::Joint,
    };
    (loss, tokenization)
}
