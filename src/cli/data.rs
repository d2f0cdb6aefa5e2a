//! `w2s split` and `w2s sql`.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::ArtifactsArg;
use crate::sql;
use crate::stages::split::{self, SplitOpts, SplitSettings};
use crate::store::ArtifactStore;

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct SplitArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub source: split::Source,
    #[command(flatten)]
    #[serde(flatten)]
    pub opts: SplitOpts,
    /// Rewrite the table even if it is up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct SqlArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub request: sql::Request,
}

pub async fn split(a: SplitArgs) -> Result<()> {
    let settings = SplitSettings::new(&a.source, &a.opts)?;
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let started = std::time::Instant::now();
    let report = split::run(&store, &settings, a.force).await?;
    let state = if report.up_to_date {
        "up to date, nothing written"
    } else {
        "written"
    };
    println!(
        "pairs -> {} ({state}; fingerprint {}; {:.2}s)",
        store.root(),
        &report.fingerprint[..12],
        started.elapsed().as_secs_f64()
    );
    println!("{:<8} {:>7}", "split", "pairs");
    for name in crate::schema::all_splits() {
        if let Some(n) = report.counts.get(name) {
            println!("{name:<8} {n:>7}");
        }
    }
    if report.prompt_mismatches > 0 {
        println!(
            "note: {} rows keep a separate rejected prompt (their rejected transcript has an extra \"\\n\\nAssistant:\"; see docs/artifacts.md)",
            report.prompt_mismatches
        );
    }
    if report.dropped > 0 {
        println!(
            "note: {} rows dropped by --prompt-mismatch drop",
            report.dropped
        );
    }
    if report.repeats > 0 {
        println!(
            "note: {} pairs repeat earlier content and got occurrence-numbered ids",
            report.repeats
        );
    }
    Ok(())
}

pub async fn sql(a: SqlArgs) -> Result<()> {
    let store = ArtifactStore::open(&a.root.artifacts)?;
    if let Some(bytes) = sql::run(&store, &a.request).await? {
        use std::io::Write;
        std::io::stdout().lock().write_all(&bytes)?;
    }
    Ok(())
}
