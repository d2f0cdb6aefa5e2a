//! Where a checkpoint comes from: a local folder, an object-store prefix (`s3://`, `file://`),
//! an HTTP(S) folder, or the Hugging Face hub by repo id (`hf://owner/name[@revision]`).
//!
//! Remote checkpoints are downloaded once into a cache folder (`$W2S_CACHE`, default
//! `~/.cache/w2s`), under `models/<first 16 hex of sha256(base URL)>`. The folder is written
//! beside its final name and renamed into place, so an interrupted download is never mistaken
//! for a complete one. Hub files are fetched from `<HF_ENDPOINT>/<repo>/resolve/<revision>/<file>`
//! (`HF_ENDPOINT` defaults to https://huggingface.co; `HF_TOKEN`, if set, is sent as a bearer
//! token), the same URLs the `hf-hub` crate and `huggingface_hub` use.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::store::{fetch_with_headers, sha256_hex};

const HF_DEFAULT: &str = "https://huggingface.co";

/// Files of a checkpoint folder that `w2s` reads, and whether each must exist.
const FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", false),
    ("reward_head.safetensors", false),
    ("w2s.json", false),
];

/// The last path segment of a model location (`gpt2` for `hf://openai-community/gpt2`): the
/// default name of a run trained or scored from it.
pub fn model_name(location: &str) -> Result<String> {
    location
        .trim_end_matches('/')
        .rsplit(['/', '@'])
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::Config(format!("{location}: give --run-id")))
}

/// The base URL of a remote checkpoint (ending in `/`), or `None` for a local folder.
pub fn base_url(location: &str) -> Result<Option<String>> {
    if let Some(rest) = location.strip_prefix("hf://") {
        let (repo, rev) = rest.split_once('@').unwrap_or((rest, "main"));
        let repo = repo.trim_matches('/');
        if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
            return Err(Error::Config(format!(
                "{location}: a hub model is hf://owner/name or hf://owner/name@revision"
            )));
        }
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| HF_DEFAULT.into());
        return Ok(Some(format!(
            "{}/{repo}/resolve/{rev}/",
            endpoint.trim_end_matches('/')
        )));
    }
    if location.contains("://") && !location.starts_with("file://") {
        return Ok(Some(format!("{}/", location.trim_end_matches('/'))));
    }
    Ok(None)
}

fn cache_root() -> PathBuf {
    if let Ok(p) = std::env::var("W2S_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache/w2s")
}

fn is_not_found(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }
    )
}

/// Streams `base` + `name` into `dir`/`name` (weights files: never whole in memory).
async fn get_to(base: &str, name: &str, dir: &Path) -> Result<()> {
    crate::store::fetch_to_file(&format!("{base}{name}"), headers(base)?, &dir.join(name))
        .await
        .map(|_| ())
}

fn headers(base: &str) -> Result<object_store::HeaderMap> {
    let mut headers = object_store::HeaderMap::new();
    if base.contains("/resolve/") {
        if let Ok(token) = std::env::var("HF_TOKEN") {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Error::Config("HF_TOKEN is not a valid header value".into()))?;
            headers.insert("authorization", value);
        }
    }
    Ok(headers)
}

async fn get(base: &str, name: &str) -> Result<Bytes> {
    fetch_with_headers(&format!("{base}{name}"), headers(base)?).await
}

/// A local folder holding the checkpoint at `location`, downloading it first if remote.
pub async fn materialize(location: &str) -> Result<PathBuf> {
    let Some(base) = base_url(location)? else {
        let p = location.strip_prefix("file://").unwrap_or(location);
        return Ok(PathBuf::from(p));
    };
    let dir = cache_root()
        .join("models")
        .join(&sha256_hex(base.as_bytes())[..16]);
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("cache path has a parent").to_path_buf();
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("m"),
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Io {
        path: tmp.display().to_string(),
        source,
    })?;
    let result = download(&base, &tmp).await.and_then(|()| {
        std::fs::rename(&tmp, &dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have finished the same download meanwhile.
        if dir.join("config.json").exists() {
            return Ok(dir);
        }
        return Err(e);
    }
    tracing::info!("downloaded {location} into {}", dir.display());
    Ok(dir)
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })
}

async fn download(base: &str, dir: &Path) -> Result<()> {
    for (name, required) in FILES {
        match get(base, name).await {
            Ok(b) => save(dir, name, &b)?,
            Err(e) if !required && is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    match get_to(base, "model.safetensors", dir).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {
            let index = get(base, "model.safetensors.index.json")
                .await
                .map_err(|_| Error::Model {
                    file: base.to_string(),
                    msg: "neither model.safetensors nor model.safetensors.index.json found".into(),
                })?;
            save(dir, "model.safetensors.index.json", &index)?;
            let file = format!("{base}model.safetensors.index.json");
            let v: serde_json::Value =
                serde_json::from_slice(&index).map_err(|e| Error::Model {
                    file: file.clone(),
                    msg: format!("invalid JSON: {e}"),
                })?;
            for shard in super::weights::shard_names(&file, &v)? {
                get_to(base, &shard, dir).await?;
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(base_url("some/dir").unwrap(), None);
        assert_eq!(base_url("file:///x/y").unwrap(), None);
        assert_eq!(
            base_url("s3://b/models/gpt2/").unwrap().as_deref(),
            Some("s3://b/models/gpt2/")
        );
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| HF_DEFAULT.into());
        assert_eq!(
            base_url("hf://openai-community/gpt2@v1").unwrap(),
            Some(format!("{endpoint}/openai-community/gpt2/resolve/v1/"))
        );
        assert!(base_url("hf://gpt2").is_err());
    }
}
