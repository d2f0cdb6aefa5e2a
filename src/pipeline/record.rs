//! What a finished step leaves behind (`runner/steps/<id>.json`) and the checks that make a
//! step up to date, or say why it is not (the reasons `w2s run --dry-run` prints, as DVC's
//! `status` does: no record, a setting changed, an input changed, outputs missing).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::plan::Step;
use crate::error::Result;
use crate::store::{sha256_hex, ArtifactStore, Manifest, CODE_VERSION};

/// Size and modification time of every file under a local path (make-style staleness).
fn local_stamp(path: &str) -> serde_json::Value {
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(path)];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            files.push(serde_json::json!([p.display().to_string(), "missing"]));
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                entries.sort();
                stack.extend(entries.into_iter().rev());
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string())
                .unwrap_or_default();
            files.push(serde_json::json!([
                p.display().to_string(),
                meta.len(),
                mtime
            ]));
        }
    }
    serde_json::Value::Array(files)
}

/// The stamps of a step's local inputs.
pub fn local_stamps(paths: &[String]) -> serde_json::Value {
    serde_json::Value::Array(paths.iter().map(|p| local_stamp(p)).collect())
}

/// What a finished step leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    pub fingerprint: String,
    /// Digest of each published manifest's files (path and sha256).
    pub outputs: BTreeMap<String, String>,
    /// Identity of each needed step's outputs (its manifests' fingerprints) as this step read
    /// them.
    pub read: BTreeMap<String, String>,
    pub seconds: f64,
    pub finished_unix: u64,
    /// What the fingerprint was made of, to say what changed: the code version, ...
    #[serde(default)]
    pub code: String,
    /// ... the step's settings (its typed command, without the artifact root), ...
    #[serde(default)]
    pub settings: serde_json::Value,
    /// ... the fingerprints of the steps it needed ...
    #[serde(default)]
    pub needs: BTreeMap<String, String>,
    /// ... and the stamps of its local inputs.
    #[serde(default)]
    pub local: serde_json::Value,
}

impl Record {
    /// The record of `step`, finished after `seconds`, which published `outputs` and read
    /// `read` from the steps it needs (`by_id`).
    pub fn of(
        step: &Step,
        by_id: &HashMap<String, &Step>,
        outputs: BTreeMap<String, String>,
        read: BTreeMap<String, String>,
        seconds: f64,
    ) -> Record {
        Record {
            id: step.id.clone(),
            fingerprint: step.fingerprint.clone(),
            outputs,
            read,
            seconds,
            finished_unix: crate::store::now_unix(),
            code: CODE_VERSION.into(),
            settings: step.settings(),
            needs: (step.needs.iter())
                .map(|n| (n.clone(), by_id[n].fingerprint.clone()))
                .collect(),
            local: local_stamps(&step.local_inputs),
        }
    }
}

/// Where a step's record lives.
pub fn record_path(id: &str) -> String {
    let safe = crate::stages::common::sanitize(id);
    format!(
        "runner/steps/{safe}-{}.json",
        &sha256_hex(id.as_bytes())[..8]
    )
}

/// Digest of what a manifest published.
pub fn outputs_digest(m: &Manifest) -> String {
    let mut text = String::new();
    for f in &m.outputs {
        text.push_str(&f.path);
        text.push(' ');
        text.push_str(&f.sha256);
        text.push('\n');
    }
    sha256_hex(text.as_bytes())
}

/// Reads manifests and folder listings once per check pass.
#[derive(Default)]
pub struct Cache {
    manifests: HashMap<String, Option<Manifest>>,
    listings: HashMap<String, Vec<String>>,
}

impl Cache {
    /// Forgets what `step` may have changed: its manifests and every listing (a step adds
    /// parts to shared table folders such as `tables/runs`).
    pub fn forget(&mut self, step: &Step) {
        for k in &step.outputs {
            self.manifests.remove(k);
        }
        self.listings.clear();
    }

    async fn manifest(&mut self, store: &ArtifactStore, key: &str) -> Result<Option<Manifest>> {
        if let Some(m) = self.manifests.get(key) {
            return Ok(m.clone());
        }
        let m = store.manifest(key).await?;
        self.manifests.insert(key.into(), m.clone());
        Ok(m)
    }

    async fn present(&mut self, store: &ArtifactStore, path: &str) -> Result<bool> {
        let dir = parent(path);
        if !self.listings.contains_key(dir) {
            let l = store.list(dir).await?;
            self.listings.insert(dir.into(), l);
        }
        Ok(self.listings[dir].iter().any(|p| p == path))
    }

    /// Digests of a step's published manifests whose files are all present, by key.
    pub async fn published(
        &mut self,
        store: &ArtifactStore,
        step: &Step,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let mut out = BTreeMap::new();
        for key in &step.outputs {
            let Some(m) = self.manifest(store, key).await? else {
                return Ok(None);
            };
            for f in &m.outputs {
                if !self.present(store, &f.path).await? {
                    return Ok(None);
                }
            }
            out.insert(key.clone(), outputs_digest(&m));
        }
        Ok(Some(out))
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Cache {
    /// What a step that needs `step` reads from it: the fingerprints of its manifests (their
    /// settings and input checksums), if its outputs are intact. A rerun that publishes the
    /// same result under the same fingerprint (timing columns aside) leaves it unchanged.
    pub async fn identity(&mut self, store: &ArtifactStore, step: &Step) -> Result<Option<String>> {
        if self.published(store, step).await?.is_none() {
            return Ok(None);
        }
        let mut fps = BTreeMap::new();
        for key in &step.outputs {
            if let Some(m) = self.manifest(store, key).await? {
                fps.insert(key.clone(), m.fingerprint);
            }
        }
        Ok(Some(sha256_hex(
            serde_json::to_string(&fps).expect("map").as_bytes(),
        )))
    }
}

/// How a step's record compares with the plan.
pub enum Check {
    /// Matches, with every output intact.
    Matches(Record),
    /// Not up to date, for this reason of its own.
    Stale(String),
    /// Not up to date because this step it needs changed.
    InputChanged(String),
}

/// Compares `step` with its record (fingerprint, then published outputs).
pub async fn check(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
    by_id: &HashMap<String, &Step>,
) -> Result<Check> {
    let Some(bytes) = store.get_opt(&record_path(&step.id)).await? else {
        return Ok(Check::Stale(
            "no record: it has not run in this root".into(),
        ));
    };
    let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
        return Ok(Check::Stale("its record is unreadable".into()));
    };
    if rec.fingerprint != step.fingerprint {
        return Ok(changed(&rec, step, by_id));
    }
    match cache.published(store, step).await? {
        Some(now) if now == rec.outputs => Ok(Check::Matches(rec)),
        Some(_) => Ok(Check::Stale(
            "its outputs were republished since it ran".into(),
        )),
        None => Ok(Check::Stale(format!(
            "outputs missing: {} (or a file of it)",
            step.outputs.join(", ")
        ))),
    }
}

/// What differs between a record and the planned step whose fingerprint it no longer has.
fn changed(rec: &Record, step: &Step, by_id: &HashMap<String, &Step>) -> Check {
    if rec.code.is_empty() {
        return Check::Stale(
            "its command or inputs changed (recorded by an older w2s, which kept no details)"
                .into(),
        );
    }
    if rec.code != CODE_VERSION {
        return Check::Stale(format!("w2s changed ({} -> {CODE_VERSION})", rec.code));
    }
    let diff = settings_diff(&rec.settings, &step.settings());
    if !diff.is_empty() {
        return Check::Stale(format!("settings changed: {}", diff.join(", ")));
    }
    for n in &step.needs {
        if rec.needs.get(n) != Some(&by_id[n].fingerprint) {
            return Check::InputChanged(n.clone());
        }
    }
    let now = local_stamps(&step.local_inputs);
    for (i, path) in step.local_inputs.iter().enumerate() {
        if rec.local.get(i) != now.get(i) {
            return Check::Stale(format!("a local input changed ({path})"));
        }
    }
    Check::Stale("its plan changed".into())
}

/// The settings two serde forms of a command differ in, as `--flag new (was old)`.
pub fn settings_diff(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let inner = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        match v.as_object().and_then(|m| m.values().next()) {
            Some(serde_json::Value::Object(m)) => m.clone().into_iter().collect(),
            _ => BTreeMap::new(),
        }
    };
    let (a, b) = (inner(was), inner(now));
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "unset".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "--{} {} (was {})",
                k.replace('_', "-"),
                show(b.get(k)),
                show(a.get(k))
            )
        })
        .collect()
}

/// The first step `step` needs whose outputs are no longer what `step` read when it ran.
pub async fn changed_input(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
    rec: &Record,
    by_id: &HashMap<String, &Step>,
) -> Result<Option<String>> {
    for n in &step.needs {
        let now = cache.identity(store, by_id[n]).await?;
        if now.is_none() || rec.read.get(n) != now.as_ref() {
            return Ok(Some(n.clone()));
        }
    }
    Ok(None)
}

/// Whether `step` is up to date: its record matches, its outputs are intact, and the steps it
/// needs still publish what it read.
pub async fn up_to_date(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
    by_id: &HashMap<String, &Step>,
) -> Result<bool> {
    match check(store, cache, step, by_id).await? {
        Check::Matches(rec) => Ok(changed_input(store, cache, step, &rec, by_id)
            .await?
            .is_none()),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_diff_names_each_setting_with_old_and_new_value() {
        let was = serde_json::json!({"gt-train": {"lr": 0.001, "batch": 16, "device": "cpu"}});
        let now = serde_json::json!({"gt-train": {"lr": 0.002, "batch": 16, "seed": 1}});
        assert_eq!(
            settings_diff(&was, &now),
            [
                "--device unset (was cpu)",
                "--lr 0.002 (was 0.001)",
                "--seed 1 (was unset)"
            ]
        );
        assert!(settings_diff(&was, &was).is_empty());
    }
}
