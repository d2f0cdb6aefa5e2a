//! Training, as one package: `w2s gt-train` (a ceiling on the gt split), `w2s w2s-train` (a
//! student on a teacher's labels) and `w2s pretrain` (a tiny GPT-2 on the world's corpus).
//!
//! [`gt_train`] and [`w2s_train`] are the one entry of the first two: they check the request,
//! apply the scenario's defaults ([`Scenario`]) and hand off to reward modeling ([`rm`]) or
//! SFT then SimPO / DPO ([`po`]). Both, and [`pretrain`], read their shared inputs through
//! [`inputs`] and close through [`closing`] (save, upload, `train_log` and `runs` rows, one
//! manifest, resume state cleared).

pub mod closing;
pub mod inputs;
pub mod opts;
pub mod po;
pub mod pretrain;
pub mod rm;

use clap::Args;
use serde::{Deserialize, Serialize};

pub use closing::TrainReport;
pub use opts::{LoraSettings, TrainOpts};

use crate::error::{Error, Result};
use crate::optim::Schedule;
use crate::scenarios::po::Loss;
use crate::scenarios::rm::Objective;
use crate::store::ArtifactStore;
use crate::train::LoopSettings;

/// The paper's weight of the explicit conflict term.
pub const ALPHA: f64 = 0.5;
pub use crate::schema::LABEL_SPLIT;

/// The training scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Reward modeling (paper §4).
    Rm,
    /// SFT then SimPO (paper §5).
    Simpo,
    /// SFT then DPO (paper §5).
    Dpo,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rm => "rm",
            Scenario::Simpo => "simpo",
            Scenario::Dpo => "dpo",
        }
    }

    /// The reference's learning rate: 1e-5 for reward models, 1e-6 for SFT, SimPO and DPO.
    pub fn default_lr(self) -> f64 {
        match self {
            Scenario::Rm => 1e-5,
            Scenario::Simpo | Scenario::Dpo => 1e-6,
        }
    }

    /// The reference's schedule: cosine decay for reward models, warmup then constant for SFT
    /// and the preference phase.
    pub fn default_schedule(self) -> Schedule {
        match self {
            Scenario::Rm => Schedule::Cosine,
            Scenario::Simpo | Scenario::Dpo => Schedule::WarmupConstant,
        }
    }

    /// Passes of the main phase: one, DPO's preference phase three.
    pub fn default_epochs(self) -> usize {
        match self {
            Scenario::Dpo => 3,
            Scenario::Rm | Scenario::Simpo => 1,
        }
    }
}

/// One training run: what every `gt-train` and `w2s-train` invocation says.
#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Training scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Rm)]
    pub scenario: Scenario,
    /// The base model (config.json, *.safetensors, tokenizer.json): a local folder, an s3:// or
    /// http(s):// prefix, hf://owner/name[@revision], or run:<id> for a model pretrained or
    /// trained in this artifact root.
    #[arg(long)]
    pub model: String,
    /// Name of the run (default: derived from the models and objective).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Seed of the training order (numpy default_rng(seed).permutation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The alignment dimension whose splits it trains on: `harmless` (gt, w2s, helpful) or
    /// `honesty` (honesty-gt, honesty-w2s, honesty-helpful; paper App. O).
    #[arg(long, value_enum, default_value_t = crate::schema::Dimension::Harmless)]
    #[serde(skip_serializing_if = "crate::schema::Dimension::is_harmless")]
    pub dimension: crate::schema::Dimension,
    #[command(flatten)]
    #[serde(flatten)]
    pub opts: TrainOpts,
}

/// What makes a run a weak-to-strong student.
#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct Student {
    /// Run id of the teacher whose labels on the w2s split are the targets.
    #[arg(long)]
    pub teacher: String,
    /// The conflicting objective.
    #[arg(long, value_enum, default_value_t = Objective::None)]
    pub objective: Objective,
    /// Weight of the explicit conflict term.
    #[arg(long, default_value_t = ALPHA)]
    pub alpha: f64,
    /// The split the teacher labelled, which the student trains on (`gt` for the second
    /// stage of bootstrapping).
    #[arg(long, default_value = LABEL_SPLIT)]
    pub label_split: String,
    /// Keep only teacher labels at least this confident (paper §6.1; preference scenarios).
    #[arg(long)]
    pub high_confidence: Option<f64>,
    /// Weight each pair's label loss by the teacher's certainty |2 M_w - 1| (paper App. P),
    /// with any objective; its no-conflict reference is the adaptive `none` student (reward
    /// modeling).
    #[arg(long)]
    pub adaptive: bool,
}

/// The run id a ceiling gets without `--run-id`.
pub fn ceiling_run_id(run: &Run) -> Result<String> {
    match &run.run_id {
        Some(r) => Ok(r.clone()),
        None => Ok(format!(
            "gt-{}",
            crate::models::source::model_name(&run.model)?
        )),
    }
}

/// The run id a student gets without `--run-id`.
pub fn student_run_id(run: &Run, st: &Student) -> Result<String> {
    match &run.run_id {
        Some(r) => Ok(r.clone()),
        None => Ok(format!(
            "w2s-{}-{}-{}",
            st.teacher,
            crate::models::source::model_name(&run.model)?,
            st.objective.name()
        )),
    }
}

/// A high-confidence threshold must lie in [0.5, 1) (a confidence toward the teacher's side).
pub fn check_high_confidence(t: f64) -> std::result::Result<(), String> {
    if t.is_nan() || !(0.5..1.0).contains(&t) {
        return Err(format!("{t}: give a threshold in [0.5, 1)"));
    }
    Ok(())
}

/// Trains a ceiling model on the gt split; returns its run id and what it did.
pub async fn gt_train(
    store: &ArtifactStore,
    run: &Run,
    force: bool,
) -> Result<(String, TrainReport)> {
    let run_id = ceiling_run_id(run)?;
    let report = train(store, "gt-train", run, &run_id, None, force).await?;
    Ok((run_id, report))
}

/// Trains a weak-to-strong student on its teacher's labels; returns its run id and report.
pub async fn w2s_train(
    store: &ArtifactStore,
    run: &Run,
    student: &Student,
    force: bool,
) -> Result<(String, TrainReport)> {
    let run_id = student_run_id(run, student)?;
    if let Some(t) = student.high_confidence {
        check_high_confidence(t).map_err(|m| Error::Config(format!("--high-confidence {m}")))?;
        if run.scenario == Scenario::Rm {
            return Err(Error::Config(
                "--high-confidence filters a preference teacher's labels (paper §6.1): use it with --scenario simpo or dpo".into(),
            ));
        }
    }
    if student.adaptive && run.scenario != Scenario::Rm {
        return Err(Error::Config(
            "--adaptive weights a reward model's soft labels by the teacher's certainty (paper App. P): use it with --scenario rm (preference students train on hard labels)".into(),
        ));
    }
    let report = train(store, "w2s-train", run, &run_id, Some(student), force).await?;
    Ok((run_id, report))
}

/// Whether a dtype setting is the default (kept out of fingerprints, so runs from before the
/// setting existed keep theirs).
fn is_f32(d: &str) -> bool {
    d == "f32"
}

/// The memory plan of a run (docs/performance.md, "Memory plan"): the estimated peak of a
/// training step from the model's config and tensor headers and the run's settings. Nothing is
/// loaded or trained; a remote model is fetched first, as the stage would.
pub async fn memory_plan(
    store: &ArtifactStore,
    run: &Run,
    student: Option<&Student>,
) -> Result<crate::train::memory::Estimate> {
    opts::check_dtype(&run.opts.dtype)
        .map_err(|m| Error::Config(format!("--dtype {}: {m}", run.opts.dtype)))?;
    let dir = inputs::base_model(store, &run.model).await?;
    let stage = if student.is_some() {
        "w2s-train"
    } else {
        "gt-train"
    };
    let work = match run.scenario {
        Scenario::Rm => rm::workload(&rm_settings(stage, run, "plan", student)),
        Scenario::Simpo | Scenario::Dpo => po::workload(&po_settings(stage, run, "plan", student)),
    };
    let o = &run.opts;
    let (est, _, _) = inputs::memory_plan(
        &dir,
        &o.device,
        o.max_ctx,
        o.lora().as_ref(),
        o.grad_checkpoint,
        &o.dtype,
        work,
    )?;
    Ok(est)
}

/// The scenario routing shared by both entries.
async fn train(
    store: &ArtifactStore,
    stage: &str,
    run: &Run,
    run_id: &str,
    student: Option<&Student>,
    force: bool,
) -> Result<TrainReport> {
    if run.opts.lora_rank == Some(0) {
        return Err(Error::Config(format!(
            "{stage} --lora-rank 0: give a rank of at least 1"
        )));
    }
    opts::check_dtype(&run.opts.dtype)
        .map_err(|m| Error::Config(format!("{stage} --dtype {}: {m}", run.opts.dtype)))?;
    match run.scenario {
        Scenario::Rm => rm::run(store, &rm_settings(stage, run, run_id, student), force).await,
        Scenario::Simpo | Scenario::Dpo => {
            po::run(store, &po_settings(stage, run, run_id, student), force).await
        }
    }
}

/// The optimizer loop of a run with the scenario's defaults for what `opts` leaves open.
fn loop_settings(run: &Run, scenario: Scenario, epochs: usize) -> LoopSettings {
    let o = &run.opts;
    LoopSettings {
        batch: o.batch,
        micro_batch: o.micro_batch,
        lr: o.lr.unwrap_or(scenario.default_lr()),
        schedule: o.schedule.unwrap_or(scenario.default_schedule()),
        epochs,
        shuffle_seed: run.seed,
    }
}

/// A student's teacher, objective, alpha and label split (a ceiling: none, `none`, 0).
fn student_parts(student: Option<&Student>) -> (Option<String>, Objective, f64, Option<String>) {
    match student {
        None => (None, Objective::None, 0.0, None),
        Some(st) => (
            Some(st.teacher.clone()),
            st.objective,
            st.alpha,
            (st.label_split != LABEL_SPLIT).then(|| st.label_split.clone()),
        ),
    }
}

fn rm_settings(
    stage: &str,
    run: &Run,
    run_id: &str,
    student: Option<&Student>,
) -> rm::RmTrainSettings {
    let (teacher, objective, alpha, label_split) = student_parts(student);
    let o = &run.opts;
    rm::RmTrainSettings {
        run_id: run_id.into(),
        stage: stage.into(),
        base_model: run.model.clone(),
        teacher,
        label_split,
        dimension: run.dimension,
        objective,
        alpha,
        train: loop_settings(
            run,
            Scenario::Rm,
            o.epochs.unwrap_or(Scenario::Rm.default_epochs()),
        ),
        max_ctx: o.max_ctx,
        readout: o.readout,
        slot_seed: o.slot_seed,
        head_seed: o.head_seed,
        init_head: o.init_head.clone(),
        adaptive: student.is_some_and(|s| s.adaptive),
        lora: o.lora(),
        grad_checkpoint: o.grad_checkpoint,
        dtype: o.dtype.clone(),
        device: o.device.clone(),
        engine: crate::models::engine::current(),
        save_every: o.save_every,
    }
}

fn po_settings(
    stage: &str,
    run: &Run,
    run_id: &str,
    student: Option<&Student>,
) -> po::PoTrainSettings {
    let (teacher, objective, alpha, label_split) = student_parts(student);
    let loss = match run.scenario {
        Scenario::Dpo => Loss::Dpo,
        _ => Loss::Simpo,
    };
    let o = &run.opts;
    po::PoTrainSettings {
        run_id: run_id.into(),
        stage: stage.into(),
        loss,
        base_model: run.model.clone(),
        teacher,
        label_split,
        dimension: run.dimension,
        objective,
        alpha,
        high_confidence: student.and_then(|s| s.high_confidence),
        sft: loop_settings(run, run.scenario, o.sft_epochs),
        po: loop_settings(
            run,
            run.scenario,
            o.epochs.unwrap_or(run.scenario.default_epochs()),
        ),
        max_ctx: o.max_ctx,
        tokenization: o.tokenization,
        lora: o.lora(),
        grad_checkpoint: o.grad_checkpoint,
        dtype: o.dtype.clone(),
        device: o.device.clone(),
        engine: crate::models::engine::current(),
        save_every: o.save_every,
    }
}
