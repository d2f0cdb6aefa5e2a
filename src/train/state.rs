//! Resumable training state in the artifact store, so a killed run continues from its last
//! saved step (on this machine or another one sharing the store).
//!
//! Under `state/<key>/`: `step-NNNNNN.safetensors` holds every trainable parameter
//! (`param.<name>`) and Adam's moments (`adam_m.<name>`, `adam_v.<name>`); `latest.json`,
//! written after it (a single atomic put), names that file with its sha256, the step, Adam's
//! per-parameter step counts, the run's fingerprint and the log so far. State of another
//! fingerprint is ignored, so a changed setting never resumes from stale weights.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::StepLog;
use crate::error::{Error, Result};
use crate::optim::{Adam, SlotState};
use crate::store::{sha256_hex, ArtifactStore};

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

    /// Writes the state after `step` optimizer steps.
    pub async fn save(
        &self,
        step: usize,
        adam: &Adam,
        vars: &[(String, Var)],
        log: &[StepLog],
    ) -> Result<()> {
        let state = adam.state();
        let dev = candle_core::Device::Cpu;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in vars {
            tensors.push((format!("param.{name}"), var.as_tensor().detach()));
        }
        let mut adam_steps = BTreeMap::new();
        for s in &state {
            tensors.push((
                format!("adam_m.{}", s.name),
                Tensor::new(s.m.as_slice(), &dev)?,
            ));
            tensors.push((
                format!("adam_v.{}", s.name),
                Tensor::new(s.v.as_slice(), &dev)?,
            ));
            adam_steps.insert(s.name.clone(), s.steps);
        }
        let data: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
        let file = format!("{}/step-{step:06}.safetensors", self.prefix);
        let bytes = safetensors::serialize(data, None)
            .map_err(|e| corrupt(self.store, &file, format!("cannot serialize state: {e}")))?;
        let sha256 = sha256_hex(&bytes);
        self.store.put(&file, Bytes::from(bytes)).await?;
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
        let bytes = self.store.get(&latest.file).await?;
        if sha256_hex(&bytes) != latest.sha256 {
            return Err(corrupt(
                self.store,
                &latest.file,
                "training state does not match its checksum (corrupt or truncated); delete it to start over",
            ));
        }
        let mut t: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
                .map_err(|e| corrupt(self.store, &latest.file, e.to_string()))?;
        let mut take = |k: String| {
            t.remove(&k)
                .ok_or_else(|| corrupt(self.store, &latest.file, format!("missing tensor `{k}`")))
        };
        let mut slots = Vec::new();
        for (name, steps) in &latest.adam_steps {
            slots.push(SlotState {
                name: name.clone(),
                m: take(format!("adam_m.{name}"))?.to_vec1()?,
                v: take(format!("adam_v.{name}"))?.to_vec1()?,
                steps: *steps,
            });
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
        adam.restore(slots)
            .map_err(|m| corrupt(self.store, &latest.file, m))?;
        adam.refresh_mirrors()?;
        Ok(Some((
            latest.step,
            latest.log.iter().map(log_from_bits).collect(),
        )))
    }

    /// Removes the saved state (after the run's outputs are published).
    pub async fn clear(&self) -> Result<()> {
        if let Some(l) = self.read_latest().await? {
            self.store.delete(&l.file).await?;
        }
        self.store.delete(&self.latest_path()).await
    }
}
