//! Preference optimization, `--scenario simpo|dpo` (paper §5, docs/reference.md §3.1-3.7): SFT on the chosen side of every training pair, then SimPO or DPO on the same
//! pairs and order, each phase with its own Adam and schedule. A weak-to-strong student's
//! chosen side is its teacher's preferred answer (`labels` of the teacher); the explicit
//! conflict adds the reversed-preference term while the student prefers the ground-truth
//! rejected answer; the implicit conflict mixes in the helpful pairs (SFT too).
//!
//! Tokenization is the documented default (docs/scenarios.md): each side's transcript is
//! encoded once and its prompt masked; position 0 is never scored and the SFT loss divides by
//! the scored tokens. `Tokenization::Reference` reproduces the reference's separate encoding
//! and its SFT denominator (docs/reference.md §1.7, §3.3). Both phases resume after a kill
//! (`state/train/<run>/{sft,po}`).

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::Serialize;

use super::closing::{self, Finished, RunRow, TrainReport};
use super::inputs;
use crate::error::{Error, Result};
use crate::models::readout::sequence_logprobs;
use crate::models::save::SaveExtras;
use crate::models::Model;
use crate::scenarios::po::{self, Loss, PairStats};
use crate::scenarios::rm::Objective;
use crate::stages::common::{self, PairText};
use crate::store::{fingerprint, keys, ArtifactStore, InputFile};
use crate::tokenize::{Tokenization, Tokenizer};
use crate::train::memory::Workload;
use crate::train::{self, LoopSettings, MicroOut, StepLog};

/// Everything that determines a trained policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoTrainSettings {
    pub run_id: String,
    /// `gt-train` or `w2s-train`.
    pub stage: String,
    pub loss: Loss,
    pub base_model: String,
    /// Run id of the teacher whose preferences on `label_split` are the targets.
    pub teacher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_split: Option<String>,
    /// The alignment dimension whose splits it trains on (paper App. O; absent from the
    /// fingerprint when harmless).
    #[serde(skip_serializing_if = "crate::schema::Dimension::is_harmless")]
    pub dimension: crate::schema::Dimension,
    pub objective: Objective,
    pub alpha: f64,
    /// Keep only teacher labels that are right with at least this confidence (§3.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_confidence: Option<f64>,
    /// The SFT phase (reference: one epoch).
    pub sft: LoopSettings,
    /// The preference phase (reference: SimPO one epoch, DPO three).
    pub po: LoopSettings,
    pub max_ctx: usize,
    /// How pair sides are tokenized (absent from the fingerprint when the default).
    #[serde(skip_serializing_if = "Tokenization::is_joint")]
    pub tokenization: Tokenization,
    /// LoRA adapters trained instead of every weight (absent from the fingerprint without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<super::LoraSettings>,
    /// Per-layer activation recompute (absent from the fingerprint when off).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grad_checkpoint: bool,
    /// Compute dtype, `f32` or `bf16` (mixed precision; absent from the fingerprint when f32).
    #[serde(skip_serializing_if = "super::is_f32")]
    pub dtype: String,
    pub device: String,
    /// The engine of the layers (as the reward model's settings record it).
    #[serde(skip_serializing_if = "crate::models::engine::Engine::is_owned")]
    pub engine: crate::models::engine::Engine,
    #[serde(skip)]
    pub save_every: usize,
}

impl PoTrainSettings {
    pub fn label_split(&self) -> String {
        // A base name (`w2s`, `gt`) is the dimension's split of that name.
        (self.dimension).split(
            self.label_split
                .as_deref()
                .unwrap_or(crate::schema::LABEL_SPLIT),
        )
    }
}

/// One training pair, encoded: the chosen side (the teacher's preference) and the other.
struct Item {
    c: (Vec<u32>, Vec<u32>),
    r: (Vec<u32>, Vec<u32>),
    /// The chosen side is the ground-truth chosen answer.
    acc: bool,
}

fn encode(
    tok: &Tokenizer,
    prompt: &str,
    response: &str,
    max_ctx: usize,
    mode: Tokenization,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let e = tok.encode_pair_side(prompt, response, max_ctx, mode)?;
    Ok((e.ids, e.response_mask))
}

fn items(
    tok: &Tokenizer,
    pairs: &[PairText],
    max_ctx: usize,
    mode: Tokenization,
    prefer: impl Fn(&PairText) -> Result<bool>,
) -> Result<Vec<Item>> {
    pairs
        .iter()
        .map(|p| {
            let c = encode(tok, &p.prompt, &p.chosen, max_ctx, mode)?;
            let r = encode(tok, &p.rejected_prompt, &p.rejected, max_ctx, mode)?;
            Ok(if prefer(p)? {
                Item { c, r, acc: true }
            } else {
                Item {
                    c: r,
                    r: c,
                    acc: false,
                }
            })
        })
        .collect()
}

/// The teacher's label per pair id: whether it prefers the ground-truth chosen side, and its
/// confidence toward that side (σ of its margin, docs/reference.md §3.8).
async fn teacher_preferences(
    store: &ArtifactStore,
    teacher: &str,
    split: &str,
) -> Result<(HashMap<String, (bool, f64)>, InputFile)> {
    let (labels, input) = inputs::labels(store, teacher, split).await?;
    if labels.values().any(|l| l.method == "rm") {
        return Err(Error::Config(format!(
            "`{teacher}` is a reward model: a preference student needs a policy teacher (gt-train --scenario simpo|dpo)"
        )));
    }
    let out = (labels.into_iter())
        .map(|(id, l)| (id, (l.correct, l.soft)))
        .collect();
    Ok((out, input))
}

/// Response log-prob statistics of rows: (sum, mean, count) tensors. `paired`: the first half
/// and the second half are the two sides of pairs (their shared prefix is computed once).
fn logps(
    model: &Model,
    rows: &[&(Vec<u32>, Vec<u32>)],
    paired: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let seqs: Vec<(&[u32], &[u32])> = rows.iter().map(|r| (&r.0[..], &r.1[..])).collect();
    let lp = sequence_logprobs(model, &seqs, paired)?;
    Ok((lp.sum, lp.mean, lp.count))
}

/// What one pass of the preference phase (the larger) processes: both sides of each pair.
pub fn workload(s: &PoTrainSettings) -> Workload {
    Workload {
        rows: 2 * s.po.micro_batch.min(s.po.batch),
        tokens: s.max_ctx,
        lm_head: true,
        reference: s.loss == Loss::Dpo,
        accumulates: s.po.micro_batch < s.po.batch || s.sft.micro_batch < s.sft.batch,
    }
}

/// Trains the policy.
pub async fn run(store: &ArtifactStore, s: &PoTrainSettings, force: bool) -> Result<TrainReport> {
    let (base_dir, mut inputs) = inputs::base_and_split(store, &s.base_model).await?;
    inputs.extend(inputs::lora_inputs(s.lora.as_ref())?);
    let teacher = match &s.teacher {
        Some(t) => {
            let (prefs, input) = teacher_preferences(store, t, &s.label_split()).await?;
            inputs.push(input);
            Some(prefs)
        }
        None => None,
    };
    let fp = fingerprint("po-train", s, &inputs);
    let key = keys::train(&s.run_id);
    if let Some(done) = TrainReport::current(store, &key, &fp, force).await? {
        return Ok(done);
    }
    let inputs::Loaded {
        model,
        tok,
        tok_path,
        max_ctx,
    } = inputs::load(
        &base_dir,
        &s.device,
        s.max_ctx,
        s.lora.as_ref(),
        s.grad_checkpoint,
        &s.dtype,
        workload(s),
    )?;

    let train_split = inputs::train_split(s.teacher.as_deref(), s.label_split(), s.dimension);
    let mut pairs = common::load_split(store, &train_split).await?;
    let label = |p: &PairText| -> Result<(bool, f64)> {
        let prefs = teacher.as_ref().expect("students only");
        prefs.get(&p.pair_id).copied().ok_or_else(|| {
            Error::NoInput(format!(
                "teacher `{}` has no label for {train_split} pair {} (row {}): relabel with `w2s weak-label`",
                s.teacher.as_deref().unwrap_or_default(),
                p.pair_id,
                p.split_index
            ))
        })
    };
    // High-confidence filtering (docs/reference.md §3.8): keep the rows the teacher got right with confidence
    // >= T, in file order; the helpful set is cut to the same row indices.
    let mut kept: Option<Vec<usize>> = None;
    if let Some(t) = s.high_confidence {
        let labels: Vec<(bool, f64)> = pairs.iter().map(&label).collect::<Result<_>>()?;
        let k = po::high_confidence_keep(&labels, t);
        pairs = k.iter().map(|&i| pairs[i].clone()).collect();
        tracing::info!(
            "high-confidence filter {t}: {} of {} rows kept",
            k.len(),
            labels.len()
        );
        kept = Some(k);
    }
    let mut data = match &teacher {
        None => items(&tok, &pairs, max_ctx, s.tokenization, |_| Ok(true))?,
        Some(_) => items(&tok, &pairs, max_ctx, s.tokenization, |p| Ok(label(p)?.0))?,
    };
    if s.objective == Objective::Implicit {
        let mut helpful = inputs::helpful(store, s.dimension).await?;
        if let Some(k) = &kept {
            if let Some(&last) = k.last() {
                if last >= helpful.len() {
                    return Err(Error::Config(format!(
                        "high-confidence filtering keeps row {last} but there are only {} helpful pairs to match it",
                        helpful.len()
                    )));
                }
            }
            helpful = k.iter().map(|&i| helpful[i].clone()).collect();
        }
        data.extend(items(&tok, &helpful, max_ctx, s.tokenization, |_| {
            Ok(true)
        })?);
    }
    if data.is_empty() {
        return Err(Error::Config(format!(
            "run `{}` has no training pairs left (high-confidence filter {:?})",
            s.run_id, s.high_confidence
        )));
    }

    // Every weight of the causal LM is trained (its LM head produces the log-probs).
    let vars: Vec<(String, Var)> = model
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut log: Vec<StepLog> = Vec::new();

    // Phase 1: SFT on the chosen side, loss −S(y)/n(y) averaged over the step (the reference
    // mode's n also counts the first window token, which is never scored:
    // docs/reference.md §3.3).
    let first_counts = s.tokenization == Tokenization::Reference;
    let (mut adam, sft_resume) = inputs::phase(
        store,
        &format!("{key}/sft"),
        &fp,
        s.save_every,
        &vars,
        model.mirrors(),
        s.sft.lr,
    )?;
    let batch_n = s.sft.batch as f64;
    let sft_sizes: Vec<usize> = data.iter().map(|x| x.c.0.len() + x.c.1.len()).collect();
    let (sft_start, sft_log) = train::optimize(
        &mut adam,
        &vars,
        &s.sft,
        &sft_sizes,
        &sft_resume,
        &model,
        |mb| {
            let rows: Vec<&(Vec<u32>, Vec<u32>)> = mb.iter().map(|&i| &data[i].c).collect();
            let (sum, _, count) = logps(&model, &rows, false)?;
            let count = if first_counts {
                let first: Vec<f32> = rows
                    .iter()
                    .map(|r| r.1.first().copied().unwrap_or(0) as f32)
                    .collect();
                (count + Tensor::new(first, model.device())?.to_dtype(sum.dtype())?)?
            } else {
                count
            };
            let per = (sum.neg()? / count)?;
            let loss = (per.sum_all()? / batch_n)?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            Ok(MicroOut {
                loss: value,
                correct: 0,
                tokens: rows.iter().map(|r| r.0.len()).sum(),
                grads: model.backward(&loss)?,
            })
        },
    )
    .await?;
    // Keep the finished SFT phase, so a kill during the preference phase never redoes it.
    if sft_start < sft_log.len() {
        sft_resume
            .save(sft_log.len(), &adam, &vars, &sft_log)
            .await?;
    }
    log.extend(sft_log.iter().cloned());

    // DPO's reference: the SFT model, frozen (detached copies of its weights).
    let reference = if s.loss == Loss::Dpo {
        Some(model.frozen_copy()?)
    } else {
        None
    };

    // Phase 2: SimPO or DPO, a fresh Adam over the same order.
    // One optimizer at a time: the SFT phase's moments go before the preference phase's.
    drop(adam);
    let (mut adam, po_resume) = inputs::phase(
        store,
        &format!("{key}/po"),
        &fp,
        s.save_every,
        &vars,
        model.mirrors(),
        s.po.lr,
    )?;
    let batch_n = s.po.batch as f64;
    let explicit = (s.objective == Objective::Explicit).then_some(s.alpha);
    let po_sizes: Vec<usize> = (data.iter())
        .map(|x| x.c.0.len() + x.c.1.len() + x.r.0.len() + x.r.1.len())
        .collect();
    let (po_start, po_log) = train::optimize(
        &mut adam,
        &vars,
        &s.po,
        &po_sizes,
        &po_resume,
        &model,
        |mb| {
            let mut rows: Vec<&(Vec<u32>, Vec<u32>)> = mb.iter().map(|&i| &data[i].c).collect();
            rows.extend(mb.iter().map(|&i| &data[i].r));
            let n = mb.len();
            let (sum, mean, _) = logps(&model, &rows, true)?;
            let sums: Vec<f32> = sum.to_vec1()?;
            let means: Vec<f32> = mean.to_vec1()?;
            let refs: Vec<f32> = match &reference {
                Some(r) => logps(r, &rows, true)?.0.to_vec1()?,
                None => vec![0.0; rows.len()],
            };
            let (mut loss, mut correct) = (0.0f64, 0usize);
            let mut w = vec![0f32; 2 * n];
            for (j, &i) in mb.iter().enumerate() {
                let p = PairStats {
                    mean_c: f64::from(means[j]),
                    mean_r: f64::from(means[n + j]),
                    sum_c: f64::from(sums[j]),
                    sum_r: f64::from(sums[n + j]),
                    ref_c: f64::from(refs[j]),
                    ref_r: f64::from(refs[n + j]),
                    acc: data[i].acc,
                };
                let g = po::pair_loss(s.loss, &p, explicit);
                loss += g.loss / batch_n;
                correct += usize::from(g.prefers_chosen);
                w[j] = (g.d_c / batch_n) as f32;
                w[n + j] = (g.d_r / batch_n) as f32;
            }
            let x = match s.loss {
                Loss::Simpo => mean,
                Loss::Dpo => sum,
            };
            let weights = Tensor::new(w, x.device())?;
            let surrogate = (x * weights)?.sum_all()?;
            Ok(MicroOut {
                loss,
                correct,
                tokens: rows.iter().map(|r| r.0.len()).sum(),
                grads: model.backward(&surrogate)?,
            })
        },
    )
    .await?;
    let offset = log.len() as u64;
    log.extend(po_log.iter().cloned().map(|mut l| {
        l.step += offset;
        l
    }));

    // Publish: checkpoint, train_log (SFT steps, then the preference steps), runs row.
    let provenance = serde_json::json!({
        "run_id": s.run_id,
        "stage": s.stage,
        "scenario": s.loss,
        "fingerprint": fp,
        "settings": s,
        "sft_steps": sft_log.len(),
    });
    let scenario = match s.loss {
        Loss::Simpo => "simpo",
        Loss::Dpo => "dpo",
    };
    let finished = Finished {
        row: RunRow {
            run_id: &s.run_id,
            stage: &s.stage,
            scenario,
            objective: s.objective.name(),
            base_model: &s.base_model,
            teacher: s.teacher.as_deref(),
            alpha: (s.objective == Objective::Explicit).then_some(s.alpha),
            seed: s.po.shuffle_seed,
        },
        settings: s,
        fingerprint: &fp,
        inputs,
        log: &log,
        resumed_at: if po_start > 0 {
            sft_log.len() + po_start
        } else {
            sft_start
        },
        tables: Vec::new(),
        resumes: vec![&sft_resume, &po_resume],
    };
    closing::publish(store, finished, |dir| {
        closing::save_model(
            &model,
            dir,
            &SaveExtras {
                tokenizer: Some(&tok_path),
                reward_head: None,
                provenance,
            },
        )
    })
    .await
}
