//! `w2s report`: the paper's figures and every run's settings and timings as one
//! self-contained HTML page (inline SVG and CSS, no script, no network: it opens from disk or
//! from a bucket) plus a PNG of every figure, published under `report/<fingerprint>/` in the
//! artifact store.
//!
//! It reads only the `analysis_*` tables (running `w2s analyze` first if they are missing or
//! stale) and the `runs` table, so every number on the page is one a reader can get back with
//! `w2s sql`: [`data`] reads them (its queries are the files of `sql/report/`), [`figures`]
//! builds one figure each with its caption ([`variants`] those of bootstrapped, high-confidence
//! and adaptive students), [`html`] writes the page; drawing is `crate::plots`.

mod data;
mod figures;
mod html;
mod variants;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

pub use figures::short;

use super::analyze::{self, AnalyzeSettings};
use super::common;
use crate::error::{Error, Result};
use crate::plots;
use crate::sql;
use crate::store::{fingerprint, keys, sha256_hex, ArtifactStore, OutputFile};
use data::ReportData;

/// Everything that determines the report: the analysis settings it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ReportSettings {
    pub analyze: AnalyzeSettings,
}

/// What a report run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutput {
    /// Path of the page relative to the artifact root.
    pub page: String,
    /// Every file written (page first), relative to the root.
    pub files: Vec<String>,
    /// Ids of the figures on the page.
    pub figures: Vec<String>,
    pub up_to_date: bool,
}

/// Runs the report stage: analyses first (a no-op when up to date), then the page.
pub async fn run(store: &ArtifactStore, s: &ReportSettings, force: bool) -> Result<ReportOutput> {
    let analysis = analyze::run(store, &s.analyze, false).await?;
    let am = store.manifest(keys::ANALYZE).await?.ok_or_else(|| {
        Error::NoInput(format!("{}: analyze published no manifest", store.root()))
    })?;
    let mut inputs = vec![common::manifest_input(&am)];
    // Pretrained models' knowledge probes are shown too.
    for m in store.manifests().await? {
        if m.outputs
            .iter()
            .any(|f| f.table.as_deref() == Some("knowledge"))
        {
            inputs.push(common::manifest_input(&m));
        }
    }
    let fp = fingerprint("report", s, &inputs);
    let dir = format!("report/{}", keys::part_tag(&fp));
    if !force {
        if let Some(m) = store.current(keys::REPORT, &fp).await? {
            let files: Vec<String> = m.outputs.iter().map(|f| f.path.clone()).collect();
            return Ok(ReportOutput {
                page: format!("{dir}/index.html"),
                figures: files
                    .iter()
                    .filter_map(|f| f.strip_suffix(".png"))
                    .filter_map(|f| f.rsplit('/').next())
                    .map(str::to_string)
                    .collect(),
                files,
                up_to_date: true,
            });
        }
    }

    let ctx = sql::context(store).await?;
    let data = ReportData::load(&ctx, analysis.cells).await?;
    let figs = figures::figures(&data, &s.analyze);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut svgs = BTreeMap::new();
    for f in figs.iter().map(|f| &f.figure) {
        svgs.insert(f.id.clone(), plots::svg(f).map_err(Error::Config)?);
        files.push((
            format!("{dir}/{}.png", f.id),
            plots::png(f).map_err(Error::Config)?,
        ));
    }
    let page = html::page(store.root(), s, &fp, &data, &figs, &svgs);
    files.insert(0, (format!("{dir}/index.html"), page.into_bytes()));

    let mut outputs: Vec<OutputFile> = Vec::new();
    for (path, bytes) in &files {
        let out = OutputFile {
            table: None,
            path: path.clone(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            rows: None,
        };
        if let Err(e) = store.put(path, Bytes::from(bytes.clone())).await {
            store.discard(&outputs).await;
            return Err(e);
        }
        outputs.push(out);
    }
    store
        .publish("report", keys::REPORT, &fp, s, inputs, outputs)
        .await?;
    Ok(ReportOutput {
        page: format!("{dir}/index.html"),
        files: files.into_iter().map(|(p, _)| p).collect(),
        figures: figs.into_iter().map(|f| f.figure.id).collect(),
        up_to_date: false,
    })
}

/// Copies a published report to a local folder (for a report in a bucket): written beside it
/// first, then renamed into place, so the folder is either the old report or the new one.
pub async fn copy_to(store: &ArtifactStore, out: &ReportOutput, dest: &Path) -> Result<()> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| Error::Io { path, source }
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "report".into());
    let staging = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written: Result<()> = async {
        for f in &out.files {
            let bytes = store.get(f).await?;
            let file = staging.join(f.rsplit('/').next().unwrap_or(f));
            std::fs::write(&file, &bytes).map_err(io(&file))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&staging, dest).map_err(io(dest))
}
