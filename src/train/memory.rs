//! The memory plan of a training step: what a run will hold at its peak, estimated from the
//! checkpoint's config and tensor headers and the run's settings, before any weight is read.
//!
//! A stage checks the estimate against what the machine has and refuses up front, naming the
//! settings that would make it fit (a run that dies of memory an hour in, or is killed by the
//! kernel without a word, costs far more). `w2s gt-train --dry-run` and `w2s plan` print it.
//!
//! The model (docs/performance.md, "Memory plan", has the derivation and the check against
//! measured peaks):
//! - weights: every checkpoint tensor once (tied weights once); trainable ones as f32 masters
//!   plus, under bf16, their compute casts; frozen ones (LoRA base, DPO reference) in the
//!   compute dtype only;
//! - gradients: f32, one per trainable parameter from the backward pass, plus the step's
//!   accumulator when a step has several micro-batches, plus the transient of a trained
//!   embedding's gradient; Adam: two f32 moments per parameter;
//! - activations: what a layer keeps per token (`PerToken`: counted from the layer code,
//!   scaled to what candle measurably keeps), the attention scores per head and query-key pair
//!   (composed attention) or of one chunk of heads (the CPU's chunked attention), and the
//!   backward pass's working set of one layer; with recompute, each layer's input plus one
//!   layer's graph;
//! - the vocabulary projection of a policy (logits and their gradient, f32; under recompute
//!   one chunk of tokens at a time);
//! - full f32 training on the CPU in short micro-batches (several a step): the layer weights
//!   packed for their products, in both orientations (`models::kernels::packed`);
//! - the process itself (binary, tokenizer, data: `RUNTIME`).

use std::path::Path;

use candle_core::DType;

use crate::error::{Error, Result};
use crate::models::tensor_file::TensorFile;
use crate::models::weights::LoraSpec;
use crate::models::Config;

/// Resident memory of the process before any model is loaded (binary, allocator, tokenizer,
/// tables), measured at the quickstart's scale.
pub const RUNTIME: u64 = 64 << 20;

/// What one forward/backward pass processes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Sequences in one forward pass.
    pub rows: usize,
    /// Tokens per sequence (the longest the settings allow).
    pub tokens: usize,
    /// A policy: token log-probs over the vocabulary (else a reward head on hidden states).
    pub lm_head: bool,
    /// DPO: a frozen copy of the model as the reference.
    pub reference: bool,
    /// Several micro-batches per optimizer step (a gradient accumulator is kept).
    pub accumulates: bool,
}

/// How the model is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub dtype: DType,
    /// LoRA adapters (targets resolved); `None`: every weight trains.
    pub lora: Option<LoraSpec>,
    pub recompute: bool,
    /// Attention a few heads at a time (`models::attention`, the CPU path): no layer keeps a
    /// `[B, H, T, T]` tensor, one chunk's scores exist at a time.
    pub chunked_attention: bool,
}

/// The estimated peak, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    /// Base weights as held (f32 masters or frozen compute-dtype copies), adapters, casts.
    pub weights: u64,
    /// The DPO reference copy.
    pub reference: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub logits: u64,
    /// Layer weights packed for short products (`models::kernels::packed`).
    pub packed: u64,
    pub runtime: u64,
    /// Trainable parameters (for the printout).
    pub trainable: u64,
    /// Parameters of the checkpoint.
    pub parameters: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights
            + self.reference
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.packed
            + self.runtime
    }

    /// What sits on the compute device (all of it on the CPU).
    pub fn device(&self) -> u64 {
        self.total() - self.runtime
    }

    /// A few lines for the terminal.
    pub fn table(&self) -> String {
        let rows = [
            ("weights", self.weights),
            ("reference", self.reference),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("logits", self.logits),
            ("packed", self.packed),
            ("runtime", self.runtime),
        ];
        let mut s = format!(
            "memory plan: {} parameters, {} trainable\n",
            self.parameters, self.trainable
        );
        for (k, v) in rows {
            if v > 0 {
                s += &format!("  {k:<12} {:>10}\n", mib(v));
            }
        }
        s += &format!("  {:<12} {:>10}\n", "peak", mib(self.total()));
        s
    }
}

/// `1234 MiB`.
pub fn mib(b: u64) -> String {
    format!("{} MiB", b.div_ceil(1 << 20))
}

/// What a layer holds per token during a training step, in units of the hidden width (`d`)
/// and the MLP width (`f`) in the compute dtype, plus f32 `[T, T]` score tensors per head.
///
/// The op count of each family's layer code (every op output a later backward reads: the layer
/// input, norm outputs, projections, the split and merged heads, rotary intermediates, the
/// MLP's widths, residual sums) gives about 16 d + 2 f for GPT-2; candle keeps more than that
/// (broadcast copies, contiguous copies for the matmuls, the gradients of the layer being
/// differentiated), so the constants are measured: on GPT-2 small, the reward model's peak RSS
/// at 8, 128 and 256 tokens a side (docs/performance.md, "Memory plan") gives 27.5 d + 2 f and
/// 7 score tensors. Llama's count is scaled from its op count by the same ratio.
struct PerToken {
    d: f64,
    f: f64,
    scores: f64,
}

fn per_token(config: &Config) -> PerToken {
    match config {
        Config::Gpt2(_) | Config::Opt(_) => PerToken {
            d: 27.5,
            f: 2.0,
            scores: 7.0,
        },
        Config::Llama(..) => PerToken {
            d: 32.5,
            f: 6.0,
            scores: 7.0,
        },
    }
}

/// Size of the token-embedding table, `[vocab, d]`.
fn embedding(config: &Config) -> u64 {
    let d = match config {
        Config::Opt(c) => c.proj_dim(),
        _ => config.hidden_width(),
    };
    (config.vocab_size() * d) as u64
}

/// (layers, width, MLP width, heads) of a config.
fn dims(config: &Config) -> (usize, usize, usize, usize) {
    match config {
        Config::Gpt2(c) => (
            c.n_layer,
            c.n_embd,
            c.n_inner.unwrap_or(4 * c.n_embd),
            c.n_head,
        ),
        Config::Opt(c) => (
            c.num_hidden_layers,
            c.hidden_size,
            c.ffn_dim,
            c.num_attention_heads,
        ),
        Config::Llama(c, _) => (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
        ),
    }
}

/// Names and shapes of every tensor of the checkpoint in `dir`, from the safetensors headers
/// alone (no weight is read).
pub fn tensor_shapes(dir: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    let single = dir.join("model.safetensors");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        if !index.exists() {
            return Err(Error::Model {
                file: dir.display().to_string(),
                msg: "no model.safetensors or model.safetensors.index.json".into(),
            });
        }
        let (_, v) = crate::models::read_json(&index)?;
        let shards = crate::models::weights::shard_names(&index.display().to_string(), &v)?;
        shards.into_iter().map(|s| dir.join(s)).collect()
    };
    let mut out = Vec::new();
    for f in files {
        let t = TensorFile::open(&f)?;
        out.extend(t.shapes());
    }
    Ok(out)
}

/// The estimate for training the checkpoint in `dir` as `setup` on `work`.
pub fn estimate(dir: &Path, setup: &Setup, work: &Workload) -> Result<Estimate> {
    let (config, _) = crate::models::read_config(dir)?;
    let shapes = tensor_shapes(dir)?;
    Ok(estimate_from(&config, &shapes, setup, work))
}

/// [`estimate`] from a parsed config and the checkpoint's tensor shapes.
pub fn estimate_from(
    config: &Config,
    shapes: &[(String, Vec<usize>)],
    setup: &Setup,
    work: &Workload,
) -> Estimate {
    let b = setup.dtype.size_in_bytes() as u64;
    let half = setup.dtype != DType::F32;
    let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
    let parameters: u64 = shapes.iter().map(|(_, s)| numel(s)).sum();
    let (layers, d, f, heads) = dims(config);
    let (weights, trainable) = match &setup.lora {
        None => {
            // f32 masters, plus their compute casts under mixed precision.
            let casts = if half { parameters * b } else { 0 };
            (parameters * 4 + casts, parameters)
        }
        Some(spec) => {
            let matches = |name: &str| {
                let module = name.strip_suffix(".weight").unwrap_or(name);
                spec.targets
                    .iter()
                    .any(|t| module == t || module.ends_with(&format!(".{t}")))
            };
            let adapters: u64 = (shapes.iter())
                .filter(|(n, s)| s.len() == 2 && matches(n))
                .map(|(_, s)| (spec.r * (s[0] + s[1])) as u64)
                .sum();
            let casts = if half { adapters * b } else { 0 };
            (parameters * b + adapters * 4 + casts, adapters)
        }
    };
    // The reward head (or nothing) is negligible beside the body.
    let grads = trainable * 4;
    // A trained embedding's gradient is built last, as a zeroed table plus its scatter-add
    // and the sum into the gradient store: two more f32 tables at the end of the backward.
    let embedding_grad = if setup.lora.is_none() {
        2 * embedding(config) * 4
    } else {
        0
    };
    let gradients = embedding_grad + if work.accumulates { 2 * grads } else { grads };
    let optimizer = trainable * 8;
    let reference = if work.reference { parameters * b } else { 0 };

    let p = per_token(config);
    let (n, t) = (work.rows as u64, work.tokens as u64);
    let tokens = n * t;
    let body = (tokens as f64 * (p.d * d as f64 + p.f * f as f64) * b as f64) as u64;
    let scores = |h: u64| (p.scores * (h * t * t * 4) as f64) as u64;
    let (layer, working) = if setup.chunked_attention {
        // Scores of one chunk of heads, forward or backward, and none kept per layer.
        let h = crate::models::attention::heads_per_chunk(t as usize, heads) as u64;
        (body, body + scores(h))
    } else {
        // The backward pass of one layer: its gradients of activations, about as large again.
        let layer = body + scores(n * heads as u64);
        (layer, layer)
    };
    let activations = if setup.recompute {
        layers as u64 * tokens * d as u64 * b + layer + working
    } else {
        layers as u64 * layer + working
    };
    let logits = if work.lm_head {
        let v = config.vocab_size() as u64;
        if setup.recompute {
            // One chunk of tokens at a time (models::head): its logits, their f32 copy, the
            // log-softmax and the gradient.
            let chunk = (crate::models::head::chunk_tokens(v as usize) as u64).min(tokens);
            chunk * v * 16
        } else {
            // Logits and their gradient in f32, plus their compute-dtype twins under bf16.
            tokens * v * (8 + if half { 2 * b } else { 0 })
        }
    } else {
        0
    };
    // Full f32 training on the CPU, several short micro-batches a step: the layer weights
    // packed in both orientations (as much as the packs' cap allows).
    let short = tokens as usize <= crate::models::kernels::packed::MAX_ROWS;
    let packed =
        if setup.chunked_attention && !half && setup.lora.is_none() && work.accumulates && short {
            let layer_weights = parameters.saturating_sub(embedding(config));
            (2 * layer_weights * 4).min(crate::models::kernels::packed::LIMIT as u64)
        } else {
            0
        };
    Estimate {
        weights,
        reference,
        gradients,
        optimizer,
        activations,
        logits,
        packed,
        runtime: RUNTIME,
        trainable,
        parameters,
    }
}

/// Memory the process can still take: `W2S_MEMORY_LIMIT` if set (e.g. `8GiB`, `512MiB`, bytes),
/// else on the CPU the kernel's MemAvailable (capped by a cgroup limit), on a GPU its free
/// memory. `None` when it cannot be told.
pub fn available(device: &candle_core::Device) -> Result<Option<(u64, String)>> {
    if let Ok(v) = std::env::var("W2S_MEMORY_LIMIT") {
        let b = parse_bytes(&v).ok_or_else(|| {
            Error::Config(format!(
                "W2S_MEMORY_LIMIT `{v}`: expected bytes, optionally with KiB, MiB or GiB"
            ))
        })?;
        return Ok(Some((b, "W2S_MEMORY_LIMIT".into())));
    }
    if device.is_cpu() {
        return Ok(host_available().map(|b| (b, "available host memory".into())));
    }
    Ok(device_free(device).map(|b| (b, "free GPU memory".into())))
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("", 1),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n.trim(), *m)))?;
    let x: f64 = num.parse().ok()?;
    (x.is_finite() && x >= 0.0).then_some((x * mul as f64) as u64)
}

fn host_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    let mut avail = kb * 1024;
    // A container's own limit, when tighter than the machine's.
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

#[cfg(feature = "cuda")]
fn device_free(device: &candle_core::Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    cuda.cuda_stream().context().bind_to_thread().ok()?;
    let (free, _total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
    Some(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn device_free(_: &candle_core::Device) -> Option<u64> {
    None
}

/// Refuses a run whose estimate exceeds `avail` (from [`available`]: bytes and what they are),
/// naming what would help. On a GPU only the device part counts.
pub fn check(
    est: &Estimate,
    setup: &Setup,
    work: &Workload,
    avail: Option<(u64, String)>,
    on_cpu: bool,
) -> Result<()> {
    let Some((avail, what)) = avail else {
        return Ok(());
    };
    let need = if on_cpu { est.total() } else { est.device() };
    if need <= avail {
        tracing::debug!("memory plan: {} of {} ({what})", mib(need), mib(avail));
        return Ok(());
    }
    let mut fixes = Vec::new();
    if !setup.recompute && est.activations > est.total() / 5 {
        fixes.push("--grad-checkpoint (recompute activations layer by layer)");
    }
    if setup.dtype == DType::F32 {
        fixes.push("--dtype bf16 (mixed precision)");
    }
    if setup.lora.is_none() {
        fixes.push("--lora-rank 8 (train adapters, freeze the base)");
    }
    if work.rows > 2 {
        fixes.push("a smaller --micro-batch (gradients accumulate over the step)");
    }
    fixes.push("a smaller --max-ctx");
    Err(Error::Config(format!(
        "this run needs about {} at its peak and the device has {} ({what}); try {}\n{}",
        mib(need),
        mib(avail),
        fixes.join(", "),
        est.table().trim_end()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    fn work() -> Workload {
        Workload {
            rows: 2,
            tokens: 16,
            lm_head: true,
            reference: false,
            accumulates: false,
        }
    }

    /// Parameter counts come from the checkpoint headers: the fixture checkpoints against what
    /// transformers and PEFT count on them (tools/fixtures/make_parameter_counts.py).
    #[test]
    fn counts_parameters_like_transformers_and_peft() {
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("parameter_counts.json")).unwrap(),
        )
        .unwrap();
        for (name, n) in want.as_object().unwrap() {
            let dir = fixtures().join("models").join(name);
            let full = Setup {
                dtype: DType::F32,
                lora: None,
                recompute: false,
                chunked_attention: true,
            };
            let e = estimate(&dir, &full, &work()).unwrap();
            assert_eq!(e.parameters, n["parameters"].as_u64().unwrap(), "{name}");
            assert_eq!(e.weights, 4 * e.parameters, "{name}");
            assert_eq!(e.optimizer, 8 * e.parameters, "{name}");
            let (config, _) = crate::models::read_config(&dir).unwrap();
            let lora = Setup {
                lora: Some(LoraSpec {
                    r: 8,
                    alpha: 16.0,
                    targets: crate::models::lora::default_targets(&config),
                    seed: 0,
                }),
                ..full
            };
            let e = estimate(&dir, &lora, &work()).unwrap();
            assert_eq!(e.trainable, n["lora_r8"].as_u64().unwrap(), "{name} LoRA");
        }
    }

    #[test]
    fn lora_bf16_and_recompute_shrink_what_they_should() {
        let dir = fixtures().join("models/llama");
        let full = Setup {
            dtype: DType::F32,
            lora: None,
            recompute: false,
            chunked_attention: true,
        };
        let spec = LoraSpec {
            r: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
            seed: 0,
        };
        let lora = Setup {
            lora: Some(spec),
            ..full.clone()
        };
        let long = Workload {
            tokens: 64,
            ..work()
        };
        let a = estimate(&dir, &full, &long).unwrap();
        let l = estimate(&dir, &lora, &long).unwrap();
        assert!(l.trainable < a.trainable / 10 && l.optimizer < a.optimizer / 10);
        // The adapters of q and v: r * (in + out) each, per layer.
        let (config, _) = crate::models::read_config(&dir).unwrap();
        let Config::Llama(c, _) = &config else {
            panic!("a llama fixture")
        };
        let hd = c.head_dim();
        let per_layer = 2 * (c.hidden_size + c.num_attention_heads * hd)
            + 2 * (c.hidden_size + c.kv_heads() * hd);
        assert_eq!(l.trainable, (c.num_hidden_layers * per_layer) as u64);
        let bf = estimate(
            &dir,
            &Setup {
                dtype: DType::BF16,
                ..lora.clone()
            },
            &long,
        )
        .unwrap();
        assert!(bf.weights < l.weights && bf.activations < l.activations);
        let rc = estimate(
            &dir,
            &Setup {
                recompute: true,
                ..full.clone()
            },
            &long,
        )
        .unwrap();
        assert!(rc.activations < a.activations);
        assert_eq!(rc.weights, a.weights);
        let composed = Setup {
            chunked_attention: false,
            ..full.clone()
        };
        let ca = estimate(&dir, &composed, &long).unwrap();
        assert!(a.activations < ca.activations && a.weights == ca.weights);
        let acc = estimate(
            &dir,
            &full,
            &Workload {
                accumulates: true,
                ..long
            },
        )
        .unwrap();
        assert_eq!(acc.gradients - a.gradients, 4 * a.trainable);
    }

    #[test]
    fn refuses_with_what_to_change() {
        let dir = fixtures().join("models/llama");
        let setup = Setup {
            dtype: DType::F32,
            lora: None,
            recompute: false,
            chunked_attention: true,
        };
        let e = estimate(&dir, &setup, &work()).unwrap();
        let limit = |b: u64| Some((b, "W2S_MEMORY_LIMIT".to_string()));
        let err = check(&e, &setup, &work(), limit(1 << 20), true)
            .unwrap_err()
            .to_string();
        let ok = check(&e, &setup, &work(), limit(100 << 30), true);
        assert!(
            err.contains("device has 1 MiB") && err.contains("--dtype bf16"),
            "{err}"
        );
        assert!(err.contains("--lora-rank"), "{err}");
        ok.unwrap();
        assert_eq!(parse_bytes("8GiB"), Some(8 << 30));
        assert_eq!(parse_bytes("1.5 KiB"), Some(1536));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("lots"), None);
    }
}
