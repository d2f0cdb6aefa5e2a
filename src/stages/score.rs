//! `w2s score`: a model's confidence toward the ground-truth chosen answer on every pair of a
//! split, into the `scores` table.
//!
//! A causal-LM checkpoint is scored as a policy (docs/reference.md §3.2, §4): per side the
//! response log-prob sum S(y) and mean A(y); margin = A(chosen) - A(rejected) and confidence =
//! sigmoid(margin) (SimPO). A reward model (a checkpoint with `reward_head.safetensors`, as
//! `gt-train` and `w2s-train` write) is scored by its rewards (docs/reference.md §2.2): margin =
//! r(chosen transcript) - r(rejected transcript), confidence = sigmoid(margin). Weights are
//! loaded detached, so no autograd graph is built.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::progress;
use crate::scenarios::po::{self, Loss};
use crate::scenarios::rm::{Readout, RewardModel};
use crate::schema;
use crate::stages::common::{self, load_split, sanitize, PairText};
use crate::store::{fingerprint, keys, ArtifactStore};
use crate::tokenize::{Tokenization, Tokenizer};

/// Everything that determines a `scores` part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreSettings {
    /// The model: a local folder, an object-store or HTTP(S) prefix, or `hf://owner/name`;
    /// `None` scores the trained run `run_id` of the artifact store.
    pub model: Option<String>,
    pub run_id: String,
    pub split: String,
    /// Pairs per forward pass (each pair is two sequences).
    pub batch_pairs: usize,
    /// Longest sequence; longer ones keep their last `max_ctx` tokens.
    pub max_ctx: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Weight type: `f32` (CPU default), `bf16` or `f16`. Log-probs are always computed in f32.
    pub dtype: String,
    /// Reward models: override of the checkpoint's readout.
    pub readout: Option<Readout>,
    /// Policies: override of the tokenization the checkpoint was trained with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenization: Option<Tokenization>,
}

/// The split scored by default: every analysis compares models on it.
pub const SPLIT: &str = "test";

/// What `w2s score` is asked: the flags of the command (and, for a pipeline's scoring steps,
/// `[score]` of its file for [`ScoreOpts`]).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// The model (config.json, *.safetensors, tokenizer.json): a local folder, an s3:// or
    /// http(s):// prefix, or hf://owner/name[@revision] (downloaded once into $W2S_CACHE).
    /// Without it, the trained run --run-id of the artifact store is scored.
    #[arg(long)]
    pub model: Option<String>,
    /// Name of the scored run in the `scores` table (default: the model folder's name).
    #[arg(long, alias = "run")]
    pub run_id: Option<String>,
    /// Reward models: override the readout the checkpoint was trained with.
    #[arg(long, value_enum)]
    pub readout: Option<Readout>,
    /// Policies: override the tokenization the checkpoint was trained with (w2s.json; joint for
    /// a checkpoint w2s did not train).
    #[arg(long, value_enum)]
    pub tokenization: Option<Tokenization>,
    /// Split to score.
    #[arg(long, default_value = SPLIT)]
    pub split: String,
    /// Longest sequence in tokens; longer ones keep their last tokens (reference: 512).
    #[arg(long, default_value_t = crate::tokenize::MAX_CTX)]
    pub max_ctx: usize,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
    #[command(flatten)]
    #[serde(flatten)]
    pub opts: ScoreOpts,
}

/// How scoring runs: the `w2s score` flags that a pipeline file's `[score]` also sets.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreOpts {
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_pairs: usize,
    /// Weight type: f32, bf16 or f16 (half types are meant for CUDA).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl Default for ScoreOpts {
    fn default() -> Self {
        crate::cli::argv::defaults()
    }
}

impl ScoreSettings {
    /// The settings of a request; the run is named after the model folder unless it says.
    pub fn new(r: &Request) -> Result<ScoreSettings> {
        let run_id = match (&r.run_id, &r.model) {
            (Some(id), _) => id.clone(),
            (None, Some(m)) => crate::models::source::model_name(m)?,
            (None, None) => {
                return Err(Error::Config(
                    "give --model FOLDER, or --run-id RUN to score a trained run".into(),
                ))
            }
        };
        Ok(ScoreSettings {
            model: r.model.clone(),
            run_id,
            split: r.split.clone(),
            batch_pairs: r.opts.batch_pairs,
            max_ctx: r.max_ctx,
            device: r.device.clone(),
            dtype: r.opts.dtype.clone(),
            readout: r.readout,
            tokenization: r.tokenization,
        })
    }
}

/// What a score run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    pub pairs: usize,
    pub accuracy: f64,
    pub tokens: usize,
    pub truncated: usize,
    pub up_to_date: bool,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Runs the score stage.
pub async fn run(store: &ArtifactStore, s: &ScoreSettings, force: bool) -> Result<ScoreReport> {
    if s.batch_pairs == 0 || s.max_ctx < 2 {
        return Err(Error::Config(
            "--batch-pairs must be >= 1 and --max-ctx >= 2".into(),
        ));
    }
    let pairs_manifest = common::pairs_manifest(store).await?;
    let (model_dir, mut inputs) = common::locate(store, &s.run_id, s.model.as_deref()).await?;
    inputs.push(common::manifest_input(&pairs_manifest));
    // The batch size changes speed, not results, so it is not part of the fingerprint.
    let identity = ScoreSettings {
        batch_pairs: 0,
        ..s.clone()
    };
    let fingerprint = fingerprint("score", &identity, &inputs);
    let key = keys::scores(&s.run_id, &s.split);
    if !force {
        if let Some(m) = store.current(&key, &fingerprint).await? {
            let part = store.read_table_part(&m.outputs[0]).await?;
            let n: usize = part.iter().map(|b| b.num_rows()).sum();
            let correct: usize = part
                .iter()
                .map(|b| {
                    b.column_by_name("correct")
                        .expect("scores schema")
                        .as_boolean()
                        .true_count()
                })
                .sum();
            return Ok(ScoreReport {
                pairs: n,
                accuracy: correct as f64 / n.max(1) as f64,
                tokens: 0,
                truncated: 0,
                up_to_date: true,
            });
        }
    }

    let pairs = load_split(store, &s.split).await?;
    let device = crate::models::parse_device(&s.device)?;
    if model_dir.join("reward_head.safetensors").exists() {
        let (b, r) = score_rm(&model_dir, &device, s, &pairs)?;
        return finish(store, s, &fingerprint, &key, inputs, b, r).await;
    }
    let model = Model::load_frozen_as(&model_dir, &device, crate::models::parse_dtype(&s.dtype)?)?;
    let tok = Tokenizer::load(&model_dir.join("tokenizer.json"))?;
    let max_ctx = s.max_ctx.min(model.config.max_positions());
    let (kind, trained) = super::policy::policy_kind(&model_dir);
    let mode = s.tokenization.unwrap_or(trained);
    let scored = super::policy::policy_scores(
        &model,
        &tok,
        &pairs,
        max_ctx,
        mode,
        s.batch_pairs,
        "scoring",
    )?;
    let mut b = ScoreBuilders::default();
    let mut correct = 0usize;
    for (p, x) in pairs.iter().zip(&scored.sides) {
        let (margin, method) = match kind {
            Loss::Simpo => (x.mean_c - x.mean_r, "simpo"),
            Loss::Dpo => (x.sum_c - x.sum_r, "dpo"),
        };
        let confidence = po::confidence(kind, x.mean_c, x.mean_r, x.sum_c, x.sum_r);
        correct += usize::from(margin >= 0.0);
        b.push(
            s,
            p,
            method,
            (margin, confidence),
            [Some(x.sum_c), Some(x.sum_r), Some(x.mean_c), Some(x.mean_r)],
            [x.tokens_c, x.tokens_r],
        );
    }
    let (tokens, truncated) = (scored.tokens, scored.truncated);

    let report = ScoreReport {
        pairs: pairs.len(),
        accuracy: correct as f64 / pairs.len() as f64,
        tokens,
        truncated,
        up_to_date: false,
    };
    finish(store, s, &fingerprint, &key, inputs, b, report).await
}

/// Writes and publishes the scores part.
async fn finish(
    store: &ArtifactStore,
    s: &ScoreSettings,
    fingerprint: &str,
    key: &str,
    inputs: Vec<crate::store::InputFile>,
    b: ScoreBuilders,
    report: ScoreReport,
) -> Result<ScoreReport> {
    let batch = b.finish()?;
    let part = store
        .write_table_part(
            "scores",
            &format!(
                "score-{}-{}-{}",
                sanitize(&s.run_id),
                s.split,
                keys::part_tag(fingerprint)
            ),
            &batch,
        )
        .await?;
    store
        .publish("score", key, fingerprint, s, inputs, vec![part])
        .await?;
    Ok(report)
}

/// Scores a reward model: margin r(chosen) - r(rejected) on the full transcripts.
fn score_rm(
    dir: &Path,
    device: &Device,
    s: &ScoreSettings,
    pairs: &[PairText],
) -> Result<(ScoreBuilders, ScoreReport)> {
    let rmodel = RewardModel::load_frozen(dir, device, s.readout)?;
    let tok = Tokenizer::load(&dir.join("tokenizer.json"))?;
    let max_ctx = s.max_ctx.min(rmodel.model.config.max_positions());
    let mut b = ScoreBuilders::default();
    let bar = progress::items(pairs.len() as u64, "scoring");
    let (mut tokens, mut truncated, mut correct) = (0usize, 0usize, 0usize);
    let mut encode = |t: String| -> Result<Vec<u32>> {
        let (ids, dropped) = tok.encode_last(&t, max_ctx)?;
        truncated += usize::from(dropped > 0);
        tokens += ids.len();
        Ok(ids)
    };
    for chunk in pairs.chunks(s.batch_pairs) {
        let mut c = Vec::new();
        let mut r = Vec::new();
        for p in chunk {
            c.push(encode(p.chosen_text())?);
            r.push(encode(p.rejected_text())?);
        }
        let cs: Vec<&[u32]> = c.iter().map(Vec::as_slice).collect();
        let rs: Vec<&[u32]> = r.iter().map(Vec::as_slice).collect();
        let z: Vec<f32> = rmodel.margins(&cs, &rs)?.to_vec1()?;
        for (i, p) in chunk.iter().enumerate() {
            let margin = f64::from(z[i]);
            correct += usize::from(margin >= 0.0);
            b.push(
                s,
                p,
                "rm",
                (margin, sigmoid(margin)),
                [None; 4],
                [c[i].len() as i64, r[i].len() as i64],
            );
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let report = ScoreReport {
        pairs: pairs.len(),
        accuracy: correct as f64 / pairs.len() as f64,
        tokens,
        truncated,
        up_to_date: false,
    };
    Ok((b, report))
}

#[derive(Default)]
struct ScoreBuilders {
    run_id: StringBuilder,
    pair_id: StringBuilder,
    split: StringBuilder,
    split_index: Int64Builder,
    method: StringBuilder,
    margin: Float64Builder,
    confidence: Float64Builder,
    correct: BooleanBuilder,
    logp: [Float64Builder; 4],
    tokens: [Int64Builder; 2],
}

impl ScoreBuilders {
    fn push(
        &mut self,
        s: &ScoreSettings,
        p: &PairText,
        method: &str,
        (margin, confidence): (f64, f64),
        logp: [Option<f64>; 4],
        tokens: [i64; 2],
    ) {
        self.run_id.append_value(&s.run_id);
        self.pair_id.append_value(&p.pair_id);
        self.split.append_value(&s.split);
        self.split_index.append_value(p.split_index);
        self.method.append_value(method);
        self.margin.append_value(margin);
        self.confidence.append_value(confidence);
        self.correct.append_value(margin >= 0.0);
        for (b, v) in self.logp.iter_mut().zip(logp) {
            b.append_option(v);
        }
        for (b, v) in self.tokens.iter_mut().zip(tokens) {
            b.append_value(v);
        }
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let [l0, l1, l2, l3] = &mut self.logp;
        let [t0, t1] = &mut self.tokens;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.pair_id.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.split_index.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.margin.finish()),
            Arc::new(self.confidence.finish()),
            Arc::new(self.correct.finish()),
            Arc::new(l0.finish()),
            Arc::new(l1.finish()),
            Arc::new(l2.finish()),
            Arc::new(l3.finish()),
            Arc::new(t0.finish()),
            Arc::new(t1.finish()),
        ];
        RecordBatch::try_new(schema::scores(), columns).map_err(|e| Error::Format {
            file: "scores".into(),
            msg: e.to_string(),
        })
    }
}
