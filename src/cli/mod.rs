//! The `w2s` command line: the command tree and its dispatch. Each command is "settings from
//! its arguments, the stage's `run`, a printed summary"; the settings themselves (types,
//! defaults, docs) are defined once beside their stages and shared with pipeline files.
//! Library errors come back as [`crate::Error`]; `main` turns them into a message and an exit
//! code.

pub mod argv;
mod bench;
mod data;
mod eval;
mod models;
mod pipeline;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

pub use crate::pipeline::args::{PipelineArgs, PlanArgs, PlanFormat, RunArgs};
pub use crate::store::ArtifactsArg;
pub use bench::BenchCommand;
pub use data::{SplitArgs, SqlArgs};
pub use eval::{AnalyzeArgs, ReportArgs, ScoreArgs, WeakLabelArgs};
pub use models::{ConvertArgs, LoraMergeArgs};
pub use train::{GtTrainArgs, PretrainArgs, W2sTrainArgs};

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "w2s",
    version,
    about = "Weak-to-strong alignment experiments and weak-to-strong deception measurement",
    long_about = None
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing filter expression).
    #[arg(long, global = true, env = "W2S_LOG", default_value = "info")]
    pub log: String,

    /// Engine of the transformer layers: `owned` (the layers' forward and backward written
    /// out over reused buffers, on the CPU in f32 for GPT-2, OPT and Llama; autograd elsewhere) or `autograd`
    /// (candle's graph everywhere, the owned engine's reference). Both give the same values
    /// up to float rounding; a pipeline passes it to every step.
    #[arg(long, global = true, env = "W2S_ENGINE", value_enum, default_value_t = crate::models::engine::Engine::Owned)]
    pub engine: crate::models::engine::Engine,

    /// Widest vector instructions the engine's elementwise and row loops may use, capped at
    /// what the CPU has (all give the same bits; a narrower one only runs slower).
    #[arg(long, global = true, env = "W2S_SIMD", value_enum, default_value_t = crate::simd::Tier::Avx512)]
    pub simd: crate::simd::Tier,

    /// Train on a GPU with w2s's own CUDA kernels (GELU, layer and RMS norm, the attention
    /// softmax with its scale and mask, RoPE, the target tokens' log-probs, each with its
    /// backward) instead of candle's composed
    /// ops. Off until a GPU check has passed them (scripts/gpu-check.sh runs both ways); no
    /// effect on the CPU.
    #[arg(long, global = true, env = "W2S_CUDA_KERNELS")]
    pub cuda_kernels: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Split preference data into the gt / w2s / test / helpful pairs table.
    Split(SplitArgs),
    /// Run SQL (a query or a file from sql/) over the tables of an artifact root.
    Sql(SqlArgs),
    /// Load a checkpoint and write it back in Hugging Face layout (normalises names and shards).
    Convert(ConvertArgs),
    /// Fold a LoRA adapter into its base model and write a plain Hugging Face checkpoint.
    LoraMerge(LoraMergeArgs),
    /// Pretrain one tiny GPT-2 on the synthetic world's corpus and probe which entities it knows.
    Pretrain(PretrainArgs),
    /// Train a ceiling model on the gt split.
    GtTrain(GtTrainArgs),
    /// Label a split (w2s by default) with a trained reward model, into the `labels` table.
    WeakLabel(WeakLabelArgs),
    /// Train a strong student on a teacher's labels, with or without a conflicting objective.
    W2sTrain(W2sTrainArgs),
    /// Score a model's confidence toward the ground-truth chosen answers of a split.
    Score(ScoreArgs),
    /// Run every SQL analysis in sql/ over the tables, write the results as tables, summarise.
    Analyze(AnalyzeArgs),
    /// Write the figures and tables as one self-contained HTML page plus PNGs (runs analyze first).
    Report(ReportArgs),
    /// Run a pipeline file: every stage of its grid, skipping what is up to date.
    Run(RunArgs),
    /// Print a pipeline's steps (as a table, or as JSON for external schedulers).
    Plan(PlanArgs),
    /// Measure the engine against PyTorch on this machine (docs/performance.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

impl Command {
    /// The subcommand's name (`gt-train`).
    pub fn name(&self) -> String {
        argv::render(self, &[]).swap_remove(0)
    }

    /// The same command with its `--force` set to `force` (commands without one unchanged).
    pub fn forced(mut self, force: bool) -> Command {
        match &mut self {
            Command::Split(a) => a.force = force,
            Command::Pretrain(a) => a.force = force,
            Command::GtTrain(a) => a.force = force,
            Command::WeakLabel(a) => a.force = force,
            Command::W2sTrain(a) => a.force = force,
            Command::Score(a) => a.force = force,
            Command::Analyze(a) => a.force = force,
            Command::Report(a) => a.analysis.force = force,
            Command::Run(a) => a.force = force,
            _ => {}
        }
        self
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Split(a) => data::split(a).await,
        Command::Sql(a) => data::sql(a).await,
        Command::Pretrain(a) => train::pretrain(a).await,
        Command::GtTrain(a) => train::gt_train(a).await,
        Command::WeakLabel(a) => eval::weak_label(a).await,
        Command::W2sTrain(a) => train::w2s_train(a).await,
        Command::Score(a) => eval::score(a).await,
        Command::Convert(a) => models::convert(a).await,
        Command::LoraMerge(a) => models::lora_merge(a).await,
        Command::Analyze(a) => eval::analyze(a).await,
        Command::Report(a) => eval::report(a).await,
        Command::Run(a) => pipeline::run(a).await,
        Command::Plan(a) => pipeline::plan(a).await,
        Command::Bench(c) => bench::run(c),
    }
}

/// A store location as a user reads it: a local path for `file://` URLs, else the URL.
pub(crate) fn shown(url: &url::Url) -> String {
    match url.to_file_path() {
        Ok(p) if url.scheme() == "file" => p.display().to_string(),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
