//! Checkpoint weights: loading a Hugging Face safetensors checkpoint (single file or sharded
//! with an index) into trainable variables, with errors that name the tensor when config and
//! weights disagree.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::linear::{Layout, Lora, Proj};
use crate::error::{Error, Result};
use crate::rng::NumpyPcg64;

/// Which projections get LoRA adapters, and their size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    /// Module-name suffixes, PEFT style (`q_proj`, `c_attn`, ...).
    pub targets: Vec<String>,
    /// Seed of the `A` initialisation.
    pub seed: u64,
}

impl LoraSpec {
    fn matches(&self, module: &str) -> bool {
        self.targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// PEFT's name of an adapter matrix.
pub fn adapter_name(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// Tensors of a checkpoint, handed out by name as variables.
pub struct Weights {
    file: String,
    /// Hand out plain tensors instead of variables: no gradients, no autograd graph (scoring).
    frozen: bool,
    /// Float type of every weight handed out (f32 unless asked otherwise).
    dtype: DType,
    /// Checkpoint tensors not yet handed out (each leaves when it is, so a converted copy
    /// never sits beside its original).
    tensors: RefCell<HashMap<String, Tensor>>,
    vars: RefCell<BTreeMap<String, Var>>,
    /// Every tensor handed out, trainable or not, by canonical name (what `save` writes).
    named: RefCell<BTreeMap<String, Tensor>>,
    lora: Option<LoraSpec>,
    /// Adapter values to start from (a saved adapter); else A is drawn and B is zero.
    lora_init: HashMap<String, Tensor>,
    lora_rng: RefCell<Option<NumpyPcg64>>,
    adapters: RefCell<BTreeMap<String, Var>>,
    /// Adapted modules and their layouts, for merging.
    adapted: RefCell<Vec<(String, Layout)>>,
    /// Under mixed precision: each f32 master variable and its tracked cast to the compute
    /// dtype, which the model multiplies by.
    mirrors: RefCell<Vec<(Var, Tensor)>>,
}

/// What a built model keeps of its weights.
pub struct Parts {
    pub tensors: BTreeMap<String, Tensor>,
    pub params: BTreeMap<String, Var>,
    pub adapted: Vec<(String, Layout)>,
    pub lora: Option<LoraSpec>,
    pub mirrors: Vec<(Var, Tensor)>,
}

/// The shard files a `model.safetensors.index.json` (`index`, read from `file`) lists in its
/// `weight_map`, each once, sorted; a name that is not a plain file name is refused (a remote
/// index must not write outside the model's folder).
pub fn shard_names(file: &str, index: &serde_json::Value) -> Result<Vec<String>> {
    let map =
        (index.get("weight_map").and_then(|m| m.as_object())).ok_or_else(|| Error::Model {
            file: file.to_string(),
            msg: "missing field `weight_map`".into(),
        })?;
    let mut shards: Vec<String> = (map.values())
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    if let Some(bad) = shards.iter().find(|s| s.contains('/') || s.contains("..")) {
        return Err(Error::Model {
            file: file.to_string(),
            msg: format!("shard name `{bad}` is not a plain file name"),
        });
    }
    Ok(shards)
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
            let (_, v) = super::read_json(&index)?;
            for shard in shard_names(&file, &v)? {
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
            dtype: DType::F32,
            tensors: RefCell::new(tensors),
            vars: RefCell::new(BTreeMap::new()),
            named: RefCell::new(BTreeMap::new()),
            lora: None,
            lora_init: HashMap::new(),
            lora_rng: RefCell::new(None),
            adapters: RefCell::new(BTreeMap::new()),
            adapted: RefCell::new(Vec::new()),
            mirrors: RefCell::new(Vec::new()),
        }
    }

    /// Hands out detached tensors from now on (for inference: candle has no no-grad mode, so
    /// scoring uses weights that autograd does not track).
    pub fn frozen(mut self) -> Weights {
        self.frozen = true;
        self
    }

    /// Hands out weights as `dtype` (bf16 / f16 halve memory). Frozen weights are stored in
    /// `dtype`; trainable ones (mixed precision) are f32 master variables handed out as their
    /// tracked casts to `dtype`, so gradients reach the masters in f32.
    pub fn with_dtype(mut self, dtype: DType) -> Weights {
        self.dtype = dtype;
        self
    }

    /// Adds LoRA adapters to the projections `spec` names; base weights become frozen.
    /// `init` holds saved adapter tensors (PEFT names) to start from.
    pub fn with_lora(mut self, spec: LoraSpec, init: HashMap<String, Tensor>) -> Weights {
        self.frozen = true;
        *self.lora_rng.borrow_mut() = Some(NumpyPcg64::new(spec.seed));
        self.lora = Some(spec);
        self.lora_init = init;
        self
    }

    /// A layer norm's `weight` and `bias`, both `[width]`.
    pub fn layer_norm(&self, module: &str, width: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.get(&format!("{module}.weight"), &[width])?,
            self.get(&format!("{module}.bias"), &[width])?,
        ))
    }

    /// A projection `module` with `out` outputs and `inp` inputs, with an adapter if targeted.
    pub fn proj(
        &self,
        module: &str,
        out: usize,
        inp: usize,
        bias: bool,
        layout: Layout,
    ) -> Result<Proj> {
        let shape = match layout {
            Layout::Linear => [out, inp],
            Layout::Conv1d => [inp, out],
        };
        let w = self.get(&format!("{module}.weight"), &shape)?;
        let bias = if bias {
            Some(self.get(&format!("{module}.bias"), &[out])?)
        } else {
            None
        };
        let lora = match &self.lora {
            Some(spec) if spec.matches(module) => {
                Some(self.adapter(module, (out, inp), spec, layout, w.device())?)
            }
            _ => None,
        };
        Ok(Proj {
            name: module.to_string(),
            w,
            bias,
            layout,
            lora,
        })
    }

    fn adapter(
        &self,
        module: &str,
        (out, inp): (usize, usize),
        spec: &LoraSpec,
        layout: Layout,
        device: &Device,
    ) -> Result<Lora> {
        let (na, nb) = (adapter_name(module, "A"), adapter_name(module, "B"));
        let (a, b) = match (self.lora_init.get(&na), self.lora_init.get(&nb)) {
            (Some(a), Some(b)) => {
                for (n, t, want) in [(&na, a, [spec.r, inp]), (&nb, b, [out, spec.r])] {
                    if t.dims() != want {
                        return Err(Error::Model {
                            file: "adapter_model.safetensors".into(),
                            msg: format!(
                                "tensor `{n}` has shape {:?}, expected {want:?}",
                                t.dims()
                            ),
                        });
                    }
                }
                (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?)
            }
            (None, None) => {
                let bound = 1.0 / (inp as f64).sqrt();
                let mut rng = self.lora_rng.borrow_mut();
                let rng = rng.as_mut().expect("rng set with the spec");
                let vals: Vec<f32> = (0..spec.r * inp)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        ((2.0 * u - 1.0) * bound) as f32
                    })
                    .collect();
                (
                    Tensor::from_vec(vals, (spec.r, inp), device)?,
                    Tensor::zeros((out, spec.r), DType::F32, device)?,
                )
            }
            _ => {
                return Err(Error::Model {
                    file: "adapter_model.safetensors".into(),
                    msg: format!("adapter of `{module}` has only one of lora_A / lora_B"),
                })
            }
        };
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let (ac, bc) = (self.compute(&a)?, self.compute(&b)?);
        let mut adapters = self.adapters.borrow_mut();
        adapters.insert(na, a.clone());
        adapters.insert(nb, b.clone());
        self.adapted.borrow_mut().push((module.to_string(), layout));
        Ok(Lora {
            a,
            b,
            ac,
            bc,
            scale: spec.alpha / spec.r as f64,
        })
    }

    /// Whether the checkpoint has a tensor under `name` (or its unprefixed alias).
    pub fn contains(&self, name: &str) -> bool {
        self.named.borrow().contains_key(name) || self.lookup(name).is_some()
    }

    /// The key under which the checkpoint holds `name`.
    fn lookup(&self, name: &str) -> Option<String> {
        // Original GPT-2 / OPT checkpoints store the backbone without the `transformer.` /
        // `model.` prefix that transformers' current classes use.
        let tensors = self.tensors.borrow();
        if tensors.contains_key(name) {
            return Some(name.to_string());
        }
        let (_, rest) = name.split_once('.')?;
        tensors.contains_key(rest).then(|| rest.to_string())
    }

    /// The tensor `name` with the given shape, as a trainable variable (created once per name).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(t) = self.named.borrow().get(name) {
            return Ok(t.clone());
        }
        let key = self.lookup(name).ok_or_else(|| Error::Model {
            file: self.file.clone(),
            msg: format!("missing tensor `{name}` (the config expects shape {shape:?})"),
        })?;
        let t = self.tensors.borrow()[&key].clone();
        if t.dims() != shape {
            return Err(Error::Model {
                file: self.file.clone(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, the config expects {shape:?}",
                    t.dims()
                ),
            });
        }
        // Trainable weights are kept in f32 (the masters of mixed precision).
        let stored = if self.frozen { self.dtype } else { DType::F32 };
        let t = match t.dtype() {
            d if d == stored => t,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(stored)?,
            other => {
                return Err(Error::Model {
                    file: self.file.clone(),
                    msg: format!("tensor `{name}` has dtype {other:?}, expected a float type"),
                })
            }
        };
        // A NaN or infinite weight would only surface later as a NaN loss or score, far from
        // its cause: name the tensor now.
        let bad = first_non_finite(&t)?;
        self.tensors.borrow_mut().remove(&key);
        if let Some(i) = bad {
            return Err(Error::Model {
                file: self.file.clone(),
                msg: format!(
                    "tensor `{name}` has a non-finite value (NaN or infinity) at flat index {i}"
                ),
            });
        }
        let out = if self.frozen {
            t.detach()
        } else {
            let var = Var::from_tensor(&t)?;
            let out = self.compute(&var)?;
            self.vars.borrow_mut().insert(name.to_string(), var);
            out
        };
        self.named
            .borrow_mut()
            .insert(name.to_string(), out.clone());
        Ok(out)
    }

    /// The dtype weights are handed out in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What the model computes with for a trainable variable: the variable itself, or under
    /// mixed precision its tracked cast to the compute dtype (recorded as a mirror).
    fn compute(&self, var: &Var) -> Result<Tensor> {
        if self.dtype == var.dtype() {
            return Ok(var.as_tensor().clone());
        }
        let c = var.as_tensor().to_dtype(self.dtype)?;
        self.mirrors.borrow_mut().push((var.clone(), c.clone()));
        Ok(c)
    }

    /// Every tensor handed out, and the trainable variables (base weights, or the adapters
    /// alone under LoRA), by canonical name.
    pub fn into_parts(self) -> Parts {
        let mut params = self.vars.into_inner();
        params.extend(self.adapters.into_inner());
        Parts {
            tensors: self.named.into_inner(),
            params,
            adapted: self.adapted.into_inner(),
            lora: self.lora,
            mirrors: self.mirrors.into_inner(),
        }
    }
}

fn read_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    super::tensor_file::read(path, device)
}

/// Flat index of the first NaN or infinite value of a float tensor (read in place on the CPU,
/// half precision included; elsewhere through a copy).
fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    use candle_core::{CpuStorage, Storage};
    if t.device().is_cpu() && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        let n = t.elem_count();
        let (a, b) = layout.contiguous_offsets().unwrap_or((0, n));
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                return Ok(v[a..b].iter().position(|x| !x.is_finite()))
            }
            Storage::Cpu(CpuStorage::BF16(v)) => {
                return Ok(v[a..b].iter().position(|x| !x.is_finite()))
            }
            Storage::Cpu(CpuStorage::F16(v)) => {
                return Ok(v[a..b].iter().position(|x| !x.is_finite()))
            }
            _ => {}
        }
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().position(|x| !x.is_finite()))
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
            assert_eq!(
                crate::models::max_abs_diff(t, &sharded.tensors()[k]),
                0.0,
                "{k}"
            );
        }
    }
}
