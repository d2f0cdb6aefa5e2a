//! A pipeline expanded into steps: one `w2s` stage invocation each, with the steps it needs,
//! the manifests it publishes and a fingerprint.
//!
//! A step's fingerprint covers its command line, the code version, the size and modification
//! time of the local files it reads (make-style; remote inputs by URL) and the fingerprints of
//! the steps it needs. A finished step leaves a record (`runner/steps/<id>.json`) with that
//! fingerprint and a digest of what it published; the step is up to date while the record
//! matches, its manifests still carry that digest with every file present, and the steps it
//! needs still publish what it read. The stages check their own fingerprints too (over
//! settings and input checksums), so a step run again whose result would not change finishes
//! at once.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::spec::{Pipeline, Train};
use crate::error::{Error, Result};
use crate::store::{sha256_hex, ArtifactStore, Manifest, CODE_VERSION};

/// One stage invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `split`, `pretrain:<model>`, `gt-train:<run>`, `weak-label:<run>`, `w2s-train:<run>`,
    /// `score:<run>`, `report`.
    pub id: String,
    pub stage: String,
    /// The run (or pretrained model) the step trains, labels with or scores.
    pub run: Option<String>,
    /// Arguments after `w2s`, without `--artifacts` and `--force`.
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
    fn new(id: String, stage: &str, run: Option<String>, args: Vec<String>) -> Step {
        Step {
            id,
            stage: stage.into(),
            run,
            args,
            needs: Vec::new(),
            outputs: Vec::new(),
            local_inputs: Vec::new(),
            level: 0,
            fingerprint: String::new(),
        }
    }

    /// The full command line for the artifact root `root`.
    pub fn command(&self, root: &str, force: bool) -> Vec<String> {
        let mut argv = vec![self.stage.clone()];
        argv.extend(self.args.iter().cloned());
        argv.extend(["--artifacts".to_string(), root.to_string()]);
        if force {
            argv.push("--force".into());
        }
        argv
    }
}

/// Run id of a model's ceiling (trained on the gt split).
pub fn ceiling_id(scenario: &str, model: &str) -> String {
    if scenario == "rm" {
        format!("gt-{model}")
    } else {
        format!("gt-{model}-{scenario}")
    }
}

/// Run id of a weak-to-strong student: `w2s-<weak>-<strong>-<objective>` (`boot-<weak>-
/// <intermediate>-<strong>-<objective>` for bootstrapping). Alpha and seed appear when they
/// differ from the defaults, so adding a seed to a grid keeps the names (and results) of the
/// existing runs.
pub fn student_id(
    scenario: &str,
    chain: &[&str],
    objective: &str,
    alpha: f64,
    seed: u64,
) -> String {
    let kind = if chain.len() > 2 { "boot" } else { "w2s" };
    let mut id = format!("{kind}-{}-{objective}", chain.join("-"));
    if objective == "explicit" && alpha != 0.5 {
        id.push_str(&format!("-a{alpha}"));
    }
    if seed != 0 {
        id.push_str(&format!("-s{seed}"));
    }
    if scenario != "rm" {
        id.push_str(&format!("-{scenario}"));
    }
    id
}

fn push_opt<T: ToString>(args: &mut Vec<String>, flag: &str, v: &Option<T>) {
    if let Some(v) = v {
        args.push(flag.into());
        args.push(v.to_string());
    }
}

fn train_args(t: &Train, scenario: &str) -> Vec<String> {
    let mut a = Vec::new();
    push_opt(&mut a, "--batch", &t.batch);
    push_opt(&mut a, "--micro-batch", &t.micro_batch);
    push_opt(&mut a, "--lr", &t.lr);
    push_opt(&mut a, "--schedule", &t.schedule);
    push_opt(&mut a, "--epochs", &t.epochs);
    if scenario != "rm" {
        push_opt(&mut a, "--sft-epochs", &t.sft_epochs);
        push_opt(&mut a, "--tokenization", &t.tokenization);
    }
    push_opt(&mut a, "--max-ctx", &t.max_ctx);
    if scenario == "rm" {
        push_opt(&mut a, "--readout", &t.readout);
    }
    push_opt(&mut a, "--slot-seed", &t.slot_seed);
    push_opt(&mut a, "--head-seed", &t.head_seed);
    push_opt(&mut a, "--save-every", &t.save_every);
    push_opt(&mut a, "--device", &t.device);
    if let Some(l) = &t.lora {
        a.extend([
            "--lora-rank".into(),
            l.rank.to_string(),
            "--lora-alpha".into(),
            l.alpha.to_string(),
        ]);
    }
    a
}

/// Whether a location is a local path (not a URL).
fn is_local(location: &str) -> bool {
    !location.contains("://") && !location.starts_with("run:")
}

/// Expands a pipeline into its steps, in an order where every step comes after the steps it
/// needs, with levels and fingerprints.
pub fn expand(p: &Pipeline) -> Result<Vec<Step>> {
    let g = p.grid();
    let mut steps: Vec<Step> = Vec::new();
    let data = p.data.as_ref().expect("validated");

    // split
    let mut a = Vec::new();
    let source = data.source.as_deref().unwrap_or_default();
    let mut split_inputs = Vec::new();
    match source {
        "world" => {
            a.push("--world".into());
            let w = data.world.clone().unwrap_or_default();
            push_opt(&mut a, "--world-seed", &w.seed);
            push_opt(&mut a, "--world-entities", &w.entities);
            push_opt(&mut a, "--world-zipf", &w.zipf);
            push_opt(&mut a, "--world-statements", &w.statements);
        }
        "sample" => a.push("--sample".into()),
        "files" => {
            push_opt(&mut a, "--gt", &data.gt);
            push_opt(&mut a, "--w2s", &data.w2s);
            push_opt(&mut a, "--test", &data.test);
            split_inputs.extend(
                [&data.gt, &data.w2s, &data.test]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        _ => {
            push_opt(&mut a, "--input", &data.input);
            split_inputs.extend(data.input.iter().cloned());
        }
    }
    push_opt(&mut a, "--helpful", &data.helpful);
    split_inputs.extend(data.helpful.iter().cloned());
    push_opt(&mut a, "--seed", &data.seed);
    push_opt(&mut a, "--n-gt", &data.n_gt);
    push_opt(&mut a, "--n-w2s", &data.n_w2s);
    push_opt(&mut a, "--n-test", &data.n_test);
    push_opt(&mut a, "--n-helpful", &data.n_helpful);
    push_opt(&mut a, "--shape", &data.shape);
    push_opt(&mut a, "--prompt-mismatch", &data.prompt_mismatch);
    push_opt(&mut a, "--template", &data.template);
    let mut split = Step::new("split".into(), "split", None, a);
    split.outputs.push("split".into());
    split.local_inputs = split_inputs.into_iter().filter(|l| is_local(l)).collect();
    steps.push(split);

    // The models the grid uses, in ladder order.
    let pairs = p.pairs();
    let mut used: Vec<&str> = Vec::new();
    for m in &p.model {
        let id = m.id.as_str();
        if pairs.iter().any(|(w, s)| w == id || s == id) || g.intermediates.iter().any(|x| x == id)
        {
            used.push(id);
        }
    }

    // pretrain
    let mut location: Locations = HashMap::new();
    for &id in &used {
        let m = p.model(id);
        if let Some(pt) = &m.pretrain {
            let mut a = vec!["--model-id".to_string(), id.to_string()];
            push_opt(&mut a, "--layers", &pt.layers);
            push_opt(&mut a, "--embd", &pt.embd);
            push_opt(&mut a, "--heads", &pt.heads);
            push_opt(&mut a, "--ctx", &pt.ctx);
            push_opt(&mut a, "--batch", &pt.batch);
            push_opt(&mut a, "--micro-batch", &pt.micro_batch);
            push_opt(&mut a, "--lr", &pt.lr);
            push_opt(&mut a, "--schedule", &pt.schedule);
            push_opt(&mut a, "--epochs", &pt.epochs);
            push_opt(&mut a, "--seed", &pt.seed);
            push_opt(&mut a, "--init-seed", &pt.init_seed);
            let step_id = format!("pretrain:{id}");
            let mut s = Step::new(step_id.clone(), "pretrain", Some(id.into()), a);
            s.needs.push("split".into());
            s.outputs.push(format!("train/{id}"));
            steps.push(s);
            location.insert(id, (format!("run:{id}"), Some(step_id)));
        } else {
            let path = m.path.clone().expect("validated");
            location.insert(id, (path, None));
        }
    }
    let eval = |t: &Train| -> Vec<String> {
        let mut a = Vec::new();
        push_opt(&mut a, "--max-ctx", &t.max_ctx);
        push_opt(&mut a, "--readout", &t.readout);
        push_opt(&mut a, "--device", &t.device);
        a
    };
    let score_args = |run: &str, t: &Train| -> Vec<String> {
        let mut a = vec!["--run-id".to_string(), run.to_string()];
        a.extend(eval(t));
        push_opt(&mut a, "--batch-pairs", &p.score.batch_pairs);
        a
    };
    let mut scored: Vec<String> = Vec::new();

    for scenario in &g.scenarios {
        let sc = scenario.as_str();
        // Ceilings of every model the grid uses; teachers label the w2s split.
        let teachers: Vec<&str> = used
            .iter()
            .copied()
            .filter(|id| pairs.iter().any(|(w, _)| w == id))
            .collect();
        for &id in &used {
            let t = p.train.merged(&p.model(id).train);
            let run = ceiling_id(sc, id);
            let mut s = Step::new(
                format!("gt-train:{run}"),
                "gt-train",
                Some(run.clone()),
                vec![],
            );
            let loc = model_step(id, &mut s, &location);
            s.args = vec![
                "--scenario".into(),
                sc.into(),
                "--model".into(),
                loc,
                "--run-id".into(),
                run.clone(),
            ];
            s.args.extend(train_args(&t, sc));
            s.needs.push("split".into());
            s.outputs.push(format!("train/{run}"));
            steps.push(s);
            scored.push(run.clone());
            if teachers.contains(&id) {
                steps.push(label_step(&run, "w2s", &t, &eval));
            }
        }
        // Students.
        for (w, strong) in &pairs {
            let t = p.train.merged(&p.model(strong).train);
            let teacher = ceiling_id(sc, w);
            for objective in &g.objectives {
                let alphas: Vec<f64> = if objective == "explicit" {
                    g.alphas.clone()
                } else {
                    vec![0.5]
                };
                for &alpha in &alphas {
                    for &seed in &g.seeds {
                        let run = student_id(sc, &[w, strong], objective, alpha, seed);
                        let mut s = student_step(
                            sc, &run, strong, &teacher, "w2s", objective, alpha, seed, &t,
                            &location,
                        );
                        if let Some(h) = g.high_confidence {
                            s.args.extend(["--high-confidence".into(), h.to_string()]);
                        }
                        steps.push(s);
                        scored.push(run);
                    }
                }
            }
            // Bootstrapping: weak -> intermediate (no conflict) -> strong (the conflicts),
            // the intermediate labelling the gt split (reference-spec §3.9).
            for mid in &g.intermediates {
                let tm = p.train.merged(&p.model(mid).train);
                let stage1 = student_id(sc, &[w, mid], "none", 0.5, 0);
                if !steps
                    .iter()
                    .any(|s| s.run.as_deref() == Some(stage1.as_str()))
                {
                    steps.push(student_step(
                        sc, &stage1, mid, &teacher, "w2s", "none", 0.5, 0, &tm, &location,
                    ));
                    scored.push(stage1.clone());
                    steps.push(label_step(&stage1, "gt", &tm, &eval));
                }
                for objective in &g.objectives {
                    for &seed in &g.seeds {
                        let run = student_id(sc, &[w, mid, strong], objective, 0.5, seed);
                        steps.push(student_step(
                            sc, &run, strong, &stage1, "gt", objective, 0.5, seed, &t, &location,
                        ));
                        scored.push(run);
                    }
                }
            }
        }
    }

    // Scores on the test split.
    for run in &scored {
        let producer = steps
            .iter()
            .find(|s| s.run.as_deref() == Some(run.as_str()) && s.stage.ends_with("-train"))
            .expect("every scored run is trained by a step");
        let model =
            producer.args[producer.args.iter().position(|a| a == "--model").unwrap() + 1].clone();
        let t = steps_train_for(p, &model);
        let mut s = Step::new(
            format!("score:{run}"),
            "score",
            Some(run.clone()),
            score_args(run, &t),
        );
        s.needs.push(producer.id.clone());
        s.outputs.push(format!("score/{run}/test"));
        steps.push(s);
    }

    // The analyses and the report.
    let mut a = Vec::new();
    let an = &p.analysis;
    push_opt(&mut a, "--threshold", &an.threshold);
    if let Some(sw) = &an.sweep {
        a.push("--sweep".into());
        a.extend(sw.iter().map(|x| x.to_string()));
    }
    push_opt(&mut a, "--bootstrap", &an.bootstrap);
    push_opt(&mut a, "--bootstrap-seed", &an.bootstrap_seed);
    push_opt(&mut a, "--out", &an.out);
    let mut report = Step::new("report".into(), "report", None, a);
    report.needs = steps
        .iter()
        .filter(|s| s.stage == "score" || s.stage == "pretrain")
        .map(|s| s.id.clone())
        .collect();
    report.outputs = vec!["analyze".into(), "report".into()];
    steps.push(report);

    finish(steps)
}

/// Where each model of the ladder comes from: its location (a path, or `run:<id>` for a
/// pretrained rung) and the step that pretrains it.
type Locations<'a> = HashMap<&'a str, (String, Option<String>)>;

/// The location of model `id` for `step`, which then needs its pretraining step or reads its
/// local folder.
fn model_step(id: &str, step: &mut Step, location: &Locations) -> String {
    let (loc, needs) = &location[id];
    if let Some(n) = needs {
        step.needs.push(n.clone());
    } else if is_local(loc) {
        step.local_inputs.push(loc.clone());
    }
    loc.clone()
}

/// The training settings that apply to the model at `location` (for its scoring step).
fn steps_train_for(p: &Pipeline, location: &str) -> Train {
    let id = location.strip_prefix("run:").unwrap_or(location);
    match p
        .model
        .iter()
        .find(|m| m.id == id || m.path.as_deref() == Some(location))
    {
        Some(m) => p.train.merged(&m.train),
        None => p.train.clone(),
    }
}

fn label_step(run: &str, split: &str, t: &Train, eval: &dyn Fn(&Train) -> Vec<String>) -> Step {
    let mut a = vec![
        "--run".to_string(),
        run.to_string(),
        "--split".into(),
        split.into(),
    ];
    a.extend(eval(t));
    push_opt(&mut a, "--slot-seed", &t.slot_seed);
    let id = if split == "w2s" {
        format!("weak-label:{run}")
    } else {
        format!("weak-label:{run}:{split}")
    };
    let mut s = Step::new(id, "weak-label", Some(run.into()), a);
    s.needs.push(format!(
        "{}-train:{run}",
        if run.starts_with("gt-") { "gt" } else { "w2s" }
    ));
    s.outputs.push(format!("weak-label/{run}/{split}"));
    s
}

#[allow(clippy::too_many_arguments)]
fn student_step(
    sc: &str,
    run: &str,
    strong: &str,
    teacher: &str,
    label_split: &str,
    objective: &str,
    alpha: f64,
    seed: u64,
    t: &Train,
    location: &Locations,
) -> Step {
    let mut s = Step::new(
        format!("w2s-train:{run}"),
        "w2s-train",
        Some(run.into()),
        vec![],
    );
    let loc = model_step(strong, &mut s, location);
    s.args = vec![
        "--scenario".into(),
        sc.into(),
        "--model".into(),
        loc,
        "--run-id".into(),
        run.into(),
        "--teacher".into(),
        teacher.into(),
        "--objective".into(),
        objective.into(),
    ];
    if objective == "explicit" {
        s.args.extend(["--alpha".into(), alpha.to_string()]);
    }
    if label_split != "w2s" {
        s.args.extend(["--label-split".into(), label_split.into()]);
    }
    s.args.extend(["--seed".into(), seed.to_string()]);
    s.args.extend(train_args(t, sc));
    s.needs.push("split".into());
    s.needs.push(if label_split == "w2s" {
        format!("weak-label:{teacher}")
    } else {
        format!("weak-label:{teacher}:{label_split}")
    });
    s.outputs.push(format!("train/{run}"));
    s
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
            "local_inputs": s.local_inputs.iter().map(|p| local_stamp(p)).collect::<Vec<_>>(),
            "needs": deps,
        });
        let fp = sha256_hex(doc.to_string().as_bytes());
        steps[i].level = level;
        steps[i].fingerprint = fp;
    }
    Ok(steps)
}

/// Size and modification time of every file under a local path (make-style staleness).
fn local_stamp(path: &str) -> serde_json::Value {
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(path)];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            files.push(serde_json::json!([p.display().to_string(), "missing"]));
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                entries.sort();
                stack.extend(entries.into_iter().rev());
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string())
                .unwrap_or_default();
            files.push(serde_json::json!([
                p.display().to_string(),
                meta.len(),
                mtime
            ]));
        }
    }
    serde_json::Value::Array(files)
}

/// What a finished step leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    pub fingerprint: String,
    /// Digest of each published manifest's files (path and sha256).
    pub outputs: BTreeMap<String, String>,
    /// Identity of each needed step's outputs (its manifests' fingerprints) as this step read
    /// them.
    pub read: BTreeMap<String, String>,
    pub seconds: f64,
    pub finished_unix: u64,
}

/// Where a step's record lives.
pub fn record_path(id: &str) -> String {
    let safe = crate::stages::common::sanitize(id);
    format!(
        "runner/steps/{safe}-{}.json",
        &sha256_hex(id.as_bytes())[..8]
    )
}

/// Digest of what a manifest published.
pub fn outputs_digest(m: &Manifest) -> String {
    let mut text = String::new();
    for f in &m.outputs {
        text.push_str(&f.path);
        text.push(' ');
        text.push_str(&f.sha256);
        text.push('\n');
    }
    sha256_hex(text.as_bytes())
}

/// Reads manifests and folder listings once per check pass.
#[derive(Default)]
pub struct Cache {
    manifests: HashMap<String, Option<Manifest>>,
    listings: HashMap<String, Vec<String>>,
}

impl Cache {
    /// Forgets what `step` may have changed: its manifests and every listing (a step adds
    /// parts to shared table folders such as `tables/runs`).
    pub fn forget(&mut self, step: &Step) {
        for k in &step.outputs {
            self.manifests.remove(k);
        }
        self.listings.clear();
    }

    async fn manifest(&mut self, store: &ArtifactStore, key: &str) -> Result<Option<Manifest>> {
        if let Some(m) = self.manifests.get(key) {
            return Ok(m.clone());
        }
        let m = store.manifest(key).await?;
        self.manifests.insert(key.into(), m.clone());
        Ok(m)
    }

    async fn present(&mut self, store: &ArtifactStore, path: &str) -> Result<bool> {
        let dir = parent(path);
        if !self.listings.contains_key(dir) {
            let l = store.list(dir).await?;
            self.listings.insert(dir.into(), l);
        }
        Ok(self.listings[dir].iter().any(|p| p == path))
    }

    /// Digests of a step's published manifests whose files are all present, by key.
    pub async fn published(
        &mut self,
        store: &ArtifactStore,
        step: &Step,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let mut out = BTreeMap::new();
        for key in &step.outputs {
            let Some(m) = self.manifest(store, key).await? else {
                return Ok(None);
            };
            for f in &m.outputs {
                if !self.present(store, &f.path).await? {
                    return Ok(None);
                }
            }
            out.insert(key.clone(), outputs_digest(&m));
        }
        Ok(Some(out))
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Cache {
    /// What a step that needs `step` reads from it: the fingerprints of its manifests (their
    /// settings and input checksums), if its outputs are intact. A rerun that publishes the
    /// same result under the same fingerprint (timing columns aside) leaves it unchanged.
    pub async fn identity(&mut self, store: &ArtifactStore, step: &Step) -> Result<Option<String>> {
        if self.published(store, step).await?.is_none() {
            return Ok(None);
        }
        let mut fps = BTreeMap::new();
        for key in &step.outputs {
            if let Some(m) = self.manifest(store, key).await? {
                fps.insert(key.clone(), m.fingerprint);
            }
        }
        Ok(Some(sha256_hex(
            serde_json::to_string(&fps).expect("map").as_bytes(),
        )))
    }
}

/// `step`'s record if it matches the planned fingerprint and the step's outputs are intact
/// (its manifests publish what the record says, every file present).
pub async fn own_record(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
) -> Result<Option<Record>> {
    let Some(bytes) = store.get_opt(&record_path(&step.id)).await? else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
        return Ok(None);
    };
    if rec.fingerprint != step.fingerprint {
        return Ok(None);
    }
    match cache.published(store, step).await? {
        Some(now) if now == rec.outputs => Ok(Some(rec)),
        _ => Ok(None),
    }
}

/// Whether the steps `step` needs still publish what it read when it ran.
pub async fn inputs_unchanged(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
    rec: &Record,
    by_id: &HashMap<String, &Step>,
) -> Result<bool> {
    for n in &step.needs {
        let Some(now) = cache.identity(store, by_id[n]).await? else {
            return Ok(false);
        };
        if rec.read.get(n) != Some(&now) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `step` is up to date: its record matches, its outputs are intact, and the steps it
/// needs still publish what it read.
pub async fn up_to_date(
    store: &ArtifactStore,
    cache: &mut Cache,
    step: &Step,
    by_id: &HashMap<String, &Step>,
) -> Result<bool> {
    match own_record(store, cache, step).await? {
        Some(rec) => inputs_unchanged(store, cache, step, &rec, by_id).await,
        None => Ok(false),
    }
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
