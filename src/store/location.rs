//! Locations: a local path or URL (`file://`, `s3://`, `http(s)://`) parsed into an object
//! store and a path inside it, and one-shot fetches of remote inputs.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt};
use url::Url;

use crate::error::{Error, Result};

/// A parsed location: an object store and a path inside it.
pub struct Resolved {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The URL under which the store is registered with DataFusion (`s3://bucket`, `file://`).
    pub base_url: Url,
    /// The location as a URL DataFusion can read (`s3://bucket/key`, `file:///abs/path`).
    pub url: Url,
}

/// Parses a local path or URL into something `object_store` can read.
/// Local paths become absolute `file://` URLs; nothing is created here.
pub fn resolve(location: &str) -> Result<Resolved> {
    resolve_with_headers(location, object_store::HeaderMap::new())
}

/// [`resolve`], sending `headers` with every HTTP(S) request (e.g. a hub token).
pub fn resolve_with_headers(location: &str, headers: object_store::HeaderMap) -> Result<Resolved> {
    let bad = |msg: String| Error::Config(format!("{location}: {msg}"));
    if let Some(scheme_end) = location.find("://") {
        let url = Url::parse(location).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let scheme = &location[..scheme_end];
        match scheme {
            "file" => {
                let p = url
                    .to_file_path()
                    .map_err(|_| bad("not a valid file:// URL".into()))?;
                resolve_local(&p, location)
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("an s3:// URL needs a bucket: s3://bucket/prefix".into()))?;
                let store = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::Store {
                        uri: location.to_string(),
                        source: e,
                    })?;
                let path = Path::parse(url.path().trim_matches('/'))
                    .map_err(|e| bad(format!("bad object path: {e}")))?;
                let base_url = Url::parse(&format!("s3://{bucket}")).expect("valid s3 URL");
                Ok(Resolved {
                    store: Arc::new(store),
                    path,
                    base_url,
                    url,
                })
            }
            "http" | "https" => {
                let origin = url.origin().ascii_serialization();
                let store = HttpBuilder::new()
                    .with_url(origin.clone())
                    .with_client_options(
                        ClientOptions::new()
                            .with_allow_http(scheme == "http")
                            .with_default_headers(headers),
                    )
                    .build()
                    .map_err(|e| Error::Store {
                        uri: location.to_string(),
                        source: e,
                    })?;
                let path = Path::parse(url.path().trim_start_matches('/'))
                    .map_err(|e| bad(format!("bad URL path: {e}")))?;
                let base_url = Url::parse(&origin).map_err(|e| bad(e.to_string()))?;
                Ok(Resolved {
                    store: Arc::new(store),
                    path,
                    base_url,
                    url,
                })
            }
            other => Err(bad(format!(
                "unsupported URL scheme `{other}` (use a local path, file://, s3://, http:// or https://)"
            ))),
        }
    } else {
        resolve_local(std::path::Path::new(location), location)
    }
}

/// How long a failing object-store request is retried: object_store's default (about 3
/// minutes, 10 tries with backoff), or `W2S_STORE_RETRY_SECS` seconds. A dropped connection or
/// a restarting server is waited for that long; then the stage fails with an error naming the
/// object, having committed nothing.
fn retry_config() -> object_store::RetryConfig {
    let mut r = object_store::RetryConfig::default();
    if let Some(secs) = std::env::var("W2S_STORE_RETRY_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        r.retry_timeout = std::time::Duration::from_secs(secs);
        r.backoff.max_backoff = r
            .backoff
            .max_backoff
            .min(std::time::Duration::from_secs(secs.max(1)));
    }
    r
}

fn resolve_local(p: &std::path::Path, location: &str) -> Result<Resolved> {
    let abs = std::path::absolute(p).map_err(|e| Error::Io {
        path: location.to_string(),
        source: e,
    })?;
    let url = Url::from_file_path(&abs)
        .map_err(|_| Error::Config(format!("{location}: not a usable local path")))?;
    let path = Path::from_absolute_path(&abs)
        .map_err(|e| Error::Config(format!("{location}: not a usable local path: {e}")))?;
    Ok(Resolved {
        store: Arc::new(LocalFileSystem::new()),
        path,
        base_url: Url::parse("file://").expect("valid URL"),
        url,
    })
}

/// A local root is created on first write; here we only check that it could be, so that
/// opening a root for a run that then fails on bad input leaves no trace on disk.
pub(super) fn check_local_root(root: &str, dir: &std::path::Path) -> Result<()> {
    let unusable = |why: String| Error::Io {
        path: format!("artifact root {root}"),
        source: std::io::Error::other(why),
    };
    let mut p = Some(dir);
    while let Some(cur) = p {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(unusable(format!(
                    "cannot be created or written: {} is not a directory",
                    cur.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => p = cur.parent(),
            Err(e) => return Err(unusable(format!("{}: {e}", cur.display()))),
        }
    }
    Ok(())
}

/// Reads a whole input (local path or URL) into memory.
pub async fn fetch(location: &str) -> Result<Bytes> {
    fetch_with_headers(location, object_store::HeaderMap::new()).await
}

/// [`fetch`], sending `headers` with HTTP(S) requests.
pub async fn fetch_with_headers(location: &str, headers: object_store::HeaderMap) -> Result<Bytes> {
    if !location.contains("://") {
        return std::fs::read(location)
            .map(Bytes::from)
            .map_err(|source| Error::Io {
                path: location.to_string(),
                source,
            });
    }
    let r = resolve_with_headers(location, headers)?;
    let get = r.store.get(&r.path).await.map_err(|source| Error::Store {
        uri: location.to_string(),
        source,
    })?;
    get.bytes().await.map_err(|source| Error::Store {
        uri: location.to_string(),
        source,
    })
}

/// Copies an input (local path or URL) into the local file `local` chunk by chunk, never
/// holding it whole (checkpoint shards of several GB); returns its size. A failed copy removes
/// the partial file.
pub async fn fetch_to_file(
    location: &str,
    headers: object_store::HeaderMap,
    local: &std::path::Path,
) -> Result<u64> {
    use futures::TryStreamExt;
    use std::io::Write;
    let io = |source| Error::Io {
        path: local.display().to_string(),
        source,
    };
    if !location.contains("://") {
        return std::fs::copy(location, local).map_err(|source| Error::Io {
            path: location.to_string(),
            source,
        });
    }
    let copy = async {
        let r = resolve_with_headers(location, headers)?;
        let store_err = |source| Error::Store {
            uri: location.to_string(),
            source,
        };
        let get = r.store.get(&r.path).await.map_err(store_err)?;
        let mut stream = get.into_stream();
        let mut f = std::io::BufWriter::new(std::fs::File::create(local).map_err(io)?);
        let mut n = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(store_err)? {
            n += chunk.len() as u64;
            f.write_all(&chunk).map_err(io)?;
        }
        f.flush().map_err(io)?;
        Ok(n)
    };
    let result = copy.await;
    if result.is_err() {
        let _ = std::fs::remove_file(local);
    }
    result
}
