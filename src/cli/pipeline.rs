//! `w2s run` and `w2s plan`: pipeline files (docs/pipelines.md).

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::pipeline::{Planned, Status};

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

async fn planned(a: &PipelineArgs, force: bool) -> Result<Planned> {
    Ok(Planned::load(&a.pipeline, &a.sets, a.target.as_deref(), force).await?)
}

pub async fn plan(a: PlanArgs) -> Result<()> {
    let p = planned(&a.pipeline, false).await?;
    if let Some(id) = &a.record {
        return Ok(p.record(id).await?);
    }
    match if a.json { PlanFormat::Json } else { a.format } {
        PlanFormat::Text => print!("{}", p.table()),
        PlanFormat::Slurm => print!("{}", p.slurm()?),
        PlanFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&p.json()).expect("plan serializes")
        ),
    }
    Ok(())
}

pub async fn run(a: RunArgs) -> Result<()> {
    let started = std::time::Instant::now();
    if a.dry_run {
        print!("{}", planned(&a.pipeline, a.force).await?.table());
        return Ok(());
    }
    // The lock comes first: the plan's status must not change under us.
    let lock = Planned::lock(&a.pipeline.pipeline, &a.pipeline.sets).await?;
    let p = planned(&a.pipeline, a.force).await?;
    if p.status
        .iter()
        .any(|s| !matches!(s.status, Status::UpToDate | Status::NotSelected))
    {
        print!("{}", p.table());
    }
    let exe = std::env::current_exe().context("cannot find the w2s executable")?;
    let result = p.execute(exe, a.jobs, a.force).await;
    lock.release().await;
    let summary = result?;
    let report = match p.report_page().await? {
        Some(url) => format!("; report: {}", super::shown(&url)),
        None => String::new(),
    };
    let name = p.name();
    if summary.ran.is_empty() {
        println!(
            "{name}: all {} steps up to date ({:.2}s){report}",
            p.selected.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{name}: {} steps ran, {} up to date ({:.1}s){report}",
            summary.ran.len(),
            summary.skipped,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
