//! LoRA on a loaded model: adapters on attention and MLP projections, the base frozen and out of
//! the optimizer, adapters saved separately in PEFT's layout, and merge-and-export.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use super::linear::Layout;
use super::save::{replace_dir, write_safetensors, SaveExtras};
use super::tensor_file::Pending;
use super::weights::{adapter_name, LoraSpec};
use super::{Config, Model};
use crate::error::{Error, Result};

/// Attention and MLP projections of each family (the paper's App. H targets both).
pub fn default_targets(config: &Config) -> Vec<String> {
    let t: &[&str] = match config {
        Config::Gpt2(_) => &["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
        Config::Opt(_) => &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        Config::Llama(..) => &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    };
    t.iter().map(|s| s.to_string()).collect()
}

impl Model {
    /// Loads `dir` with fresh LoRA adapters (A Kaiming-uniform from `spec.seed`, B zero).
    /// An empty `spec.targets` means the family's attention and MLP projections.
    pub fn load_lora(dir: &Path, device: &Device, spec: LoraSpec) -> Result<Model> {
        Self::load_lora_as(dir, device, spec, candle_core::DType::F32)
    }

    /// [`Model::load_lora`] with the frozen base in `dtype` and, for bf16 / f16, the adapters
    /// as f32 masters computed with in `dtype` (mixed precision).
    pub fn load_lora_as(
        dir: &Path,
        device: &Device,
        mut spec: LoraSpec,
        dtype: candle_core::DType,
    ) -> Result<Model> {
        if spec.r == 0 {
            return Err(Error::Config("LoRA rank r must be at least 1".into()));
        }
        if spec.targets.is_empty() {
            spec.targets = default_targets(&super::read_config(dir)?.0);
        }
        let m = Model::load_opts(
            dir,
            device,
            true,
            Some((spec.clone(), HashMap::new())),
            dtype,
        )?;
        if m.adapted.is_empty() {
            return Err(Error::Config(format!(
                "LoRA targets {:?} match no projection of this {} model",
                spec.targets,
                m.config.model_type()
            )));
        }
        Ok(m)
    }

    /// Loads a base model with a saved adapter folder (`adapter_config.json`,
    /// `adapter_model.safetensors`).
    pub fn load_with_adapter(base: &Path, adapter: &Path, device: &Device) -> Result<Model> {
        Self::load_with_adapter_as(base, adapter, device, candle_core::DType::F32)
    }

    /// [`Model::load_with_adapter`] computing in `dtype` (see [`Model::load_lora_as`]).
    pub fn load_with_adapter_as(
        base: &Path,
        adapter: &Path,
        device: &Device,
        dtype: candle_core::DType,
    ) -> Result<Model> {
        let cfg_path = adapter.join("adapter_config.json");
        let file = cfg_path.display().to_string();
        let (_, v) = super::read_json(&cfg_path)?;
        let field = |k: &str| {
            v.get(k).cloned().ok_or_else(|| Error::Model {
                file: file.clone(),
                msg: format!("missing field `{k}`"),
            })
        };
        let bad = |k: &str| Error::Model {
            file: file.clone(),
            msg: format!("field `{k}` has the wrong type"),
        };
        let spec = LoraSpec {
            r: field("r")?.as_u64().ok_or_else(|| bad("r"))? as usize,
            alpha: field("lora_alpha")?
                .as_f64()
                .ok_or_else(|| bad("lora_alpha"))?,
            targets: serde_json::from_value(field("target_modules")?)
                .map_err(|_| bad("target_modules"))?,
            seed: v.get("w2s_seed").and_then(|s| s.as_u64()).unwrap_or(0),
        };
        let weights = adapter.join("adapter_model.safetensors");
        let init = candle_core::safetensors::load(&weights, device).map_err(|e| Error::Model {
            file: weights.display().to_string(),
            msg: format!("unreadable adapter: {e}"),
        })?;
        let m = Model::load_opts(base, device, true, Some((spec, init.clone())), dtype)?;
        for name in init.keys() {
            if !m.params.contains_key(name) {
                return Err(Error::Model {
                    file: weights.display().to_string(),
                    msg: format!("tensor `{name}` matches no adapted projection of the base model"),
                });
            }
        }
        Ok(m)
    }

    /// The LoRA settings, if the model has adapters.
    pub fn lora_spec(&self) -> Option<&LoraSpec> {
        self.lora.as_ref()
    }

    /// Writes the adapters alone, in PEFT's layout, to `dir` (replaced atomically).
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let spec = self
            .lora
            .as_ref()
            .ok_or_else(|| Error::Config("this model has no LoRA adapters".into()))?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".adapter.partial-{}", std::process::id()));
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| Error::Io { path: p, source }
        };
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let tensors = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        write_safetensors(&tmp.join("adapter_model.safetensors"), tensors)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": spec.r,
            "lora_alpha": spec.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": spec.targets,
            "fan_in_fan_out": matches!(self.config, Config::Gpt2(_)),
            "w2s_seed": spec.seed,
        });
        let p = tmp.join("adapter_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&config).expect("JSON")).map_err(io(&p))?;
        replace_dir(&tmp, dir)
    }

    /// Base weights with every adapter folded in: `W + (alpha / r) B A`.
    pub fn merged_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for p in self.merged_pending() {
            out.insert(p.name.clone(), (p.make)()?);
        }
        Ok(out)
    }

    /// [`Model::merged_tensors`], each merged only when asked for (checkpoints are written
    /// this way, one merged weight alive at a time).
    pub(crate) fn merged_pending(&self) -> Vec<Pending<'_>> {
        let adapted: HashMap<String, Layout> = (self.adapted.iter())
            .map(|(m, l)| (format!("{m}.weight"), *l))
            .collect();
        let scale = self.lora.as_ref().map(|s| s.alpha / s.r as f64);
        (self.tensors.iter())
            .map(|(key, w)| {
                let plain = w.detach();
                let make: Box<dyn Fn() -> Result<Tensor> + '_> = match (adapted.get(key), scale) {
                    (Some(layout), Some(scale)) => {
                        let module = key.strip_suffix(".weight").expect("a weight");
                        let a = self.params[&adapter_name(module, "A")].as_tensor();
                        let b = self.params[&adapter_name(module, "B")].as_tensor();
                        let layout = *layout;
                        Box::new(move || {
                            let delta = (b.matmul(a)? * scale)?.detach();
                            // Merged in f32 (the adapters' masters), stored in the base's
                            // dtype.
                            let w32 = plain.to_dtype(candle_core::DType::F32)?;
                            let merged = match layout {
                                Layout::Linear => (w32 + delta)?,
                                Layout::Conv1d => (w32 + delta.t()?)?,
                            };
                            Ok(merged.to_dtype(plain.dtype())?)
                        })
                    }
                    _ => Box::new(move || Ok(plain.clone())),
                };
                Pending {
                    name: key.clone(),
                    dtype: w.dtype(),
                    shape: w.dims().to_vec(),
                    make,
                }
            })
            .collect()
    }

    /// Writes a plain checkpoint with the adapters merged in (loadable by transformers).
    pub fn save_merged(&self, dir: &Path, extras: &SaveExtras) -> Result<()> {
        self.save_tensors(dir, extras, self.merged_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ops;
    use candle_core::DType;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    fn spec() -> LoraSpec {
        LoraSpec {
            r: 8,
            alpha: 16.0,
            targets: vec![],
            seed: 0,
        }
    }

    fn logits(m: &Model) -> Tensor {
        let ids = ops::ids_tensor(&[vec![1, 5, 9, 30, 7, 11]], m.device()).unwrap();
        m.logits(&m.hidden(&ids, &[vec![1; 6]]).unwrap()).unwrap()
    }

    /// Gives every B a nonzero value, as training would.
    fn perturb(m: &Model) {
        for (i, (k, v)) in m.params().iter().enumerate() {
            if k.ends_with("lora_B.weight") {
                let n = v.as_tensor().elem_count();
                let vals: Vec<f32> = (0..n)
                    .map(|j| ((i * 31 + j * 17) % 13) as f32 * 0.01 - 0.06)
                    .collect();
                v.set(&Tensor::from_vec(vals, v.as_tensor().shape(), m.device()).unwrap())
                    .unwrap();
            }
        }
    }

    #[test]
    fn trainable_parameters_are_the_adapters_alone() {
        let dev = Device::Cpu;
        for family in ["gpt2", "opt", "llama"] {
            let m = Model::load_lora(&fixture(family), &dev, spec()).unwrap();
            let mut expected = 0;
            for (module, layout) in &m.adapted {
                let w = &m.tensors()[&format!("{module}.weight")];
                let (out, inp) = match layout {
                    Layout::Linear => (w.dim(0).unwrap(), w.dim(1).unwrap()),
                    Layout::Conv1d => (w.dim(1).unwrap(), w.dim(0).unwrap()),
                };
                let a = m.params()[&adapter_name(module, "A")]
                    .as_tensor()
                    .elem_count();
                let b = m.params()[&adapter_name(module, "B")]
                    .as_tensor()
                    .elem_count();
                assert_eq!(a + b, 8 * (inp + out), "{family} {module}");
                expected += 8 * (inp + out);
            }
            let total: usize = m
                .params()
                .values()
                .map(|v| v.as_tensor().elem_count())
                .sum();
            assert_eq!(total, expected, "{family}");
            assert!(m.params().keys().all(|k| k.contains(".lora_")), "{family}");
            // Every attention and MLP projection is adapted: 2 layers x (4 | 6 | 7) modules.
            let per_layer = default_targets(&m.config).len();
            assert_eq!(m.adapted.len(), 2 * per_layer, "{family}");

            // B = 0: the adapted model starts as the base model.
            // On the adapted model's (autograd) path: the owned engine sums in its own order.
            let mut base = Model::load(&fixture(family), &dev).unwrap();
            base.set_engine(crate::models::engine::Engine::Autograd);
            assert_eq!(
                crate::models::max_abs_diff(&logits(&m), &logits(&base)),
                0.0,
                "{family}"
            );

            // Gradients reach every adapter and no base weight.
            perturb(&m);
            let grads = logits(&m)
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (k, v) in m.params() {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{family}: no gradient for {k}"));
                let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(norm > 0.0, "{family}: zero gradient for {k}");
            }
            // Base weights are plain tensors, never variables, so no optimizer sees them.
            // (candle's backward still computes a matmul's gradient for both operands; that
            // costs time, not correctness.)
            for (k, t) in m.tensors() {
                assert!(!t.is_variable(), "{family}: base weight {k} is trainable");
            }
        }
    }

    #[test]
    fn merged_export_equals_the_adapter_forward() {
        let dev = Device::Cpu;
        for family in ["gpt2", "opt-350m", "mistral"] {
            let m = Model::load_lora(&fixture(family), &dev, spec()).unwrap();
            perturb(&m);
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("merged");
            m.save_merged(&out, &SaveExtras::default()).unwrap();
            let merged = Model::load(&out, &dev).unwrap();
            let d = crate::models::max_abs_diff(&logits(&m), &logits(&merged));
            assert!(d < 1e-5, "{family}: merged differs by {d}");
            let base = Model::load(&fixture(family), &dev).unwrap();
            assert!(
                crate::models::max_abs_diff(&logits(&base), &logits(&merged)) > 1e-4,
                "{family}: merge changed nothing"
            );

            // The adapter alone, reloaded onto the base, gives the same model.
            let ad = dir.path().join("adapter");
            m.save_adapter(&ad).unwrap();
            let back = Model::load_with_adapter(&fixture(family), &ad, &dev).unwrap();
            assert_eq!(
                crate::models::max_abs_diff(&logits(&m), &logits(&back)),
                0.0,
                "{family}"
            );
            assert_eq!(back.params().len(), m.params().len());
        }
    }

    #[test]
    fn bad_adapters_are_named() {
        let dev = Device::Cpu;
        let m = Model::load_lora(&fixture("llama"), &dev, spec()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ad = dir.path().join("adapter");
        m.save_adapter(&ad).unwrap();
        let mut t =
            candle_core::safetensors::load(ad.join("adapter_model.safetensors"), &dev).unwrap();
        let name = adapter_name("model.layers.0.self_attn.q_proj", "A");
        t.insert(
            name.clone(),
            Tensor::zeros((3, 32), DType::F32, &dev).unwrap(),
        );
        candle_core::safetensors::save(&t, ad.join("adapter_model.safetensors")).unwrap();
        let e = Model::load_with_adapter(&fixture("llama"), &ad, &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!(
                "tensor `{name}` has shape [3, 32], expected [8, 32]"
            )),
            "{e}"
        );
        let e = Model::load_lora(
            &fixture("llama"),
            &dev,
            LoraSpec {
                targets: vec!["nope".into()],
                ..spec()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("match no projection"), "{e}");
    }
}
