//! Saving a model in Hugging Face layout, loadable again by `w2s` and by transformers:
//! `config.json` (as loaded), `model.safetensors` (every parameter under its transformers
//! name, tied weights once, metadata `format: pt`), `tokenizer.json`, plus w2s's own
//! `reward_head.safetensors` (tensor `weight`, `[1, H]`) and `w2s.json` (provenance).
//! The folder appears atomically: it is written beside the target and renamed into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::tensor_file::Pending;
use super::Model;
use crate::error::{Error, Result};

/// What to write beside the weights.
#[derive(Default)]
pub struct SaveExtras<'a> {
    /// A tokenizer.json to copy into the checkpoint.
    pub tokenizer: Option<&'a Path>,
    /// A reward head `[1, H]`.
    pub reward_head: Option<&'a Tensor>,
    /// Free-form provenance (run id, stage, settings, inputs), written to `w2s.json`.
    pub provenance: serde_json::Value,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
    safetensors::serialize_to_file(data, Some(metadata), path).map_err(|e| Error::Model {
        file: path.display().to_string(),
        msg: format!("cannot write safetensors: {e}"),
    })
}

/// Largest weights file of a checkpoint; bigger models are sharded with an index, as the
/// Hugging Face hub's checkpoints are (its long-standing 5 GB default: a 7B model in bf16 is
/// three shards). Each shard is written, uploaded and read on its own.
pub const SHARD_BYTES: usize = 5_000_000_000;

/// Writes `tensors` as `model.safetensors` if they fit in one shard of `max_bytes`, else as
/// `model-0000i-of-0000n.safetensors` shards (greedy in name order; a tensor larger than the
/// limit gets a shard of its own) with `model.safetensors.index.json` (`metadata.total_size`,
/// `weight_map`), the layout transformers writes and loads.
pub(crate) fn write_weights(dir: &Path, tensors: Vec<Pending<'_>>, max_bytes: usize) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let write = |p: &Path, shard: &[Pending<'_>]| super::tensor_file::write(p, shard, &metadata);
    let mut shards: Vec<Vec<Pending<'_>>> = vec![Vec::new()];
    let mut used = 0usize;
    let (mut total_size, mut total_parameters) = (0usize, 0usize);
    for t in tensors {
        let n = t.bytes() as usize;
        total_size += n;
        total_parameters += t.shape.iter().product::<usize>();
        let last = shards.last_mut().expect("one shard");
        if !last.is_empty() && used + n > max_bytes {
            shards.push(Vec::new());
            used = 0;
        }
        used += n;
        shards.last_mut().expect("one shard").push(t);
    }
    if shards.len() == 1 {
        return write(&dir.join("model.safetensors"), &shards[0]);
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        for t in shard {
            weight_map.insert(t.name.clone(), serde_json::Value::String(name.clone()));
        }
        write(&dir.join(&name), shard)?;
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total_size, "total_parameters": total_parameters},
        "weight_map": weight_map,
    });
    let p = dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&index).expect("JSON value") + "\n";
    std::fs::write(&p, text).map_err(io(&p))
}

/// Every tensor of `tensors` as ready to write.
pub(crate) fn ready(tensors: &std::collections::BTreeMap<String, Tensor>) -> Vec<Pending<'_>> {
    (tensors.iter())
        .map(|(k, t)| {
            let t = t.detach();
            Pending {
                name: k.clone(),
                dtype: t.dtype(),
                shape: t.dims().to_vec(),
                make: Box::new(move || Ok(t.clone())),
            }
        })
        .collect()
}

impl Model {
    /// Writes the model to `dir` (replacing an existing checkpoint there), with any LoRA
    /// adapters folded into their base weights: the checkpoint is the function trained.
    pub fn save(&self, dir: &Path, extras: &SaveExtras) -> Result<()> {
        match self.lora_spec() {
            None => self.save_tensors(dir, extras, ready(self.tensors())),
            Some(_) => self.save_tensors(dir, extras, self.merged_pending()),
        }
    }

    /// Writes the model with `tensors` as its weights.
    pub(crate) fn save_tensors(
        &self,
        dir: &Path,
        extras: &SaveExtras,
        tensors: Vec<Pending<'_>>,
    ) -> Result<()> {
        if self.raw_config.is_null() {
            return Err(Error::Config(
                "this model was not loaded from a config.json, so it cannot be saved".into(),
            ));
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
        let tmp: PathBuf = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let result = self
            .write_into(&tmp, extras, tensors)
            .and_then(|()| replace_dir(&tmp, dir));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_into(&self, dir: &Path, extras: &SaveExtras, weights: Vec<Pending<'_>>) -> Result<()> {
        let cfg = dir.join("config.json");
        let mut config = self.raw_config.clone();
        // A half-precision checkpoint says so (transformers' `dtype`, and the older
        // `torch_dtype` where the config has it); an f32 one keeps its config as loaded.
        let half = weights.iter().find_map(|t| match t.dtype {
            candle_core::DType::BF16 => Some("bfloat16"),
            candle_core::DType::F16 => Some("float16"),
            _ => None,
        });
        if let (Some(name), Some(obj)) = (half, config.as_object_mut()) {
            obj.insert("dtype".into(), name.into());
            if obj.contains_key("torch_dtype") {
                obj.insert("torch_dtype".into(), name.into());
            }
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON value");
        std::fs::write(&cfg, text).map_err(io(&cfg))?;
        write_weights(dir, weights, self.shard_bytes)?;
        if let Some(t) = extras.tokenizer {
            let to = dir.join("tokenizer.json");
            std::fs::copy(t, &to).map_err(io(t))?;
        }
        if let Some(head) = extras.reward_head {
            write_safetensors(
                &dir.join("reward_head.safetensors"),
                vec![("weight".to_string(), head.detach())],
            )?;
        }
        let prov = dir.join("w2s.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "code_version": crate::store::CODE_VERSION,
            "provenance": extras.provenance,
        }))
        .expect("JSON value");
        std::fs::write(&prov, text).map_err(io(&prov))?;
        Ok(())
    }
}

/// Moves `tmp` to `dir`, replacing what is there; a reader sees the old or the new folder.
pub(crate) fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_extension(format!("old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(tmp, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(tmp, dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads a reward head saved by [`Model::save`].
pub fn load_reward_head(dir: &Path, device: &candle_core::Device) -> Result<Tensor> {
    let p = dir.join("reward_head.safetensors");
    let mut t = candle_core::safetensors::load(&p, device).map_err(|e| Error::Model {
        file: p.display().to_string(),
        msg: format!("unreadable reward head: {e}"),
    })?;
    t.remove("weight").ok_or_else(|| Error::Model {
        file: p.display().to_string(),
        msg: "missing tensor `weight`".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ops;
    use candle_core::Device;

    #[test]
    fn save_and_load_round_trip_gives_the_same_logits() {
        let dev = Device::Cpu;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        for family in ["gpt2", "opt-350m", "llama"] {
            let m = Model::load(&src.join(family), &dev).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("ckpt");
            let head =
                Tensor::ones((1, m.config.hidden_width()), candle_core::DType::F32, &dev).unwrap();
            let extras = SaveExtras {
                tokenizer: Some(&src.join(family).join("tokenizer.json")),
                reward_head: Some(&head),
                provenance: serde_json::json!({"test": true}),
            };
            m.save(&out, &extras).unwrap();
            // Saving again over an existing checkpoint replaces it.
            m.save(&out, &extras).unwrap();
            let back = Model::load(&out, &dev).unwrap();
            assert_eq!(back.tensors().len(), m.tensors().len());
            let ids = ops::ids_tensor(&[vec![1, 5, 9, 30, 7]], &dev).unwrap();
            let mask = [vec![1; 5]];
            let a = m.logits(&m.hidden(&ids, &mask).unwrap()).unwrap();
            let b = back.logits(&back.hidden(&ids, &mask).unwrap()).unwrap();
            assert_eq!(crate::models::max_abs_diff(&a, &b), 0.0, "{family}");
            let h = load_reward_head(&out, &dev).unwrap();
            assert_eq!(h.dims(), &[1, m.config.hidden_width()]);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 1, "no staging folder left behind: {names:?}");
        }
    }

    #[test]
    fn a_model_above_the_shard_size_is_saved_sharded_with_an_index_and_loads_back() {
        let dev = Device::Cpu;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
        let mut m = Model::load(&src, &dev).unwrap();
        let total: usize = (m.tensors().values()).map(|t| t.elem_count() * 4).sum();
        m.shard_bytes = total / 3;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ckpt");
        m.save(&out, &SaveExtras::default()).unwrap();
        assert!(!out.join("model.safetensors").exists());
        let (_, index) =
            crate::models::read_json(&out.join("model.safetensors.index.json")).unwrap();
        assert_eq!(index["metadata"]["total_size"], total);
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), m.tensors().len());
        let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
        files.sort_unstable();
        files.dedup();
        assert!(files.len() >= 3, "{files:?}");
        assert!(files
            .iter()
            .all(|f| f.ends_with(&format!("-of-{:05}.safetensors", files.len()))));
        for f in &files {
            let bytes = std::fs::metadata(out.join(f)).unwrap().len() as usize;
            // Header plus at most one shard of data (a lone larger tensor aside).
            assert!(
                bytes < total / 3 + 64 * 1024 || files.len() > 3,
                "{f}: {bytes}"
            );
        }
        let back = Model::load(&out, &dev).unwrap();
        let ids = ops::ids_tensor(&[vec![1, 5, 9, 30, 7]], &dev).unwrap();
        let mask = [vec![1; 5]];
        let a = m.logits(&m.hidden(&ids, &mask).unwrap()).unwrap();
        let b = back.logits(&back.hidden(&ids, &mask).unwrap()).unwrap();
        assert_eq!(crate::models::max_abs_diff(&a, &b), 0.0);
    }
}
