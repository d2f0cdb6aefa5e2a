//! The settings of a training run, defined once: the `gt-train` / `w2s-train` flags, the
//! `[train]` tables of pipeline files (serde, same names and defaults) and, resolved with the
//! scenario's defaults, the stages' fingerprinted settings.

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::models::weights::LoraSpec;

use crate::optim::Schedule;
use crate::scenarios::rm::Readout;
use crate::tokenize::Tokenization;

/// How one model is trained; every field has a default (the reference's, docs/reference.md
/// §2.4 and §3.10), and the scenario-dependent ones are optional.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOpts {
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Pairs per forward/backward pass (gradients are accumulated over the step).
    #[arg(long, default_value_t = 1)]
    pub micro_batch: usize,
    /// Learning rate (default: 1e-5 for reward models, 1e-6 for SFT + SimPO / DPO, as the
    /// reference).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule (default: cosine for reward models, warmup-constant for SFT and
    /// the preference phase).
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Passes over the data (default 1; DPO's preference phase 3, as the reference).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Passes of the SFT phase before SimPO / DPO.
    #[arg(long, default_value_t = 1)]
    pub sft_epochs: usize,
    /// Longest sequence in tokens; longer ones keep their last tokens.
    #[arg(long, default_value_t = crate::tokenize::MAX_CTX)]
    pub max_ctx: usize,
    /// Reward models: where the reward is read: the last real token, or the reference's
    /// (count of non-zero ids) - 1 (docs/reference.md §2.1; docs/scenarios.md).
    #[arg(long, value_enum, default_value_t = Readout::LastToken)]
    pub readout: Readout,
    /// Preference scenarios: how each side becomes tokens. joint encodes the transcript once
    /// and masks the prompt; reference reproduces the reference's separate encoding, its
    /// truncation and SFT denominator (docs/reference.md §1.7, §3.3). Reward models always
    /// encode the whole transcript, as the reference.
    #[arg(long, value_enum, default_value_t = Tokenization::Joint)]
    pub tokenization: Tokenization,
    /// Seed of the slot swap (CPython Random(seed), restarted per split).
    #[arg(long, default_value_t = 0)]
    pub slot_seed: u64,
    /// Seed of the reward head's initial weights.
    #[arg(long, default_value_t = 0)]
    pub head_seed: u64,
    /// Initial reward head from a safetensors file (`weight`, [1, hidden]), e.g. from PyTorch.
    #[arg(long)]
    pub init_head: Option<String>,
    /// Train LoRA adapters of this rank instead of every weight (paper App. H: 8). The base
    /// stays frozen; the run publishes the adapter (PEFT layout) and the merged checkpoint.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scaling alpha (default: twice the rank, the paper's 16 at rank 8).
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// Module-name suffixes that get adapters, PEFT style (default: every attention and MLP
    /// projection of the family, as the paper).
    #[arg(long, value_delimiter = ',', requires = "lora_rank")]
    pub lora_targets: Vec<String>,
    /// Seed of the adapters' initial `A` (B starts at zero).
    #[arg(long, default_value_t = 0)]
    pub lora_seed: u64,
    /// Start from this adapter folder (PEFT layout: adapter_config.json,
    /// adapter_model.safetensors) instead of a fresh one, e.g. one PEFT initialised.
    #[arg(long, requires = "lora_rank")]
    pub lora_init: Option<String>,
    /// Recompute each layer's activations during the backward pass instead of keeping them
    /// all (gradient checkpointing): activation memory of about one layer plus each layer's
    /// input, for about one more forward pass of time; blocks of 1 MiB and more then go back
    /// to the system when freed, so the peak is not raised by a fragmented heap. Gradients
    /// equal the plain path's up to rounding.
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// Compute dtype: f32, or bf16 as mixed precision (f32 master weights, Adam moments and
    /// gradient accumulation; norms, softmax, log-probs, losses and the reward head in f32).
    /// f16 is refused: without loss scaling its gradients underflow.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = crate::models::CPU)]
    pub device: String,
    /// Save resumable state every N optimizer steps (0: never).
    #[arg(long, default_value_t = 10)]
    pub save_every: usize,
}

impl Default for TrainOpts {
    fn default() -> Self {
        crate::cli::argv::defaults()
    }
}

/// LoRA of a run, as its settings record it (and fingerprint it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraSettings {
    #[serde(flatten)]
    pub spec: LoraSpec,
    /// The adapter folder the run starts from (its files enter the run's inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

/// Whether `dtype` can be trained in: f32, or bf16 as mixed precision.
pub fn check_dtype(dtype: &str) -> Result<(), String> {
    match dtype {
        "f32" | "bf16" => Ok(()),
        "f16" => Err("f16 training needs loss scaling, which w2s does not do; use bf16".into()),
        _ => Err("expected f32 or bf16".into()),
    }
}

impl TrainOpts {
    /// The LoRA of these options, if a rank is given.
    pub fn lora(&self) -> Option<LoraSettings> {
        let r = self.lora_rank?;
        Some(LoraSettings {
            spec: LoraSpec {
                r,
                alpha: self.lora_alpha.unwrap_or(2.0 * r as f64),
                targets: self.lora_targets.clone(),
                seed: self.lora_seed,
            },
            init: self.lora_init.clone(),
        })
    }

    /// What a setting the pipeline file can get wrong must satisfy (the key is named by the
    /// caller).
    pub fn check(&self) -> Result<(), String> {
        for (field, v) in [
            ("batch", Some(self.batch)),
            ("micro_batch", Some(self.micro_batch)),
            ("epochs", self.epochs),
            ("sft_epochs", Some(self.sft_epochs)),
            ("max_ctx", Some(self.max_ctx)),
        ] {
            if v == Some(0) {
                return Err(format!("`{field}` must be at least 1"));
            }
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(format!("`lr` = {lr}: give a positive learning rate"));
            }
        }
        let lora_set =
            self.lora_alpha.is_some() || !self.lora_targets.is_empty() || self.lora_init.is_some();
        if lora_set && self.lora_rank.is_none() {
            return Err("`lora_alpha`, `lora_targets` and `lora_init` need `lora_rank`".into());
        }
        check_dtype(&self.dtype).map_err(|m| format!("`dtype` = {}: {m}", self.dtype))?;
        if self.lora_rank == Some(0) {
            return Err("`lora_rank` must be at least 1".into());
        }
        Ok(())
    }
}
