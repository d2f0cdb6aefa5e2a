//! The reward-model training run behind `gt-train --scenario rm` and `w2s-train --scenario
//! rm` (reference-spec §2): builds the slot-oriented samples, trains backbone + head with the
//! shared optimizer loop, and publishes the checkpoint, its `train_log` and its `runs` row
//! under one manifest (`train/<run id>`).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Tensor, Var};
use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::common::{self, PairText};
use super::split;
use crate::error::{Error, Result};
use crate::models::save::SaveExtras;
use crate::models::Model;
use crate::optim::{Adam, AdamConfig};
use crate::scenarios::rm::{self, Head, Objective, Readout, RewardModel, Sample};
use crate::schema;
use crate::store::{fingerprint, ArtifactStore, InputFile, OutputFile};
use crate::tokenize::Tokenizer;
use crate::train::{self, LoopSettings, MicroOut, Resume, StepLog};

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
    /// second stage of bootstrapping, reference-spec §3.9). Absent from the fingerprint when
    /// it is the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_split: Option<String>,
    pub objective: Objective,
    /// Weight of the explicit conflict term.
    pub alpha: f64,
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
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Save resumable state every this many optimizer steps (0: never). Not part of the
    /// fingerprint: it does not change the result.
    #[serde(skip)]
    pub save_every: usize,
}

impl RmTrainSettings {
    /// The split a student trains on.
    pub fn label_split(&self) -> &str {
        self.label_split.as_deref().unwrap_or("w2s")
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub steps: usize,
    pub pairs: usize,
    pub tokens: u64,
    pub final_loss: f64,
    pub seconds: f64,
    pub resumed_at: usize,
    pub up_to_date: bool,
}

/// Teacher labels on the w2s split, by pair id: (slot bit of the teacher, soft label).
async fn teacher_labels(
    store: &ArtifactStore,
    teacher: &str,
    split: &str,
) -> Result<(HashMap<String, (bool, f64)>, InputFile)> {
    let key = crate::stages::weak_label::key(teacher, split);
    let m = store.manifest(&key).await?.ok_or_else(|| {
        Error::Config(format!(
            "{}: no labels of `{teacher}` on the {split} split (run `w2s weak-label --run {teacher} --split {split}` first)",
            store.root()
        ))
    })?;
    // Labels made by an earlier checkpoint of the teacher must not train a student silently.
    if let Some(run) = store.manifest(&common::run_key(teacher)).await? {
        let used = m
            .inputs
            .iter()
            .find(|i| i.uri == format!("manifest:{}", run.key));
        if used.is_some_and(|i| i.sha256 != run.fingerprint) {
            return Err(Error::Config(format!(
                "the labels of `{teacher}` were made by an earlier checkpoint of it (it was retrained since): rerun `w2s weak-label --run {teacher}`"
            )));
        }
    }
    let mut out = HashMap::new();
    for f in m
        .outputs
        .iter()
        .filter(|f| f.table.as_deref() == Some("labels"))
    {
        for b in store.read_table_part(f).await? {
            let ids = b
                .column_by_name("pair_id")
                .expect("labels schema")
                .as_string::<i32>();
            let gt = b
                .column_by_name("gt_label")
                .expect("labels schema")
                .as_primitive::<Int64Type>();
            let soft = b
                .column_by_name("soft_label")
                .expect("labels schema")
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            for i in 0..b.num_rows() {
                out.insert(ids.value(i).to_string(), (gt.value(i) == 1, soft.value(i)));
            }
        }
    }
    Ok((out, common::manifest_input(&m)))
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

/// Trains (or finds up to date) the reward model `s` describes.
pub async fn run(store: &ArtifactStore, s: &RmTrainSettings, force: bool) -> Result<TrainReport> {
    let bad_alpha = !s.alpha.is_finite() || s.alpha < 0.0;
    let bad_lr = !s.train.lr.is_finite() || s.train.lr <= 0.0;
    if bad_alpha || bad_lr || s.max_ctx < 2 {
        return Err(Error::Config(
            "--alpha must be >= 0, --max-ctx >= 2 and --lr > 0".into(),
        ));
    }
    let pairs_manifest = store.manifest(split::KEY).await?.ok_or_else(|| {
        Error::Config(format!(
            "{}: no `pairs` table (run `w2s split` first)",
            store.root()
        ))
    })?;
    // `run:<id>`: a model trained or pretrained in this root (checked against its manifest).
    let base_dir = match s.base_model.strip_prefix("run:") {
        Some(id) => common::open_run(store, id).await?.0,
        None => crate::models::source::materialize(&s.base_model).await?,
    };
    let mut inputs = common::model_inputs(&base_dir)?;
    inputs.push(common::manifest_input(&pairs_manifest));
    let teacher = match &s.teacher {
        Some(t) => {
            let (labels, input) = teacher_labels(store, t, s.label_split()).await?;
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
    let key = common::run_key(&s.run_id);
    if !force {
        if let Some(m) = store.current(&key, &fp).await? {
            return up_to_date(store, &m).await;
        }
    }

    let device = crate::models::parse_device(&s.device)?;
    let model = Model::load(&base_dir, &device)?;
    let tok_path = base_dir.join("tokenizer.json");
    let tok = Tokenizer::load(&tok_path)?;
    let max_ctx = s.max_ctx.min(model.config.max_positions());

    // Training samples (reference-spec §1.4, §2.3).
    let train_split = if teacher.is_some() {
        s.label_split()
    } else {
        "gt"
    };
    let pairs = common::load_split(store, train_split).await?;
    let mut data = match &teacher {
        None => samples(&tok, &pairs, s.slot_seed, max_ctx, |_, h| {
            Ok(f32::from(u8::from(h)))
        })?,
        Some(labels) => samples(&tok, &pairs, s.slot_seed, max_ctx, |p, h| {
            let &(teacher_bit, soft) = labels.get(&p.pair_id).ok_or_else(|| {
                Error::Config(format!(
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
        let helpful = common::load_split(store, "helpful").await.map_err(|_| {
            Error::Config(
                "--objective implicit needs helpful pairs (give `w2s split` a --helpful file)"
                    .into(),
            )
        })?;
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
    // The reward model is the backbone plus the head (reference-spec §2.1): an untied LM
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
    let mut adam = Adam::named(
        vars.clone(),
        AdamConfig {
            lr: s.train.lr,
            ..AdamConfig::default()
        },
    );
    let resume = Resume {
        store,
        prefix: format!("state/{key}"),
        fingerprint: fp.clone(),
        every: s.save_every,
    };
    let batch = s.train.batch as f32;
    let alpha = s.alpha as f32;
    let sizes: Vec<usize> = data.iter().map(|x| x.a.len() + x.b.len()).collect();
    let (resumed_at, log) = train::optimize(&mut adam, &vars, &s.train, &sizes, &resume, |mb| {
        let a: Vec<&[u32]> = mb.iter().map(|&i| data[i].a.as_slice()).collect();
        let b: Vec<&[u32]> = mb.iter().map(|&i| data[i].b.as_slice()).collect();
        let z = rmodel.margins(&a, &b)?;
        let zs: Vec<f32> = z.to_vec1()?;
        let (mut loss, mut correct, mut tokens) = (0.0f64, 0usize, 0usize);
        let mut dz = Vec::with_capacity(mb.len());
        for (j, &i) in mb.iter().enumerate() {
            let x = &data[i];
            let l = rm::pair_loss(zs[j], x.label, x.gt, s.objective, alpha);
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
            grads: surrogate.backward()?,
        })
    })
    .await?;
    // Publish: checkpoint files, the train_log part and the runs row, under one manifest.
    let tag = &fp[..16];
    let tmp = std::env::temp_dir().join(format!(
        "w2s-{}-{}-{tag}",
        common::sanitize(&s.run_id),
        std::process::id()
    ));
    let provenance = serde_json::json!({
        "run_id": s.run_id,
        "stage": s.stage,
        "scenario": "rm",
        "readout": s.readout,
        "fingerprint": fp,
        "settings": s,
    });
    rmodel.model.save(
        &tmp,
        &SaveExtras {
            tokenizer: Some(&tok_path),
            reward_head: Some(head.as_tensor()),
            provenance,
        },
    )?;
    let uploaded = common::upload_checkpoint(store, &s.run_id, tag, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let mut outputs = uploaded?;
    let report = TrainReport {
        steps: log.len(),
        pairs: log.iter().map(|l| l.pairs as usize).sum(),
        tokens: log.iter().map(|l| l.tokens).sum(),
        final_loss: log.last().map(|l| l.loss).unwrap_or(f64::NAN),
        seconds: log.iter().map(|l| l.seconds).sum(),
        resumed_at,
        up_to_date: false,
    };
    let part = format!("{}-{}", common::sanitize(&s.run_id), tag);
    let tables = async {
        let mut v = vec![
            store
                .write_table_part("train_log", &part, &train_log_batch(&s.run_id, &log)?)
                .await?,
        ];
        v.push(
            store
                .write_table_part("runs", &part, &runs_batch(s, &fp, &report)?)
                .await?,
        );
        Ok::<Vec<OutputFile>, Error>(v)
    }
    .await;
    match tables {
        Ok(t) => outputs.extend(t),
        Err(e) => {
            store.discard(&outputs).await;
            return Err(e);
        }
    }
    store
        .publish(&s.stage, &key, &fp, s, inputs, outputs)
        .await?;
    resume.clear().await?;
    Ok(report)
}

/// The report of a run found up to date (from its published `runs` part).
pub(crate) async fn up_to_date(
    store: &ArtifactStore,
    m: &crate::store::Manifest,
) -> Result<TrainReport> {
    let mut report = TrainReport {
        steps: 0,
        pairs: 0,
        tokens: 0,
        final_loss: f64::NAN,
        seconds: 0.0,
        resumed_at: 0,
        up_to_date: true,
    };
    for f in m
        .outputs
        .iter()
        .filter(|f| f.table.as_deref() == Some("runs"))
    {
        for b in store.read_table_part(f).await? {
            let i64c = |n: &str| {
                b.column_by_name(n)
                    .expect("runs schema")
                    .as_primitive::<Int64Type>()
                    .value(0)
            };
            report.steps = i64c("steps") as usize;
            report.pairs = i64c("pairs") as usize;
            report.tokens = i64c("tokens") as u64;
            report.final_loss = b
                .column_by_name("final_loss")
                .expect("runs schema")
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0);
        }
    }
    Ok(report)
}

fn batch_err(table: &str) -> impl Fn(datafusion::arrow::error::ArrowError) -> Error + '_ {
    move |e| Error::Format {
        file: table.into(),
        msg: e.to_string(),
    }
}

/// The `train_log` rows of a run (every training stage writes them the same way).
pub(crate) fn train_log_batch(run_id: &str, log: &[StepLog]) -> Result<RecordBatch> {
    let n = log.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        Arc::new(Int64Array::from_iter_values(
            log.iter().map(|l| l.step as i64),
        )),
        Arc::new(Float64Array::from_iter_values(log.iter().map(|l| l.loss))),
        Arc::new(Float64Array::from_iter_values(log.iter().map(|l| l.lr))),
        Arc::new(Float64Array::from_iter_values(
            log.iter().map(|l| l.accuracy),
        )),
        Arc::new(Int64Array::from_iter_values(
            log.iter().map(|l| l.pairs as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            log.iter().map(|l| l.tokens as i64),
        )),
        Arc::new(Float64Array::from_iter_values(
            log.iter().map(|l| l.seconds),
        )),
    ];
    RecordBatch::try_new(schema::train_log(), cols).map_err(batch_err("train_log"))
}

fn runs_batch(s: &RmTrainSettings, fp: &str, r: &TrainReport) -> Result<RecordBatch> {
    let settings = serde_json::to_string(s).expect("settings serialize");
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![s.run_id.as_str()])),
        Arc::new(StringArray::from(vec![s.stage.as_str()])),
        Arc::new(StringArray::from(vec!["rm"])),
        Arc::new(StringArray::from(vec![s.objective.name()])),
        Arc::new(StringArray::from(vec![s.base_model.as_str()])),
        Arc::new(StringArray::from(vec![s.teacher.as_deref()])),
        Arc::new(Float64Array::from(vec![(s.objective
            == Objective::Explicit)
            .then_some(s.alpha)])),
        Arc::new(Int64Array::from(vec![s.train.shuffle_seed as i64])),
        Arc::new(StringArray::from(vec![settings])),
        Arc::new(StringArray::from(vec![fp])),
        Arc::new(Int64Array::from(vec![r.steps as i64])),
        Arc::new(Int64Array::from(vec![r.pairs as i64])),
        Arc::new(Int64Array::from(vec![r.tokens as i64])),
        Arc::new(Float64Array::from(vec![r.final_loss])),
        Arc::new(Int64Array::from(vec![r.resumed_at as i64])),
        Arc::new(Float64Array::from(vec![r.seconds])),
        Arc::new(Float64Array::from(vec![
            r.tokens as f64 / r.seconds.max(1e-9),
        ])),
    ];
    RecordBatch::try_new(schema::runs(), cols).map_err(batch_err("runs"))
}
