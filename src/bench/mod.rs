//! `w2s bench engine`: the engine's speed and memory against PyTorch on the same machine, side
//! by side in one invocation (docs/performance.md).
//!
//! Each measurement runs in a fresh child process (`w2s bench one ...`), so its peak resident
//! memory is its own; the PyTorch baseline (`bench/torch_engine.py`) runs the same shapes on
//! the same random checkpoint when a Python with torch + transformers is there
//! (`.venv-ref/bin/python` by default). Figures are medians over repeats and are printed as
//! ratios against the baseline measured in the same run.

pub mod parity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::engine::Engine;
use crate::models::readout::sequence_logprobs;
use crate::models::Model;
use crate::optim::{Adam, AdamConfig};
use crate::rng::NumpyPcg64;
use crate::scenarios::rm::{Head, Readout, RewardModel};

/// A model shape to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// GPT-2 small: 12 layers, d 768, 12 heads, vocab 50257; sequences of 256, 2 pairs a step.
    Gpt2Small,
    /// GPT-2 medium: 24 layers, d 1024, 16 heads, vocab 50257; sequences of 512, 1 pair a step
    /// (the recompute memory bench; not in the default engine comparison).
    Gpt2Medium,
    /// The quickstart's largest rung: 2 layers, d 64, 4 heads, vocab 1000; sequences of 64,
    /// 16 pairs a step.
    Tiny,
    /// A Llama of about 1.1B parameters (TinyLlama-1.1B's shape: 22 layers, d 2048, 32 heads,
    /// 4 key-value heads, MLP 5632, vocab 32000), in bf16 as Llama checkpoints ship; for the
    /// LoRA memory bench (`bench checkpoint` only, not in the engine comparison).
    #[value(name = "llama-1b")]
    #[serde(rename = "llama-1b")]
    Llama1b,
    /// A Llama at GPT-2-small's scale: 12 layers, d 768, 12 heads, 4 key-value heads, MLP
    /// 2048, vocab 32000, in f32; sequences of 256, 2 pairs a step (the owned Llama layer's
    /// speed; not in the default engine comparison).
    LlamaSmall,
    /// GPT-2 XL: 48 layers, d 1600, 25 heads, vocab 50257; sequences of 256, 4 pairs a step
    /// (the GPU check's reward-model speed in bf16; not in the default engine comparison).
    #[value(name = "gpt2-xl")]
    #[serde(rename = "gpt2-xl")]
    Gpt2Xl,
    /// Llama-3-8B's shape (32 layers, d 4096, 32 heads, 8 key-value heads, MLP 14336, vocab
    /// 128256), bf16; sequences of 512, 1 pair a step. The GPU check's LoRA memory run
    /// (`bench checkpoint` only: 16 GB of random weights).
    #[value(name = "llama-8b")]
    #[serde(rename = "llama-8b")]
    Llama8b,
    /// Mistral-7B's shape (Llama-8B's layers, vocab 32000, a 4096-token sliding window),
    /// bf16; sequences of 512, 1 pair a step. The GPU check's full-fine-tune memory run
    /// (`bench checkpoint` only: 14.5 GB of random weights).
    #[value(name = "mistral-7b")]
    #[serde(rename = "mistral-7b")]
    Mistral7b,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2Small => "gpt2-small",
            Arch::Gpt2Medium => "gpt2-medium",
            Arch::Tiny => "tiny",
            Arch::Llama1b => "llama-1b",
            Arch::LlamaSmall => "llama-small",
            Arch::Gpt2Xl => "gpt2-xl",
            Arch::Llama8b => "llama-8b",
            Arch::Mistral7b => "mistral-7b",
        }
    }

    /// The Llama shape and the dtype its checkpoint is written in, for the Llama arches.
    fn llama(self) -> Option<(crate::models::llama::InitShape, candle_core::DType)> {
        let s = self.shape();
        let (intermediate, kv_heads, ctx, dtype) = match self {
            Arch::Llama1b => (5632, 4, 2048, candle_core::DType::BF16),
            Arch::LlamaSmall => (2048, 4, 1024, candle_core::DType::F32),
            Arch::Llama8b | Arch::Mistral7b => (14336, 8, 2048, candle_core::DType::BF16),
            _ => return None,
        };
        let shape = crate::models::llama::InitShape {
            layers: s.layers,
            hidden: s.width,
            intermediate,
            heads: s.heads,
            kv_heads,
            vocab: s.vocab,
            ctx,
        };
        Some((shape, dtype))
    }

    /// (layers, width, heads, vocab, sequence length, pairs per step, timed steps).
    pub fn shape(self) -> Shape {
        match self {
            Arch::Gpt2Small => Shape {
                layers: 12,
                width: 768,
                heads: 12,
                vocab: 50257,
                seq: 256,
                pairs: 2,
                steps: 2,
            },
            Arch::Gpt2Medium => Shape {
                layers: 24,
                width: 1024,
                heads: 16,
                vocab: 50257,
                seq: 512,
                pairs: 1,
                steps: 1,
            },
            Arch::Llama1b => Shape {
                layers: 22,
                width: 2048,
                heads: 32,
                vocab: 32000,
                seq: 512,
                pairs: 1,
                steps: 1,
            },
            Arch::LlamaSmall => Shape {
                layers: 12,
                width: 768,
                heads: 12,
                vocab: 32000,
                seq: 256,
                pairs: 2,
                steps: 2,
            },
            Arch::Gpt2Xl => Shape {
                layers: 48,
                width: 1600,
                heads: 25,
                vocab: 50257,
                seq: 256,
                pairs: 4,
                steps: 2,
            },
            Arch::Llama8b | Arch::Mistral7b => Shape {
                layers: 32,
                width: 4096,
                heads: 32,
                vocab: if self == Arch::Llama8b { 128256 } else { 32000 },
                seq: 512,
                pairs: 1,
                steps: 1,
            },
            Arch::Tiny => Shape {
                layers: 2,
                width: 64,
                heads: 4,
                vocab: 1000,
                seq: 64,
                pairs: 16,
                steps: 10,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub vocab: usize,
    pub seq: usize,
    /// Pairs per optimizer step (each pair is two sequences of `seq` tokens).
    pub pairs: usize,
    /// Timed steps (after one untimed warm-up step).
    pub steps: usize,
}

impl Shape {
    /// Tokens of the prompt the two sides of a pair share (3/8 of each side).
    pub fn prompt(&self) -> usize {
        self.seq * 3 / 8
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Reward model: forward both sides, pair loss −log σ(r_c − r_r), backward, Adam; micro-batch
    /// one pair, as the reference.
    RmTrain,
    /// Reward model, no gradient: rewards of every side, all pairs of a step in one batch.
    RmScore,
    /// One SFT step on the chosen sides, then one SimPO step on both, each with its Adam.
    PoTrain,
    /// A policy, no gradient: response log-prob sums and means of every side.
    PoScore,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::RmTrain => "rm-train",
            Task::RmScore => "rm-score",
            Task::PoTrain => "po-train",
            Task::PoScore => "po-score",
        }
    }

    pub const ALL: [Task; 4] = [Task::RmTrain, Task::RmScore, Task::PoTrain, Task::PoScore];
}

/// One measurement of one engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub engine: String,
    /// `cpu` or `cuda` (PyTorch's names).
    #[serde(default = "cpu")]
    pub device: String,
    pub arch: String,
    pub task: String,
    /// `f32` or `bf16`.
    #[serde(default = "f32")]
    pub dtype: String,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
    pub seconds: f64,
}

fn cpu() -> String {
    "cpu".into()
}

fn f32() -> String {
    "f32".into()
}

/// `f32` or `bf16`, as `--dtype` and PyTorch's bench spell them.
fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// The device as both engines name it in a measurement.
fn device_name(dev: &Device) -> String {
    if dev.is_cpu() { "cpu" } else { "cuda" }.into()
}

/// Writes a seeded random GPT-2 checkpoint of `arch` into `dir` (config.json,
/// model.safetensors) unless it is there; both engines load it.
pub fn checkpoint(arch: Arch, dir: &Path) -> Result<PathBuf> {
    let s = arch.shape();
    let out = dir.join(arch.name());
    if out.join("model.safetensors").exists() && out.join("config.json").exists() {
        return Ok(out);
    }
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| Error::Io {
            path: p.clone(),
            source: e,
        }
    };
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let (config, t): (_, HashMap<String, Tensor>) = if let Some((shape, dtype)) = arch.llama() {
        let t = crate::models::llama::init_weights(&shape, 0, dtype)?;
        let mut config = crate::models::llama::config_json(&shape);
        match arch {
            Arch::Llama8b => config["rope_theta"] = 500000.0.into(),
            Arch::Mistral7b => {
                config["model_type"] = "mistral".into();
                config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
                config["rope_theta"] = 1e6.into();
                config["sliding_window"] = 4096.into();
            }
            _ => {}
        }
        (config, t.into_iter().collect())
    } else {
        let shape = crate::models::gpt2::InitShape {
            layers: s.layers,
            embd: s.width,
            ctx: s.seq.max(64),
            vocab: s.vocab,
        };
        let t = crate::models::gpt2::init_weights(&shape, 0)?;
        (
            crate::models::gpt2::config_json(&shape, s.heads),
            t.into_iter().collect(),
        )
    };
    let cfg = out.join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&config).expect("json value"),
    )
    .map_err(io(&cfg))?;
    let tmp = out.join("model.safetensors.partial");
    candle_core::safetensors::save(&t, &tmp)?;
    let dst = out.join("model.safetensors");
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    Ok(out)
}

/// Fixed random token ids (1..vocab: no padding) for `n` sequences of `seq` tokens.
fn token_rows(n: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = NumpyPcg64::new(1);
    (0..n)
        .map(|_| {
            (0..seq)
                .map(|_| 1 + (rng.next_u64() % (vocab as u64 - 1)) as u32)
                .collect()
        })
        .collect()
}

/// Peak resident memory of this process in MiB (`VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs one measurement in this process on `dev`: one warm-up step, then the shape's timed
/// steps.
pub fn run_one(
    arch: Arch,
    task: Task,
    model_dir: &Path,
    dev: &Device,
    engine: Engine,
    dtype: DType,
) -> Result<Measurement> {
    run_steps(
        arch,
        task,
        model_dir,
        arch.shape().steps,
        dev,
        engine,
        dtype,
    )
}

/// The engine's name in measurements: `w2s` (the default engine) or `w2s-autograd`.
fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Owned => "w2s",
        Engine::Autograd => "w2s-autograd",
    }
}

/// [`run_one`] with `steps` timed steps. In bf16, training is mixed precision (f32 master
/// weights, as the stages train) and scoring reads bf16 weights (as `score --dtype bf16`).
pub fn run_steps(
    arch: Arch,
    task: Task,
    model_dir: &Path,
    steps: usize,
    dev: &Device,
    engine: Engine,
    dtype: DType,
) -> Result<Measurement> {
    let s = Shape {
        steps,
        ..arch.shape()
    };
    let dev = dev.clone();
    // Side p (chosen) and side n + p (rejected) of pair p share a prompt of `prompt` tokens,
    // about the real harmless split's share (86 of 247 characters a side on the first 256
    // pairs); the rest of each side is its response.
    let n = s.pairs;
    let prompt = s.prompt();
    let mut rows = token_rows(2 * n, s.seq, s.vocab);
    for p in 0..n {
        let shared = rows[p][..prompt].to_vec();
        rows[n + p][..prompt].copy_from_slice(&shared);
    }
    let resp: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| u32::from(i >= prompt)).collect())
        .collect();
    let trainable = matches!(task, Task::RmTrain | Task::PoTrain);
    let mut model = if trainable {
        Model::load_as(model_dir, &dev, dtype)?
    } else {
        Model::load_frozen_as(model_dir, &dev, dtype)?
    };
    model.set_engine(engine);
    // As the training stages: the reward model's micro-batches sum the layer gradients.
    model.set_accumulating(task == Task::RmTrain);
    let head = Var::from_tensor(&crate::scenarios::rm::init_head(s.width, 0, &dev)?)?;
    let mut vars: Vec<(String, Var)> = model
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if task == Task::RmTrain {
        vars.push(("score.weight".into(), head.clone()));
    }
    let mut adam = Adam::named(vars.clone(), AdamConfig::default())?;
    let mut adam2 = Adam::named(vars, AdamConfig::default())?;
    // The production paths: the reward model's packed margins, the policy's packed log-probs.
    let rm = RewardModel {
        model,
        head: Head::Trainable(head),
        readout: Readout::LastToken,
    };
    let side = |i: usize| -> &[u32] { &rows[i] };
    let logps = |idx: &[usize], paired: bool| -> Result<(Tensor, Tensor)> {
        let seqs: Vec<(&[u32], &[u32])> = idx.iter().map(|&i| (side(i), &resp[i][..])).collect();
        let lp = sequence_logprobs(&rm.model, &seqs, paired)?;
        Ok((lp.sum, lp.mean))
    };
    let step = |adam: &mut Adam, adam2: &mut Adam| -> Result<()> {
        match task {
            Task::RmTrain => {
                for p in 0..n {
                    let z = rm.margins(&[side(p)], &[side(n + p)])?;
                    // −log σ(z) = softplus(−z), composed (differentiable).
                    let loss = ((z.neg()?.exp()? + 1.0)?.log()?.sum_all()? / n as f64)?;
                    adam.accumulate(&rm.model.backward(&loss)?)?;
                }
                adam.accumulate(&rm.model.take_sums()?)?;
                adam.step_accumulated()
            }
            Task::RmScore => {
                let a: Vec<&[u32]> = (0..n).map(side).collect();
                let b: Vec<&[u32]> = (n..2 * n).map(side).collect();
                let _ = rm.margins(&a, &b)?.to_vec1::<f32>()?;
                Ok(())
            }
            Task::PoTrain => {
                let chosen: Vec<usize> = (0..n).collect();
                let (sum, _) = logps(&chosen, false)?;
                let loss = (sum.neg()?.sum_all()? / (n * (s.seq - prompt)) as f64)?;
                adam.step(&rm.model.backward(&loss)?)?;
                let all: Vec<usize> = (0..2 * n).collect();
                let (_, mean) = logps(&all, true)?;
                let d = (mean.narrow(0, 0, n)? - mean.narrow(0, n, n)?)?;
                let x = ((d * 2.0)? - 1.0)?;
                let loss = ((x.neg()?.exp()? + 1.0)?.log()?.sum_all()? / n as f64)?;
                adam2.step(&rm.model.backward(&loss)?)
            }
            Task::PoScore => {
                let all: Vec<usize> = (0..2 * n).collect();
                let (sum, _) = logps(&all, true)?;
                let _ = sum.to_vec1::<f32>()?;
                Ok(())
            }
        }
    };
    step(&mut adam, &mut adam2)?;
    // A GPU runs queued work after the call returns: time whole steps, synchronized.
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..s.steps {
        step(&mut adam, &mut adam2)?;
    }
    dev.synchronize()?;
    let seconds = t0.elapsed().as_secs_f64();
    // Tokens through the model per step: PO training reads the chosen sides twice.
    let per_step = match task {
        Task::PoTrain => 3 * n * s.seq,
        _ => 2 * n * s.seq,
    };
    Ok(Measurement {
        engine: engine_name(engine).into(),
        device: device_name(&dev),
        arch: arch.name().into(),
        task: task.name().into(),
        dtype: dtype_name(dtype).into(),
        tokens_per_s: (per_step * s.steps) as f64 / seconds,
        peak_rss_mib: peak_rss_mib(),
        seconds,
    })
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians of one (engine, arch, task) over its repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub arch: String,
    pub task: String,
    pub w2s_tokens_per_s: f64,
    pub torch_tokens_per_s: Option<f64>,
    pub w2s_peak_rss_mib: f64,
    pub torch_peak_rss_mib: Option<f64>,
    /// The autograd engine's medians, when measured (`--autograd`).
    pub autograd_tokens_per_s: Option<f64>,
    pub autograd_peak_rss_mib: Option<f64>,
    pub repeats: usize,
}

impl Row {
    pub fn speed_ratio(&self) -> Option<f64> {
        self.torch_tokens_per_s.map(|t| self.w2s_tokens_per_s / t)
    }

    pub fn memory_ratio(&self) -> Option<f64> {
        self.torch_peak_rss_mib.map(|t| self.w2s_peak_rss_mib / t)
    }

    /// The default engine's speed over the autograd engine's.
    pub fn engine_ratio(&self) -> Option<f64> {
        self.autograd_tokens_per_s
            .map(|t| self.w2s_tokens_per_s / t)
    }
}

/// Summarises repeated measurements into rows (medians), in the order first seen.
pub fn rows(ms: &[Measurement]) -> Vec<Row> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for m in ms {
        let k = (m.arch.clone(), m.task.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(arch, task)| {
            let of = |engine: &str| -> Vec<&Measurement> {
                ms.iter()
                    .filter(|m| m.engine == engine && m.arch == arch && m.task == task)
                    .collect()
            };
            let w = of("w2s");
            let t = of("torch");
            let a = of("w2s-autograd");
            let med = |v: &[&Measurement], f: fn(&Measurement) -> f64| {
                median(&v.iter().map(|m| f(m)).collect::<Vec<_>>())
            };
            Row {
                repeats: w.len(),
                w2s_tokens_per_s: med(&w, |m| m.tokens_per_s),
                w2s_peak_rss_mib: med(&w, |m| m.peak_rss_mib),
                torch_tokens_per_s: (!t.is_empty()).then(|| med(&t, |m| m.tokens_per_s)),
                torch_peak_rss_mib: (!t.is_empty()).then(|| med(&t, |m| m.peak_rss_mib)),
                autograd_tokens_per_s: (!a.is_empty()).then(|| med(&a, |m| m.tokens_per_s)),
                autograd_peak_rss_mib: (!a.is_empty()).then(|| med(&a, |m| m.peak_rss_mib)),
                arch,
                task,
            }
        })
        .collect()
}

/// The table printed at the end of a bench run (Markdown, as docs/performance.md shows it).
pub fn table(rows: &[Row]) -> String {
    let f = |x: Option<f64>, digits: usize| match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    };
    let mut out = String::from(
        "| arch | task | w2s tokens/s | PyTorch tokens/s | speed w2s/PyTorch | w2s peak RSS MiB | PyTorch peak RSS MiB | RSS w2s/PyTorch | autograd tokens/s | autograd RSS MiB | speed w2s/autograd |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.arch,
            r.task,
            f(Some(r.w2s_tokens_per_s), 0),
            f(r.torch_tokens_per_s, 0),
            f(r.speed_ratio(), 2),
            f(Some(r.w2s_peak_rss_mib), 0),
            f(r.torch_peak_rss_mib, 0),
            f(r.memory_ratio(), 2),
            f(r.autograd_tokens_per_s, 0),
            f(r.autograd_peak_rss_mib, 0),
            f(r.engine_ratio(), 2),
        ));
    }
    out
}

#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct OneArgs {
    #[arg(long, value_enum)]
    pub arch: Arch,
    #[arg(long, value_enum)]
    pub task: Task,
    /// The checkpoint folder (`bench engine` writes it).
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
    #[command(flatten)]
    pub dtype: BenchDtype,
}

/// The compute dtype of a bench run.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct BenchDtype {
    /// f32, or bf16: training in mixed precision (f32 master weights; PyTorch under
    /// `torch.autocast`), scoring on bf16 weights (PyTorch's model in bfloat16). bf16 is for
    /// GPUs: candle's CPU matmul has no bf16 kernel.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

impl BenchDtype {
    pub fn get(&self) -> Result<DType> {
        crate::models::parse_dtype(&self.dtype)
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointArgs {
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Parent folder: the checkpoint is written to OUT/<arch>.
    #[arg(long)]
    pub out: String,
}

/// What `w2s bench engine` measures.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct EngineOpts {
    /// Shapes to measure (default: both).
    #[arg(long, value_enum)]
    pub arch: Vec<Arch>,
    /// Tasks to measure (default: all four).
    #[arg(long, value_enum)]
    pub task: Vec<Task>,
    /// Runs of each measurement per engine (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python with torch and transformers for the baseline ("none": w2s only).
    #[arg(long, default_value = ".venv-ref/bin/python")]
    pub python: String,
    /// Where the random checkpoints are written (reused across runs).
    #[arg(long, default_value = "target/bench-models")]
    pub models: String,
    /// Also write every measurement and the summary as JSON here.
    #[arg(long)]
    pub out: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` for both engines (CUDA needs `--features cuda`;
    /// scripts/gpu-check.sh).
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
    /// Also measure the autograd engine (the owned engine's reference) beside the default.
    #[arg(long)]
    pub autograd: bool,
    #[command(flatten)]
    pub dtype: BenchDtype,
}

/// The PyTorch baseline script, beside the sources.
const TORCH_BENCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torch_engine.py");

/// Runs one measurement process and reads the JSON line it prints last.
fn measure(cmd: &mut std::process::Command, what: &str) -> Result<Measurement> {
    let out = cmd.output().map_err(|source| Error::Io {
        path: format!("the {what} measurement"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Step {
            msg: format!(
                "{what} measurement failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ),
            code: 1,
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| Error::Format {
        file: format!("the {what} measurement's output"),
        msg: format!("`{line}`: {e}"),
    })
}

/// `w2s bench engine`: every (shape, task) measured `repeats` times per engine, each run in
/// its own process (`exe bench one`, the PyTorch script), so peak RSS is the run's own; the
/// table of medians and ratios, and the measurements.
pub fn engine(o: &EngineOpts, exe: &Path) -> Result<(String, serde_json::Value)> {
    let arches = if o.arch.is_empty() {
        vec![Arch::Tiny, Arch::Gpt2Small]
    } else {
        o.arch.clone()
    };
    let tasks = if o.task.is_empty() {
        Task::ALL.to_vec()
    } else {
        o.task.clone()
    };
    let python =
        (o.python != "none" && Path::new(&o.python).exists() && Path::new(TORCH_BENCH).exists())
            .then(|| o.python.clone());
    if python.is_none() && o.python != "none" {
        eprintln!(
            "no PyTorch baseline: {} or {TORCH_BENCH} not found (python3 -m venv .venv-ref && .venv-ref/bin/pip install torch transformers safetensors tokenizers)",
            o.python
        );
    }
    let show = |m: &Measurement, rep: usize| {
        eprintln!(
            "{} {} {} #{}: {:.0} tokens/s, peak {:.0} MiB",
            m.arch,
            m.task,
            m.engine,
            rep + 1,
            m.tokens_per_s,
            m.peak_rss_mib
        );
    };
    let mut all = Vec::new();
    for arch in arches {
        let dir = checkpoint(arch, Path::new(&o.models))?;
        for &task in &tasks {
            for rep in 0..o.repeats {
                let engines: &[Engine] = if o.autograd {
                    &[Engine::Owned, Engine::Autograd]
                } else {
                    &[Engine::Owned]
                };
                for &e in engines {
                    let m = measure(
                        std::process::Command::new(exe)
                            .args(["--log", "warn", "--engine", e.name()])
                            .args(["--simd", crate::simd::tier().name()])
                            .args(
                                crate::models::cuda_kernels::enabled().then_some("--cuda-kernels"),
                            )
                            .args(["bench", "one", "--arch", arch.name()])
                            .args(["--task", task.name(), "--device", &o.device])
                            .args(["--dtype", &o.dtype.dtype, "--model"])
                            .arg(&dir),
                        "w2s",
                    )?;
                    show(&m, rep);
                    all.push(m);
                }
                if let Some(py) = &python {
                    let m = measure(
                        std::process::Command::new(py)
                            .arg(TORCH_BENCH)
                            .args(["--arch", arch.name(), "--task", task.name()])
                            .args(["--device", &o.device, "--dtype", &o.dtype.dtype])
                            .arg("--model")
                            .arg(&dir),
                        "PyTorch",
                    )?;
                    show(&m, rep);
                    all.push(m);
                }
            }
        }
    }
    let rows = rows(&all);
    Ok((
        table(&rows),
        serde_json::json!({"measurements": all, "rows": rows}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(engine: &str, task: &str, tps: f64, rss: f64) -> Measurement {
        Measurement {
            engine: engine.into(),
            device: "cpu".into(),
            arch: "tiny".into(),
            task: task.into(),
            dtype: "f32".into(),
            tokens_per_s: tps,
            peak_rss_mib: rss,
            seconds: 1.0,
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let ms = vec![
            m("w2s", "rm-train", 100.0, 50.0),
            m("w2s", "rm-train", 300.0, 70.0),
            m("w2s", "rm-train", 200.0, 60.0),
            m("torch", "rm-train", 100.0, 120.0),
            m("w2s", "rm-score", 10.0, 1.0),
            m("w2s-autograd", "rm-score", 5.0, 2.0),
        ];
        let r = rows(&ms);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].w2s_tokens_per_s, 200.0);
        assert_eq!(r[0].speed_ratio(), Some(2.0));
        assert_eq!(r[0].memory_ratio(), Some(0.5));
        assert_eq!(r[1].speed_ratio(), None);
        assert_eq!(r[1].engine_ratio(), Some(2.0));
        assert_eq!(r[0].engine_ratio(), None);
        let t = table(&r);
        assert!(
            t.contains("| tiny | rm-train | 200 | 100 | 2.00 | 60 | 120 | 0.50 | - | - | - |"),
            "{t}"
        );
        assert!(t.contains("| tiny | rm-score | 10 | - | - |"), "{t}");
        assert!(t.contains("| 5 | 2 | 2.00 |"), "{t}");
    }

    /// Every task runs on a tiny checkpoint and the PO / RM steps change the weights.
    #[test]
    fn every_task_runs_on_the_tiny_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint(Arch::Tiny, dir.path()).unwrap();
        assert!(ck.join("config.json").exists());
        for task in Task::ALL {
            for e in [Engine::Owned, Engine::Autograd] {
                let r = run_steps(Arch::Tiny, task, &ck, 1, &Device::Cpu, e, DType::F32).unwrap();
                assert!(r.tokens_per_s > 0.0 && r.tokens_per_s.is_finite(), "{r:?}");
                assert!(r.peak_rss_mib > 0.0, "{r:?}");
                assert_eq!(r.engine, engine_name(e));
            }
        }
    }
}
