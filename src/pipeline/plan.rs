//! A pipeline expanded into steps: one `w2s` stage invocation each, planned as the typed
//! command the CLI parses ([`crate::cli::Command`]), with the steps it needs, the manifests it
//! publishes and a fingerprint.
//!
//! A step's fingerprint covers its command line (rendered from the typed command, without the
//! artifact root), the code version, the size and modification time of the local files it
//! reads (make-style; remote inputs by URL) and the fingerprints of the steps it needs. A
//! finished step leaves a record ([`super::record`]); the step is up to date while the record
//! matches, its manifests still carry what it published with every file present, and the
//! steps it needs still publish what it read. The stages check their own fingerprints too
//! (over settings and input checksums), so a step run again whose result would not change
//! finishes at once.

use std::collections::HashMap;

use serde::Serialize;

use super::spec::{Pipeline, Source};
use crate::cli::argv;
use crate::cli::{
    ArtifactsArg, Command, GtTrainArgs, PretrainArgs, ReportArgs, ScoreArgs, SplitArgs,
    W2sTrainArgs, WeakLabelArgs,
};
use crate::error::{Error, Result};
use crate::scenarios::rm::Objective;
use crate::schema::Dimension;
use crate::stages::training::{Run, Scenario, Student, TrainOpts, ALPHA, LABEL_SPLIT};
use crate::stages::{score, split, weak_label};
use crate::store::{keys, sha256_hex, CODE_VERSION};

/// One stage invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `split`, `pretrain:<model>`, `gt-train:<run>`, `weak-label:<run>`, `w2s-train:<run>`,
    /// `score:<run>`, `report`.
    pub id: String,
    pub stage: String,
    /// The run (or pretrained model) the step trains, labels with or scores.
    pub run: Option<String>,
    /// What runs, as the CLI parses it (its artifact root is the pipeline's).
    #[serde(skip)]
    pub command: Command,
    /// Arguments after `w2s`, without `--artifacts` (what the fingerprint covers).
    pub args: Vec<String>,
    /// Ids of the steps whose outputs it reads.
    pub needs: Vec<String>,
    /// Manifest keys it publishes.
    pub outputs: Vec<String>,
    /// Local files or folders it reads (their size and mtime enter the fingerprint).
    #[serde(skip)]
    pub local_inputs: Vec<String>,
    /// Longest chain of steps before this one.
    pub level: usize,
    pub fingerprint: String,
}

impl Step {
    pub(crate) fn new(id: String, run: Option<String>, command: Command) -> Step {
        Step {
            id,
            stage: command.name(),
            run,
            args: argv::render(&command, &["artifacts"]),
            command,
            needs: Vec::new(),
            outputs: Vec::new(),
            local_inputs: Vec::new(),
            level: 0,
            fingerprint: String::new(),
        }
    }

    /// The step's settings: its command's serde form without the artifact root and `force`
    /// (what a record keeps, to say later which setting changed).
    pub fn settings(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.command).expect("arguments serialize");
        if let Some(serde_json::Value::Object(m)) =
            v.as_object_mut().and_then(|m| m.values_mut().next())
        {
            m.remove("artifacts");
            m.remove("force");
        }
        v
    }

    /// The full command line after `w2s`, with `--force` when `force`.
    pub fn argv(&self, force: bool) -> Vec<String> {
        argv::render(&self.command.clone().forced(force), &[])
    }
}

/// Run id of a model's ceiling (trained on the gt split) at `seed`: `gt-<model>`, with
/// `-s<seed>` when the seed is not 0 (so adding a seed to a grid keeps the existing names) and
/// the scenario when it is not reward modeling.
pub fn ceiling_id(scenario: Scenario, model: &str, seed: u64) -> String {
    let mut id = format!("gt-{model}");
    if seed != 0 {
        id.push_str(&format!("-s{seed}"));
    }
    if scenario != Scenario::Rm {
        id.push_str(&format!("-{}", scenario.name()));
    }
    id
}

/// A run id of a grid on dimension `dim`: `-<dimension>` at the end unless harmless (so the
/// harmless runs keep their names and both dimensions' runs can share a root).
pub fn dimmed(id: String, dim: Dimension) -> String {
    if dim.is_harmless() {
        id
    } else {
        format!("{id}-{}", dim.name())
    }
}

/// Run id of a weak-to-strong student: `w2s-<weak>-<strong>-<objective>` (`boot-<weak>-
/// <intermediate>-<strong>-<objective>` for bootstrapping). Alpha and seed appear when they
/// differ from the defaults, so adding a seed to a grid keeps the names (and results) of the
/// existing runs; `-hc` marks a student of the teacher's high-confidence labels only, `-ad` one
/// with adaptive weighting.
pub fn student_id(
    scenario: Scenario,
    chain: &[&str],
    objective: Objective,
    alpha: f64,
    (high_confidence, adaptive): (bool, bool),
    seed: u64,
) -> String {
    let kind = if chain.len() > 2 { "boot" } else { "w2s" };
    let mut id = format!("{kind}-{}-{}", chain.join("-"), objective.name());
    if objective == Objective::Explicit && alpha != ALPHA {
        id.push_str(&format!("-a{alpha}"));
    }
    if high_confidence {
        id.push_str("-hc");
    }
    if adaptive {
        id.push_str("-ad");
    }
    if seed != 0 {
        id.push_str(&format!("-s{seed}"));
    }
    if scenario != Scenario::Rm {
        id.push_str(&format!("-{}", scenario.name()));
    }
    id
}

/// Whether a location is a local path (not a URL).
fn is_local(location: &str) -> bool {
    !location.contains("://") && !location.starts_with("run:")
}

/// The training options a scenario reads: the ones it ignores are left at their defaults, so
/// its command lines (and fingerprints) do not change with them.
fn for_scenario(mut t: TrainOpts, sc: Scenario) -> TrainOpts {
    let d = TrainOpts::default();
    if sc == Scenario::Rm {
        t.sft_epochs = d.sft_epochs;
        t.tokenization = d.tokenization;
    } else {
        t.readout = d.readout;
    }
    t
}

/// Everything the expansion needs at hand.
struct Expander<'a> {
    p: &'a Pipeline,
    root: ArtifactsArg,
    steps: Vec<Step>,
    /// Where each model comes from: its location (a path, or `run:<id>` for a pretrained
    /// rung) and the step that pretrains it.
    location: HashMap<String, (String, Option<String>)>,
    /// Trained runs to score: (run, model id, producing step).
    scored: Vec<(String, String, String)>,
    /// The alignment dimension the grid trains and scores on.
    dim: Dimension,
}

impl Expander<'_> {
    /// The location of model `id`, and what a step that reads it then depends on: its
    /// pretraining step, or its local folder.
    fn model(&self, id: &str) -> (String, Option<String>, Option<String>) {
        let (loc, needs) = &self.location[id];
        let local = (needs.is_none() && is_local(loc)).then(|| loc.clone());
        (loc.clone(), needs.clone(), local)
    }

    /// A training step reading model `id`.
    fn train_step(
        &self,
        id: String,
        run: &str,
        model: &str,
        command: impl FnOnce(String) -> Command,
    ) -> Step {
        let (loc, needs, local) = self.model(model);
        let mut s = Step::new(id, Some(run.into()), command(loc));
        s.needs.extend(needs);
        s.local_inputs.extend(local);
        s.needs.push("split".into());
        s.outputs.push(keys::train(run));
        s
    }

    fn split(&mut self) {
        let data = self.p.data.as_ref().expect("validated");
        let source = data.source.expect("validated");
        let mut src = split::Source {
            world_opts: data.world.clone().unwrap_or_default(),
            ..Default::default()
        };
        match source {
            Source::World => src.world = true,
            Source::Sample => src.sample = true,
            Source::Files => {
                src.gt = data.gt.clone();
                src.w2s = data.w2s.clone();
                src.test = data.test.clone();
            }
            Source::Random => src.input = data.input.clone(),
        }
        let local: Vec<String> = [&src.gt, &src.w2s, &src.test, &src.input, &data.opts.helpful]
            .into_iter()
            .flatten()
            .filter(|l| is_local(l))
            .cloned()
            .collect();
        let mut s = Step::new(
            "split".into(),
            None,
            Command::Split(SplitArgs {
                root: self.root.clone(),
                source: src,
                opts: data.opts.clone(),
                force: false,
            }),
        );
        s.outputs.push(keys::SPLIT.into());
        s.local_inputs = local;
        self.steps.push(s);
    }

    fn pretrain(&mut self, id: &str) {
        let m = self.p.model(id);
        if let Some(opts) = &m.pretrain {
            let step_id = format!("pretrain:{id}");
            let mut s = Step::new(
                step_id.clone(),
                Some(id.into()),
                Command::Pretrain(PretrainArgs {
                    root: self.root.clone(),
                    model_id: id.into(),
                    opts: opts.clone(),
                    force: false,
                }),
            );
            s.needs.push("split".into());
            s.outputs.push(keys::train(id));
            self.steps.push(s);
            self.location
                .insert(id.into(), (format!("run:{id}"), Some(step_id)));
        } else {
            let path = m.path.clone().expect("validated");
            self.location.insert(id.into(), (path, None));
        }
    }

    fn ceiling(&mut self, sc: Scenario, id: &str, seed: u64) -> String {
        let run = dimmed(ceiling_id(sc, id, seed), self.dim);
        let opts = for_scenario(self.p.train_for(id), sc);
        let s = self.train_step(format!("gt-train:{run}"), &run, id, |model| {
            Command::GtTrain(GtTrainArgs {
                root: self.root.clone(),
                run: Run {
                    scenario: sc,
                    model,
                    run_id: Some(run.clone()),
                    seed,
                    dimension: self.dim,
                    opts,
                },
                dry_run: false,
                force: false,
            })
        });
        self.scored.push((run.clone(), id.into(), s.id.clone()));
        self.steps.push(s);
        run
    }

    /// Labels of trained run `run` (of model `model`) on `split` (a base name, `w2s` or `gt`:
    /// the grid's dimension names the split labelled).
    /// Whether a step of this id is planned.
    fn has_step(&self, id: &str) -> bool {
        self.steps.iter().any(|s| s.id == id)
    }

    fn label(&mut self, run: &str, model: &str, split: &str, producer: &str) {
        let t = self.p.train_for(model);
        let id = if split == LABEL_SPLIT {
            format!("weak-label:{run}")
        } else {
            format!("weak-label:{run}:{split}")
        };
        let mut s = Step::new(
            id,
            Some(run.into()),
            Command::WeakLabel(WeakLabelArgs {
                root: self.root.clone(),
                request: weak_label::Request {
                    run: run.into(),
                    model: None,
                    split: self.dim.split(split),
                    slot_seed: t.slot_seed,
                    max_ctx: t.max_ctx,
                    readout: readout_override(&t),
                    tokenization: None,
                    batch_pairs: weak_label::BATCH_PAIRS,
                    device: t.device.clone(),
                },
                force: false,
            }),
        );
        s.needs.push(producer.into());
        s.outputs.push(keys::labels(run, &self.dim.split(split)));
        self.steps.push(s);
    }

    /// A student `run` of model `strong` trained with order `seed`; returns its step id.
    fn student(
        &mut self,
        sc: Scenario,
        run: &str,
        strong: &str,
        seed: u64,
        mut student: Student,
    ) -> String {
        if student.objective != Objective::Explicit {
            student.alpha = ALPHA;
        }
        let labels = if student.label_split == LABEL_SPLIT {
            format!("weak-label:{}", student.teacher)
        } else {
            format!("weak-label:{}:{}", student.teacher, student.label_split)
        };
        let opts = for_scenario(self.p.train_for(strong), sc);
        let mut s = self.train_step(format!("w2s-train:{run}"), run, strong, |model| {
            Command::W2sTrain(W2sTrainArgs {
                root: self.root.clone(),
                run: Run {
                    scenario: sc,
                    model,
                    run_id: Some(run.into()),
                    seed,
                    dimension: self.dim,
                    opts,
                },
                student,
                dry_run: false,
                force: false,
            })
        });
        s.needs.push(labels);
        let producer = s.id.clone();
        self.scored
            .push((run.into(), strong.into(), producer.clone()));
        self.steps.push(s);
        producer
    }

    fn score(&mut self, run: &str, model: &str, producer: &str) {
        let t = self.p.train_for(model);
        let mut s = Step::new(
            format!("score:{run}"),
            Some(run.into()),
            Command::Score(ScoreArgs {
                root: self.root.clone(),
                request: score::Request {
                    model: None,
                    run_id: Some(run.into()),
                    readout: readout_override(&t),
                    tokenization: None,
                    split: self.dim.split(score::SPLIT),
                    max_ctx: t.max_ctx,
                    device: self.p.score.device.clone().unwrap_or(t.device.clone()),
                    opts: self.p.score.opts.clone(),
                },
                force: false,
            }),
        );
        s.needs.push(producer.into());
        s.outputs
            .push(keys::scores(run, &self.dim.split(score::SPLIT)));
        self.steps.push(s);
    }

    fn report(&mut self) {
        let a = &self.p.analysis;
        // Figures and tables follow the ladder, weakest first, unless the file says otherwise.
        let mut opts = a.opts.clone();
        if opts.model_order.is_empty() {
            opts.model_order = (self.p.model.iter())
                .filter_map(|m| self.location.get(&m.id).map(|(loc, _)| loc.clone()))
                .collect();
        }
        let mut s = Step::new(
            "report".into(),
            None,
            Command::Report(ReportArgs {
                analysis: crate::cli::AnalyzeArgs {
                    root: self.root.clone(),
                    opts,
                    force: false,
                },
                out: a.out.as_ref().map(std::path::PathBuf::from),
            }),
        );
        s.needs = (self.steps.iter())
            .filter(|x| x.stage == "score" || x.stage == "pretrain")
            .map(|x| x.id.clone())
            .collect();
        s.outputs = vec![keys::ANALYZE.into(), keys::REPORT.into()];
        self.steps.push(s);
    }
}

/// The readout a labelling or scoring step overrides: the training readout when the pipeline
/// sets one other than the default (a checkpoint records its own otherwise).
fn readout_override(t: &TrainOpts) -> Option<crate::scenarios::rm::Readout> {
    (t.readout != TrainOpts::default().readout).then_some(t.readout)
}

/// Expands a pipeline into its steps, in an order where every step comes after the steps it
/// needs, with levels and fingerprints.
pub fn expand(p: &Pipeline) -> Result<Vec<Step>> {
    let g = p.grid();
    let mut x = Expander {
        p,
        root: ArtifactsArg {
            artifacts: p.root().to_string(),
        },
        steps: Vec::new(),
        location: HashMap::new(),
        scored: Vec::new(),
        dim: p.dimension(),
    };
    x.split();

    // The models the grid uses, in ladder order.
    let pairs = p.pairs();
    let used: Vec<&str> = (p.model.iter())
        .map(|m| m.id.as_str())
        .filter(|id| {
            (pairs.iter())
                .any(|(w, s)| w == id || s == id || p.intermediates(w, s).iter().any(|m| m == id))
        })
        .collect();
    for &id in &used {
        x.pretrain(id);
    }

    // Each seed replicates whole cells: its own ceilings (teachers and strong ceilings), its
    // own labels, its own students and bootstrapping chains; analyses match roles by seed.
    for &sc in &g.scenarios {
        for &seed in &g.seeds {
            // Ceilings of every model the grid uses; teachers label the w2s split.
            for &id in &used {
                let run = x.ceiling(sc, id, seed);
                if pairs.iter().any(|(w, _)| w == id) {
                    x.label(&run, id, LABEL_SPLIT, &format!("gt-train:{run}"));
                }
            }
            // Students.
            for (w, strong) in &pairs {
                let teacher = dimmed(ceiling_id(sc, w, seed), x.dim);
                for &objective in &g.objectives {
                    let alphas = if objective == Objective::Explicit {
                        g.alphas.clone()
                    } else {
                        vec![ALPHA]
                    };
                    // All-data students, high-confidence ones beside them (§6.1: preference
                    // scenarios only, so a reward-modeling scenario of the same grid keeps its
                    // all-data students), each also with adaptive weighting when asked
                    // (App. P: reward modeling only).
                    let confident = g.high_confidence.filter(|_| sc != Scenario::Rm);
                    let all_data = g.all_data || confident.is_none();
                    let filters = [None, confident]
                        .into_iter()
                        .enumerate()
                        .filter(|(i, f)| if *i == 0 { all_data } else { f.is_some() })
                        .map(|(_, f)| f);
                    let weightings = [false, true]
                        .into_iter()
                        .filter(|&a| !a || (g.adaptive && sc == Scenario::Rm));
                    let variants: Vec<(Option<f64>, bool)> = filters
                        .flat_map(|f| weightings.clone().map(move |a| (f, a)))
                        .collect();
                    for (filter, adaptive) in variants {
                        for &alpha in &alphas {
                            let tags = (filter.is_some(), adaptive);
                            let run = student_id(sc, &[w, strong], objective, alpha, tags, seed);
                            let run = dimmed(run, x.dim);
                            // Already planned as another pair's first bootstrapping stage.
                            if x.has_step(&format!("w2s-train:{run}")) {
                                continue;
                            }
                            x.student(
                                sc,
                                &run,
                                strong,
                                seed,
                                Student {
                                    teacher: teacher.clone(),
                                    objective,
                                    alpha,
                                    label_split: LABEL_SPLIT.into(),
                                    high_confidence: filter,
                                    adaptive,
                                },
                            );
                        }
                    }
                }
                // Bootstrapping: weak -> intermediate (no conflict) -> strong (the conflicts),
                // the intermediate labelling the gt split (docs/reference.md §3.9).
                for mid in &p.intermediates(w, strong) {
                    let stage1 =
                        student_id(sc, &[w, mid], Objective::None, ALPHA, (false, false), seed);
                    let stage1 = dimmed(stage1, x.dim);
                    // The first stage may be a direct student of the grid already; it then
                    // still needs its labels of the gt split.
                    if !x.has_step(&format!("w2s-train:{stage1}")) {
                        x.student(
                            sc,
                            &stage1,
                            mid,
                            seed,
                            Student {
                                teacher: teacher.clone(),
                                objective: Objective::None,
                                alpha: ALPHA,
                                label_split: LABEL_SPLIT.into(),
                                high_confidence: None,
                                adaptive: false,
                            },
                        );
                    }
                    if !x.has_step(&format!("weak-label:{stage1}:gt")) {
                        x.label(&stage1, mid, "gt", &format!("w2s-train:{stage1}"));
                    }
                    for &objective in &g.objectives {
                        let alphas = if objective == Objective::Explicit {
                            g.alphas.clone()
                        } else {
                            vec![ALPHA]
                        };
                        for alpha in alphas {
                            let run = student_id(
                                sc,
                                &[w, mid, strong],
                                objective,
                                alpha,
                                (false, false),
                                seed,
                            );
                            let run = dimmed(run, x.dim);
                            x.student(
                                sc,
                                &run,
                                strong,
                                seed,
                                Student {
                                    teacher: stage1.clone(),
                                    objective,
                                    alpha,
                                    label_split: "gt".into(),
                                    high_confidence: None,
                                    adaptive: false,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    // Scores on the test split, then the analyses and the report.
    for (run, model, producer) in std::mem::take(&mut x.scored) {
        x.score(&run, &model, &producer);
    }
    x.report();
    finish(x.steps)
}

/// Checks the graph, sets levels and fingerprints (steps are already in dependency order).
fn finish(mut steps: Vec<Step>) -> Result<Vec<Step>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        if index.insert(s.id.clone(), i).is_some() {
            return Err(Error::Config(format!(
                "the pipeline gives two steps the id `{}` (a model listed twice in the grid?)",
                s.id
            )));
        }
    }
    for i in 0..steps.len() {
        let mut level = 0;
        let mut deps = Vec::new();
        for n in &steps[i].needs {
            let &j = index.get(n).expect("steps need earlier steps");
            assert!(j < i, "step {} needs a later step {n}", steps[i].id);
            level = level.max(steps[j].level + 1);
            deps.push(steps[j].fingerprint.clone());
        }
        let s = &steps[i];
        let doc = serde_json::json!({
            "code": CODE_VERSION,
            "stage": s.stage,
            "args": s.args,
            "local_inputs": super::record::local_stamps(&s.local_inputs),
            "needs": deps,
        });
        let fp = sha256_hex(doc.to_string().as_bytes());
        steps[i].level = level;
        steps[i].fingerprint = fp;
    }
    Ok(steps)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str) -> Pipeline {
        Pipeline::parse("p.toml", &text(extra), &[]).unwrap()
    }

    fn text(extra: &str) -> String {
        format!(
            r#"
artifacts = "a"
[data]
source = "files"
gt = "GT"
w2s = "https://example.org/w2s.jsonl"
test = "TEST"
[[model]]
id = "s"
path = "hf://x/s"
[[model]]
id = "m"
path = "hf://x/m"
[[model]]
id = "l"
path = "hf://x/l"
[grid]
weak = ["s", "m"]
strong = ["m", "l"]
{extra}
"#
        )
    }

    #[test]
    fn every_intermediate_bootstraps_every_pair_with_the_grid_alphas() {
        let steps = expand(&pipeline(
            "intermediates = [\"*\"]\nalphas = [0.5, 0.25]\nobjectives = [\"none\", \"explicit\"]",
        ))
        .unwrap();
        let boot: Vec<&str> = (steps.iter())
            .filter_map(|s| s.id.strip_prefix("w2s-train:boot-"))
            .collect();
        // Only (s, l) has a model between them: m.
        assert_eq!(
            boot,
            ["s-m-l-none", "s-m-l-explicit", "s-m-l-explicit-a0.25"],
            "{boot:?}"
        );
        assert!(steps.iter().any(|s| s.id == "weak-label:w2s-s-m-none:gt"));
    }

    #[test]
    fn names_levels_and_needs() {
        let steps = expand(&pipeline("seeds = [0, 3]\nalphas = [0.5, 0.25]")).unwrap();
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        for id in [
            "split",
            "gt-train:gt-s",
            "weak-label:gt-m",
            "w2s-train:w2s-s-l-explicit-a0.25-s3",
            "w2s-train:w2s-m-l-implicit",
            "score:w2s-s-m-none-s3",
            // Each seed has its own ceilings and labels.
            "gt-train:gt-l-s3",
            "weak-label:gt-s-s3",
            "score:gt-m-s3",
            "report",
        ] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
        // No labels from the strongest model: it teaches nobody.
        assert!(!ids.contains(&"weak-label:gt-l"));
        // 3 pairs x (none, explicit x 2, implicit) x 2 seeds.
        assert_eq!(steps.iter().filter(|s| s.stage == "w2s-train").count(), 24);
        let student = steps
            .iter()
            .find(|s| s.id == "w2s-train:w2s-s-l-none")
            .unwrap();
        assert_eq!(student.needs, vec!["split", "weak-label:gt-s"]);
        let seeded = (steps.iter())
            .find(|s| s.id == "w2s-train:w2s-s-l-none-s3")
            .unwrap();
        assert_eq!(seeded.needs, vec!["split", "weak-label:gt-s-s3"]);
        let ceiling = steps.iter().find(|s| s.id == "gt-train:gt-l-s3").unwrap();
        assert!(ceiling.argv(false).join(" ").contains("--seed 3"));
        assert_eq!(student.level, 3);
        assert_eq!(steps.last().unwrap().level, 5);
    }

    #[test]
    fn fingerprints_follow_arguments_and_what_is_needed() {
        let a = expand(&pipeline("")).unwrap();
        let b = expand(&pipeline("")).unwrap();
        let fp = |steps: &[Step], id: &str| {
            steps
                .iter()
                .find(|s| s.id == id)
                .unwrap()
                .fingerprint
                .clone()
        };
        assert_eq!(fp(&a, "report"), fp(&b, "report"));
        // A different seed list leaves the seed-0 runs alone.
        let c = expand(&pipeline("seeds = [0, 1]")).unwrap();
        assert_eq!(
            fp(&a, "w2s-train:w2s-s-m-none"),
            fp(&c, "w2s-train:w2s-s-m-none")
        );
        assert_ne!(fp(&a, "report"), fp(&c, "report"));
        // The local data file's stamp is part of the split's fingerprint (and so of all).
        let dir = tempfile::tempdir().unwrap();
        let gt = dir.path().join("gt.jsonl");
        std::fs::write(&gt, "x").unwrap();
        let mut p = pipeline("");
        p.data.as_mut().unwrap().gt = Some(gt.display().to_string());
        let before = expand(&p).unwrap();
        std::fs::write(&gt, "xy").unwrap();
        let after = expand(&p).unwrap();
        assert_ne!(fp(&before, "split"), fp(&after, "split"));
        assert_ne!(
            fp(&before, "w2s-train:w2s-m-l-none"),
            fp(&after, "w2s-train:w2s-m-l-none")
        );
    }

    #[test]
    fn tokenization_reaches_preference_training_only() {
        let steps = expand(&pipeline(
            "scenarios = [\"rm\", \"simpo\"]\n[train]\ntokenization = \"reference\"",
        ))
        .unwrap();
        let args = |id: &str| steps.iter().find(|s| s.id == id).unwrap().args.join(" ");
        assert!(args("gt-train:gt-s-simpo").contains("--tokenization reference"));
        assert!(args("w2s-train:w2s-s-m-explicit-simpo").contains("--tokenization reference"));
        assert!(!args("gt-train:gt-s").contains("--tokenization"));
        assert!(!args("w2s-train:w2s-s-m-explicit").contains("--tokenization"));
        // Scoring and labelling follow the checkpoint's own record (w2s.json).
        assert!(!args("score:gt-s-simpo").contains("--tokenization"));
        let bad = Pipeline::parse("p.toml", &text("[train]\ntokenization = \"bpe\""), &[]);
        let e = bad.err().unwrap().to_string();
        assert!(e.contains("train.tokenization"), "{e}");
    }
}
