//! Checkpoint weights: loading a Hugging Face safetensors checkpoint (single file or sharded
//! with an index) into trainable variables, with errors that name the tensor when config and
//! weights disagree.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};

/// Tensors of a checkpoint, handed out by name as variables.
pub struct Weights {
    file: String,
    /// Hand out plain tensors instead of variables: no gradients, no autograd graph (scoring).
    frozen: bool,
    tensors: HashMap<String, Tensor>,
    vars: RefCell<BTreeMap<String, Var>>,
    /// Every tensor handed out, trainable or not, by canonical name (what `save` writes).
    named: RefCell<BTreeMap<String, Tensor>>,
}

impl Weights {
    /// Loads `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    /// Weights are converted to f32 when handed out.
    pub fn load(dir: &Path, device: &Device) -> Result<Weights> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut tensors = HashMap::new();
        let file;
        if single.exists() {
            file = single.display().to_string();
            tensors = read_file(&single, device)?;
        } else if index.exists() {
            file = index.display().to_string();
            let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Model {
                file: file.clone(),
                msg: format!("invalid JSON: {e}"),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Model {
                    file: file.clone(),
                    msg: "missing field `weight_map`".into(),
                })?;
            let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                tensors.extend(read_file(&dir.join(shard), device)?);
            }
        } else {
            return Err(Error::Model {
                file: dir.display().to_string(),
                msg: "no model.safetensors or model.safetensors.index.json".into(),
            });
        }
        Ok(Weights::from_tensors(file, tensors))
    }

    pub fn from_tensors(file: String, tensors: HashMap<String, Tensor>) -> Weights {
        Weights {
            file,
            frozen: false,
            tensors,
            vars: RefCell::new(BTreeMap::new()),
            named: RefCell::new(BTreeMap::new()),
        }
    }

    /// Hands out detached tensors from now on (for inference: candle has no no-grad mode, so
    /// scoring uses weights that autograd does not track).
    pub fn frozen(mut self) -> Weights {
        self.frozen = true;
        self
    }

    /// Whether the checkpoint has a tensor under `name` (or its unprefixed alias).
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    fn lookup(&self, name: &str) -> Option<&Tensor> {
        // Original GPT-2 / OPT checkpoints store the backbone without the `transformer.` /
        // `model.` prefix that transformers' current classes use.
        self.tensors.get(name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, rest)| self.tensors.get(rest))
        })
    }

    /// The tensor `name` with the given shape, as a trainable variable (created once per name).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(t) = self.named.borrow().get(name) {
            return Ok(t.clone());
        }
        let t = self.lookup(name).ok_or_else(|| Error::Model {
            file: self.file.clone(),
            msg: format!("missing tensor `{name}` (the config expects shape {shape:?})"),
        })?;
        if t.dims() != shape {
            return Err(Error::Model {
                file: self.file.clone(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, the config expects {shape:?}",
                    t.dims()
                ),
            });
        }
        let t = match t.dtype() {
            DType::F32 => t.clone(),
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => {
                return Err(Error::Model {
                    file: self.file.clone(),
                    msg: format!("tensor `{name}` has dtype {other:?}, expected a float type"),
                })
            }
        };
        let out = if self.frozen {
            t.detach()
        } else {
            let var = Var::from_tensor(&t)?;
            let out = var.as_tensor().clone();
            self.vars.borrow_mut().insert(name.to_string(), var);
            out
        };
        self.named
            .borrow_mut()
            .insert(name.to_string(), out.clone());
        Ok(out)
    }

    /// (every tensor handed out, the trainable ones as variables), by canonical name.
    pub fn into_parts(self) -> (BTreeMap<String, Tensor>, BTreeMap<String, Var>) {
        (self.named.into_inner(), self.vars.into_inner())
    }
}

fn read_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| Error::Model {
        file: path.display().to_string(),
        msg: format!("unreadable safetensors: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Model;

    #[test]
    fn sharded_checkpoint_loads_like_a_single_file() {
        let dev = Device::Cpu;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let all = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
        let mut names: Vec<&String> = all.keys().collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (i, part) in [a, b].iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            let tensors: HashMap<String, Tensor> = part
                .iter()
                .map(|n| ((*n).clone(), all[*n].clone()))
                .collect();
            candle_core::safetensors::save(&tensors, dir.path().join(&file)).unwrap();
            for n in part.iter() {
                map.insert((*n).clone(), serde_json::Value::String(file.clone()));
            }
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": map });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let sharded = Model::load(dir.path(), &dev).unwrap();
        let single = Model::load(&src, &dev).unwrap();
        assert_eq!(sharded.tensors().len(), single.tensors().len());
        for (k, t) in single.tensors() {
            let d: f32 = (t - &sharded.tensors()[k])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(d, 0.0, "{k}");
        }
    }
}
