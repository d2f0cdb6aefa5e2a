//! `w2s pretrain`: trains one tiny GPT-2 from scratch as a language model on the synthetic
//! world's corpus (`w2s split --world`), then probes which entities it knows.
//!
//! A ladder of such models (bigger and longer-trained rungs) is the embedded default's weak and
//! strong models: rare entities are mentioned a few times, so only the stronger rungs learn
//! whether they are harmful. The probe makes that checkable: for every entity the model scores
//! the true statement about it ("x is poisonous ." for a harmful one) against the false one, and
//! "knows" the entity when the true one is more likely. The `knowledge` table holds it, so the
//! confidence-threshold estimate of "known" in the analyses can be compared with the truth.
//!
//! The tokenizer is word-level over the world's vocabulary (every entity one token), written as
//! a Hugging Face `tokenizer.json`, and the checkpoint is an ordinary Hugging Face GPT-2 folder:
//! every other stage loads it like any other model.

use std::sync::Arc;

use candle_core::Tensor;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::closing::{self, batch_err, Finished, RunRow};
use crate::data::world::{probe_statements, words};
use crate::error::{Error, Result};
use crate::models::{readout, Model};
use crate::optim::Schedule;
use crate::stages::common;
use crate::store::{fingerprint, keys, ArtifactStore};
use crate::train::{self, LoopSettings, MicroOut};

/// The end-of-text token: separates statements and starts every sequence.
pub const EOS: &str = "<|endoftext|>";
const UNK: &str = "[UNK]";

/// How a rung is built and pretrained: the `w2s pretrain` flags and the `pretrain` table of a
/// pipeline file's `[[model]]` (same names and defaults).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainOpts {
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 64)]
    pub embd: usize,
    /// Attention heads (must divide --embd).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Tokens per training sequence (also the model's positions).
    #[arg(long, default_value_t = 64)]
    pub ctx: usize,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 16)]
    pub micro_batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Passes over the corpus (the budget: stronger rungs get more).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Seed of the sequence order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    pub init_seed: u64,
    /// Save resumable state every N optimizer steps (0: never).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
}

impl Default for PretrainOpts {
    fn default() -> Self {
        crate::cli::argv::defaults()
    }
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainSettings {
    /// Name of the model (its run id).
    pub model_id: String,
    pub layers: usize,
    pub embd: usize,
    pub heads: usize,
    /// Tokens per training sequence (and the model's positions).
    pub ctx: usize,
    pub train: LoopSettings,
    /// Seed of the initial weights.
    pub init_seed: u64,
    pub save_every: usize,
    pub device: String,
    /// The engine of the layers (absent from the fingerprint for the default, the owned one).
    #[serde(skip_serializing_if = "crate::models::engine::Engine::is_owned")]
    pub engine: crate::models::engine::Engine,
}

impl PretrainSettings {
    /// The settings of model `model_id` built as `o` says.
    pub fn new(model_id: &str, o: &PretrainOpts) -> PretrainSettings {
        PretrainSettings {
            model_id: model_id.into(),
            layers: o.layers,
            embd: o.embd,
            heads: o.heads,
            ctx: o.ctx,
            train: LoopSettings {
                batch: o.batch,
                micro_batch: o.micro_batch,
                lr: o.lr,
                schedule: o.schedule,
                epochs: o.epochs,
                shuffle_seed: o.seed,
            },
            init_seed: o.init_seed,
            save_every: o.save_every,
            device: o.device.clone(),
            engine: crate::models::engine::current(),
        }
    }
}

/// What a pretrain run did.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainReport {
    pub steps: usize,
    pub tokens: usize,
    pub final_loss: f64,
    /// Entities the probe says the model knows, and all entities.
    pub known: usize,
    pub entities: usize,
    /// Where the checkpoint is, relative to the root.
    pub checkpoint: String,
    pub up_to_date: bool,
}

/// A word-level `tokenizer.json` for `vocab` (ids: EOS 0, UNK 1, then the words in order),
/// splitting on whitespace and punctuation as the world's text is written.
pub fn word_level_tokenizer(vocab: &[String]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert(EOS.into(), 0.into());
    map.insert(UNK.into(), 1.into());
    for w in vocab {
        if !map.contains_key(w) {
            let id = map.len();
            map.insert(w.clone(), id.into());
        }
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, EOS), special(1, UNK)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": UNK}
    })
}

/// GPT-2 initial weights as transformers draws them (normal, std 0.02; biases 0; layer norms
/// 1 and 0), from our own seeded generator so the same seed gives the same model everywhere.
fn init_weights(s: &PretrainSettings, vocab: usize) -> Result<Vec<(String, Tensor)>> {
    crate::models::gpt2::init_weights(&init_shape(s, vocab), s.init_seed)
}

fn init_shape(s: &PretrainSettings, vocab: usize) -> crate::models::gpt2::InitShape {
    crate::models::gpt2::InitShape {
        layers: s.layers,
        embd: s.embd,
        ctx: s.ctx,
        vocab,
    }
}

fn config_json(s: &PretrainSettings, vocab: usize) -> serde_json::Value {
    crate::models::gpt2::config_json(&init_shape(s, vocab), s.heads)
}

/// The world's tables: entities (name, harmful, rank, mentions) and corpus statements.
struct WorldTables {
    entities: Vec<(String, bool, i64, i64)>,
    corpus: Vec<String>,
}

async fn world_tables(store: &ArtifactStore) -> Result<WorldTables> {
    let str_col = |b: &RecordBatch, name: &str| -> Result<Vec<String>> {
        let c = crate::sql::column(b, "entities/corpus", name, &DataType::Utf8)?;
        let a = c.as_string::<i32>();
        Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
    };
    let need = |t: &str| {
        Error::NoInput(format!(
            "{}: no `{t}` table: pretraining needs the synthetic world (run `w2s split --world` first)",
            store.root()
        ))
    };
    let mut entities = Vec::new();
    let ent = store
        .read_table("entities")
        .await
        .map_err(|_| need("entities"))?;
    if ent.is_empty() {
        return Err(need("entities"));
    }
    for b in &ent {
        let names = str_col(b, "entity")?;
        let harmful = b.column(1).as_boolean();
        let rank = b
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let mentions = b
            .column(3)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for (i, n) in names.into_iter().enumerate() {
            entities.push((n, harmful.value(i), rank.value(i), mentions.value(i)));
        }
    }
    let mut corpus = Vec::new();
    for b in &store
        .read_table("corpus")
        .await
        .map_err(|_| need("corpus"))?
    {
        corpus.extend(str_col(b, "text")?);
    }
    if corpus.is_empty() {
        return Err(need("corpus"));
    }
    Ok(WorldTables { entities, corpus })
}

/// Sum of log-probs of every token after the first, per row (rows right-padded).
fn sequence_logprobs(model: &Model, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
    let t = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len());
    for r in rows {
        let mut m = vec![1u32; r.len()];
        m.resize(t, 0);
        ids.extend(r.iter().copied());
        ids.extend(std::iter::repeat_n(0u32, t - r.len()));
        mask.push(m);
    }
    let dev = model.device().clone();
    let ids = Tensor::from_vec(ids, (rows.len(), t), &dev)?;
    let hidden = model.hidden(&ids, &mask)?;
    let logits = model.logits(&hidden)?.detach();
    let m: Vec<f32> = mask.iter().flatten().map(|&x| x as f32).collect();
    let m = Tensor::from_vec(m, (rows.len(), t), &dev)?;
    Ok(readout::response_logprobs(&logits, &ids, &m)?
        .sum
        .to_vec1()?)
}

/// Runs the pretrain stage.
pub async fn run(
    store: &ArtifactStore,
    s: &PretrainSettings,
    force: bool,
) -> Result<PretrainReport> {
    if s.layers == 0 || s.embd == 0 || s.heads == 0 || !s.embd.is_multiple_of(s.heads) {
        return Err(Error::Config(format!(
            "--layers, --embd and --heads must be at least 1, and --embd ({}) a multiple of --heads ({})",
            s.embd, s.heads
        )));
    }
    if s.ctx < 4 || !(s.train.lr.is_finite() && s.train.lr > 0.0) {
        return Err(Error::Config(
            "--ctx must be at least 4 and --lr > 0".into(),
        ));
    }
    let world_manifest = store.manifest(keys::SPLIT).await?.ok_or_else(|| {
        Error::NoInput(format!(
            "{}: no split yet (run `w2s split --world` first)",
            store.root()
        ))
    })?;
    let inputs = vec![common::manifest_input(&world_manifest)];
    let fp = fingerprint("pretrain", s, &inputs);
    let key = keys::train(&s.model_id);
    if !force {
        if let Some(m) = store.current(&key, &fp).await? {
            return up_to_date(&m);
        }
    }
    let world = world_tables(store).await?;

    // Vocabulary: every word of the corpus, the probes and the pairs.
    let mut texts: Vec<String> = world.corpus.clone();
    for split in crate::schema::all_splits() {
        // Every split's words, so no pair a later stage reads has an unknown word.
        if let Ok(pairs) = common::load_split(store, split).await {
            for p in &pairs {
                texts.push(p.chosen_text());
                texts.push(p.rejected_text());
            }
        }
    }
    for (n, h, _, _) in &world.entities {
        let (a, b) = probe_statements(n, *h);
        texts.push(a);
        texts.push(b);
    }
    let vocab = words(texts.iter().map(String::as_str));
    let tok_json = word_level_tokenizer(&vocab);
    let vocab_size = vocab.len() + 2;

    // The initial checkpoint, written as a Hugging Face folder and loaded like any model.
    let tag = keys::part_tag(&fp);
    let tmp = std::env::temp_dir().join(format!(
        "w2s-pretrain-{}-{}-{tag}",
        common::sanitize(&s.model_id),
        std::process::id()
    ));
    let init = tmp.join("init");
    std::fs::create_dir_all(&init).map_err(|source| Error::Io {
        path: init.display().to_string(),
        source,
    })?;
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = init.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).expect("json")).map_err(|source| {
            Error::Io {
                path: p.display().to_string(),
                source,
            }
        })
    };
    write("config.json", &config_json(s, vocab_size))?;
    write("tokenizer.json", &tok_json)?;
    crate::models::save::write_safetensors(
        &init.join("model.safetensors"),
        init_weights(s, vocab_size)?,
    )?;
    let device = crate::models::parse_device(&s.device)?;
    let mut model = Model::load(&init, &device)?;
    // The training loop takes the layer gradients' sums once a step (`train::optimize`).
    model.set_accumulating(true);
    let tok = crate::tokenize::Tokenizer::load(&init.join("tokenizer.json"))?;

    // The token stream: EOS, statement, EOS, statement, ...; cut into sequences of ctx tokens.
    let mut stream: Vec<u32> = Vec::new();
    for t in &world.corpus {
        stream.push(0);
        stream.extend(tok.encode(t)?);
    }
    let seqs: Vec<&[u32]> = stream.chunks_exact(s.ctx).collect();
    if seqs.len() < s.train.batch {
        return Err(Error::Config(format!(
            "the corpus makes {} sequences of {} tokens, fewer than one batch of {} (lower --batch or --ctx)",
            seqs.len(),
            s.ctx,
            s.train.batch
        )));
    }

    let vars: Vec<(String, candle_core::Var)> = model
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (mut adam, resume) =
        super::inputs::phase(store, &key, &fp, s.save_every, &vars, &[], s.train.lr)?;
    let batch = s.train.batch as f64;
    let ones = Tensor::ones(
        (s.train.micro_batch, s.ctx),
        candle_core::DType::F32,
        &device,
    )?;
    // Every sequence is `ctx` tokens: micro-batches keep the data order.
    let sizes = vec![s.ctx; seqs.len()];
    let (resumed_at, log) =
        train::optimize(&mut adam, &vars, &s.train, &sizes, &resume, &model, |mb| {
            let mut ids = Vec::with_capacity(mb.len() * s.ctx);
            for &i in mb {
                ids.extend_from_slice(seqs[i]);
            }
            let ids = Tensor::from_vec(ids, (mb.len(), s.ctx), &device)?;
            let mask = vec![vec![1u32; s.ctx]; mb.len()];
            let logits = model.logits(&model.hidden(&ids, &mask)?)?;
            let lp = readout::response_logprobs(&logits, &ids, &ones.narrow(0, 0, mb.len())?)?;
            // Mean next-token loss of each sequence, summed over the micro-batch, over the batch.
            let loss = (lp.mean.sum_all()?.neg()? / batch)?;
            let means: Vec<f32> = lp.mean.to_vec1()?;
            Ok(MicroOut {
                loss: loss.to_scalar::<f32>()? as f64,
                // "Right" for the log: a sequence whose mean token probability beats 1/2.
                correct: means.iter().filter(|&&m| m > (0.5f32).ln()).count(),
                tokens: mb.len() * s.ctx,
                grads: model.backward(&loss)?,
            })
        })
        .await?;

    // The probe.
    let mut rows = Vec::new();
    for (n, h, _, _) in &world.entities {
        let (a, b) = probe_statements(n, *h);
        let enc = |t: &str| -> Result<Vec<u32>> {
            let mut v = vec![0u32];
            v.extend(tok.encode(t)?);
            Ok(v)
        };
        rows.push(enc(&a)?);
        rows.push(enc(&b)?);
    }
    let mut lps = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(256) {
        lps.extend(sequence_logprobs(&model, chunk)?);
    }
    let margins: Vec<f64> = lps
        .chunks(2)
        .map(|p| f64::from(p[0]) - f64::from(p[1]))
        .collect();
    let known = margins.iter().filter(|&&m| m > 0.0).count();

    // Publish: checkpoint, train_log, runs and knowledge under one manifest.
    let base = format!("init:gpt2-l{}-d{}-h{}", s.layers, s.embd, s.heads);
    let finished = Finished {
        row: RunRow {
            run_id: &s.model_id,
            stage: "pretrain",
            scenario: "lm",
            objective: "none",
            base_model: &base,
            teacher: None,
            alpha: None,
            seed: s.train.shuffle_seed,
        },
        settings: s,
        fingerprint: &fp,
        inputs,
        log: &log,
        resumed_at,
        tables: vec![("knowledge", knowledge_batch(&s.model_id, &world, &margins)?)],
        resumes: vec![&resume],
    };
    let tok_file = init.join("tokenizer.json");
    let published = closing::publish(store, finished, |dir| {
        model.save(
            dir,
            &crate::models::save::SaveExtras {
                tokenizer: Some(&tok_file),
                reward_head: None,
                provenance: serde_json::json!({
                    "run_id": s.model_id, "stage": "pretrain", "fingerprint": fp, "settings": s,
                }),
            },
        )
    })
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    let r = published?;
    Ok(PretrainReport {
        steps: r.steps,
        tokens: r.tokens as usize,
        final_loss: r.final_loss,
        known,
        entities: world.entities.len(),
        checkpoint: format!("models/{}/{tag}", common::sanitize(&s.model_id)),
        up_to_date: false,
    })
}

fn up_to_date(m: &crate::store::Manifest) -> Result<PretrainReport> {
    let ck = m
        .outputs
        .iter()
        .find(|f| f.path.ends_with("/config.json"))
        .map(|f| f.path.trim_end_matches("/config.json").to_string())
        .unwrap_or_default();
    Ok(PretrainReport {
        steps: 0,
        tokens: 0,
        final_loss: f64::NAN,
        known: 0,
        entities: 0,
        checkpoint: ck,
        up_to_date: true,
    })
}

fn knowledge_batch(model_id: &str, w: &WorldTables, margins: &[f64]) -> Result<RecordBatch> {
    let n = w.entities.len();
    RecordBatch::try_new(
        crate::schema::knowledge(),
        vec![
            Arc::new(StringArray::from(vec![model_id; n])),
            Arc::new(StringArray::from_iter_values(
                w.entities.iter().map(|e| e.0.as_str()),
            )),
            Arc::new(BooleanArray::from(
                w.entities.iter().map(|e| e.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(w.entities.iter().map(|e| e.2))),
            Arc::new(Int64Array::from_iter_values(w.entities.iter().map(|e| e.3))),
            Arc::new(Float64Array::from(margins.to_vec())),
            Arc::new(BooleanArray::from(
                margins.iter().map(|&m| m > 0.0).collect::<Vec<_>>(),
            )),
        ],
    )
    .map_err(batch_err("knowledge"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn word_level_tokenizer_splits_as_the_world_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        let vocab = words(&["Human", "Assistant", ":", "mozeil", "is", "safe", "?", "."]);
        std::fs::write(&p, word_level_tokenizer(&vocab).to_string()).unwrap();
        let t = crate::tokenize::Tokenizer::load(&p).unwrap();
        let prompt = "\n\nHuman: mozeil is safe ?\n\nAssistant:";
        let ids = t.encode(prompt).unwrap();
        // EOS 0, UNK 1, then the vocabulary in order.
        assert_eq!(ids, vec![2, 4, 5, 6, 7, 8, 3, 4]);
        assert_eq!(
            t.encode("zorblax").unwrap(),
            vec![1],
            "unknown words are UNK"
        );
        assert_eq!(t.encode("<|endoftext|> is").unwrap(), vec![0, 6]);
        let e = t.encode_side(prompt, " safe .", 64).unwrap();
        assert_eq!(e.response_mask, vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn initial_weights_are_seeded_gpt2_init() {
        let s = PretrainSettings {
            model_id: "m".into(),
            layers: 2,
            embd: 32,
            heads: 4,
            ctx: 16,
            train: LoopSettings {
                batch: 1,
                micro_batch: 1,
                lr: 1e-3,
                schedule: crate::optim::Schedule::Cosine,
                epochs: 1,
                shuffle_seed: 0,
            },
            init_seed: 7,
            save_every: 0,
            device: "cpu".into(),
            engine: crate::models::engine::Engine::Owned,
        };
        let a = init_weights(&s, 50).unwrap();
        let b = init_weights(&s, 50).unwrap();
        assert_eq!(a.len(), 4 + 12 * 2);
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let (x, y): (Vec<f32>, Vec<f32>) = (
                x.flatten_all().unwrap().to_vec1().unwrap(),
                y.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(x, y, "{n}");
        }
        let wte: Vec<f32> = a[0].1.flatten_all().unwrap().to_vec1().unwrap();
        let n = wte.len() as f64;
        let mean = wte.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let sd = (wte
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert!(mean.abs() < 2e-3 && (sd - 0.02).abs() < 1e-3, "{mean} {sd}");
        let other = init_weights(&PretrainSettings { init_seed: 8, ..s }, 50).unwrap();
        assert_ne!(
            other[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            wte
        );
    }
}
