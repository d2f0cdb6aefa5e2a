//! `w2s score`: a model's confidence toward the ground-truth chosen answer on every pair of a
//! split, into the `scores` table.
//!
//! A causal-LM checkpoint is scored as a policy (reference-spec §3.2, §4): per side the
//! response log-prob sum S(y) and mean A(y); margin = A(chosen) - A(rejected) and confidence =
//! sigmoid(margin) (SimPO). Weights are loaded detached, so no autograd graph is built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::readout::response_logprobs;
use crate::models::{ops, Model};
use crate::progress;
use crate::schema;
use crate::stages::split;
use crate::store::{fingerprint, sha256_hex, ArtifactStore, InputFile};
use crate::tokenize::Tokenizer;

/// Everything that determines a `scores` part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreSettings {
    /// The model: a local folder, an object-store or HTTP(S) prefix, or `hf://owner/name`.
    pub model: String,
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

/// One pair of the split, as text.
struct PairText {
    pair_id: String,
    split_index: i64,
    prompt: String,
    chosen: String,
    rejected_prompt: String,
    rejected: String,
}

async fn load_split(store: &ArtifactStore, split_name: &str) -> Result<Vec<PairText>> {
    let batches = store.read_table("pairs").await?;
    if batches.is_empty() {
        return Err(Error::Config(format!(
            "{}: no `pairs` table (run `w2s split` first)",
            store.root()
        )));
    }
    let mut out = Vec::new();
    for b in &batches {
        let s = |name: &str| {
            b.column_by_name(name)
                .expect("pairs schema")
                .as_string::<i32>()
                .clone()
        };
        let (ids, splits, prompts, chosen, rejected, rprompt) = (
            s("pair_id"),
            s("split"),
            s("prompt"),
            s("chosen"),
            s("rejected"),
            s("rejected_prompt"),
        );
        let idx = b
            .column_by_name("split_index")
            .expect("pairs schema")
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            if splits.value(i) != split_name {
                continue;
            }
            let p = prompts.value(i).to_string();
            out.push(PairText {
                pair_id: ids.value(i).to_string(),
                split_index: idx.value(i),
                rejected_prompt: if rprompt.is_null(i) {
                    p.clone()
                } else {
                    rprompt.value(i).to_string()
                },
                prompt: p,
                chosen: chosen.value(i).to_string(),
                rejected: rejected.value(i).to_string(),
            });
        }
    }
    out.sort_by_key(|p| p.split_index);
    if out.is_empty() {
        return Err(Error::Config(format!(
            "{}: the pairs table has no rows in split `{split_name}`",
            store.root()
        )));
    }
    Ok(out)
}

/// Files of a model folder that determine its outputs, with their checksums.
fn model_inputs(dir: &Path) -> Result<Vec<InputFile>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json"
                || n == "tokenizer.json"
                || n.ends_with(".safetensors")
                || n.ends_with(".safetensors.index.json")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|source| Error::Io {
                path: p.display().to_string(),
                source,
            })?;
            Ok(InputFile {
                uri: p.display().to_string(),
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            })
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Right-pads rows with id 0 and returns (ids, attention mask, response mask).
fn pad(rows: &[(Vec<u32>, Vec<u32>)], device: &Device) -> Result<(Tensor, Vec<Vec<u32>>, Tensor)> {
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len());
    let mut attn = Vec::with_capacity(rows.len());
    let mut resp = Vec::with_capacity(rows.len());
    for (i, m) in rows {
        let n = i.len();
        let mut a = i.clone();
        a.resize(t, 0);
        ids.push(a);
        let mut am = vec![1u32; n];
        am.resize(t, 0);
        attn.push(am);
        let mut rm = m.clone();
        rm.resize(t, 0);
        resp.push(rm);
    }
    Ok((
        ops::ids_tensor(&ids, device)?,
        attn,
        ops::mask_tensor(&resp, device)?,
    ))
}

/// Per-side log-prob results: (sum, mean, count).
type SideScores = Vec<(f64, f64, i64)>;

fn score_batch(model: &Model, rows: &[(Vec<u32>, Vec<u32>)]) -> Result<SideScores> {
    let (ids, attn, resp) = pad(rows, model.device())?;
    let hidden = model.hidden(&ids, &attn)?;
    let logits = model.logits(&hidden)?;
    let lp = response_logprobs(&logits, &ids, &resp)?;
    let sum: Vec<f32> = lp.sum.to_dtype(DType::F32)?.to_vec1()?;
    let mean: Vec<f32> = lp.mean.to_dtype(DType::F32)?.to_vec1()?;
    let count: Vec<f32> = lp.count.to_dtype(DType::F32)?.to_vec1()?;
    Ok((0..rows.len())
        .map(|i| (sum[i] as f64, mean[i] as f64, count[i] as i64))
        .collect())
}

/// Runs the score stage.
pub async fn run(store: &ArtifactStore, s: &ScoreSettings, force: bool) -> Result<ScoreReport> {
    if s.batch_pairs == 0 || s.max_ctx < 2 {
        return Err(Error::Config(
            "--batch-pairs must be >= 1 and --max-ctx >= 2".into(),
        ));
    }
    let pairs_manifest = store.manifest(split::KEY).await?.ok_or_else(|| {
        Error::Config(format!(
            "{}: no `pairs` table (run `w2s split` first)",
            store.root()
        ))
    })?;
    let model_dir = crate::models::source::materialize(&s.model).await?;
    let mut inputs = model_inputs(&model_dir)?;
    inputs.push(InputFile {
        uri: "manifest:split".into(),
        bytes: 0,
        sha256: pairs_manifest.fingerprint.clone(),
    });
    // The batch size changes speed, not results, so it is not part of the fingerprint.
    let identity = ScoreSettings {
        batch_pairs: 0,
        ..s.clone()
    };
    let fingerprint = fingerprint("score", &identity, &inputs);
    let key = format!("score/{}/{}", s.run_id, s.split);
    if !force {
        if let Some(m) = store.manifest(&key).await? {
            if m.fingerprint == fingerprint {
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
    }

    let pairs = load_split(store, &s.split).await?;
    let device = crate::models::parse_device(&s.device)?;
    let model = Model::load_frozen_as(&model_dir, &device, crate::models::parse_dtype(&s.dtype)?)?;
    let tok = Tokenizer::load(&model_dir.join("tokenizer.json"))?;
    let max_ctx = s.max_ctx.min(model.config.max_positions());

    let mut b = ScoreBuilders::default();
    let bar = progress::items(pairs.len() as u64, "scoring");
    let (mut tokens, mut truncated, mut correct) = (0usize, 0usize, 0usize);
    for chunk in pairs.chunks(s.batch_pairs) {
        let mut rows = Vec::with_capacity(chunk.len() * 2);
        for p in chunk {
            let c = tok.encode_side(&p.prompt, &p.chosen, max_ctx)?;
            truncated += usize::from(c.truncated > 0);
            tokens += c.ids.len();
            rows.push((c.ids, c.response_mask));
        }
        for p in chunk {
            let r = tok.encode_side(&p.rejected_prompt, &p.rejected, max_ctx)?;
            truncated += usize::from(r.truncated > 0);
            tokens += r.ids.len();
            rows.push((r.ids, r.response_mask));
        }
        let scored = score_batch(&model, &rows)?;
        let n = chunk.len();
        for (i, p) in chunk.iter().enumerate() {
            let (sc, mc, nc) = scored[i];
            let (sr, mr, nr) = scored[n + i];
            let margin = mc - mr;
            let confidence = sigmoid(margin);
            correct += usize::from(margin >= 0.0);
            b.push(s, p, margin, confidence, [sc, sr, mc, mr], [nc, nr]);
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();

    let batch = b.finish()?;
    let part = store
        .write_table_part(
            "scores",
            &format!(
                "score-{}-{}-{}",
                sanitize(&s.run_id),
                s.split,
                &fingerprint[..16]
            ),
            &batch,
        )
        .await?;
    store
        .publish("score", &key, &fingerprint, s, inputs, vec![part])
        .await?;
    Ok(ScoreReport {
        pairs: pairs.len(),
        accuracy: correct as f64 / pairs.len() as f64,
        tokens,
        truncated,
        up_to_date: false,
    })
}

/// A run id as a file-name part.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
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
        margin: f64,
        confidence: f64,
        logp: [f64; 4],
        tokens: [i64; 2],
    ) {
        self.run_id.append_value(&s.run_id);
        self.pair_id.append_value(&p.pair_id);
        self.split.append_value(&s.split);
        self.split_index.append_value(p.split_index);
        self.method.append_value("simpo");
        self.margin.append_value(margin);
        self.confidence.append_value(confidence);
        self.correct.append_value(margin >= 0.0);
        for (b, v) in self.logp.iter_mut().zip(logp) {
            b.append_value(v);
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
