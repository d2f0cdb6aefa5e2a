//! Reliability under faults (docs/reliability.md): a stage killed (SIGKILL) at named
//! points and at random moments, a full disk (injected and a real tmpfs), each followed by a
//! rerun. The commit point of every stage is its manifest: after a fault no new manifest may
//! exist (nothing partial is readable, since readers only see files a manifest names), and the
//! rerun must end with exactly the tables and weights of an uninterrupted run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rm::{fixture_gt_args, rows, split_oracle_data};

/// gt-train of the GPT-2 fixture on the oracle's 12 pairs: 6 steps, state saved every 2.
fn gt_args(root: &Path) -> Vec<String> {
    fixture_gt_args(s(root), 2)
}

fn gt_train(root: &Path, env: &[(&str, String)]) -> std::process::Output {
    let args = gt_args(root);
    w2s_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
}

fn manifests(root: &Path) -> Vec<String> {
    files_under(root)
        .into_iter()
        .filter(|f| f.starts_with("manifests/"))
        .collect()
}

/// What a finished gt-train leaves: its log, its run record, its weights (bytes).
type Outcome = (Vec<Vec<String>>, Vec<Vec<String>>, Vec<Vec<u8>>);

fn outcome(root: &Path) -> Outcome {
    let log = rows(
        root,
        "select step, loss, lr, accuracy, tokens from train_log order by step",
    );
    let runs = rows(root, "select run_id, steps, pairs from runs");
    let weights = files_under(root)
        .into_iter()
        .filter(|f| f.starts_with("models/ceiling/") && f.ends_with(".safetensors"))
        .map(|f| std::fs::read(root.join(f)).unwrap())
        .collect();
    (log, runs, weights)
}

/// An uninterrupted gt-train under `dir/reference`: its outcome and how long it took.
fn uninterrupted(dir: &Path) -> (Outcome, Duration) {
    let reference = dir.join("reference");
    split_oracle_data(&reference);
    let t0 = Instant::now();
    ok(gt_train(&reference, &[]));
    (outcome(&reference), t0.elapsed())
}

fn killed_by_sigkill(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// Kills at each named point (state writes, the k-th object write of the checkpoint and
/// tables, the manifest commit, between a step and its save), then reruns.
#[test]
fn a_stage_killed_at_any_write_resumes_to_the_uninterrupted_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = uninterrupted(dir.path());
    assert_eq!(want.0.len(), 6);

    // Object writes of one gt-train: 2 state saves (parameters + latest.json each) and then
    // the published files; put:1 dies at the very first, put:9 and put:12 inside the
    // checkpoint and table uploads, commit:1 with every output written but no manifest.
    let mut kills = 0;
    for fault in [
        "put:1", "put:4", "put:9", "put:12", "commit:1", "step:3", "saved:2",
    ] {
        let root = dir.path().join(fault.replace(':', "-"));
        split_oracle_data(&root);
        let before = manifests(&root);
        let o = gt_train(&root, &[("W2S_FAULT", fault.into())]);
        if killed_by_sigkill(&o) {
            kills += 1;
            assert_eq!(manifests(&root), before, "{fault}: a manifest appeared");
            // No table of the killed stage is readable.
            let q = w2s(&["sql", "--artifacts", s(&root), "select * from train_log"]);
            assert!(!q.status.success(), "{fault}: train_log is readable");
        } else {
            assert!(o.status.success(), "{fault}: {}", stderr(&o));
        }
        let rerun = ok(gt_train(&root, &[]));
        assert_eq!(outcome(&root), want, "{fault}: rerun differs; {rerun}");
    }
    assert!(kills >= 6, "only {kills} of the faults fired");
}

/// SIGKILL at random moments of a whole run (seeded from the clock, printed), then a rerun.
#[test]
fn a_stage_killed_at_random_moments_resumes_to_the_uninterrupted_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (want, full) = uninterrupted(dir.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("random kill seed {seed}, uninterrupted run {full:?}");
    let mut x = seed | 1;
    for i in 0..4 {
        // xorshift: a delay anywhere in the run's duration.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_micros(x % (full.as_micros() as u64).max(1));
        let root = dir.path().join(format!("r{i}"));
        split_oracle_data(&root);
        let before = manifests(&root);
        let args = gt_args(&root);
        let mut child = Command::new(env!("CARGO_BIN_EXE_w2s"))
            .args(&args)
            .env("W2S_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let after = manifests(&root);
        if !status.success() {
            // Either nothing was committed or the whole output was.
            assert!(
                after == before || after.len() == before.len() + 1,
                "kill after {delay:?}: {after:?}"
            );
        }
        ok(gt_train(&root, &[]));
        assert_eq!(outcome(&root), want, "kill after {delay:?} (seed {seed})");
    }
}

/// A write failing with "No space left on device" (injected at the k-th object write): a clear
/// error naming the object, exit 74, no manifest; the rerun on a disk with room succeeds.
#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = uninterrupted(dir.path());
    for k in [1, 5, 9] {
        let root = dir.path().join(format!("k{k}"));
        split_oracle_data(&root);
        let before = manifests(&root);
        let o = gt_train(&root, &[("W2S_FAULT", format!("put:{k}:enospc"))]);
        assert_eq!(o.status.code(), Some(74), "put {k}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("No space left on device"), "{err}");
        assert!(err.contains(s(&root)), "the error names the object: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(manifests(&root), before);
        ok(gt_train(&root, &[]));
        assert_eq!(outcome(&root), want);
    }
}

/// The same on a real full file system: a 1 MiB tmpfs holds the split but not the trained
/// checkpoint's state and outputs. Needs root (mount); skipped with a message otherwise.
#[test]
fn a_real_full_tmpfs_is_a_clear_error_and_leaves_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=400k", "tmpfs", s(&mnt)])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!(
            "SKIP: cannot mount a tmpfs here (not root?); the injected ENOSPC test covers it"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let root = mnt.join("root");
    split_oracle_data(&root);
    let before = manifests(&root);
    let o = gt_train(&root, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(manifests(&root), before);
}

/// A checkpoint whose final layer-norm scale is 3e38 (finite, so it loads) makes the rewards
/// overflow: the run stops at the first non-finite loss, naming the optimizer step, the
/// micro-batch and its rows, commits nothing, and exits 65.
#[test]
fn a_non_finite_loss_stops_the_run_naming_step_and_batch() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("huge");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture_model("gpt2").join(f), model.join(f)).unwrap();
    }
    let src = fixture_model("gpt2").join("model.safetensors");
    let mut t = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
    let n = t["transformer.ln_f.weight"].dim(0).unwrap();
    t.insert(
        "transformer.ln_f.weight".into(),
        Tensor::from_vec(vec![3e38f32; n], n, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, model.join("model.safetensors")).unwrap();
    let root = dir.path().join("root");
    split_oracle_data(&root);
    let before = manifests(&root);
    let mut args = gt_args(&root);
    let m = args.iter().position(|a| a == "--model").unwrap();
    args[m + 1] = s(&model).to_string();
    let o = w2s(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(
        err.contains("loss is NaN at optimizer step 1 of 6, micro-batch 1 (rows ["),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(manifests(&root), before);
}
