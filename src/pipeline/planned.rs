//! A pipeline file planned against its artifact root: its steps, the ones `--target`
//! selects and the status of each with its reason; what `w2s plan` prints and `w2s run`
//! executes.

use std::collections::HashSet;

use super::exec::{self, RunOptions, RunSummary, Status, StepStatus};
use super::{plan, slurm, Pipeline, RootLock, Step};
use crate::error::{Error, Result};
use crate::store::{keys, ArtifactStore, CODE_VERSION};

pub struct Planned {
    /// The pipeline file and its `--set` overrides, as given.
    pub file: String,
    pub sets: Vec<String>,
    pub pipeline: Pipeline,
    pub store: ArtifactStore,
    pub steps: Vec<Step>,
    pub selected: HashSet<String>,
    /// One per step, in plan order.
    pub status: Vec<StepStatus>,
    /// The memory plan of each training step whose model can be read now (a local folder, or
    /// a run of this root that exists), in plan order.
    pub memory: Vec<Option<crate::train::memory::Estimate>>,
}

impl Planned {
    /// Loads and plans `file`; every local file or folder the selected steps read must exist
    /// now, not fail hours into a grid.
    pub async fn load(
        file: &str,
        sets: &[String],
        target: Option<&str>,
        force: bool,
    ) -> Result<Planned> {
        let pipeline = Pipeline::load(file, sets)?;
        let steps = plan::expand(&pipeline)?;
        let selected = exec::select(&steps, target)?;
        for st in steps.iter().filter(|st| selected.contains(&st.id)) {
            if let Some(missing) =
                (st.local_inputs.iter()).find(|p| !std::path::Path::new(p).exists())
            {
                return Err(Error::NoInput(format!(
                    "{file}: `{missing}` (read by step `{}`) does not exist",
                    st.id
                )));
            }
        }
        let store = ArtifactStore::open(pipeline.root())?;
        let status = exec::statuses(&store, &steps, &selected, force).await?;
        let mut memory = Vec::with_capacity(steps.len());
        for st in &steps {
            memory.push(memory_plan(&store, st).await);
        }
        Ok(Planned {
            file: file.into(),
            sets: sets.to_vec(),
            pipeline,
            store,
            steps,
            selected,
            status,
            memory,
        })
    }

    /// Takes the lock of the file's artifact root (before planning, so that the plan's
    /// status cannot change under a run).
    pub async fn lock(file: &str, sets: &[String]) -> Result<RootLock> {
        let pipeline = Pipeline::load(file, sets)?;
        RootLock::acquire(&ArtifactStore::open(pipeline.root())?).await
    }

    pub fn name(&self) -> &str {
        self.pipeline.name.as_deref().unwrap_or("pipeline")
    }

    /// The plan as a table: a summary line, then each selected step with its level, status,
    /// reason and command.
    pub fn table(&self) -> String {
        let count = |st: Status| self.status.iter().filter(|s| s.status == st).count();
        let mut out = format!(
            "{}: {} steps into {} ({} up to date, {} to run, {} to check after their inputs{})\n",
            self.name(),
            self.selected.len(),
            self.store.root(),
            count(Status::UpToDate),
            count(Status::Run),
            count(Status::Recheck),
            match count(Status::NotSelected) {
                0 => String::new(),
                n => format!(", {n} not selected"),
            }
        );
        let width = self.steps.iter().map(|s| s.id.len()).max().unwrap_or(4);
        for (i, (s, st)) in self.steps.iter().zip(&self.status).enumerate() {
            if st.status == Status::NotSelected {
                continue;
            }
            out.push_str(&format!(
                "{:>2}  {:<width$}  {:<22}  w2s {}\n",
                s.level,
                s.id,
                st.status.label(),
                exec::shell_words(&s.argv(false))
            ));
            if let Some(why) = &st.reason {
                out.push_str(&format!("{:>2}  {:<width$}    why: {why}\n", "", ""));
            }
            if let (Some(m), Status::Run | Status::Recheck) = (&self.memory[i], st.status) {
                out.push_str(&format!(
                    "{:>2}  {:<width$}    memory: {}\n",
                    "",
                    "",
                    memory_line(m)
                ));
            }
        }
        out
    }

    /// The plan as JSON (for external schedulers).
    pub fn json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = (self.steps.iter().zip(&self.status))
            .zip(&self.memory)
            .filter(|((_, st), _)| st.status != Status::NotSelected)
            .map(|((s, st), m)| {
                serde_json::json!({
                    "memory": m.map(|m| serde_json::json!({
                        "peak_bytes": m.total(),
                        "device_bytes": m.device(),
                        "parts": m,
                    })),
                    "id": s.id,
                    "stage": s.stage,
                    "run": s.run,
                    "level": s.level,
                    "needs": s.needs,
                    "outputs": s.outputs,
                    "fingerprint": s.fingerprint,
                    "status": st.status,
                    "reason": st.reason,
                    "command": std::iter::once("w2s".to_string())
                        .chain(s.argv(false))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "pipeline": self.file,
            "name": self.pipeline.name,
            "artifacts": self.store.root(),
            "code_version": CODE_VERSION,
            "levels": self.steps.iter().map(|s| s.level + 1).max().unwrap_or(0),
            "steps": steps,
        })
    }

    /// The steps to run as a Slurm submission script.
    pub fn slurm(&self) -> Result<String> {
        let pending: Vec<&Step> = (self.steps.iter().zip(&self.status))
            .filter(|(_, st)| matches!(st.status, Status::Run | Status::Recheck))
            .map(|(s, _)| s)
            .collect();
        Ok(slurm::script(
            self.name(),
            &self.record_command()?,
            self.store.root(),
            &pending,
        ))
    }

    /// `plan <absolute file> [--set ...] --record` (completed with the step id by the Slurm
    /// script).
    fn record_command(&self) -> Result<Vec<String>> {
        let file = std::path::absolute(&self.file)
            .map_err(|source| Error::Io {
                path: self.file.clone(),
                source,
            })?
            .display()
            .to_string();
        let mut argv = vec!["plan".to_string(), file];
        for kv in &self.sets {
            argv.extend(["--set".to_string(), kv.clone()]);
        }
        argv.push("--record".into());
        Ok(argv)
    }

    /// Records step `id` as finished (after another scheduler ran it).
    pub async fn record(&self, id: &str) -> Result<()> {
        exec::record_finished(&self.store, &self.steps, id).await
    }

    /// Runs the selected steps, `jobs` at a time, as child processes of `exe`.
    pub async fn execute(
        &self,
        exe: std::path::PathBuf,
        jobs: usize,
        force: bool,
    ) -> Result<RunSummary> {
        let opts = RunOptions {
            jobs: jobs.max(1),
            force,
            exe,
            log_dir: std::env::temp_dir().join(format!("w2s-run-{}", std::process::id())),
        };
        exec::execute(&self.store, &self.steps, &self.selected, &opts).await
    }

    /// Where the report is, when the plan makes one and it is published.
    pub async fn report_page(&self) -> Result<Option<url::Url>> {
        if !self
            .steps
            .iter()
            .any(|s| s.stage == "report" && self.selected.contains(&s.id))
        {
            return Ok(None);
        }
        let Some(m) = self.store.manifest(keys::REPORT).await? else {
            return Ok(None);
        };
        Ok(m.outputs
            .iter()
            .find(|f| f.path.ends_with("index.html"))
            .map(|page| self.store.url_of(&page.path)))
    }
}

/// A training step's memory plan, when its model is readable without fetching anything.
async fn memory_plan(store: &ArtifactStore, step: &Step) -> Option<crate::train::memory::Estimate> {
    use crate::cli::Command;
    let (run, student) = match &step.command {
        Command::GtTrain(a) => (&a.run, None),
        Command::W2sTrain(a) => (&a.run, Some(&a.student)),
        _ => return None,
    };
    let local = run.model.starts_with("run:")
        || run.model.starts_with("file://")
        || !run.model.contains("://");
    if !local {
        return None;
    }
    crate::stages::training::memory_plan(store, run, student)
        .await
        .ok()
}

/// `peak ~1234 MiB (weights 500 MiB, optimizer 400 MiB, ...)`.
fn memory_line(m: &crate::train::memory::Estimate) -> String {
    use crate::train::memory::mib;
    let parts: Vec<String> = [
        ("weights", m.weights),
        ("reference", m.reference),
        ("gradients", m.gradients),
        ("optimizer", m.optimizer),
        ("activations", m.activations),
        ("logits", m.logits),
    ]
    .iter()
    .filter(|(_, v)| *v > 0)
    .map(|(k, v)| format!("{k} {}", mib(*v)))
    .collect();
    format!("peak ~{} ({})", mib(m.total()), parts.join(", "))
}
