//! `w2s weak-label`: a trained reward model labels a split (w2s by default) into the `labels`
//! table, as the reference's ceiling runs do after training (docs/reference.md §1.8): per pair,
//! in slot orientation, the margin z = r(slot a) - r(slot b), the soft label sigmoid(z), the
//! hard label, the ground truth and whether they agree. A student trains on the soft labels.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::common;
use crate::error::{Error, Result};
use crate::progress;
use crate::scenarios::po::{self, Loss};
use crate::scenarios::rm::{self, Readout, RewardModel};
use crate::schema;
use crate::store::{fingerprint, keys, ArtifactStore};
use crate::tokenize::Tokenizer;

/// Everything that determines a `labels` part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeakLabelSettings {
    /// The labelling run: a trained run in the store, or the name given to `model`'s labels.
    pub run_id: String,
    /// A reward-model folder to use instead of the stored run `run_id`.
    pub model: Option<String>,
    pub split: String,
    /// Seed of the slot bits (must match the student's; the reference uses 0 everywhere).
    pub slot_seed: u64,
    pub max_ctx: usize,
    /// Override of the checkpoint's readout.
    pub readout: Option<Readout>,
    /// Policies: override of the tokenization the checkpoint was trained with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenization: Option<crate::tokenize::Tokenization>,
    pub device: String,
    /// Pairs per forward pass (speed only; not in the fingerprint).
    #[serde(skip)]
    pub batch_pairs: usize,
}

/// Pairs per forward pass by default.
pub const BATCH_PAIRS: usize = 8;

/// What `w2s weak-label` is asked.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// The labelling run (a trained run of the store, or the name for --model's labels).
    #[arg(long = "run", alias = "run-id")]
    pub run: String,
    /// Use this reward-model folder instead of the stored run.
    #[arg(long)]
    pub model: Option<String>,
    /// The split to label.
    #[arg(long, default_value = crate::schema::LABEL_SPLIT)]
    pub split: String,
    /// Seed of the slot swap (must match the student's).
    #[arg(long, default_value_t = 0)]
    pub slot_seed: u64,
    /// Longest sequence in tokens; longer ones keep their last tokens.
    #[arg(long, default_value_t = crate::tokenize::MAX_CTX)]
    pub max_ctx: usize,
    /// Override the readout the checkpoint was trained with.
    #[arg(long, value_enum)]
    pub readout: Option<Readout>,
    /// Policies: override the tokenization the checkpoint was trained with (w2s.json; joint for
    /// a checkpoint w2s did not train).
    #[arg(long, value_enum)]
    pub tokenization: Option<crate::tokenize::Tokenization>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = BATCH_PAIRS)]
    pub batch_pairs: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
}

impl WeakLabelSettings {
    pub fn new(r: &Request) -> WeakLabelSettings {
        WeakLabelSettings {
            run_id: r.run.clone(),
            model: r.model.clone(),
            split: r.split.clone(),
            slot_seed: r.slot_seed,
            max_ctx: r.max_ctx,
            readout: r.readout,
            tokenization: r.tokenization,
            device: r.device.clone(),
            batch_pairs: r.batch_pairs,
        }
    }
}

/// What a labelling run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelReport {
    pub pairs: usize,
    /// Agreement of the hard labels with the ground truth.
    pub accuracy: f64,
    pub up_to_date: bool,
}

/// Runs the weak-label stage.
pub async fn run(store: &ArtifactStore, s: &WeakLabelSettings, force: bool) -> Result<LabelReport> {
    if s.batch_pairs == 0 || s.max_ctx < 2 {
        return Err(Error::Config(
            "--batch-pairs must be >= 1 and --max-ctx >= 2".into(),
        ));
    }
    let pairs_manifest = common::pairs_manifest(store).await?;
    let (dir, mut inputs) = common::locate(store, &s.run_id, s.model.as_deref()).await?;
    inputs.push(common::manifest_input(&pairs_manifest));
    let fp = fingerprint("weak-label", s, &inputs);
    let key = keys::labels(&s.run_id, &s.split);
    if !force {
        if let Some(m) = store.current(&key, &fp).await? {
            let rows: u64 = m.outputs.iter().filter_map(|f| f.rows).sum();
            let mut correct = 0usize;
            for f in &m.outputs {
                for b in store.read_table_part(f).await? {
                    use datafusion::arrow::array::AsArray;
                    correct += b
                        .column_by_name("correct")
                        .expect("labels schema")
                        .as_boolean()
                        .true_count();
                }
            }
            return Ok(LabelReport {
                pairs: rows as usize,
                accuracy: correct as f64 / rows.max(1) as f64,
                up_to_date: true,
            });
        }
    }

    let device = crate::models::parse_device(&s.device)?;
    if !dir.join("reward_head.safetensors").exists() {
        return label_policy(store, s, &dir, &device, &fp, &key, inputs).await;
    }
    let rmodel = RewardModel::load_frozen(&dir, &device, s.readout)?;
    let tok = Tokenizer::load(&dir.join("tokenizer.json"))?;
    let max_ctx = s.max_ctx.min(rmodel.model.config.max_positions());
    let pairs = common::load_split(store, &s.split).await?;
    let bits = rm::slot_bits(s.slot_seed, pairs.len());

    let n = pairs.len();
    let mut margin = Vec::with_capacity(n);
    let bar = progress::items(n as u64, "labelling");
    let encode = |t: String| -> Result<Vec<u32>> { Ok(tok.encode_last(&t, max_ctx)?.0) };
    for (chunk, hs) in pairs.chunks(s.batch_pairs).zip(bits.chunks(s.batch_pairs)) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (p, &h) in chunk.iter().zip(hs) {
            let (c, r) = (encode(p.chosen_text())?, encode(p.rejected_text())?);
            let (x, y) = if h { (c, r) } else { (r, c) };
            a.push(x);
            b.push(y);
        }
        let a: Vec<&[u32]> = a.iter().map(Vec::as_slice).collect();
        let b: Vec<&[u32]> = b.iter().map(Vec::as_slice).collect();
        margin.extend(rmodel.margins(&a, &b)?.to_vec1::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    // sigmoid in f32, as the reference's torch.sigmoid on the float32 margin.
    let soft: Vec<f32> = margin.iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect();
    let hard: Vec<i64> = soft.iter().map(|&p| i64::from(p >= 0.5)).collect();
    let gt: Vec<i64> = bits.iter().map(|&h| i64::from(h)).collect();
    let correct: Vec<bool> = hard.iter().zip(&gt).map(|(a, b)| a == b).collect();
    let accuracy = correct.iter().filter(|&&c| c).count() as f64 / n as f64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![s.run_id.as_str(); n])),
        Arc::new(StringArray::from_iter_values(
            pairs.iter().map(|p| p.pair_id.as_str()),
        )),
        Arc::new(StringArray::from(vec![s.split.as_str(); n])),
        Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| p.split_index),
        )),
        Arc::new(StringArray::from(vec!["rm"; n])),
        Arc::new(Int64Array::from(gt)),
        Arc::new(Float64Array::from_iter_values(
            margin.iter().map(|&z| f64::from(z)),
        )),
        Arc::new(Float64Array::from_iter_values(
            soft.iter().map(|&p| f64::from(p)),
        )),
        Arc::new(Int64Array::from(hard)),
        Arc::new(BooleanArray::from(correct)),
    ];
    publish(store, s, &fp, &key, inputs, cols, n, accuracy).await
}

/// Labels of a policy (SimPO or DPO, docs/reference.md §1.8, §3.11): per pair in file
/// orientation, the margin (A(c) − A(r), or S(c) − S(r) for DPO, without the reference model),
/// the confidence toward the ground-truth chosen answer, and the preferred side.
async fn label_policy(
    store: &ArtifactStore,
    s: &WeakLabelSettings,
    dir: &std::path::Path,
    device: &candle_core::Device,
    fp: &str,
    key: &str,
    inputs: Vec<crate::store::InputFile>,
) -> Result<LabelReport> {
    let model = crate::models::Model::load_frozen(dir, device)?;
    let tok = Tokenizer::load(&dir.join("tokenizer.json"))?;
    let max_ctx = s.max_ctx.min(model.config.max_positions());
    let pairs = common::load_split(store, &s.split).await?;
    let (kind, trained) = super::policy::policy_kind(dir);
    let scored = super::policy::policy_scores(
        &model,
        &tok,
        &pairs,
        max_ctx,
        s.tokenization.unwrap_or(trained),
        s.batch_pairs,
        "labelling",
    )?;
    let n = pairs.len();
    let (method, margin): (&str, Vec<f64>) = match kind {
        Loss::Simpo => (
            "simpo",
            scored.sides.iter().map(|x| x.mean_c - x.mean_r).collect(),
        ),
        Loss::Dpo => (
            "dpo",
            scored.sides.iter().map(|x| x.sum_c - x.sum_r).collect(),
        ),
    };
    let soft: Vec<f64> = scored
        .sides
        .iter()
        .map(|x| po::confidence(kind, x.mean_c, x.mean_r, x.sum_c, x.sum_r))
        .collect();
    let hard: Vec<i64> = margin.iter().map(|&m| i64::from(m >= 0.0)).collect();
    let correct: Vec<bool> = hard.iter().map(|&h| h == 1).collect();
    let accuracy = correct.iter().filter(|&&c| c).count() as f64 / n.max(1) as f64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![s.run_id.as_str(); n])),
        Arc::new(StringArray::from_iter_values(
            pairs.iter().map(|p| p.pair_id.as_str()),
        )),
        Arc::new(StringArray::from(vec![s.split.as_str(); n])),
        Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| p.split_index),
        )),
        Arc::new(StringArray::from(vec![method; n])),
        Arc::new(Int64Array::from(vec![1i64; n])),
        Arc::new(Float64Array::from(margin)),
        Arc::new(Float64Array::from(soft)),
        Arc::new(Int64Array::from(hard)),
        Arc::new(BooleanArray::from(correct)),
    ];
    publish(store, s, fp, key, inputs, cols, n, accuracy).await
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    store: &ArtifactStore,
    s: &WeakLabelSettings,
    fp: &str,
    key: &str,
    inputs: Vec<crate::store::InputFile>,
    cols: Vec<ArrayRef>,
    n: usize,
    accuracy: f64,
) -> Result<LabelReport> {
    let batch = RecordBatch::try_new(schema::labels(), cols).map_err(|e| Error::Format {
        file: "labels".into(),
        msg: e.to_string(),
    })?;
    let part = store
        .write_table_part(
            "labels",
            &format!(
                "{}-{}-{}",
                common::sanitize(&s.run_id),
                s.split,
                keys::part_tag(fp)
            ),
            &batch,
        )
        .await?;
    store
        .publish("weak-label", key, fp, s, inputs, vec![part])
        .await?;
    Ok(LabelReport {
        pairs: n,
        accuracy,
        up_to_date: false,
    })
}
