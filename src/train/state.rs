//! Resumable training state in the artifact store, so a killed run continues from its last
//! saved step (on this machine or another one sharing the store).
//!
//! Under `state/<key>/`: `step-NNNNNN.safetensors` holds every trainable parameter
//! (`param.<name>`) and Adam's moments (`adam_m.<name>`, `adam_v.<name>`); `latest.json`,
//! written after it (a single atomic put), names that file with its sha256, the step, Adam's
//! per-parameter step counts, the run's fingerprint and the log so far. State of another
//! fingerprint is ignored, so a changed setting never resumes from stale weights.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::StepLog;
use crate::error::{Error, Result};
use crate::optim::Adam;
use crate::store::ArtifactStore;

/// Where and how often a run saves its state.
pub struct Resume<'a> {
    pub store: &'a ArtifactStore,
    /// `state/<manifest key>`.
    pub prefix: String,
    pub fingerprint: String,
    /// Save every this many optimizer steps (0: never).
    pub every: usize,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    fingerprint: String,
    step: usize,
    file: String,
    sha256: String,
    adam_steps: BTreeMap<String, u64>,
    /// The log so far, floats as IEEE bit patterns: JSON text would not round-trip them
    /// exactly, and a resumed run must log what an uninterrupted one does.
    log: Vec<[u64; 7]>,
}

fn log_bits(l: &StepLog) -> [u64; 7] {
    [
        l.step,
        l.loss.to_bits(),
        l.lr.to_bits(),
        l.accuracy.to_bits(),
        l.pairs,
        l.tokens,
        l.seconds.to_bits(),
    ]
}

fn log_from_bits(b: &[u64; 7]) -> StepLog {
    StepLog {
        step: b[0],
        loss: f64::from_bits(b[1]),
        lr: f64::from_bits(b[2]),
        accuracy: f64::from_bits(b[3]),
        pairs: b[4],
        tokens: b[5],
        seconds: f64::from_bits(b[6]),
    }
}

fn corrupt(store: &ArtifactStore, path: &str, msg: impl Into<String>) -> Error {
    Error::Format {
        file: store.url_of(path).to_string(),
        msg: msg.into(),
    }
}

impl Resume<'_> {
    fn latest_path(&self) -> String {
        format!("{}/latest.json", self.prefix)
    }

    /// A local scratch file for `rel` while it travels to or from the store.
    fn scratch(&self, rel: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "w2s-{}-{}",
            std::process::id(),
            rel.replace(['/', '\\'], "_")
        ))
    }

    /// Writes the state after `step` optimizer steps: the parameters and moments go into a
    /// local safetensors file one tensor at a time (each copied to the host on its own) and
    /// are uploaded from it in blocks, so the state is never held whole in memory.
    pub async fn save(
        &self,
        step: usize,
        adam: &Adam,
        vars: &[(String, Var)],
        log: &[StepLog],
    ) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in vars {
            tensors.push((format!("param.{name}"), var.as_tensor().detach()));
        }
        let mut adam_steps = BTreeMap::new();
        for s in adam.state() {
            tensors.push((format!("adam_m.{}", s.name), s.m));
            tensors.push((format!("adam_v.{}", s.name), s.v));
            adam_steps.insert(s.name, s.steps);
        }
        let file = format!("{}/step-{step:06}.safetensors", self.prefix);
        let local = self.scratch(&file);
        let written = safetensors::serialize_to_file(
            tensors.iter().map(|(k, t)| (k.as_str(), t)),
            None,
            &local,
        )
        .map_err(|e| corrupt(self.store, &file, format!("cannot serialize state: {e}")));
        drop(tensors);
        let uploaded = match written {
            Ok(()) => self.store.put_file(&file, &local).await,
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&local);
        let (_, sha256) = uploaded?;
        let previous = self.read_latest().await.ok().flatten();
        let latest = Latest {
            fingerprint: self.fingerprint.clone(),
            step,
            file: file.clone(),
            sha256,
            adam_steps,
            log: log.iter().map(log_bits).collect(),
        };
        let json = serde_json::to_vec(&latest).expect("state serializes");
        self.store
            .put(&self.latest_path(), Bytes::from(json))
            .await?;
        if let Some(p) = previous {
            if p.file != file {
                self.store.delete(&p.file).await?;
            }
        }
        tracing::debug!("saved training state at step {step}");
        // Fault injection (`W2S_FAULT=saved:<n>`): die right after a save, as a kill would.
        crate::fault::hit("saved").map_err(|source| Error::Io {
            path: self.latest_path(),
            source,
        })?;
        Ok(())
    }

    async fn read_latest(&self) -> Result<Option<Latest>> {
        let path = self.latest_path();
        let Some(bytes) = self.store.get_opt(&path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(self.store, &path, format!("unreadable training state: {e}")))
    }

    /// Restores saved state of this fingerprint into `vars` and `adam`: the step to continue
    /// from and the log so far, or `None` to start fresh.
    pub async fn load(
        &self,
        adam: &mut Adam,
        vars: &[(String, Var)],
    ) -> Result<Option<(usize, Vec<StepLog>)>> {
        let Some(latest) = self.read_latest().await? else {
            return Ok(None);
        };
        if latest.fingerprint != self.fingerprint {
            tracing::info!("ignoring saved training state of other settings or inputs");
            return Ok(None);
        }
        let local = self.scratch(&latest.file);
        let restored = self.restore_from(&latest, &local, adam, vars).await;
        let _ = std::fs::remove_file(&local);
        restored?;
        adam.refresh_mirrors()?;
        Ok(Some((
            latest.step,
            latest.log.iter().map(log_from_bits).collect(),
        )))
    }

    /// Downloads the saved file to `local` (streamed, checksummed) and restores it tensor by
    /// tensor.
    async fn restore_from(
        &self,
        latest: &Latest,
        local: &std::path::Path,
        adam: &mut Adam,
        vars: &[(String, Var)],
    ) -> Result<()> {
        let (_, sha256) = self.store.get_file(&latest.file, local).await?;
        if sha256 != latest.sha256 {
            return Err(corrupt(
                self.store,
                &latest.file,
                "training state does not match its checksum (corrupt or truncated); delete it to start over",
            ));
        }
        // One tensor at a time, on the device it goes to: the state is never whole in memory.
        // Errors name the stored file, not the local copy.
        let relabel = |e: Error| match e {
            Error::Model { msg, .. } => corrupt(self.store, &latest.file, msg),
            other => other,
        };
        let mut file = crate::models::tensor_file::TensorFile::open(local).map_err(relabel)?;
        let cpu = candle_core::Device::Cpu;
        let mut take = |k: String| file.load(&k, &cpu).map_err(relabel);
        let names: Vec<String> = adam.slots().map(|(n, _)| n.to_string()).collect();
        for name in names {
            let steps = *latest.adam_steps.get(&name).ok_or_else(|| {
                corrupt(
                    self.store,
                    &latest.file,
                    format!("no optimizer state for `{name}`"),
                )
            })?;
            let m = take(format!("adam_m.{name}"))?;
            let v = take(format!("adam_v.{name}"))?;
            adam.restore_slot(&name, &m, &v, steps)
                .map_err(|m| corrupt(self.store, &latest.file, m))?;
        }
        for (name, var) in vars {
            let saved = take(format!("param.{name}"))?;
            if saved.dims() != var.as_tensor().dims() {
                return Err(corrupt(
                    self.store,
                    &latest.file,
                    format!(
                        "parameter `{name}` has shape {:?}, the model {:?}",
                        saved.dims(),
                        var.as_tensor().dims()
                    ),
                ));
            }
            var.set(
                &saved
                    .to_device(var.as_tensor().device())?
                    .to_dtype(var.as_tensor().dtype())?,
            )?;
        }
        Ok(())
    }

    /// Removes the saved state (after the run's outputs are published).
    pub async fn clear(&self) -> Result<()> {
        if let Some(l) = self.read_latest().await? {
            self.store.delete(&l.file).await?;
        }
        self.store.delete(&self.latest_path()).await
    }
}
