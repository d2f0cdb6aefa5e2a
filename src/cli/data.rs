//! `w2s split` and `w2s sql`.

use anyhow::Result;
use clap::Args;
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::ArtifactsArg;
use crate::sql::{self, OutFormat};
use crate::stages::split::{self, SplitOpts, SplitSettings};
use crate::store::{resolve, ArtifactStore};
use crate::Error;

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
    /// The query, or a path to a .sql file.
    pub query: Option<String>,
    /// Read the query from this file.
    #[arg(long, conflicts_with = "query")]
    pub file: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    /// A bound parameter, NAME=VALUE, used as $NAME in the query. Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Write the result here (local path or URL) instead of printing it.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Output format (default: from --output's extension, else a printed table).
    #[arg(long, value_enum)]
    pub format: Option<OutFormat>,
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
    for name in crate::schema::SPLITS {
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
    let text = match (&a.file, &a.query) {
        (Some(f), _) => sql::read_file(f)?,
        (None, Some(q)) if q.trim_end().ends_with(".sql") && std::path::Path::new(q).is_file() => {
            sql::read_file(q)?
        }
        (None, Some(q)) => q.clone(),
        (None, None) => return Err(Error::Config("give a query or --file".into()).into()),
    };
    let params = a
        .params
        .iter()
        .map(|p| sql::parse_param(p))
        .collect::<Result<Vec<_>, _>>()?;
    let format = a
        .format
        .or_else(|| a.output.as_deref().and_then(OutFormat::from_path))
        .unwrap_or(OutFormat::Table);
    if a.output.is_none() && format == OutFormat::Parquet {
        return Err(Error::Config("--format parquet needs --output FILE".into()).into());
    }
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let ctx = sql::context(&store).await?;
    let batches = sql::query(&ctx, &text, &params).await?;
    let bytes = sql::render(&batches, format)?;
    match &a.output {
        Some(out) => {
            let r = resolve(out)?;
            r.store
                .put(&r.path, bytes.into())
                .await
                .map_err(|source| Error::Store {
                    uri: out.clone(),
                    source,
                })?;
        }
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            if format == OutFormat::Table {
                writeln!(stdout)?;
            }
        }
    }
    Ok(())
}
