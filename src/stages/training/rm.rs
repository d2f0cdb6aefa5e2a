//! Reward modeling, `--scenario rm` (docs/reference.md §2): builds the slot-oriented samples,
//! trains backbone + head with the shared optimizer loop, and closes like every run
//! ([`super::closing`]).

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::Serialize;

use super::closing::{self, Finished, RunRow, TrainReport};
use super::inputs;
use crate::error::{Error, Result};
use crate::models::save::SaveExtras;
use crate::scenarios::rm::{self, Head, Objective, Readout, RewardModel, Sample};
use crate::stages::common::{self, PairText};
use crate::store::{fingerprint, keys, ArtifactStore, InputFile};
use crate::tokenize::Tokenizer;
use crate::train::memory::Workload;
use crate::train::{self, LoopSettings, MicroOut};

/// Everything that determines a trained reward model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RmTrainSettings {
    pub run_id: String,
    /// `gt-train` or `w2s-train`.
    pub stage: String,
    /// The base checkpoint: a local folder, an s3:// or http(s):// prefix, or hf://owner/name.
    pub base_model: String,
    /// Run id of the teacher whose `labels` on the w2s split are the targets (w2s-train).
    pub teacher: Option<String>,
    /// The split the teacher labelled and the student trains on (default `w2s`; `gt` for the
    /// second stage of bootstrapping, docs/reference.md §3.9). Absent from the fingerprint
    /// when it is the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_split: Option<String>,
    /// The alignment dimension whose splits it trains on (paper App. O; absent from the
    /// fingerprint when harmless).
    #[serde(skip_serializing_if = "crate::schema::Dimension::is_harmless")]
    pub dimension: crate::schema::Dimension,
    pub objective: Objective,
    /// Weight of the explicit conflict term.
    pub alpha: f64,
    /// Label losses weighted by the teacher's certainty (paper App. P; absent from the
    /// fingerprint when off).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adaptive: bool,
    #[serde(flatten)]
    pub train: LoopSettings,
    /// Longest sequence; longer ones keep their last tokens.
    pub max_ctx: usize,
    pub readout: Readout,
    /// Seed of the slot bits (CPython `Random`, restarted per split).
    pub slot_seed: u64,
    /// Seed of the reward head's initial weights (unless `init_head` is given).
    pub head_seed: u64,
    /// A safetensors file with the initial head (`weight`, `[1, H]`), e.g. exported from PyTorch.
    pub init_head: Option<String>,
    /// LoRA adapters trained instead of the backbone (absent from the fingerprint without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<super::LoraSettings>,
    /// Per-layer activation recompute (absent from the fingerprint when off).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grad_checkpoint: bool,
    /// Compute dtype, `f32` or `bf16` (mixed precision; absent from the fingerprint when f32).
    #[serde(skip_serializing_if = "super::is_f32")]
    pub dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The engine of the layers (`--engine`; absent from the fingerprint for the default,
    /// the owned one). In the fingerprint because training amplifies the engines' rounding
    /// differences into different models.
    #[serde(skip_serializing_if = "crate::models::engine::Engine::is_owned")]
    pub engine: crate::models::engine::Engine,
    /// Save resumable state every this many optimizer steps (0: never). Not part of the
    /// fingerprint: it does not change the result.
    #[serde(skip)]
    pub save_every: usize,
}

impl RmTrainSettings {
    /// The split a student trains on.
    pub fn label_split(&self) -> String {
        // A base name (`w2s`, `gt`) is the dimension's split of that name.
        (self.dimension).split(
            self.label_split
                .as_deref()
                .unwrap_or(crate::schema::LABEL_SPLIT),
        )
    }
}

/// Teacher labels by pair id: (slot bit of the teacher, soft label).
async fn teacher_labels(
    store: &ArtifactStore,
    teacher: &str,
    split: &str,
) -> Result<(HashMap<String, (bool, f64)>, InputFile)> {
    let (labels, input) = inputs::labels(store, teacher, split).await?;
    let out = (labels.into_iter())
        .map(|(id, l)| (id, (l.gt_label, l.soft)))
        .collect();
    Ok((out, input))
}

fn encode(tok: &Tokenizer, text: &str, max_ctx: usize) -> Result<Vec<u32>> {
    let (ids, _) = tok.encode_last(text, max_ctx)?;
    if ids.is_empty() {
        return Err(Error::Config(format!(
            "text encodes to no tokens: {:?}",
            text.chars().take(60).collect::<String>()
        )));
    }
    Ok(ids)
}

/// Slot-oriented samples of a split; `label(i, pair, bit)` gives the target.
fn samples(
    tok: &Tokenizer,
    pairs: &[PairText],
    slot_seed: u64,
    max_ctx: usize,
    mut label: impl FnMut(&PairText, bool) -> Result<f32>,
) -> Result<Vec<Sample>> {
    let bits = rm::slot_bits(slot_seed, pairs.len());
    pairs
        .iter()
        .zip(bits)
        .map(|(p, h)| {
            let (c, r) = (
                encode(tok, &p.chosen_text(), max_ctx)?,
                encode(tok, &p.rejected_text(), max_ctx)?,
            );
            let (a, b) = if h { (c, r) } else { (r, c) };
            Ok(Sample {
                a,
                b,
                label: label(p, h)?,
                gt: h,
            })
        })
        .collect()
}

/// What one pass processes: both sides of each pair of a micro-batch.
pub fn workload(s: &RmTrainSettings) -> Workload {
    Workload {
        rows: 2 * s.train.micro_batch.min(s.train.batch),
        tokens: s.max_ctx,
        lm_head: false,
        reference: false,
        accumulates: s.train.micro_batch < s.train.batch,
    }
}

/// Trains (or finds up to date) the reward model `s` describes.
pub async fn run(store: &ArtifactStore, s: &RmTrainSettings, force: bool) -> Result<TrainReport> {
    let bad_alpha = !s.alpha.is_finite() || s.alpha < 0.0;
    let bad_lr = !s.train.lr.is_finite() || s.train.lr <= 0.0;
    if bad_alpha || bad_lr || s.max_ctx < 2 {
        return Err(Error::Config(
            "--alpha must be >= 0, --max-ctx >= 2 and --lr > 0".into(),
        ));
    }
    let (base_dir, mut inputs) = inputs::base_and_split(store, &s.base_model).await?;
    inputs.extend(inputs::lora_inputs(s.lora.as_ref())?);
    let teacher = match &s.teacher {
        Some(t) => {
            let (labels, input) = teacher_labels(store, t, &s.label_split()).await?;
            inputs.push(input);
            Some(labels)
        }
        None => None,
    };
    let init_head = match &s.init_head {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            inputs.push(InputFile {
                uri: p.clone(),
                bytes: bytes.len() as u64,
                sha256: crate::store::sha256_hex(&bytes),
            });
            Some(bytes)
        }
        None => None,
    };
    let fp = fingerprint("rm-train", s, &inputs);
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
    let device = model.device().clone();

    // Training samples (docs/reference.md §1.4, §2.3).
    let train_split = inputs::train_split(s.teacher.as_deref(), s.label_split(), s.dimension);
    let pairs = common::load_split(store, &train_split).await?;
    let mut data = match &teacher {
        None => samples(&tok, &pairs, s.slot_seed, max_ctx, |_, h| {
            Ok(f32::from(u8::from(h)))
        })?,
        Some(labels) => samples(&tok, &pairs, s.slot_seed, max_ctx, |p, h| {
            let &(teacher_bit, soft) = labels.get(&p.pair_id).ok_or_else(|| {
                Error::NoInput(format!(
                    "teacher `{}` has no label for {} pair {} (row {}): relabel with `w2s weak-label`",
                    s.teacher.as_deref().unwrap_or_default(),
                    train_split,
                    p.pair_id,
                    p.split_index
                ))
            })?;
            // Labels are in the teacher's slot orientation; turn them into ours.
            Ok((if teacher_bit == h { soft } else { 1.0 - soft }) as f32)
        })?,
    };
    if s.objective == Objective::Implicit {
        let helpful = inputs::helpful(store, s.dimension).await?;
        data.extend(samples(&tok, &helpful, s.slot_seed, max_ctx, |_, h| {
            Ok(f32::from(u8::from(h)))
        })?);
    }

    let head = match &init_head {
        Some(bytes) => {
            let mut t = candle_core::safetensors::load_buffer(bytes, &device).map_err(|e| {
                Error::Model {
                    file: s.init_head.clone().unwrap_or_default(),
                    msg: format!("unreadable head: {e}"),
                }
            })?;
            let w = t.remove("weight").ok_or_else(|| Error::Model {
                file: s.init_head.clone().unwrap_or_default(),
                msg: "missing tensor `weight`".into(),
            })?;
            let want = [1, model.config.hidden_width()];
            if w.dims() != want {
                return Err(Error::Model {
                    file: s.init_head.clone().unwrap_or_default(),
                    msg: format!(
                        "`weight` has shape {:?}, the model needs {want:?}",
                        w.dims()
                    ),
                });
            }
            w.to_dtype(candle_core::DType::F32)?
        }
        None => rm::init_head(model.config.hidden_width(), s.head_seed, &device)?,
    };
    let head = Var::from_tensor(&head)?;
    // The reward model is the backbone plus the head (docs/reference.md §2.1): an untied LM
    // head is not part of it, is not trained, and is saved unchanged.
    let mut vars: Vec<(String, Var)> = model
        .params()
        .iter()
        .filter(|(k, _)| !k.starts_with("lm_head."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.push(("reward_head.weight".into(), head.clone()));
    let rmodel = RewardModel {
        model,
        head: Head::Trainable(head.clone()),
        readout: s.readout,
    };
    let (mut adam, resume) = inputs::phase(
        store,
        &key,
        &fp,
        s.save_every,
        &vars,
        rmodel.model.mirrors(),
        s.train.lr,
    )?;
    let batch = s.train.batch as f32;
    let alpha = s.alpha as f32;
    let sizes: Vec<usize> = data.iter().map(|x| x.a.len() + x.b.len()).collect();
    let micro = |mb: &[usize]| {
        let a: Vec<&[u32]> = mb.iter().map(|&i| data[i].a.as_slice()).collect();
        let b: Vec<&[u32]> = mb.iter().map(|&i| data[i].b.as_slice()).collect();
        let z = rmodel.margins(&a, &b)?;
        let zs: Vec<f32> = z.to_vec1()?;
        let (mut loss, mut correct, mut tokens) = (0.0f64, 0usize, 0usize);
        let mut dz = Vec::with_capacity(mb.len());
        for (j, &i) in mb.iter().enumerate() {
            let x = &data[i];
            let l = rm::pair_loss(zs[j], x.label, x.gt, s.objective, alpha, s.adaptive);
            loss += f64::from(l.loss / batch);
            dz.push(l.dz / batch);
            correct += usize::from((zs[j] >= 0.0) == (x.label >= 0.5));
            tokens += x.a.len() + x.b.len();
        }
        // d(sum_i z_i * dz_i)/d(theta) = sum_i dloss_i/dz_i * dz_i/d(theta): the gradient of
        // the loss with PyTorch's own derivative of BCE-on-probabilities.
        let w = Tensor::new(dz, z.device())?;
        let surrogate = (z * w)?.sum_all()?;
        Ok(MicroOut {
            loss,
            correct,
            tokens,
            grads: rmodel.model.backward(&surrogate)?,
        })
    };
    let (resumed_at, log) = train::optimize(
        &mut adam,
        &vars,
        &s.train,
        &sizes,
        &resume,
        &rmodel.model,
        micro,
    )
    .await?;
    let provenance = serde_json::json!({
        "run_id": s.run_id,
        "stage": s.stage,
        "scenario": "rm",
        "readout": s.readout,
        "fingerprint": fp,
        "settings": s,
    });
    let finished = Finished {
        row: RunRow {
            run_id: &s.run_id,
            stage: &s.stage,
            scenario: "rm",
            objective: s.objective.name(),
            base_model: &s.base_model,
            teacher: s.teacher.as_deref(),
            alpha: (s.objective == Objective::Explicit).then_some(s.alpha),
            seed: s.train.shuffle_seed,
        },
        settings: s,
        fingerprint: &fp,
        inputs,
        log: &log,
        resumed_at,
        tables: Vec::new(),
        resumes: vec![&resume],
    };
    closing::publish(store, finished, |dir| {
        closing::save_model(
            &rmodel.model,
            dir,
            &SaveExtras {
                tokenizer: Some(&tok_path),
                reward_head: Some(head.as_tensor()),
                provenance,
            },
        )
    })
    .await
}
