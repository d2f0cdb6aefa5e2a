//! What the stages share: reading a split of the `pairs` table, the input files of a model
//! folder, and checkpoints of trained runs kept in the artifact store.
//!
//! A trained run `R` publishes its checkpoint under `models/R/<fingerprint prefix>/` (Hugging
//! Face layout plus `reward_head.safetensors` and `w2s.json`) with manifest key `train/R`;
//! [`open_run`] finds it again, downloads it if the store is remote, and checks every file
//! against the manifest's checksums before anything loads it.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;

use crate::error::{Error, Result};
use crate::store::{keys, ArtifactStore, InputFile, Manifest, OutputFile};

/// The error of a root that has no `pairs` table yet.
fn no_pairs(store: &ArtifactStore) -> Error {
    Error::NoInput(format!(
        "{}: no `pairs` table (run `w2s split` first)",
        store.root()
    ))
}

/// The committed manifest of the `pairs` table (its fingerprint identifies the split).
pub async fn pairs_manifest(store: &ArtifactStore) -> Result<Manifest> {
    store
        .manifest(keys::SPLIT)
        .await?
        .ok_or_else(|| no_pairs(store))
}

/// One pair of the split, as text.
#[derive(Debug, Clone)]
pub struct PairText {
    pub pair_id: String,
    pub split_index: i64,
    pub prompt: String,
    pub chosen: String,
    pub rejected_prompt: String,
    pub rejected: String,
}

impl PairText {
    /// The chosen transcript (what a reward model reads).
    pub fn chosen_text(&self) -> String {
        format!("{}{}", self.prompt, self.chosen)
    }
    /// The rejected transcript.
    pub fn rejected_text(&self) -> String {
        format!("{}{}", self.rejected_prompt, self.rejected)
    }
}

pub async fn load_split(store: &ArtifactStore, split_name: &str) -> Result<Vec<PairText>> {
    let batches = store.read_table("pairs").await?;
    if batches.is_empty() {
        return Err(no_pairs(store));
    }
    let mut out = Vec::new();
    for b in &batches {
        let s = |name: &str| {
            b.column_by_name(name)
                .expect("pairs schema")
                .as_string::<i32>()
                .clone()
        };
        let (ids, splits, prompts, chosen, rejected, rprompt) = (
            s("pair_id"),
            s("split"),
            s("prompt"),
            s("chosen"),
            s("rejected"),
            s("rejected_prompt"),
        );
        let idx = b
            .column_by_name("split_index")
            .expect("pairs schema")
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            if splits.value(i) != split_name {
                continue;
            }
            let p = prompts.value(i).to_string();
            out.push(PairText {
                pair_id: ids.value(i).to_string(),
                split_index: idx.value(i),
                rejected_prompt: if rprompt.is_null(i) {
                    p.clone()
                } else {
                    rprompt.value(i).to_string()
                },
                prompt: p,
                chosen: chosen.value(i).to_string(),
                rejected: rejected.value(i).to_string(),
            });
        }
    }
    out.sort_by_key(|p| p.split_index);
    if out.is_empty() {
        return Err(Error::NoInput(format!(
            "{}: the pairs table has no rows in split `{split_name}`",
            store.root()
        )));
    }
    Ok(out)
}

/// Files of a model folder that determine its outputs, with their checksums.
pub fn model_inputs(dir: &Path) -> Result<Vec<InputFile>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json"
                || n == "tokenizer.json"
                || n.ends_with(".safetensors")
                || n.ends_with(".safetensors.index.json")
        })
        .collect();
    files.sort();
    hash_files(&files)
}

/// The named files of a folder (each must exist) as inputs.
pub fn model_inputs_named(dir: &Path, names: &[&str]) -> Result<Vec<InputFile>> {
    let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    hash_files(&files)
}

fn hash_files(files: &[PathBuf]) -> Result<Vec<InputFile>> {
    files
        .iter()
        .map(|p| {
            let (bytes, sha256) = crate::store::sha256_file(p)?;
            Ok(InputFile {
                uri: p.display().to_string(),
                bytes,
                sha256,
            })
        })
        .collect()
}

/// A run id as a file-name part.
pub fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Uploads a checkpoint folder's files to `models/<run>/<tag>/` and returns them as outputs.
pub async fn upload_checkpoint(
    store: &ArtifactStore,
    run_id: &str,
    tag: &str,
    dir: &Path,
) -> Result<Vec<OutputFile>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let path = format!("models/{}/{tag}/{name}", sanitize(run_id));
        // Streamed: a checkpoint of many GiB is never read whole into memory.
        let (bytes, sha256) = match store.put_file(&path, &p).await {
            Ok(x) => x,
            Err(e) => {
                store.discard(&out).await;
                return Err(e);
            }
        };
        out.push(OutputFile {
            table: None,
            path,
            bytes,
            sha256,
            rows: None,
        });
    }
    Ok(out)
}

/// The checkpoint of trained run `run_id` as a local folder, checked against its manifest;
/// with the manifest.
pub async fn open_run(store: &ArtifactStore, run_id: &str) -> Result<(PathBuf, Manifest)> {
    let m = store.manifest(&keys::train(run_id)).await?.ok_or_else(|| {
        Error::NoInput(format!(
            "{}: no trained run `{run_id}` (train it with pretrain, gt-train or w2s-train first)",
            store.root()
        ))
    })?;
    let config = m
        .outputs
        .iter()
        .find(|f| f.path.ends_with("/config.json"))
        .ok_or_else(|| Error::Format {
            file: store
                .url_of(&format!("manifests/{}.json", m.key))
                .to_string(),
            msg: "the run's manifest lists no checkpoint".into(),
        })?;
    let folder = config.path.trim_end_matches("config.json");
    let dir = crate::models::source::materialize(store.url_of(folder).as_str()).await?;
    for f in m.outputs.iter().filter(|f| f.path.starts_with(folder)) {
        let p = dir.join(&f.path[folder.len()..]);
        let (bytes, sha256) = crate::store::sha256_file(&p)?;
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(Error::Format {
                file: p.display().to_string(),
                msg: "checkpoint file does not match the checksum in its manifest (corrupt or truncated)".into(),
            });
        }
    }
    Ok((dir, m))
}

/// The input record of a committed manifest (its fingerprint stands for its contents).
pub fn manifest_input(m: &Manifest) -> InputFile {
    InputFile {
        uri: format!("manifest:{}", m.key),
        bytes: 0,
        sha256: m.fingerprint.clone(),
    }
}

/// A model's folder and the inputs that identify it: `model`'s own files, or the manifest of
/// the trained run `run_id`.
pub async fn locate(
    store: &ArtifactStore,
    run_id: &str,
    model: Option<&str>,
) -> Result<(PathBuf, Vec<crate::store::InputFile>)> {
    match model {
        Some(loc) => {
            let dir = crate::models::source::materialize(loc).await?;
            let inputs = model_inputs(&dir)?;
            Ok((dir, inputs))
        }
        None => {
            let (dir, m) = open_run(store, run_id).await?;
            Ok((dir, vec![manifest_input(&m)]))
        }
    }
}
