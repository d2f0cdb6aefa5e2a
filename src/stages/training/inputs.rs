//! What a training run reads besides its settings: its base model, the splits it trains on
//! and its teacher's labels, each with the input record that enters the run's fingerprint.

use std::path::PathBuf;

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::stages::common::{self, PairText};
use crate::store::{keys, ArtifactStore, InputFile};

/// The base model's folder: `run:<id>` is a model trained or pretrained in this root (checked
/// against its manifest), anything else a location `models::source` materializes.
pub async fn base_model(store: &ArtifactStore, location: &str) -> Result<PathBuf> {
    match location.strip_prefix("run:") {
        Some(id) => Ok(common::open_run(store, id).await?.0),
        None => crate::models::source::materialize(location).await,
    }
}

/// The label parts of `teacher` on `split`, refusing labels an earlier checkpoint of the
/// teacher made (it was retrained since), with the input record of the labels.
pub async fn labels(
    store: &ArtifactStore,
    teacher: &str,
    split: &str,
) -> Result<(Vec<RecordBatch>, InputFile)> {
    let m = store.manifest(&keys::labels(teacher, split)).await?.ok_or_else(|| {
        Error::NoInput(format!(
            "{}: no labels of `{teacher}` on the {split} split (run `w2s weak-label --run {teacher} --split {split}` first)",
            store.root()
        ))
    })?;
    if let Some(run) = store.manifest(&keys::train(teacher)).await? {
        let used = m
            .inputs
            .iter()
            .find(|i| i.uri == format!("manifest:{}", run.key));
        if used.is_some_and(|i| i.sha256 != run.fingerprint) {
            return Err(Error::NoInput(format!(
                "the labels of `{teacher}` were made by an earlier checkpoint of it (it was retrained since): rerun `w2s weak-label --run {teacher}`"
            )));
        }
    }
    let mut batches = Vec::new();
    for f in m
        .outputs
        .iter()
        .filter(|f| f.table.as_deref() == Some("labels"))
    {
        batches.extend(store.read_table_part(f).await?);
    }
    Ok((batches, common::manifest_input(&m)))
}

/// The helpful pairs the implicit conflict mixes in.
pub async fn helpful(store: &ArtifactStore) -> Result<Vec<PairText>> {
    common::load_split(store, "helpful").await.map_err(|_| {
        Error::NoInput(
            "--objective implicit needs helpful pairs (give `w2s split` a --helpful file)".into(),
        )
    })
}
