//! `w2s weak-label`, `w2s score`, `w2s analyze` and `w2s report`.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::ArtifactsArg;
use crate::stages::analyze::{self, AnalyzeOpts};
use crate::stages::report::{self, ReportSettings};
use crate::stages::score::{self, ScoreSettings};
use crate::stages::weak_label::{self, WeakLabelSettings};
use crate::store::ArtifactStore;

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct WeakLabelArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub request: weak_label::Request,
    /// Relabel even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct ScoreArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub request: score::Request,
    /// Rescore even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub opts: AnalyzeOpts,
    /// Recompute even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct ReportArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub analysis: AnalyzeArgs,
    /// Also copy the page and its PNGs into this local folder (replaced as a whole).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub async fn weak_label(a: WeakLabelArgs) -> Result<()> {
    let s = WeakLabelSettings::new(&a.request);
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = weak_label::run(&store, &s, a.force).await?;
    println!(
        "labels of `{}` on {}{}: {} pairs, agreement with ground truth {:.4}",
        s.run_id,
        s.split,
        if r.up_to_date { " are up to date" } else { "" },
        r.pairs,
        r.accuracy
    );
    Ok(())
}

pub async fn score(a: ScoreArgs) -> Result<()> {
    let s = ScoreSettings::new(&a.request)?;
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let started = std::time::Instant::now();
    let r = score::run(&store, &s, a.force).await?;
    let secs = started.elapsed().as_secs_f64();
    if r.up_to_date {
        println!(
            "scores of `{}` on {} are up to date ({} pairs, accuracy {:.4})",
            s.run_id, s.split, r.pairs, r.accuracy
        );
    } else {
        println!(
            "scores of `{}` on {} -> {}: {} pairs, accuracy {:.4}, {:.0} tokens/s ({:.1}s){}",
            s.run_id,
            s.split,
            store.root(),
            r.pairs,
            r.accuracy,
            r.tokens as f64 / secs,
            secs,
            if r.truncated > 0 {
                format!("; {} sequences truncated to --max-ctx", r.truncated)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

pub async fn analyze(a: AnalyzeArgs) -> Result<()> {
    let s = a.opts.settings()?;
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = analyze::run(&store, &s, a.force).await?;
    println!(
        "analysis tables -> {}{}: {}",
        store.root(),
        if r.up_to_date { " (up to date)" } else { "" },
        r.tables
            .iter()
            .map(|(t, n)| format!("{t} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{}", analyze::text_summary(&r.cells, s.threshold));
    if let Some(l) = &r.leakage {
        println!("leakage audit: {l}");
    }
    Ok(())
}

pub async fn report(a: ReportArgs) -> Result<()> {
    let s = ReportSettings {
        analyze: a.analysis.opts.settings()?,
    };
    let store = ArtifactStore::open(&a.analysis.root.artifacts)?;
    let r = report::run(&store, &s, a.analysis.force).await?;
    println!(
        "report{} -> {} ({} figures: {}; PNGs beside it)",
        if r.up_to_date { " (up to date)" } else { "" },
        super::shown(&store.url_of(&r.page)),
        r.figures.len(),
        r.figures.join(", ")
    );
    if let Some(out) = &a.out {
        report::copy_to(&store, &r, out).await?;
        println!("copied to {}", out.join("index.html").display());
    }
    Ok(())
}
