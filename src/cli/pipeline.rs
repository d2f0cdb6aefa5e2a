//! `w2s run` and `w2s plan`: pipeline files (docs/pipelines.md).

use anyhow::{Context, Result};

use crate::pipeline::args::{PipelineArgs, PlanArgs, PlanFormat, RunArgs};
use crate::pipeline::{Planned, Status};

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
