//! What a training run reads besides its settings: its base model, the splits it trains on
//! and its teacher's labels, each with the input record that enters the run's fingerprint.

use crate::schema::Dimension;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, Int64Type};

use super::LoraSettings;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::optim::{Adam, AdamConfig};
use crate::stages::common::{self, PairText};
use crate::store::{keys, ArtifactStore, InputFile};
use crate::tokenize::Tokenizer;
use crate::train::memory::{self, Workload};
use crate::train::Resume;

/// The base model's folder: `run:<id>` is a model trained or pretrained in this root (checked
/// against its manifest), anything else a location `models::source` materializes.
pub async fn base_model(store: &ArtifactStore, location: &str) -> Result<PathBuf> {
    match location.strip_prefix("run:") {
        Some(id) => Ok(common::open_run(store, id).await?.0),
        None => crate::models::source::materialize(location).await,
    }
}

/// One of a teacher's labels (a row of `labels`).
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherLabel {
    /// The ground truth in the teacher's slot orientation (reward models).
    pub gt_label: bool,
    /// σ(margin): toward the teacher's chosen slot (reward models) or toward the ground-truth
    /// chosen side (policies).
    pub soft: f64,
    /// The teacher's hard label agrees with the ground truth.
    pub correct: bool,
    /// `rm`, `simpo` or `dpo`: what kind of model made it.
    pub method: String,
}

/// The labels of `teacher` on `split` by pair id, refusing labels an earlier checkpoint of
/// the teacher made (it was retrained since), with the input record of the labels.
pub async fn labels(
    store: &ArtifactStore,
    teacher: &str,
    split: &str,
) -> Result<(HashMap<String, TeacherLabel>, InputFile)> {
    let m = store.manifest(&keys::labels(teacher, split)).await?.ok_or_else(|| {
        Error::NoInput(format!(
            "{}: no labels of `{teacher}` on the {split} split (run `w2s weak-label --run {teacher} --split {split}` first)",
            store.root()
        ))
    })?;
    if let Some(run) = store.manifest(&keys::train(teacher)).await? {
        let used = m
            .inputs
            .iter()
            .find(|i| i.uri == format!("manifest:{}", run.key));
        if used.is_some_and(|i| i.sha256 != run.fingerprint) {
            return Err(Error::NoInput(format!(
                "the labels of `{teacher}` were made by an earlier checkpoint of it (it was retrained since): rerun `w2s weak-label --run {teacher}`"
            )));
        }
    }
    let mut out = HashMap::new();
    for f in m
        .outputs
        .iter()
        .filter(|f| f.table.as_deref() == Some("labels"))
    {
        for b in store.read_table_part(f).await? {
            let col = |n: &str| b.column_by_name(n).expect("labels schema");
            let ids = col("pair_id").as_string::<i32>();
            let gt = col("gt_label").as_primitive::<Int64Type>();
            let soft = col("soft_label").as_primitive::<Float64Type>();
            let correct = col("correct").as_boolean();
            let method = col("method").as_string::<i32>();
            for i in 0..b.num_rows() {
                out.insert(
                    ids.value(i).to_string(),
                    TeacherLabel {
                        gt_label: gt.value(i) == 1,
                        soft: soft.value(i),
                        correct: correct.value(i),
                        method: method.value(i).to_string(),
                    },
                );
            }
        }
    }
    Ok((out, common::manifest_input(&m)))
}

/// The helpful pairs the implicit conflict mixes in.
pub async fn helpful(store: &ArtifactStore, dim: Dimension) -> Result<Vec<PairText>> {
    let split = dim.split("helpful");
    common::load_split(store, &split).await.map_err(|_| {
        Error::NoInput(format!(
            "--objective implicit needs helpful pairs (the {split} split: give `w2s split` a --helpful file)"
        ))
    })
}

/// A base model checked and identified: its folder and the inputs of the run's fingerprint
/// (the model's files, the split's manifest).
pub async fn base_and_split(
    store: &ArtifactStore,
    location: &str,
) -> Result<(PathBuf, Vec<InputFile>)> {
    let pairs = common::pairs_manifest(store).await?;
    let dir = base_model(store, location).await?;
    let mut inputs = common::model_inputs(&dir)?;
    inputs.push(common::manifest_input(&pairs));
    Ok((dir, inputs))
}

/// A base model loaded for training, with its tokenizer and the longest usable sequence.
pub struct Loaded {
    pub model: Model,
    pub tok: Tokenizer,
    pub tok_path: PathBuf,
    pub max_ctx: usize,
}

/// Loads the model of `dir` on `device` for training: every weight a variable, or under LoRA
/// the adapters alone (fresh, or the `init` folder's), the base frozen; computing in `dtype`
/// (bf16: mixed precision, see [`Model::load_as`]); `recompute` turns on
/// per-layer activation recompute (then gradients come from [`Model::backward`]), and with it
/// large blocks go back to the system when freed ([`crate::alloc::return_large_blocks`]).
///
/// First the run's memory plan is checked against what the device has: a run that cannot fit
/// is refused here, before any weight is read.
#[allow(clippy::too_many_arguments)]
pub fn load(
    dir: &Path,
    device: &str,
    max_ctx: usize,
    lora: Option<&LoraSettings>,
    recompute: bool,
    dtype: &str,
    work: Workload,
) -> Result<Loaded> {
    let device_name = device;
    let device = crate::models::parse_device(device)?;
    let (est, setup, work) = memory_plan(dir, device_name, max_ctx, lora, recompute, dtype, work)?;
    tracing::info!("{}", est.table().trim_end());
    memory::check(
        &est,
        &setup,
        &work,
        memory::available(&device)?,
        device.is_cpu(),
    )?;
    if recompute {
        crate::alloc::return_large_blocks();
    }
    let dtype = setup.dtype;
    let mut model = match lora {
        None => Model::load_as(dir, &device, dtype)?,
        Some(LoraSettings { spec, init: None }) => {
            Model::load_lora_as(dir, &device, spec.clone(), dtype)?
        }
        Some(LoraSettings {
            spec,
            init: Some(init),
        }) => {
            let m = Model::load_with_adapter_as(dir, Path::new(init), &device, dtype)?;
            let got = m.lora_spec().expect("an adapter");
            let targets_match = spec.targets.is_empty() || {
                let (mut a, mut b) = (spec.targets.clone(), got.targets.clone());
                a.sort();
                b.sort();
                a == b
            };
            if got.r != spec.r || got.alpha != spec.alpha || !targets_match {
                return Err(Error::Config(format!(
                    "{init}: the adapter has rank {}, alpha {} and targets {:?}, the run asks for rank {}, alpha {} and targets {:?}",
                    got.r, got.alpha, got.targets, spec.r, spec.alpha, spec.targets
                )));
            }
            m
        }
    };
    model.set_recompute(recompute);
    // The training loop takes the layer gradients' sums once a step (`train::optimize`).
    model.set_accumulating(true);
    let tok_path = dir.join("tokenizer.json");
    let tok = Tokenizer::load(&tok_path)?;
    let max_ctx = max_ctx.min(model.config.max_positions());
    crate::alloc::trace_heap(format_args!("the model's loading"));
    Ok(Loaded {
        model,
        tok,
        tok_path,
        max_ctx,
    })
}

/// The memory plan of training `dir` with these settings, from its config and tensor headers
/// (no weight is read); `work.tokens` is set from `max_ctx` and the model's positions.
#[allow(clippy::too_many_arguments)]
pub fn memory_plan(
    dir: &Path,
    device: &str,
    max_ctx: usize,
    lora: Option<&LoraSettings>,
    recompute: bool,
    dtype: &str,
    work: Workload,
) -> Result<(memory::Estimate, memory::Setup, Workload)> {
    let dtype = crate::models::parse_dtype(dtype)?;
    let (config, _) = crate::models::read_config(dir)?;
    let lora = match lora {
        None => None,
        Some(l) => {
            let mut spec = l.spec.clone();
            if spec.targets.is_empty() {
                spec.targets = crate::models::lora::default_targets(&config);
            }
            Some(spec)
        }
    };
    let setup = memory::Setup {
        dtype,
        lora,
        recompute,
        // Only the CPU has the chunked attention op.
        chunked_attention: !device.starts_with("cuda"),
    };
    let work = Workload {
        tokens: max_ctx.min(config.max_positions()),
        ..work
    };
    let shapes = memory::tensor_shapes(dir)?;
    let est = memory::estimate_from(&config, &shapes, &setup, &work);
    Ok((est, setup, work))
}

/// The split a run trains on: the dimension's `gt` for a ceiling, the labelled split for a
/// student.
pub fn train_split(teacher: Option<&str>, label_split: String, dim: Dimension) -> String {
    if teacher.is_some() {
        label_split
    } else {
        dim.split("gt")
    }
}

/// A fresh Adam over `vars` at `lr`, and the resumable state of the phase published under
/// `key` (`train/<run>`, or `train/<run>/sft` for a phase).
pub fn phase<'a>(
    store: &'a ArtifactStore,
    key: &str,
    fingerprint: &str,
    every: usize,
    vars: &[(String, Var)],
    mirrors: &[(Var, Tensor)],
    lr: f64,
) -> Result<(Adam, Resume<'a>)> {
    let mut adam = Adam::named(
        vars.to_vec(),
        AdamConfig {
            lr,
            ..AdamConfig::default()
        },
    )?;
    adam.mirror(mirrors);
    let resume = Resume {
        store,
        prefix: keys::state(key),
        fingerprint: fingerprint.into(),
        every,
    };
    Ok((adam, resume))
}

/// The input records of a LoRA run's starting adapter (its files' checksums).
pub fn lora_inputs(lora: Option<&LoraSettings>) -> Result<Vec<InputFile>> {
    match lora.and_then(|l| l.init.as_deref()) {
        None => Ok(Vec::new()),
        Some(dir) => common::model_inputs_named(
            Path::new(dir),
            &["adapter_config.json", "adapter_model.safetensors"],
        ),
    }
}
