//! What `w2s run` and `w2s plan` are asked: the pipeline file, its overrides, a target, and how
//! to run or print the plan.

use clap::Args;
use serde::Serialize;

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct PipelineArgs {
    /// The pipeline file (TOML), e.g. pipelines/quickstart.toml.
    pub pipeline: String,
    /// Override a key of the file: KEY=VALUE with a dotted key (`train.lr=1e-4`,
    /// `artifacts=/tmp/x`, `model.<id>.path=/folder`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Only this step, stage or run (and what it needs): e.g. `gt-train`, `score:gt-tiny-2`.
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the plan (what is up to date, what would run and why) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Run every selected step again, even if up to date.
    #[arg(long)]
    pub force: bool,
    /// Steps to run at once (each stage already uses every core; 1 shows their progress).
    #[arg(long, short = 'j', default_value_t = 1)]
    pub jobs: usize,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct PlanArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the plan as JSON (steps, commands, dependencies, levels, status); same as
    /// `--format json`.
    #[arg(long)]
    pub json: bool,
    /// Output: a table, JSON, or a Slurm submission script of the steps to run (one job array
    /// per level, afterok dependencies between levels; docs/pipelines.md).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Record this step as finished (what `w2s run` does after a step; each task of the Slurm
    /// script calls it once its stage succeeded, so later plans see the step up to date).
    #[arg(long, value_name = "STEP")]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanFormat {
    Text,
    Json,
    Slurm,
}
