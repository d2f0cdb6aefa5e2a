//! The artifact store: the one place where stages read and write their outputs.
//!
//! An artifact root is a local folder, a `file://` URL or an `s3://bucket/prefix` URL (any
//! S3-compatible server; settings from the usual `AWS_*` variables, e.g. `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
//!
//! Layout under the root:
//!
//! ```text
//! manifests/<key>.json            one per finished stage output: the commit point
//! tables/<table>/<part>.parquet   table parts; a table is the union of its committed parts
//! ```
//!
//! Why manifests: an object store has no atomic rename of several objects, so a stage first
//! writes each of its files with a single atomic `put` (S3 PUT; on local disk object_store
//! writes a staging file and renames it), then publishes a manifest naming them, with their
//! sizes and sha256. Readers ([`ArtifactStore::table_files`], `w2s sql`) only see files named in
//! a committed manifest, so a stage that dies half way leaves nothing that looks finished.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{Error, Result};

pub mod keys;
mod location;

use location::check_local_root;
pub use location::{
    fetch, fetch_to_file, fetch_with_headers, resolve, resolve_with_headers, Resolved,
};

/// Version of the code that produced an artifact; part of every fingerprint.
pub const CODE_VERSION: &str = concat!("w2s-", env!("CARGO_PKG_VERSION"));

/// A file a stage published, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Table name for table parts (`pairs`, `scores`, ...); `None` for other files.
    pub table: Option<String>,
    /// Path relative to the artifact root.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub rows: Option<u64>,
}

/// An input a stage read, for provenance and fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub uri: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The commit record of one stage output. Written last; its presence means "finished".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest key, e.g. `split`; stored at `manifests/<key>.json`.
    pub key: String,
    pub stage: String,
    /// sha256 over settings, input fingerprints and the code version.
    pub fingerprint: String,
    pub code_version: String,
    pub settings: serde_json::Value,
    pub inputs: Vec<InputFile>,
    pub outputs: Vec<OutputFile>,
    /// Seconds since the Unix epoch when the manifest was committed (informational only).
    pub committed_unix: u64,
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Size and hex sha256 of a local file, read in 1 MiB blocks (a checkpoint of many GiB is
/// never held in memory to be hashed).
pub fn sha256_file(path: &std::path::Path) -> Result<(u64, String)> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// The artifact root every stage reads and writes, as a flag.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize)]
pub struct ArtifactsArg {
    /// Artifact root: a local folder, file://, or s3://bucket/prefix.
    #[arg(long, env = "W2S_ARTIFACTS", default_value = "artifacts")]
    pub artifacts: String,
}

/// An artifact root with everything stages need to publish and read.
#[derive(Clone)]
pub struct ArtifactStore {
    root: String,
    /// Store scoped to the root: paths below are relative to it.
    store: Arc<dyn ObjectStore>,
    /// The unscoped store and its registration URL, for DataFusion.
    base_store: Arc<dyn ObjectStore>,
    base_url: Url,
    /// URL of the root, ending in `/`.
    root_url: Url,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArtifactStore({})", self.root)
    }
}

impl ArtifactStore {
    /// Opens an artifact root. A local root is created if missing; an error here names the root.
    pub fn open(root: &str) -> Result<Self> {
        let r = resolve(root)?;
        if r.url.scheme() == "http" || r.url.scheme() == "https" {
            return Err(Error::Config(format!(
                "{root}: an artifact root must be a local path, file:// or s3:// (http is read-only)"
            )));
        }
        if r.url.scheme() == "file" {
            check_local_root(root, &r.url.to_file_path().expect("file URL"))?;
        }
        let mut root_url = r.url.clone();
        if !root_url.path().ends_with('/') {
            root_url.set_path(&format!("{}/", root_url.path()));
        }
        let scoped: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(r.store.clone(), r.path));
        Ok(ArtifactStore {
            root: root.to_string(),
            store: scoped,
            base_store: r.store,
            base_url: r.base_url,
            root_url,
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// Full URL of a path relative to the root.
    pub fn url_of(&self, rel: &str) -> Url {
        self.root_url.join(rel).expect("relative artifact path")
    }

    /// The unscoped object store and the URL it must be registered under (for DataFusion).
    pub fn registration(&self) -> (Url, Arc<dyn ObjectStore>) {
        (self.base_url.clone(), self.base_store.clone())
    }

    fn err(&self, rel: &str, source: object_store::Error) -> Error {
        Error::Store {
            uri: self.url_of(rel).to_string(),
            source,
        }
    }

    /// Writes one object atomically (single PUT; staged write + rename on local disk).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        crate::fault::hit("put").map_err(|source| Error::Io {
            path: self.url_of(rel).to_string(),
            source,
        })?;
        self.store
            .put(&Path::from(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err(rel, e))
    }

    /// Writes the local file `local` to `rel` without holding it in memory: read and hashed in
    /// 8 MiB blocks, sent as a multipart upload (on S3 the object appears at once when the
    /// upload completes; on local disk it is a staged file renamed into place). Returns its
    /// size and sha256.
    pub async fn put_file(&self, rel: &str, local: &std::path::Path) -> Result<(u64, String)> {
        use std::io::Read;
        crate::fault::hit("put").map_err(|source| Error::Io {
            path: self.url_of(rel).to_string(),
            source,
        })?;
        let io = |source| Error::Io {
            path: local.display().to_string(),
            source,
        };
        let mut f = std::fs::File::open(local).map_err(io)?;
        let upload =
            (self.store.put_multipart(&Path::from(rel)).await).map_err(|e| self.err(rel, e))?;
        const BLOCK: usize = 8 << 20;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, BLOCK);
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; BLOCK];
        let read = loop {
            let k = match f.read(&mut buf) {
                Ok(k) => k,
                Err(e) => break Err(io(e)),
            };
            if k == 0 {
                break Ok(());
            }
            h.update(&buf[..k]);
            n += k as u64;
            if let Err(e) = w.wait_for_capacity(2).await {
                break Err(self.err(rel, e));
            }
            w.write(&buf[..k]);
        };
        if let Err(e) = read {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await.map_err(|e| self.err(rel, e))?;
        Ok((n, hex::encode(h.finalize())))
    }

    /// Writes an object only if none exists at `rel`; `false` if one does (the atomic
    /// create of a lock).
    pub async fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .store
            .put_opts(&Path::from(rel), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Seconds since `rel` was last written, or `None` if it does not exist.
    pub async fn age_secs(&self, rel: &str) -> Result<Option<u64>> {
        match self.store.head(&Path::from(rel)).await {
            Ok(meta) => {
                let t = meta.last_modified.timestamp().max(0) as u64;
                Ok(Some(now_unix().saturating_sub(t)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let get = self
            .store
            .get(&Path::from(rel))
            .await
            .map_err(|e| self.err(rel, e))?;
        get.bytes().await.map_err(|e| self.err(rel, e))
    }

    /// Copies the object at `rel` into the local file `local` without holding it in memory
    /// (streamed and hashed chunk by chunk); returns its size and sha256. A failed copy
    /// removes the partial file.
    pub async fn get_file(&self, rel: &str, local: &std::path::Path) -> Result<(u64, String)> {
        use std::io::Write;
        let io = |source| Error::Io {
            path: local.display().to_string(),
            source,
        };
        let copy = async {
            let get = (self.store.get(&Path::from(rel)).await).map_err(|e| self.err(rel, e))?;
            let mut stream = get.into_stream();
            let mut f = std::io::BufWriter::new(std::fs::File::create(local).map_err(io)?);
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(chunk) = stream.try_next().await.map_err(|e| self.err(rel, e))? {
                h.update(&chunk);
                n += chunk.len() as u64;
                f.write_all(&chunk).map_err(io)?;
            }
            f.flush().map_err(io)?;
            Ok((n, hex::encode(h.finalize())))
        };
        let result = copy.await;
        if result.is_err() {
            let _ = std::fs::remove_file(local);
        }
        result
    }

    /// Reads an object, or `None` if it does not exist.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.get(rel).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&Path::from(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Relative paths of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = Path::from(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| self.err(prefix, e))?;
        let mut out: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        out.sort();
        Ok(out)
    }

    /// Encodes `batch` as Parquet and writes it as part `part` of `table`.
    pub async fn write_table_part(
        &self,
        table: &str,
        part: &str,
        batch: &RecordBatch,
    ) -> Result<OutputFile> {
        let path = format!("tables/{table}/{part}.parquet");
        let bytes = encode_parquet(batch).map_err(|msg| Error::Format {
            file: self.url_of(&path).to_string(),
            msg,
        })?;
        let out = OutputFile {
            table: Some(table.to_string()),
            path: path.clone(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            rows: Some(batch.num_rows() as u64),
        };
        self.put(&path, bytes).await?;
        Ok(out)
    }

    /// Reads a committed Parquet part back, checking its size and checksum against the manifest.
    pub async fn read_table_part(&self, file: &OutputFile) -> Result<Vec<RecordBatch>> {
        let bytes = self.get(&file.path).await?;
        let uri = self.url_of(&file.path).to_string();
        if bytes.len() as u64 != file.bytes || sha256_hex(&bytes) != file.sha256 {
            return Err(Error::Format {
                file: uri,
                msg: "contents do not match the checksum in its manifest (corrupt or truncated)"
                    .into(),
            });
        }
        decode_parquet(bytes).map_err(|msg| Error::Format { file: uri, msg })
    }

    fn manifest_path(key: &str) -> String {
        format!("manifests/{key}.json")
    }

    /// The committed manifest for `key`, if any.
    pub async fn manifest(&self, key: &str) -> Result<Option<Manifest>> {
        let path = Self::manifest_path(key);
        let Some(bytes) = self.get_opt(&path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Format {
                file: self.url_of(&path).to_string(),
                msg: format!("unreadable manifest: {e}"),
            })
    }

    /// The manifest for `key` if it has fingerprint `fingerprint` and every file it names is
    /// still there: what lets a stage skip its work. A manifest whose files were deleted is
    /// not current, so deleting a stage's output makes it run again.
    pub async fn current(&self, key: &str, fingerprint: &str) -> Result<Option<Manifest>> {
        let Some(m) = self.manifest(key).await? else {
            return Ok(None);
        };
        if m.fingerprint != fingerprint {
            return Ok(None);
        }
        let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &m.outputs {
            let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            if !listed.contains_key(dir) {
                listed.insert(dir.to_string(), self.list(dir).await?);
            }
            if !listed[dir].contains(&f.path) {
                return Ok(None);
            }
        }
        Ok(Some(m))
    }

    /// Every committed manifest, in key order.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for path in self.list("manifests").await? {
            let Some(key) = path
                .strip_prefix("manifests/")
                .and_then(|p| p.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(m) = self.manifest(key).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Commits a manifest: from now on its outputs are visible. Files of a manifest it
    /// replaces that the new one does not name are deleted afterwards.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let old = self.manifest(&manifest.key).await.ok().flatten();
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        let rel = Self::manifest_path(&manifest.key);
        crate::fault::hit("commit").map_err(|source| Error::Io {
            path: self.url_of(&rel).to_string(),
            source,
        })?;
        self.put(&rel, Bytes::from(json)).await?;
        if let Some(old) = old {
            for f in old.outputs {
                if !manifest.outputs.iter().any(|n| n.path == f.path) {
                    self.delete(&f.path).await?;
                }
            }
        }
        Ok(())
    }

    /// Publishes a stage's outputs: commits their manifest, or removes them if that fails.
    pub async fn publish(
        &self,
        stage: &str,
        key: &str,
        fingerprint: &str,
        settings: &impl Serialize,
        inputs: Vec<InputFile>,
        outputs: Vec<OutputFile>,
    ) -> Result<()> {
        let manifest = Manifest {
            key: key.to_string(),
            stage: stage.to_string(),
            fingerprint: fingerprint.to_string(),
            code_version: CODE_VERSION.to_string(),
            settings: serde_json::to_value(settings).expect("settings serialize"),
            inputs,
            outputs,
            committed_unix: now_unix(),
        };
        if let Err(e) = self.commit(&manifest).await {
            self.discard(&manifest.outputs).await;
            return Err(e);
        }
        Ok(())
    }

    /// Removes files a failed stage wrote before it could commit (best effort).
    pub async fn discard(&self, outputs: &[OutputFile]) {
        for f in outputs {
            if let Err(e) = self.delete(&f.path).await {
                tracing::warn!("could not remove {}: {e}", f.path);
            }
        }
    }

    /// Every committed part of `table`, read and checked against its manifest's checksum.
    pub async fn read_table(&self, table: &str) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for m in self.manifests().await? {
            for f in m
                .outputs
                .iter()
                .filter(|f| f.table.as_deref() == Some(table))
            {
                out.extend(self.read_table_part(f).await?);
            }
        }
        Ok(out)
    }

    /// Committed table parts, by table name, as URLs DataFusion can read.
    pub async fn table_files(&self) -> Result<BTreeMap<String, Vec<Url>>> {
        let mut tables: BTreeMap<String, Vec<Url>> = BTreeMap::new();
        for m in self.manifests().await? {
            for f in m.outputs {
                if let Some(t) = f.table {
                    tables.entry(t).or_default().push(self.url_of(&f.path));
                }
            }
        }
        Ok(tables)
    }
}

/// A stage's fingerprint: sha256 over its name, the code version, its settings and the
/// checksums of its inputs. Equal fingerprints mean the stage would write the same outputs.
pub fn fingerprint(stage: &str, settings: &impl Serialize, inputs: &[InputFile]) -> String {
    let text = serde_json::to_string(&serde_json::json!({
        "stage": stage,
        "code": CODE_VERSION,
        "settings": settings,
        "inputs": inputs.iter().map(|i| &i.sha256).collect::<Vec<_>>(),
    }))
    .expect("settings serialize");
    sha256_hex(text.as_bytes())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parquet bytes for a batch. Fixed writer settings, so the same batch always gives the
/// same bytes (tables are compared byte for byte across runs and backends).
pub fn encode_parquet(batch: &RecordBatch) -> std::result::Result<Bytes, String> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(CODE_VERSION.to_string())
        .build();
    let mut buf = Vec::new();
    let mut w =
        ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(Bytes::from(buf))
}

/// Decodes Parquet bytes into record batches.
pub fn decode_parquet(bytes: Bytes) -> std::result::Result<Vec<RecordBatch>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_in_blocks_as_its_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..(5 << 19) + 7).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (bytes.len() as u64, sha256_hex(&bytes))
        );
        let e = sha256_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn parquet_encoding_is_deterministic_and_round_trips() {
        let b = batch();
        let x = encode_parquet(&b).unwrap();
        let y = encode_parquet(&b).unwrap();
        assert_eq!(x, y);
        let back = decode_parquet(x).unwrap();
        assert_eq!(back, vec![b]);
    }

    #[tokio::test]
    async fn commit_publishes_and_replaces_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        assert!(store.table_files().await.unwrap().is_empty());

        let part = store.write_table_part("t", "p1", &batch()).await.unwrap();
        // Written but not committed: invisible.
        assert!(store.table_files().await.unwrap().is_empty());
        let mut m = Manifest {
            key: "k".into(),
            stage: "test".into(),
            fingerprint: "f".into(),
            code_version: CODE_VERSION.into(),
            settings: serde_json::json!({}),
            inputs: vec![],
            outputs: vec![part.clone()],
            committed_unix: 0,
        };
        store.commit(&m).await.unwrap();
        let files = store.table_files().await.unwrap();
        assert_eq!(files["t"].len(), 1);
        assert_eq!(store.read_table_part(&part).await.unwrap(), vec![batch()]);

        // A new commit under the same key replaces the old part and deletes it.
        let part2 = store.write_table_part("t", "p2", &batch()).await.unwrap();
        m.outputs = vec![part2];
        store.commit(&m).await.unwrap();
        assert_eq!(
            store.list("tables/t").await.unwrap(),
            vec!["tables/t/p2.parquet"]
        );
    }

    #[tokio::test]
    async fn corrupt_part_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let part = store.write_table_part("t", "p", &batch()).await.unwrap();
        let mut bytes = store.get(&part.path).await.unwrap().to_vec();
        bytes.truncate(bytes.len() / 2);
        store.put(&part.path, Bytes::from(bytes)).await.unwrap();
        let err = store.read_table_part(&part).await.unwrap_err().to_string();
        assert!(
            err.contains("tables/t/p.parquet") && err.contains("checksum"),
            "{err}"
        );
    }

    #[test]
    fn unwritable_root_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let root = file.join("artifacts");
        let err = ArtifactStore::open(root.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("artifact root") && err.contains("a-file"),
            "{err}"
        );
    }
}
