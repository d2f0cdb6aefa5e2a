//! Running a plan: the lock on the artifact root, the scheduler that runs independent steps up
//! to `-j` at a time as child `w2s` processes, and the records that make a rerun skip them.
//!
//! Each step runs as its own process, so a crash in one stage cannot leave another's state in
//! memory half-written, and killing `w2s run` kills its children too (Linux: parent-death
//! signal), after which a rerun resumes: finished steps are skipped by their records, an
//! interrupted training step resumes from its last saved optimizer step.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::plan::Step;
use super::record::{self, Cache, Check, Record};
use crate::error::{Error, Result};
use crate::store::{now_unix, ArtifactStore};

/// What the plan says about one step before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Its record matches and its outputs are intact: skipped.
    UpToDate,
    /// It runs.
    Run,
    /// Its own record matches, but a step it needs runs first: it is checked again after.
    Recheck,
    /// Not selected by `--target`.
    NotSelected,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::UpToDate => "up to date",
            Status::Run => "run",
            Status::Recheck => "check after its inputs",
            Status::NotSelected => "not selected",
        }
    }
}

/// The steps `target` selects (a step id, a stage name or a run id) and everything they need.
pub fn select(steps: &[Step], target: Option<&str>) -> Result<HashSet<String>> {
    let Some(target) = target else {
        return Ok(steps.iter().map(|s| s.id.clone()).collect());
    };
    let mut want: Vec<String> = steps
        .iter()
        .filter(|s| s.id == target || s.stage == target || s.run.as_deref() == Some(target))
        .map(|s| s.id.clone())
        .collect();
    if want.is_empty() {
        let mut stages: Vec<&str> = steps.iter().map(|s| s.stage.as_str()).collect();
        stages.dedup();
        return Err(Error::Config(format!(
            "--target {target}: no step, stage or run of that name (stages: {}; `w2s run --dry-run` lists the steps)",
            stages.join(", ")
        )));
    }
    let by_id: HashMap<&str, &Step> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut out = HashSet::new();
    while let Some(id) = want.pop() {
        if out.insert(id.clone()) {
            want.extend(by_id[id.as_str()].needs.iter().cloned());
        }
    }
    Ok(out)
}

/// A step's status with the reason for it (why it runs, or what it waits for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    pub status: Status,
    /// Why it runs or is checked again: the step's own cause, or for a step whose input
    /// changes, that input and the cause at the root of the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Status of every step, in plan order.
pub async fn statuses(
    store: &ArtifactStore,
    steps: &[Step],
    selected: &HashSet<String>,
    force: bool,
) -> Result<Vec<StepStatus>> {
    let by_id: HashMap<String, &Step> = steps.iter().map(|s| (s.id.clone(), s)).collect();
    let mut cache = Cache::default();
    let mut out: Vec<StepStatus> = Vec::with_capacity(steps.len());
    // The cause at the root of each step's rerun, for the steps after it.
    let mut root: HashMap<&str, String> = HashMap::new();
    let mut status_of: HashMap<&str, Status> = HashMap::new();
    for s in steps {
        let waits = s.needs.iter().find(|n| {
            matches!(
                status_of.get(n.as_str()),
                Some(Status::Run | Status::Recheck)
            )
        });
        let after = |n: &String, root: &HashMap<&str, String>| {
            let cause = root.get(n.as_str()).cloned().unwrap_or_default();
            (format!("`{n}` runs first ({cause})"), cause)
        };
        let (status, reason, cause) = if !selected.contains(&s.id) {
            (Status::NotSelected, None, None)
        } else if force {
            let r = "--force".to_string();
            (Status::Run, Some(r.clone()), Some(r))
        } else {
            match record::check(store, &mut cache, s, &by_id).await? {
                Check::Stale(why) => (Status::Run, Some(why.clone()), Some(why)),
                Check::InputChanged(n) => {
                    let cause = root.get(n.as_str()).cloned();
                    let why = match &cause {
                        Some(c) => format!("input `{n}` changed ({c})"),
                        None => format!("input `{n}` changed"),
                    };
                    (Status::Run, Some(why.clone()), Some(cause.unwrap_or(why)))
                }
                Check::Matches(_) if waits.is_some() => {
                    let (why, cause) = after(waits.expect("some"), &root);
                    (Status::Recheck, Some(why), Some(cause))
                }
                Check::Matches(rec) => {
                    match record::changed_input(store, &mut cache, s, &rec, &by_id).await? {
                        None => (Status::UpToDate, None, None),
                        Some(n) => {
                            let why = format!("input `{n}` was republished since it ran");
                            (Status::Run, Some(why.clone()), Some(why))
                        }
                    }
                }
            }
        };
        if let Some(c) = cause {
            root.insert(&s.id, c);
        }
        status_of.insert(&s.id, status);
        out.push(StepStatus { status, reason });
    }
    Ok(out)
}

/// Holds the artifact root for one `w2s run`: a `flock` on a local root, a conditionally
/// created lock object with a heartbeat on a remote one. Released on drop (and, for a local
/// root, by the kernel when the process dies).
pub struct RootLock {
    _file: Option<std::fs::File>,
    remote: Option<(ArtifactStore, tokio::task::JoinHandle<()>)>,
}

const LOCK_OBJECT: &str = "runner/lock.json";
/// A remote lock not refreshed for this long belongs to a dead run (`W2S_LOCK_STALE_SECS`
/// overrides the 120 s, for tests); the holder refreshes it four times as often.
fn stale_secs() -> u64 {
    std::env::var("W2S_LOCK_STALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

impl RootLock {
    pub async fn acquire(store: &ArtifactStore) -> Result<RootLock> {
        let url = store.url_of("");
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "host": hostname(),
            "since_unix": now_unix(),
        });
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|_| Error::Config(format!("{}: not a local path", store.root())))?;
            std::fs::create_dir_all(dir.join("runner")).map_err(|e| Error::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
            let path = dir.join("runner").join("lock");
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::Io {
                    path: path.display().to_string(),
                    source: e,
                })?;
            if !try_flock(&file) {
                let who = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::Busy(format!(
                    "{}: another `w2s run` is using this artifact root ({}); wait for it to finish",
                    store.root(),
                    who.trim()
                )));
            }
            let _ = file.set_len(0);
            let _ = file.write_all(holder.to_string().as_bytes());
            return Ok(RootLock {
                _file: Some(file),
                remote: None,
            });
        }
        let body = Bytes::from(holder.to_string());
        if !store.put_if_absent(LOCK_OBJECT, body.clone()).await? {
            let age = store.age_secs(LOCK_OBJECT).await?.unwrap_or(0);
            if age < stale_secs() {
                let who = store.get_opt(LOCK_OBJECT).await?.unwrap_or_default();
                return Err(Error::Busy(format!(
                    "{}: another `w2s run` is using this artifact root ({}, refreshed {age}s ago); wait for it to finish",
                    store.root(),
                    String::from_utf8_lossy(&who).trim()
                )));
            }
            tracing::warn!(
                "{}: taking over a lock not refreshed for {age}s (its run is gone)",
                store.root()
            );
            store.delete(LOCK_OBJECT).await?;
            if !store.put_if_absent(LOCK_OBJECT, body.clone()).await? {
                return Err(Error::Busy(format!(
                    "{}: another `w2s run` took the artifact root first",
                    store.root()
                )));
            }
        }
        let beat_store = store.clone();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs((stale_secs() / 4).max(1))).await;
                if let Err(e) = beat_store.put(LOCK_OBJECT, body.clone()).await {
                    tracing::warn!("could not refresh the run lock: {e}");
                }
            }
        });
        Ok(RootLock {
            _file: None,
            remote: Some((store.clone(), beat)),
        })
    }

    /// Releases a remote lock (a local one goes with the file handle).
    pub async fn release(mut self) {
        if let Some((store, beat)) = self.remote.take() {
            beat.abort();
            if let Err(e) = store.delete(LOCK_OBJECT).await {
                tracing::warn!("could not remove the run lock: {e}");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(unix)]
fn try_flock(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_flock(_file: &std::fs::File) -> bool {
    true
}

/// How to run the plan.
pub struct RunOptions {
    pub jobs: usize,
    pub force: bool,
    /// The `w2s` binary to run steps with.
    pub exe: PathBuf,
    /// Folder for the steps' logs when they run in parallel.
    pub log_dir: PathBuf,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: Vec<(String, f64)>,
    pub skipped: usize,
}

/// Runs the selected steps. A step starts once every step it needs has finished; one found up
/// to date when its turn comes is skipped without starting a process.
pub async fn execute(
    store: &ArtifactStore,
    steps: &[Step],
    selected: &HashSet<String>,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let by_id: HashMap<String, &Step> = steps.iter().map(|s| (s.id.clone(), s)).collect();
    let total = steps.iter().filter(|s| selected.contains(&s.id)).count();
    let mut done: HashSet<String> = steps
        .iter()
        .filter(|s| !selected.contains(&s.id))
        .map(|s| s.id.clone())
        .collect();
    let mut ran_here: HashSet<String> = HashSet::new();
    let mut pending: Vec<&Step> = steps.iter().filter(|s| selected.contains(&s.id)).collect();
    // Each child is waited for on its own thread, which reports here.
    type Finished = (String, f64, std::io::Result<std::process::ExitStatus>);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
    let mut running = 0usize;
    let mut summary = RunSummary::default();
    let mut cache = Cache::default();
    let mut failure: Option<Error> = None;
    // With one step at a time the stage draws its own progress; the runner only prints lines.
    let bar = if opts.jobs > 1 {
        crate::progress::items(total as u64, "steps")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let say = |bar: &indicatif::ProgressBar, msg: String| {
        if bar.is_hidden() {
            println!("{msg}");
        } else {
            bar.println(msg);
        }
    };
    let started = Instant::now();
    loop {
        // Start what is ready.
        let mut i = 0;
        while failure.is_none() && i < pending.len() && running < opts.jobs.max(1) {
            let s = pending[i];
            if !s.needs.iter().all(|n| done.contains(n)) {
                i += 1;
                continue;
            }
            pending.remove(i);
            if !opts.force && record::up_to_date(store, &mut cache, s, &by_id).await? {
                done.insert(s.id.clone());
                summary.skipped += 1;
                bar.inc(1);
                continue;
            }
            let argv = s.argv(opts.force);
            say(
                &bar,
                format!(
                    "[{}/{total}] {}: w2s {}",
                    done.len() - (steps.len() - total) + running + 1,
                    s.id,
                    shell_words(&argv)
                ),
            );
            let mut cmd = std::process::Command::new(&opts.exe);
            cmd.args(&argv)
                .env("W2S_ENGINE", crate::models::engine::current().name())
                .env("W2S_SIMD", crate::simd::tier().name())
                .env(
                    "W2S_CUDA_KERNELS",
                    crate::models::cuda_kernels::enabled().to_string(),
                );
            if opts.jobs > 1 {
                std::fs::create_dir_all(&opts.log_dir).map_err(|e| Error::Io {
                    path: opts.log_dir.display().to_string(),
                    source: e,
                })?;
                let log = log_path(&opts.log_dir, &s.id);
                let file = std::fs::File::create(&log).map_err(|e| Error::Io {
                    path: log.display().to_string(),
                    source: e,
                })?;
                let err = file.try_clone().map_err(|e| Error::Io {
                    path: log.display().to_string(),
                    source: e,
                })?;
                cmd.stdout(file).stderr(err);
            }
            die_with_parent(&mut cmd);
            let child = cmd.spawn().map_err(|e| Error::Io {
                path: opts.exe.display().to_string(),
                source: e,
            })?;
            let id = s.id.clone();
            let t0 = Instant::now();
            let tx = tx.clone();
            running += 1;
            std::thread::spawn(move || {
                let mut child = child;
                let st = child.wait();
                let _ = tx.send((id, t0.elapsed().as_secs_f64(), st));
            });
        }
        if running == 0 {
            break;
        }
        let Some((id, secs, status)) = rx.recv().await else {
            break;
        };
        running -= 1;
        let s = by_id[&id];
        match status {
            Ok(st) if st.success() => {
                cache.forget(s);
                record(store, &mut cache, s, &by_id, secs).await?;
                done.insert(id.clone());
                ran_here.insert(id.clone());
                summary.ran.push((id.clone(), secs));
                bar.inc(1);
                say(&bar, format!("{id}: finished in {secs:.1}s"));
            }
            other => {
                let why = match &other {
                    Ok(st) => match st.code() {
                        Some(c) => format!("exit code {c}"),
                        None => "killed by a signal".to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                let mut msg = format!(
                    "step `{id}` failed ({why}): w2s {}",
                    shell_words(&s.argv(opts.force))
                );
                if opts.jobs > 1 {
                    let log = log_path(&opts.log_dir, &id);
                    msg.push_str(&format!(
                        "\nlast lines of {}:\n{}",
                        log.display(),
                        tail(&log, 15)
                    ));
                }
                let code = match &other {
                    Ok(st) => st.code().unwrap_or(1),
                    Err(_) => 1,
                };
                failure.get_or_insert(Error::Step { msg, code });
            }
        }
    }
    bar.finish_and_clear();
    if let Some(f) = failure {
        return Err(f);
    }
    tracing::debug!(
        "{} steps ran, {} up to date, {:.1}s",
        summary.ran.len(),
        summary.skipped,
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Records step `id` as finished, as `w2s run` does after running it (for steps run by another
/// scheduler: `w2s plan --record`, written into each Slurm task).
pub async fn record_finished(store: &ArtifactStore, steps: &[Step], id: &str) -> Result<()> {
    let by_id: HashMap<String, &Step> = steps.iter().map(|s| (s.id.clone(), s)).collect();
    let s = by_id
        .get(id)
        .ok_or_else(|| Error::Config(format!("--record {id}: no such step in the plan")))?;
    record(store, &mut Cache::default(), s, &by_id, 0.0).await
}

/// Writes the record of a finished step.
async fn record(
    store: &ArtifactStore,
    cache: &mut Cache,
    s: &Step,
    by_id: &HashMap<String, &Step>,
    secs: f64,
) -> Result<()> {
    let Some(outputs) = cache.published(store, s).await? else {
        return Err(Error::Config(format!(
            "step `{}` finished but did not publish {} (or a file of it is missing)",
            s.id,
            s.outputs.join(", ")
        )));
    };
    let mut read = std::collections::BTreeMap::new();
    for n in &s.needs {
        if let Some(o) = cache.identity(store, by_id[n]).await? {
            read.insert(n.clone(), o);
        }
    }
    let rec = Record::of(s, by_id, outputs, read, secs);
    let json = serde_json::to_vec_pretty(&rec).expect("record serializes");
    store
        .put(&record::record_path(&s.id), Bytes::from(json))
        .await
}

fn log_path(dir: &std::path::Path, id: &str) -> PathBuf {
    let safe = crate::stages::common::sanitize(id);
    dir.join(format!("{safe}.log"))
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command line as a shell would need it quoted.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Children die with the runner (SIGKILL of `w2s run` must not leave stages writing).
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may already be gone.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the parent w2s run exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut std::process::Command) {}
