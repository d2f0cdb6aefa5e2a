//! The `w2s` command line: argument parsing and dispatch. Library errors come back as
//! [`w2s::Error`] and are turned into a message and an exit code in `main`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use w2s::data::{PairRules, PromptMismatch, Shape, Template};
use w2s::optim::Schedule;
use w2s::scenarios::rm::{Objective, Readout};
use w2s::sql::{self, OutFormat};
use w2s::stages::analyze::{self, AnalyzeSettings};
use w2s::stages::report::{self, ReportSettings};
use w2s::stages::rm_train::{RmTrainSettings, TrainReport};
use w2s::stages::score::{self, ScoreSettings};
use w2s::stages::split::{self, Mode, SplitSettings};
use w2s::stages::weak_label::{self, WeakLabelSettings};
use w2s::stages::Scenario;
use w2s::store::{resolve, ArtifactStore};
use w2s::tokenize::Tokenization;
use w2s::train::LoopSettings;
use w2s::Error;

#[derive(Parser, Debug)]
#[command(
    name = "w2s",
    version,
    about = "Weak-to-strong alignment experiments and weak-to-strong deception measurement",
    long_about = None
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing filter expression).
    #[arg(long, global = true, env = "W2S_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Split preference data into the gt / w2s / test / helpful pairs table.
    Split(SplitArgs),
    /// Run SQL (a query or a file from sql/) over the tables of an artifact root.
    Sql(SqlArgs),
    /// Load a checkpoint and write it back in Hugging Face layout (normalises names and shards).
    Convert(ConvertArgs),
    /// Fold a LoRA adapter into its base model and write a plain Hugging Face checkpoint.
    LoraMerge(LoraMergeArgs),
    /// Pretrain one tiny GPT-2 on the synthetic world's corpus and probe which entities it knows.
    Pretrain(PretrainArgs),
    /// Train a ceiling model on the gt split.
    GtTrain(GtTrainArgs),
    /// Label a split (w2s by default) with a trained reward model, into the `labels` table.
    WeakLabel(WeakLabelArgs),
    /// Train a strong student on a teacher's labels, with or without a conflicting objective.
    W2sTrain(W2sTrainArgs),
    /// Score a model's confidence toward the ground-truth chosen answers of a split.
    Score(ScoreArgs),
    /// Run every SQL analysis in sql/ over the tables, write the results as tables, summarise.
    Analyze(AnalyzeArgs),
    /// Write the figures and tables as one self-contained HTML page plus PNGs (runs analyze first).
    Report(ReportArgs),
    /// Run a pipeline file: every stage of its grid, skipping what is up to date.
    Run(RunArgs),
    /// Print a pipeline's steps (as a table, or as JSON for external schedulers).
    Plan(PlanArgs),
    /// Measure the engine against PyTorch on this machine (docs/performance.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Reward-model and policy training and scoring, GPT-2-small and tiny shapes, each in its
    /// own process, beside PyTorch on the same random checkpoint; medians and ratios.
    Engine(BenchEngineArgs),
    /// One measurement in this process, printed as JSON (what `bench engine` runs).
    #[command(hide = true)]
    One(BenchOneArgs),
    /// Write the seeded random checkpoint of a shape into a folder (what bench/e2e.sh trains).
    Checkpoint(BenchCheckpointArgs),
}

#[derive(Args, Debug)]
pub struct BenchCheckpointArgs {
    #[arg(long, value_enum)]
    pub arch: w2s::bench::Arch,
    /// Parent folder: the checkpoint is written to OUT/<arch>.
    #[arg(long)]
    pub out: String,
}

#[derive(Args, Debug)]
pub struct BenchEngineArgs {
    /// Shapes to measure (default: both).
    #[arg(long, value_enum)]
    pub arch: Vec<w2s::bench::Arch>,
    /// Tasks to measure (default: all four).
    #[arg(long, value_enum)]
    pub task: Vec<w2s::bench::Task>,
    /// Runs of each measurement per engine (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python with torch and transformers for the baseline ("none": w2s only).
    #[arg(long, default_value = ".venv-ref/bin/python")]
    pub python: String,
    /// Where the random checkpoints are written (reused across runs).
    #[arg(long, default_value = "target/bench-models")]
    pub models: String,
    /// Also write every measurement and the summary as JSON here.
    #[arg(long)]
    pub out: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` for both engines (CUDA needs `--features cuda`;
    /// scripts/gpu-check.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct BenchOneArgs {
    #[arg(long, value_enum)]
    pub arch: w2s::bench::Arch,
    #[arg(long, value_enum)]
    pub task: w2s::bench::Task,
    /// The checkpoint folder (`bench engine` writes it).
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// The pipeline file (TOML), e.g. pipelines/quickstart.toml.
    pub pipeline: String,
    /// Override a key of the file: KEY=VALUE with a dotted key (`train.lr=1e-4`,
    /// `artifacts=/tmp/x`, `model.<id>.path=/folder`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Only this step, stage or run (and what it needs): e.g. `gt-train`, `score:gt-tiny-2`.
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the plan (what is up to date, what would run) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Run every selected step again, even if up to date.
    #[arg(long)]
    pub force: bool,
    /// Steps to run at once (each stage already uses every core; 1 shows their progress).
    #[arg(long, short = 'j', default_value_t = 1)]
    pub jobs: usize,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the plan as JSON (steps, commands, dependencies, levels, status); same as
    /// `--format json`.
    #[arg(long)]
    pub json: bool,
    /// Output: a table, JSON, or a Slurm submission script of the steps to run (one job array
    /// per level, afterok dependencies between levels; docs/pipelines.md).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Record this step as finished (what `w2s run` does after a step; each task of the Slurm
    /// script calls it once its stage succeeded, so later plans see the step up to date).
    #[arg(long, value_name = "STEP")]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Slurm,
}

#[derive(Args, Debug)]
pub struct ArtifactsArg {
    /// Artifact root: a local folder, file://, or s3://bucket/prefix.
    #[arg(long, env = "W2S_ARTIFACTS", default_value = "artifacts")]
    pub artifacts: String,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// Pre-split mode: ground-truth training file (first --n-gt rows are used).
    #[arg(long)]
    pub gt: Option<String>,
    /// Pre-split mode: weak-to-strong file (first --n-w2s rows).
    #[arg(long)]
    pub w2s: Option<String>,
    /// Pre-split mode: test file (first --n-test rows).
    #[arg(long)]
    pub test: Option<String>,
    /// Random mode: one file split at random into --n-gt / --n-w2s / --n-test rows.
    #[arg(long)]
    pub input: Option<String>,
    /// Use the small built-in sample (no files, no network).
    #[arg(long)]
    pub sample: bool,
    /// Use the embedded default's synthetic world (no files, no network): its harmless pairs
    /// split at random, its helpful pairs, and its `corpus` and `entities` tables.
    #[arg(long)]
    pub world: bool,
    /// World: seed of the generator.
    #[arg(long, default_value_t = 0)]
    pub world_seed: u64,
    /// World: number of entities (half harmful).
    #[arg(long, default_value_t = 240)]
    pub world_entities: usize,
    /// World: Zipf exponent of how often entities are mentioned, by rank.
    #[arg(long, default_value_t = 1.2)]
    pub world_zipf: f64,
    /// World: statements in the pretraining corpus.
    #[arg(long, default_value_t = 12_000)]
    pub world_statements: usize,
    /// Seed of the random split (numpy default_rng(seed).permutation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// File of helpful pairs (the conflicting objective), first --n-helpful rows.
    #[arg(long)]
    pub helpful: Option<String>,
    #[arg(long)]
    pub n_gt: Option<usize>,
    #[arg(long)]
    pub n_w2s: Option<usize>,
    #[arg(long)]
    pub n_test: Option<usize>,
    #[arg(long)]
    pub n_helpful: Option<usize>,
    /// Record shape: HH transcripts, or explicit prompt/chosen/rejected columns.
    #[arg(long, value_enum, default_value_t = Shape::Auto)]
    pub shape: Shape,
    /// HH rows whose two transcripts give different prompts: keep (as the reference), drop, error.
    #[arg(long, value_enum, default_value_t = PromptMismatch::Keep)]
    pub prompt_mismatch: PromptMismatch,
    /// Explicit-shape rows: use prompt + response verbatim, or wrap them as one HH turn.
    #[arg(long, value_enum, default_value_t = Template::Verbatim)]
    pub template: Template,
    /// Rewrite the table even if it is up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model to read: a local folder, an s3:// or http(s):// prefix, or hf://owner/name.
    #[arg(long)]
    pub model: String,
    /// Folder to write (replaced atomically if it exists).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct LoraMergeArgs {
    /// The base model: a local folder, an s3:// or http(s):// prefix, or hf://owner/name.
    #[arg(long)]
    pub model: String,
    /// Adapter folder (adapter_config.json, adapter_model.safetensors), PEFT layout.
    #[arg(long)]
    pub adapter: std::path::PathBuf,
    /// Folder to write (replaced atomically if it exists).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// The model (config.json, *.safetensors, tokenizer.json): a local folder, an s3:// or
    /// http(s):// prefix, or hf://owner/name[@revision] (downloaded once into $W2S_CACHE).
    /// Without it, the trained run --run-id of the artifact store is scored.
    #[arg(long)]
    pub model: Option<String>,
    /// Name of the scored run in the `scores` table (default: the model folder's name).
    #[arg(long, alias = "run")]
    pub run_id: Option<String>,
    /// Reward models: override the readout the checkpoint was trained with.
    #[arg(long, value_enum)]
    pub readout: Option<Readout>,
    /// Policies: override the tokenization the checkpoint was trained with (w2s.json; joint for
    /// a checkpoint w2s did not train).
    #[arg(long, value_enum)]
    pub tokenization: Option<Tokenization>,
    /// Split to score.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_pairs: usize,
    /// Longest sequence in tokens; longer ones keep their last tokens (reference: 512).
    #[arg(long, default_value_t = 512)]
    pub max_ctx: usize,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight type: f32, bf16 or f16 (half types are meant for CUDA).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Rescore even if up to date.
    #[arg(long)]
    pub force: bool,
}

/// Settings every training stage shares; defaults are the reference's (reference-spec §2.4).
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
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
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Pairs per forward/backward pass (gradients are accumulated over the step).
    #[arg(long, default_value_t = 1)]
    pub micro_batch: usize,
    /// Learning rate (default: 1e-5 for reward models, 1e-6 for SFT + SimPO / DPO, as the
    /// reference).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule (default: cosine for reward models, warmup-constant for SFT and
    /// the preference phase).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Passes over the data (default 1; DPO's preference phase 3, as the reference).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Passes of the SFT phase before SimPO / DPO.
    #[arg(long, default_value_t = 1)]
    pub sft_epochs: usize,
    /// Longest sequence in tokens; longer ones keep their last tokens.
    #[arg(long, default_value_t = 512)]
    pub max_ctx: usize,
    /// Where the reward is read: the last real token, or the reference's (count of non-zero
    /// ids) - 1 (reference-spec §2.1; see docs/scenarios.md).
    #[arg(long, value_enum, default_value_t = Readout::LastToken)]
    pub readout: Readout,
    /// Preference scenarios: how each side becomes tokens. joint encodes the transcript once and
    /// masks the prompt; reference reproduces the reference's separate encoding, its truncation
    /// and SFT denominator (reference-spec §1.7, §3.3; docs/scenarios.md). Reward models always
    /// encode the whole transcript, as the reference.
    #[arg(long, value_enum, default_value_t = Tokenization::Joint)]
    pub tokenization: Tokenization,
    /// Seed of the training order (numpy default_rng(seed).permutation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the slot swap (CPython Random(seed), restarted per split).
    #[arg(long, default_value_t = 0)]
    pub slot_seed: u64,
    /// Seed of the reward head's initial weights.
    #[arg(long, default_value_t = 0)]
    pub head_seed: u64,
    /// Train LoRA adapters of this rank instead of every weight (paper App. H; not built yet).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scaling alpha.
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// Initial reward head from a safetensors file (`weight`, [1, hidden]), e.g. from PyTorch.
    #[arg(long)]
    pub init_head: Option<String>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Save resumable state every N optimizer steps (0: never).
    #[arg(long, default_value_t = 10)]
    pub save_every: usize,
    /// Retrain even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// Name of the model (its run id); the checkpoint goes to models/<id>/<fingerprint>/.
    #[arg(long)]
    pub model_id: String,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub embd: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Tokens per training sequence (also the model's positions).
    #[arg(long, default_value_t = 64)]
    pub ctx: usize,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 16)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Passes over the corpus (the budget: stronger rungs get more).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Seed of the sequence order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    pub init_seed: u64,
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Cosine decay to 0, no warmup (reward models).
    Cosine,
    /// Linear warmup over ⌊0.1·steps⌋+1 steps, then constant (SFT, SimPO, DPO).
    WarmupConstant,
    Constant,
}

#[derive(Args, Debug)]
pub struct GtTrainArgs {
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug)]
pub struct W2sTrainArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Run id of the teacher whose labels on the w2s split are the targets.
    #[arg(long)]
    pub teacher: String,
    /// The conflicting objective.
    #[arg(long, value_enum, default_value_t = Objective::None)]
    pub objective: Objective,
    /// Weight of the explicit conflict term.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// The split the teacher labelled, which the student trains on (`gt` for the second
    /// stage of bootstrapping).
    #[arg(long, default_value = "w2s")]
    pub label_split: String,
    /// Keep only teacher labels at least this confident (paper §6.1; preference scenarios).
    #[arg(long)]
    pub high_confidence: Option<f64>,
}

#[derive(Args, Debug)]
pub struct WeakLabelArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// The labelling run (a trained run of the store, or the name for --model's labels).
    #[arg(long = "run", alias = "run-id")]
    pub run: String,
    /// Use this reward-model folder instead of the stored run.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "w2s")]
    pub split: String,
    /// Seed of the slot swap (must match the student's).
    #[arg(long, default_value_t = 0)]
    pub slot_seed: u64,
    #[arg(long, default_value_t = 512)]
    pub max_ctx: usize,
    /// Override the readout the checkpoint was trained with.
    #[arg(long, value_enum)]
    pub readout: Option<Readout>,
    /// Policies: override the tokenization the checkpoint was trained with (w2s.json; joint for
    /// a checkpoint w2s did not train).
    #[arg(long, value_enum)]
    pub tokenization: Option<Tokenization>,
    #[arg(long, default_value_t = 8)]
    pub batch_pairs: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// Knowledge threshold T (paper: 0.75).
    #[arg(long, default_value_t = 0.75)]
    pub threshold: f64,
    /// The four thresholds of the sweep (paper App. I).
    #[arg(long, num_args = 4, value_delimiter = ',', default_values_t = [0.70, 0.75, 0.80, 0.85])]
    pub sweep: Vec<f64>,
    /// Bootstrap replicates for intervals of single-seed cells (0: no intervals).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub bootstrap_seed: u64,
    /// Recompute even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub analysis: AnalyzeArgs,
    /// Also copy the page and its PNGs into this local folder (replaced as a whole).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The query, or a path to a .sql file.
    pub query: Option<String>,
    /// Read the query from this file.
    #[arg(long, conflicts_with = "query")]
    pub file: Option<String>,
    #[command(flatten)]
    pub root: ArtifactsArg,
    /// A bound parameter, NAME=VALUE, used as $NAME in the query. Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Write the result here (local path or URL) instead of printing it.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Output format (default: from --output's extension, else a printed table).
    #[arg(long, value_enum)]
    pub format: Option<OutFormat>,
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Split(a) => split_cmd(a).await,
        Command::Sql(a) => sql_cmd(a).await,
        Command::Pretrain(a) => pretrain_cmd(a).await,
        Command::GtTrain(a) => gt_train_cmd(a).await,
        Command::WeakLabel(a) => weak_label_cmd(a).await,
        Command::W2sTrain(a) => w2s_train_cmd(a).await,
        Command::Score(a) => score_cmd(a).await,
        Command::Convert(a) => convert_cmd(a).await,
        Command::LoraMerge(a) => lora_merge_cmd(a).await,
        Command::Analyze(a) => analyze_cmd(a).await,
        Command::Report(a) => report_cmd(a).await,
        Command::Run(a) => run_cmd(a).await,
        Command::Plan(a) => plan_cmd(a).await,
        Command::Bench(BenchCommand::Engine(a)) => bench_engine_cmd(a),
        Command::Bench(BenchCommand::One(a)) => {
            let dev = w2s::models::parse_device(&a.device)?;
            let m = w2s::bench::run_one(a.arch, a.task, std::path::Path::new(&a.model), &dev)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Checkpoint(a)) => {
            let dir = w2s::bench::checkpoint(a.arch, std::path::Path::new(&a.out))?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

fn split_settings(a: &SplitArgs) -> Result<SplitSettings, Error> {
    let presplit = [&a.gt, &a.w2s, &a.test];
    let n_presplit = presplit.iter().filter(|x| x.is_some()).count();
    let modes = usize::from(n_presplit > 0)
        + usize::from(a.input.is_some())
        + usize::from(a.sample)
        + usize::from(a.world);
    if modes != 1 {
        return Err(Error::Config(
            "give exactly one data source: --gt/--w2s/--test (pre-split files), --input (random split), --sample or --world".into(),
        ));
    }
    let mode = if n_presplit > 0 {
        match (&a.gt, &a.w2s, &a.test) {
            (Some(gt), Some(w2s), Some(test)) => Mode::Presplit {
                gt: gt.clone(),
                w2s: w2s.clone(),
                test: test.clone(),
            },
            _ => {
                return Err(Error::Config(
                    "pre-split mode needs all of --gt, --w2s and --test".into(),
                ))
            }
        }
    } else if let Some(input) = &a.input {
        Mode::Random {
            input: input.clone(),
            seed: a.seed,
        }
    } else if a.world {
        Mode::World {
            seed: a.seed,
            world: w2s::data::world::WorldSettings {
                seed: a.world_seed,
                entities: a.world_entities,
                zipf: a.world_zipf,
                statements: a.world_statements,
            },
        }
    } else {
        Mode::Sample { seed: a.seed }
    };
    Ok(SplitSettings {
        mode,
        helpful: a.helpful.clone(),
        n_gt: a.n_gt,
        n_w2s: a.n_w2s,
        n_test: a.n_test,
        n_helpful: a.n_helpful,
        shape: a.shape,
        rules: PairRules {
            prompt_mismatch: a.prompt_mismatch,
            template: a.template,
        },
    })
}

async fn split_cmd(a: SplitArgs) -> Result<()> {
    let settings = split_settings(&a)?;
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let started = std::time::Instant::now();
    let report = split::run(&store, &settings, a.force).await?;
    let state = if report.up_to_date {
        "up to date, nothing written"
    } else {
        "written"
    };
    println!(
        "pairs -> {} ({state}; fingerprint {}; {:.2}s)",
        store.root(),
        &report.fingerprint[..12],
        started.elapsed().as_secs_f64()
    );
    println!("{:<8} {:>7}", "split", "pairs");
    for name in w2s::schema::SPLITS {
        if let Some(n) = report.counts.get(name) {
            println!("{name:<8} {n:>7}");
        }
    }
    if report.prompt_mismatches > 0 {
        println!(
            "note: {} rows keep a separate rejected prompt (their rejected transcript has an extra \"\\n\\nAssistant:\"; see docs/artifacts.md)",
            report.prompt_mismatches
        );
    }
    if report.dropped > 0 {
        println!(
            "note: {} rows dropped by --prompt-mismatch drop",
            report.dropped
        );
    }
    if report.repeats > 0 {
        println!(
            "note: {} pairs repeat earlier content and got occurrence-numbered ids",
            report.repeats
        );
    }
    Ok(())
}

/// A model location as a local folder, and that folder's tokenizer.json if it has one.
async fn model_folder(location: &str) -> Result<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    let dir = w2s::models::source::materialize(location).await?;
    let tok = dir.join("tokenizer.json");
    Ok((dir, tok.exists().then_some(tok)))
}

async fn convert_cmd(a: ConvertArgs) -> Result<()> {
    let (dir, tok) = model_folder(&a.model).await?;
    let model = w2s::models::Model::load_frozen(&dir, &candle_core::Device::Cpu)?;
    let extras = w2s::models::save::SaveExtras {
        tokenizer: tok.as_deref(),
        reward_head: None,
        provenance: serde_json::json!({ "converted_from": a.model }),
    };
    model.save(&a.out, &extras)?;
    println!(
        "{} ({}, {} tensors) -> {}",
        a.model,
        model.config.model_type(),
        model.tensors().len(),
        a.out.display()
    );
    Ok(())
}

async fn lora_merge_cmd(a: LoraMergeArgs) -> Result<()> {
    let (dir, tok) = model_folder(&a.model).await?;
    let model = w2s::models::Model::load_with_adapter(&dir, &a.adapter, &candle_core::Device::Cpu)?;
    let extras = w2s::models::save::SaveExtras {
        tokenizer: tok.as_deref(),
        reward_head: None,
        provenance: serde_json::json!({
            "merged_from": { "base": a.model, "adapter": a.adapter.display().to_string() },
        }),
    };
    model.save_merged(&a.out, &extras)?;
    println!(
        "{} + adapter {} ({} adapter tensors) -> {}",
        a.model,
        a.adapter.display(),
        model.params().len(),
        a.out.display()
    );
    Ok(())
}

async fn score_cmd(a: ScoreArgs) -> Result<()> {
    let run_id = match (&a.run_id, &a.model) {
        (Some(r), _) => r.clone(),
        (None, Some(m)) => model_name(m)?,
        (None, None) => {
            return Err(Error::Config(
                "give --model FOLDER, or --run-id RUN to score a trained run".into(),
            )
            .into())
        }
    };
    let settings = ScoreSettings {
        model: a.model.clone(),
        run_id: run_id.clone(),
        split: a.split.clone(),
        batch_pairs: a.batch_pairs,
        max_ctx: a.max_ctx,
        device: a.device.clone(),
        dtype: a.dtype.clone(),
        readout: a.readout,
        tokenization: a.tokenization,
    };
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let started = std::time::Instant::now();
    let r = score::run(&store, &settings, a.force).await?;
    let secs = started.elapsed().as_secs_f64();
    if r.up_to_date {
        println!(
            "scores of `{run_id}` on {} are up to date ({} pairs, accuracy {:.4})",
            a.split, r.pairs, r.accuracy
        );
    } else {
        println!(
            "scores of `{run_id}` on {} -> {}: {} pairs, accuracy {:.4}, {:.0} tokens/s ({:.1}s){}",
            a.split,
            store.root(),
            r.pairs,
            r.accuracy,
            r.tokens as f64 / secs,
            secs,
            if r.truncated > 0 {
                format!("; {} sequences truncated to --max-ctx", r.truncated)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The last path segment of a model location (`gpt2` for `hf://openai-community/gpt2`).
fn model_name(location: &str) -> Result<String, Error> {
    location
        .trim_end_matches('/')
        .rsplit(['/', '@'])
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::Config(format!("{location}: give --run-id")))
}

fn rm_settings(
    t: &TrainArgs,
    stage: &str,
    run_id: String,
    teacher: Option<String>,
    objective: Objective,
    alpha: f64,
) -> RmTrainSettings {
    RmTrainSettings {
        run_id,
        stage: stage.into(),
        base_model: t.model.clone(),
        teacher,
        label_split: None,
        objective,
        alpha,
        train: loop_settings(t, 1e-5, ScheduleArg::Cosine, t.epochs.unwrap_or(1)),
        max_ctx: t.max_ctx,
        readout: t.readout,
        slot_seed: t.slot_seed,
        head_seed: t.head_seed,
        init_head: t.init_head.clone(),
        device: t.device.clone(),
        save_every: t.save_every,
    }
}

/// The optimizer loop of a training command, with the scenario's defaults.
fn loop_settings(t: &TrainArgs, lr: f64, schedule: ScheduleArg, epochs: usize) -> LoopSettings {
    LoopSettings {
        batch: t.batch,
        micro_batch: t.micro_batch,
        lr: t.lr.unwrap_or(lr),
        schedule: match t.schedule.unwrap_or(schedule) {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::WarmupConstant => Schedule::WarmupConstant,
            ScheduleArg::Constant => Schedule::Constant,
        },
        epochs,
        shuffle_seed: t.seed,
    }
}

/// Settings of an SFT + SimPO / DPO run (reference-spec §3.10 defaults).
fn po_settings(
    t: &TrainArgs,
    stage: &str,
    run_id: String,
    teacher: Option<String>,
    objective: Objective,
    alpha: f64,
) -> w2s::stages::po_train::PoTrainSettings {
    let loss = match t.scenario {
        Scenario::Dpo => w2s::scenarios::po::Loss::Dpo,
        _ => w2s::scenarios::po::Loss::Simpo,
    };
    let po_epochs = t
        .epochs
        .unwrap_or(if loss == w2s::scenarios::po::Loss::Dpo {
            3
        } else {
            1
        });
    w2s::stages::po_train::PoTrainSettings {
        run_id,
        stage: stage.into(),
        loss,
        base_model: t.model.clone(),
        teacher,
        label_split: None,
        objective,
        alpha,
        high_confidence: None,
        sft: loop_settings(t, 1e-6, ScheduleArg::WarmupConstant, t.sft_epochs),
        po: loop_settings(t, 1e-6, ScheduleArg::WarmupConstant, po_epochs),
        max_ctx: t.max_ctx,
        tokenization: t.tokenization,
        device: t.device.clone(),
        save_every: t.save_every,
    }
}

/// Refuses LoRA training, which is not built yet.
fn require_full(t: &TrainArgs, stage: &str) -> Result<()> {
    if t.lora_rank.is_some() {
        return Err(Error::NotImplemented(format!("{stage} --lora-rank"))).context(
            "LoRA training is not built yet (`w2s lora-merge` folds an adapter trained elsewhere into its base model)",
        );
    }
    Ok(())
}

fn print_train(run_id: &str, root: &str, r: &TrainReport) {
    if r.up_to_date {
        println!(
            "run `{run_id}` is up to date ({} steps, final loss {:.4})",
            r.steps, r.final_loss
        );
    } else {
        println!(
            "run `{run_id}` -> {root}: {} steps, {} pairs, final loss {:.4}, {:.0} tokens/s ({:.1}s){}",
            r.steps,
            r.pairs,
            r.final_loss,
            r.tokens as f64 / r.seconds.max(1e-9),
            r.seconds,
            if r.resumed_at > 0 {
                format!("; resumed at step {}", r.resumed_at)
            } else {
                String::new()
            }
        );
    }
}

async fn gt_train_cmd(a: GtTrainArgs) -> Result<()> {
    let t = &a.train;
    let run_id = match &t.run_id {
        Some(r) => r.clone(),
        None => format!("gt-{}", model_name(&t.model)?),
    };
    let store = ArtifactStore::open(&t.root.artifacts)?;
    require_full(t, "gt-train")?;
    let r = if t.scenario == Scenario::Rm {
        let s = rm_settings(t, "gt-train", run_id.clone(), None, Objective::None, 0.0);
        w2s::stages::gt_train::run(&store, t.scenario, &s, t.force).await?
    } else {
        let s = po_settings(t, "gt-train", run_id.clone(), None, Objective::None, 0.0);
        w2s::stages::po_train::run(&store, &s, t.force).await?
    };
    print_train(&run_id, store.root(), &r);
    Ok(())
}

async fn w2s_train_cmd(a: W2sTrainArgs) -> Result<()> {
    let t = &a.train;
    let run_id = match &t.run_id {
        Some(r) => r.clone(),
        None => format!(
            "w2s-{}-{}-{}",
            a.teacher,
            model_name(&t.model)?,
            a.objective.name()
        ),
    };
    let mut s = rm_settings(
        t,
        "w2s-train",
        run_id.clone(),
        Some(a.teacher.clone()),
        a.objective,
        a.alpha,
    );
    if a.label_split != "w2s" {
        s.label_split = Some(a.label_split.clone());
    }
    let store = ArtifactStore::open(&t.root.artifacts)?;
    require_full(t, "w2s-train")?;
    if let Some(t) = a.high_confidence {
        if t.is_nan() || !(0.5..1.0).contains(&t) {
            return Err(Error::Config(format!(
                "--high-confidence {t}: give a threshold in [0.5, 1)"
            ))
            .into());
        }
        if a.train.scenario == Scenario::Rm {
            return Err(Error::Config(
                "--high-confidence filters a preference teacher's labels (paper §6.1): use it with --scenario simpo or dpo".into(),
            )
            .into());
        }
    }
    let r = if t.scenario == Scenario::Rm {
        w2s::stages::w2s_train::run(&store, t.scenario, &s, t.force).await?
    } else {
        let mut p = po_settings(
            t,
            "w2s-train",
            run_id.clone(),
            Some(a.teacher.clone()),
            a.objective,
            a.alpha,
        );
        p.label_split = s.label_split.clone();
        p.high_confidence = a.high_confidence;
        w2s::stages::po_train::run(&store, &p, t.force).await?
    };
    print_train(&run_id, store.root(), &r);
    Ok(())
}

async fn weak_label_cmd(a: WeakLabelArgs) -> Result<()> {
    let s = WeakLabelSettings {
        run_id: a.run.clone(),
        model: a.model.clone(),
        split: a.split.clone(),
        slot_seed: a.slot_seed,
        max_ctx: a.max_ctx,
        readout: a.readout,
        tokenization: a.tokenization,
        device: a.device.clone(),
        batch_pairs: a.batch_pairs,
    };
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = weak_label::run(&store, &s, a.force).await?;
    println!(
        "labels of `{}` on {}{}: {} pairs, agreement with ground truth {:.4}",
        a.run,
        a.split,
        if r.up_to_date { " are up to date" } else { "" },
        r.pairs,
        r.accuracy
    );
    Ok(())
}

fn analyze_settings(a: &AnalyzeArgs) -> AnalyzeSettings {
    AnalyzeSettings {
        threshold: a.threshold,
        sweep: [a.sweep[0], a.sweep[1], a.sweep[2], a.sweep[3]],
        bootstrap: a.bootstrap,
        bootstrap_seed: a.bootstrap_seed,
    }
}

async fn report_cmd(a: ReportArgs) -> Result<()> {
    let s = ReportSettings {
        analyze: analyze_settings(&a.analysis),
    };
    let store = ArtifactStore::open(&a.analysis.root.artifacts)?;
    let r = report::run(&store, &s, a.analysis.force).await?;
    let page = store.url_of(&r.page);
    let shown = if page.scheme() == "file" {
        page.to_file_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| page.to_string())
    } else {
        page.to_string()
    };
    println!(
        "report{} -> {shown} ({} figures: {}; PNGs beside it)",
        if r.up_to_date { " (up to date)" } else { "" },
        r.figures.len(),
        r.figures.join(", ")
    );
    if let Some(out) = &a.out {
        report::copy_to(&store, &r, out).await?;
        println!("copied to {}", out.join("index.html").display());
    }
    Ok(())
}

async fn pretrain_cmd(a: PretrainArgs) -> Result<()> {
    let s = w2s::stages::pretrain::PretrainSettings {
        model_id: a.model_id.clone(),
        layers: a.layers,
        embd: a.embd,
        heads: a.heads,
        ctx: a.ctx,
        train: LoopSettings {
            batch: a.batch,
            micro_batch: a.micro_batch,
            lr: a.lr,
            schedule: match a.schedule {
                ScheduleArg::Cosine => Schedule::Cosine,
                ScheduleArg::WarmupConstant => Schedule::WarmupConstant,
                ScheduleArg::Constant => Schedule::Constant,
            },
            epochs: a.epochs,
            shuffle_seed: a.seed,
        },
        init_seed: a.init_seed,
        save_every: a.save_every,
        device: a.device.clone(),
    };
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = w2s::stages::pretrain::run(&store, &s, a.force).await?;
    let at = store.url_of(&r.checkpoint);
    let at = at
        .to_file_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| at.to_string());
    if r.up_to_date {
        println!("pretrain {} is up to date -> {at}", a.model_id);
    } else {
        println!(
            "pretrain {}: {} steps, {} tokens, final loss {:.4}; knows {}/{} entities -> {at}",
            a.model_id, r.steps, r.tokens, r.final_loss, r.known, r.entities
        );
    }
    Ok(())
}

async fn analyze_cmd(a: AnalyzeArgs) -> Result<()> {
    let s = analyze_settings(&a);
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = analyze::run(&store, &s, a.force).await?;
    println!(
        "analysis tables -> {}{}: {}",
        store.root(),
        if r.up_to_date { " (up to date)" } else { "" },
        r.tables
            .iter()
            .map(|(t, n)| format!("{t} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{}", analyze::text_summary(&r.cells, a.threshold));
    Ok(())
}

async fn sql_cmd(a: SqlArgs) -> Result<()> {
    let text = match (&a.file, &a.query) {
        (Some(f), _) => read_sql(f)?,
        (None, Some(q)) if q.trim_end().ends_with(".sql") && std::path::Path::new(q).is_file() => {
            read_sql(q)?
        }
        (None, Some(q)) => q.clone(),
        (None, None) => return Err(Error::Config("give a query or --file".into()).into()),
    };
    let params = a
        .params
        .iter()
        .map(|p| sql::parse_param(p))
        .collect::<Result<Vec<_>, _>>()?;
    let format = a
        .format
        .or_else(|| a.output.as_deref().and_then(OutFormat::from_path))
        .unwrap_or(OutFormat::Table);
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let ctx = sql::context(&store).await?;
    let batches = sql::query(&ctx, &text, &params).await?;
    let bytes = sql::render(&batches, format)?;
    match &a.output {
        Some(out) => {
            let r = resolve(out)?;
            use object_store::ObjectStoreExt;
            r.store
                .put(&r.path, bytes.into())
                .await
                .map_err(|source| Error::Store {
                    uri: out.clone(),
                    source,
                })?;
        }
        None if format == OutFormat::Parquet => {
            return Err(Error::Config("--format parquet needs --output FILE".into()).into())
        }
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            if format == OutFormat::Table {
                writeln!(stdout)?;
            }
        }
    }
    Ok(())
}

fn read_sql(path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|source| Error::Io {
            path: path.to_string(),
            source,
        })
        .map_err(Into::into)
}

/// A pipeline, its steps, the ones `--target` selects and their status.
struct Planned {
    pipeline: w2s::pipeline::Pipeline,
    store: ArtifactStore,
    steps: Vec<w2s::pipeline::Step>,
    selected: std::collections::HashSet<String>,
    status: Vec<w2s::pipeline::Status>,
}

async fn planned(a: &PipelineArgs, force: bool) -> Result<Planned> {
    let pipeline = w2s::pipeline::Pipeline::load(&a.pipeline, &a.sets)?;
    let steps = w2s::pipeline::plan::expand(&pipeline)?;
    let selected = w2s::pipeline::exec::select(&steps, a.target.as_deref())?;
    // A local file or folder the plan reads must exist now, not fail hours into a grid.
    for st in steps.iter().filter(|st| selected.contains(&st.id)) {
        if let Some(missing) = st
            .local_inputs
            .iter()
            .find(|p| !std::path::Path::new(p).exists())
        {
            return Err(w2s::Error::Config(format!(
                "{}: `{missing}` (read by step `{}`) does not exist",
                a.pipeline, st.id
            ))
            .into());
        }
    }
    let store = ArtifactStore::open(pipeline.root())?;
    let status = w2s::pipeline::exec::statuses(&store, &steps, &selected, force).await?;
    Ok(Planned {
        pipeline,
        store,
        steps,
        selected,
        status,
    })
}

/// `plan <absolute file> [--set ...] --record` (completed with the step id by the Slurm script).
fn record_command(a: &PipelineArgs) -> Result<Vec<String>> {
    let file = std::path::absolute(&a.pipeline)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.pipeline))?
        .display()
        .to_string();
    let mut argv = vec!["plan".to_string(), file];
    for kv in &a.sets {
        argv.extend(["--set".to_string(), kv.clone()]);
    }
    argv.push("--record".into());
    Ok(argv)
}

fn print_plan(p: &Planned) {
    use w2s::pipeline::Status;
    let name = p.pipeline.name.as_deref().unwrap_or("pipeline");
    let count = |st: Status| p.status.iter().filter(|s| **s == st).count();
    println!(
        "{name}: {} steps into {} ({} up to date, {} to run, {} to check after their inputs{})",
        p.selected.len(),
        p.store.root(),
        count(Status::UpToDate),
        count(Status::Run),
        count(Status::Recheck),
        match count(Status::NotSelected) {
            0 => String::new(),
            n => format!(", {n} not selected"),
        }
    );
    let width = p.steps.iter().map(|s| s.id.len()).max().unwrap_or(4);
    for (s, st) in p.steps.iter().zip(&p.status) {
        if *st == Status::NotSelected {
            continue;
        }
        println!(
            "{:>2}  {:<width$}  {:<22}  w2s {}",
            s.level,
            s.id,
            st.label(),
            w2s::pipeline::exec::shell_words(&s.command(p.store.root(), false))
        );
    }
}

async fn plan_cmd(a: PlanArgs) -> Result<()> {
    let p = planned(&a.pipeline, false).await?;
    if let Some(id) = &a.record {
        return Ok(w2s::pipeline::exec::record_finished(&p.store, &p.steps, id).await?);
    }
    let format = if a.json { PlanFormat::Json } else { a.format };
    if format == PlanFormat::Text {
        print_plan(&p);
        return Ok(());
    }
    if format == PlanFormat::Slurm {
        use w2s::pipeline::Status;
        let pending: Vec<&w2s::pipeline::Step> = (p.steps.iter().zip(&p.status))
            .filter(|(_, st)| matches!(st, Status::Run | Status::Recheck))
            .map(|(s, _)| s)
            .collect();
        print!(
            "{}",
            w2s::pipeline::slurm::script(
                p.pipeline.name.as_deref().unwrap_or("pipeline"),
                &record_command(&a.pipeline)?,
                p.store.root(),
                &pending,
            )
        );
        return Ok(());
    }
    let steps: Vec<serde_json::Value> = p
        .steps
        .iter()
        .zip(&p.status)
        .filter(|(_, st)| **st != w2s::pipeline::Status::NotSelected)
        .map(|(s, st)| {
            serde_json::json!({
                "id": s.id,
                "stage": s.stage,
                "run": s.run,
                "level": s.level,
                "needs": s.needs,
                "outputs": s.outputs,
                "fingerprint": s.fingerprint,
                "status": st,
                "command": std::iter::once("w2s".to_string())
                    .chain(s.command(p.store.root(), false))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "pipeline": a.pipeline.pipeline,
        "name": p.pipeline.name,
        "artifacts": p.store.root(),
        "code_version": w2s::store::CODE_VERSION,
        "levels": p.steps.iter().map(|s| s.level + 1).max().unwrap_or(0),
        "steps": steps,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("plan serializes")
    );
    Ok(())
}

async fn run_cmd(a: RunArgs) -> Result<()> {
    let started = std::time::Instant::now();
    if a.dry_run {
        let p = planned(&a.pipeline, a.force).await?;
        print_plan(&p);
        return Ok(());
    }
    // The lock comes first: the plan's status must not change under us.
    let pipeline = w2s::pipeline::Pipeline::load(&a.pipeline.pipeline, &a.pipeline.sets)?;
    let store = ArtifactStore::open(pipeline.root())?;
    let lock = w2s::pipeline::RootLock::acquire(&store).await?;
    let p = planned(&a.pipeline, a.force).await?;
    let to_run = p
        .status
        .iter()
        .filter(|s| {
            !matches!(
                s,
                w2s::pipeline::Status::UpToDate | w2s::pipeline::Status::NotSelected
            )
        })
        .count();
    if to_run > 0 {
        print_plan(&p);
    }
    let exe = std::env::current_exe().context("cannot find the w2s executable")?;
    let log_dir = std::env::temp_dir().join(format!("w2s-run-{}", std::process::id()));
    let opts = w2s::pipeline::RunOptions {
        jobs: a.jobs.max(1),
        force: a.force,
        exe,
        log_dir,
    };
    let result = w2s::pipeline::exec::execute(&p.store, &p.steps, &p.selected, &opts).await;
    lock.release().await;
    let summary = result?;
    // Where the report is, when the plan makes one.
    let mut report = String::new();
    if p.steps
        .iter()
        .any(|s| s.stage == "report" && p.selected.contains(&s.id))
    {
        if let Some(m) = p.store.manifest(w2s::stages::report::KEY).await? {
            if let Some(page) = m.outputs.iter().find(|f| f.path.ends_with("index.html")) {
                let url = p.store.url_of(&page.path);
                let shown = match url.to_file_path() {
                    Ok(path) if url.scheme() == "file" => path.display().to_string(),
                    _ => url.to_string(),
                };
                report = format!("; report: {shown}");
            }
        }
    }
    if summary.ran.is_empty() {
        println!(
            "{}: all {} steps up to date ({:.2}s){report}",
            p.pipeline.name.as_deref().unwrap_or("pipeline"),
            p.selected.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{}: {} steps ran, {} up to date ({:.1}s){report}",
            p.pipeline.name.as_deref().unwrap_or("pipeline"),
            summary.ran.len(),
            summary.skipped,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The PyTorch baseline script, beside the sources.
const TORCH_BENCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torch_engine.py");

fn bench_engine_cmd(a: BenchEngineArgs) -> Result<()> {
    use w2s::bench::{self, Arch, Measurement, Task};
    let arches = if a.arch.is_empty() {
        vec![Arch::Tiny, Arch::Gpt2Small]
    } else {
        a.arch.clone()
    };
    let tasks = if a.task.is_empty() {
        Task::ALL.to_vec()
    } else {
        a.task.clone()
    };
    let python = (a.python != "none"
        && std::path::Path::new(&a.python).exists()
        && std::path::Path::new(TORCH_BENCH).exists())
    .then(|| a.python.clone());
    if python.is_none() && a.python != "none" {
        eprintln!(
            "no PyTorch baseline: {} or {TORCH_BENCH} not found (python3 -m venv .venv-ref && .venv-ref/bin/pip install torch transformers safetensors tokenizers)",
            a.python
        );
    }
    let exe = std::env::current_exe().context("locating the w2s executable")?;
    let one = |cmd: &mut std::process::Command, what: &str| -> Result<Measurement> {
        let out = cmd
            .output()
            .with_context(|| format!("starting the {what} measurement"))?;
        if !out.status.success() {
            anyhow::bail!(
                "{what} measurement failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("{what} printed `{line}`"))
    };
    let show = |m: &Measurement, rep: usize| {
        eprintln!(
            "{} {} {} #{}: {:.0} tokens/s, peak {:.0} MiB",
            m.arch,
            m.task,
            m.engine,
            rep + 1,
            m.tokens_per_s,
            m.peak_rss_mib
        );
    };
    let mut all = Vec::new();
    for arch in arches {
        let dir = bench::checkpoint(arch, std::path::Path::new(&a.models))?;
        for &task in &tasks {
            for rep in 0..a.repeats {
                let m = one(
                    std::process::Command::new(&exe)
                        .args(["--log", "warn", "bench", "one", "--arch", arch.name()])
                        .args(["--task", task.name(), "--device", &a.device, "--model"])
                        .arg(&dir),
                    "w2s",
                )?;
                show(&m, rep);
                all.push(m);
                if let Some(py) = &python {
                    let m = one(
                        std::process::Command::new(py)
                            .arg(TORCH_BENCH)
                            .args(["--arch", arch.name(), "--task", task.name()])
                            .args(["--device", &a.device, "--model"])
                            .arg(&dir),
                        "PyTorch",
                    )?;
                    show(&m, rep);
                    all.push(m);
                }
            }
        }
    }
    let rows = bench::rows(&all);
    print!("{}", bench::table(&rows));
    if let Some(out) = &a.out {
        let v = serde_json::json!({"measurements": all, "rows": rows});
        std::fs::write(out, serde_json::to_vec_pretty(&v)?).with_context(|| out.clone())?;
    }
    Ok(())
}
