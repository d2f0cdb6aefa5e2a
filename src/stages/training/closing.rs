//! How every training run ends, written once: the checkpoint saved beside the store and
//! uploaded, its `train_log` part and `runs` row written, all published under one manifest
//! (`train/<run>`), then the resumable state cleared. A failure on the way discards what
//! was uploaded, so nothing partial is ever committed.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::save::SaveExtras;
use crate::models::Model;
use crate::schema;
use crate::stages::common;
use crate::store::{keys, ArtifactStore, InputFile, Manifest, OutputFile};
use crate::train::{Resume, StepLog};

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

impl TrainReport {
    /// The totals of a finished run's log.
    pub fn of(log: &[StepLog], resumed_at: usize) -> TrainReport {
        TrainReport {
            steps: log.len(),
            pairs: log.iter().map(|l| l.pairs as usize).sum(),
            tokens: log.iter().map(|l| l.tokens).sum(),
            final_loss: log.last().map(|l| l.loss).unwrap_or(f64::NAN),
            seconds: log.iter().map(|l| l.seconds).sum(),
            resumed_at,
            up_to_date: false,
        }
    }

    /// The report of run `key` if it is published under fingerprint `fp` (and not `force`d).
    pub async fn current(
        store: &ArtifactStore,
        key: &str,
        fp: &str,
        force: bool,
    ) -> Result<Option<TrainReport>> {
        if force {
            return Ok(None);
        }
        match store.current(key, fp).await? {
            Some(m) => Ok(Some(TrainReport::published(store, &m).await?)),
            None => Ok(None),
        }
    }

    /// The report of a run found up to date, from its published `runs` part.
    pub async fn published(store: &ArtifactStore, m: &Manifest) -> Result<TrainReport> {
        let mut report = TrainReport::of(&[], 0);
        report.up_to_date = true;
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
                    .as_primitive::<Float64Type>()
                    .value(0);
            }
        }
        Ok(report)
    }
}

/// The `runs` row of a run: who it is (the rest comes from its report).
pub struct RunRow<'a> {
    pub run_id: &'a str,
    /// `pretrain`, `gt-train` or `w2s-train`.
    pub stage: &'a str,
    /// `lm`, `rm`, `simpo` or `dpo`.
    pub scenario: &'a str,
    pub objective: &'a str,
    pub base_model: &'a str,
    pub teacher: Option<&'a str>,
    /// The explicit conflict's weight (explicit runs only).
    pub alpha: Option<f64>,
    pub seed: u64,
}

/// A run ready to publish.
pub struct Finished<'a, S: Serialize> {
    pub row: RunRow<'a>,
    /// The fingerprinted settings (recorded in the `runs` row and the manifest).
    pub settings: &'a S,
    pub fingerprint: &'a str,
    pub inputs: Vec<InputFile>,
    pub log: &'a [StepLog],
    pub resumed_at: usize,
    /// Further tables of the run (the probe's `knowledge`).
    pub tables: Vec<(&'static str, RecordBatch)>,
    /// The resumable state of every phase, cleared once the run is published.
    pub resumes: Vec<&'a Resume<'a>>,
}

/// Saves (through `save`, into a fresh local folder), uploads and publishes a finished run;
/// returns its report.
pub async fn publish<S: Serialize>(
    store: &ArtifactStore,
    f: Finished<'_, S>,
    save: impl FnOnce(&Path) -> Result<()>,
) -> Result<TrainReport> {
    let run_id = f.row.run_id;
    let tag = keys::part_tag(f.fingerprint);
    let tmp = std::env::temp_dir().join(format!(
        "w2s-{}-{}-{tag}",
        common::sanitize(run_id),
        std::process::id()
    ));
    let saved = save(&tmp);
    let uploaded = match saved {
        Ok(()) => upload(store, run_id, tag, &tmp).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let mut outputs = uploaded?;
    let report = TrainReport::of(f.log, f.resumed_at);
    let part = format!("{}-{}", common::sanitize(run_id), tag);
    let tables = async {
        let mut v = vec![
            store
                .write_table_part("train_log", &part, &train_log_batch(run_id, f.log)?)
                .await?,
            store
                .write_table_part(
                    "runs",
                    &part,
                    &runs_batch(&f.row, f.settings, f.fingerprint, &report)?,
                )
                .await?,
        ];
        for (table, b) in &f.tables {
            v.push(store.write_table_part(table, &part, b).await?);
        }
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
        .publish(
            f.row.stage,
            &keys::train(run_id),
            f.fingerprint,
            f.settings,
            f.inputs,
            outputs,
        )
        .await?;
    for r in f.resumes {
        r.clear().await?;
    }
    Ok(report)
}

/// Saves a trained model into `dir` in Hugging Face layout (LoRA adapters folded in, so every
/// later stage reads it like any checkpoint) and, under LoRA, the adapters alone in PEFT's
/// layout into `dir/adapter` (published beside the checkpoint as `<tag>-adapter`).
pub fn save_model(model: &Model, dir: &Path, extras: &SaveExtras) -> Result<()> {
    model.save(dir, extras)?;
    if model.lora_spec().is_some() {
        model.save_adapter(&dir.join(ADAPTER))?;
    }
    Ok(())
}

/// The folder of a run's LoRA adapter, beside its checkpoint.
pub const ADAPTER: &str = "adapter";

/// Uploads the checkpoint files of `dir` to `models/<run>/<tag>/` and each subfolder `<sub>`
/// to `models/<run>/<tag>-<sub>/`; on a failure what was uploaded is discarded.
async fn upload(
    store: &ArtifactStore,
    run_id: &str,
    tag: &str,
    dir: &Path,
) -> Result<Vec<OutputFile>> {
    let mut outputs = common::upload_checkpoint(store, run_id, tag, dir).await?;
    let mut subs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for sub in subs {
        let name = sub.file_name().and_then(|n| n.to_str()).unwrap_or("sub");
        match common::upload_checkpoint(store, run_id, &format!("{tag}-{name}"), &sub).await {
            Ok(files) => outputs.extend(files),
            Err(e) => {
                store.discard(&outputs).await;
                return Err(e);
            }
        }
    }
    Ok(outputs)
}

pub(crate) fn batch_err(
    table: &str,
) -> impl Fn(datafusion::arrow::error::ArrowError) -> Error + '_ {
    move |e| Error::Format {
        file: table.into(),
        msg: e.to_string(),
    }
}

/// The `train_log` rows of a run.
fn train_log_batch(run_id: &str, log: &[StepLog]) -> Result<RecordBatch> {
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

/// The one `runs` row of a run.
fn runs_batch(
    row: &RunRow,
    settings: &impl Serialize,
    fp: &str,
    r: &TrainReport,
) -> Result<RecordBatch> {
    let settings = serde_json::to_string(settings).expect("settings serialize");
    let per_s = if r.seconds > 0.0 {
        r.tokens as f64 / r.seconds
    } else {
        0.0
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![row.run_id])),
        Arc::new(StringArray::from(vec![row.stage])),
        Arc::new(StringArray::from(vec![row.scenario])),
        Arc::new(StringArray::from(vec![row.objective])),
        Arc::new(StringArray::from(vec![row.base_model])),
        Arc::new(StringArray::from(vec![row.teacher])),
        Arc::new(Float64Array::from(vec![row.alpha])),
        Arc::new(Int64Array::from(vec![row.seed as i64])),
        Arc::new(StringArray::from(vec![settings])),
        Arc::new(StringArray::from(vec![fp])),
        Arc::new(Int64Array::from(vec![r.steps as i64])),
        Arc::new(Int64Array::from(vec![r.pairs as i64])),
        Arc::new(Int64Array::from(vec![r.tokens as i64])),
        Arc::new(Float64Array::from(vec![r.final_loss])),
        Arc::new(Int64Array::from(vec![r.resumed_at as i64])),
        Arc::new(Float64Array::from(vec![r.seconds])),
        Arc::new(Float64Array::from(vec![per_s])),
    ];
    RecordBatch::try_new(schema::runs(), cols).map_err(batch_err("runs"))
}
