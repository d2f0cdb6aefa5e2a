//! The reward-modeling scenario end to end: gt-train -> weak-label -> w2s-train (none /
//! explicit / implicit / adaptive) -> score, against the PyTorch oracle
//! (tools/fixtures/make_rm_run.py), across model families, twice for determinism, and killed
//! mid-run then resumed.

use std::path::{Path, PathBuf};

use crate::common::*;

fn rm_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rm_run")
}

/// `w2s split` of the oracle's four files into `root`.
pub fn split_oracle_data(root: &Path) {
    split_oracle_data_env(s(root), &[]);
}

/// `w2s split` of the oracle's four files into `root` (a path or URL) with extra environment.
pub fn split_oracle_data_env(root: &str, env: &[(&str, String)]) {
    let f = rm_fixture();
    let p = |n: &str| f.join(format!("{n}.jsonl")).display().to_string();
    ok(w2s_env(
        &[
            "split",
            "--artifacts",
            root,
            "--gt",
            &p("gt"),
            "--w2s",
            &p("w2s"),
            "--test",
            &p("test"),
            "--helpful",
            &p("helpful"),
            "--n-gt",
            "12",
            "--n-w2s",
            "12",
            "--n-test",
            "6",
            "--n-helpful",
            "12",
        ],
        env,
    ));
}

/// gt-train of the GPT-2 fixture into `root` (a path or URL) as run `ceiling`: batch 2,
/// micro-batch 1, lr 1e-3, context 48 (6 steps on the oracle's 12 pairs), state saved every
/// `save_every` steps. The kill-and-resume tests share it.
pub fn fixture_gt_args(root: &str, save_every: usize) -> Vec<String> {
    let model = fixture_model("gpt2").display().to_string();
    let save_every = save_every.to_string();
    [
        "gt-train",
        "--artifacts",
        root,
        "--model",
        &model,
        "--run-id",
        "ceiling",
        "--batch",
        "2",
        "--micro-batch",
        "1",
        "--lr",
        "1e-3",
        "--max-ctx",
        "48",
        "--save-every",
        &save_every,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// The oracle's training settings (batch 4, micro-batch 2, lr 1e-3, max_ctx 48) and head.
pub fn oracle_args() -> Vec<String> {
    let head = rm_fixture().join("head.safetensors").display().to_string();
    [
        "--batch",
        "4",
        "--micro-batch",
        "2",
        "--lr",
        "1e-3",
        "--max-ctx",
        "48",
        "--init-head",
        &head,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn run_with(args: &[&str], extra: &[String]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    ok(w2s(&all))
}

/// CSV rows of a query (header dropped).
pub fn rows(root: &Path, query: &str) -> Vec<Vec<String>> {
    sql_csv(root, query)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs oracle {w}");
    }
}

/// The oracle's four students as flags: `adaptive` is objective none with `--adaptive`.
fn objective_of(o: &str) -> (&str, Option<&'static str>) {
    if o == "adaptive" {
        ("none", Some("--adaptive"))
    } else {
        (o, None)
    }
}

#[test]
fn losses_margins_and_labels_match_the_pytorch_oracle() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm_fixture().join("expected.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    split_oracle_data(&root);
    let model = fixture_model("gpt2").display().to_string();
    let r = s(&root);
    let args = oracle_args();
    run_with(
        &[
            "gt-train",
            "--artifacts",
            r,
            "--model",
            &model,
            "--run-id",
            "teacher",
        ],
        &args,
    );
    ok(w2s(&[
        "weak-label",
        "--artifacts",
        r,
        "--run",
        "teacher",
        "--max-ctx",
        "48",
    ]));
    // `adaptive`: the no-conflict objective with adaptive weighting (an orthogonal setting).
    for o in ["none", "explicit", "implicit", "adaptive"] {
        let (objective, weighting) = objective_of(o);
        let mut argv = vec![
            "w2s-train",
            "--artifacts",
            r,
            "--model",
            &model,
            "--teacher",
            "teacher",
            "--objective",
            objective,
            "--run-id",
            o,
        ];
        argv.extend(weighting);
        run_with(&argv, &args);
    }
    for run in ["teacher", "none", "explicit", "implicit", "adaptive"] {
        ok(w2s(&[
            "score",
            "--artifacts",
            r,
            "--run-id",
            run,
            "--max-ctx",
            "48",
        ]));
        let e = &expected[if run == "teacher" { "gt" } else { run }];
        let log = rows(
            &root,
            &format!("select loss, lr from train_log where run_id = '{run}' order by step"),
        );
        let col = |i: usize| -> Vec<f64> { log.iter().map(|r| r[i].parse().unwrap()).collect() };
        assert_close(
            &format!("{run} losses"),
            &col(0),
            &floats(&e["losses"]),
            1e-4,
        );
        assert_close(&format!("{run} lr"), &col(1), &floats(&e["lrs"]), 1e-12);
        let margins: Vec<f64> = rows(
            &root,
            &format!("select margin from scores where run_id = '{run}' order by split_index"),
        )
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
        assert_close(
            &format!("{run} test margins"),
            &margins,
            &floats(&e["test_margins"]),
            1e-4,
        );
    }
    // The implicit run trains on the 12 w2s + 12 helpful pairs: 6 steps.
    assert_eq!(floats(&expected["implicit"]["losses"]).len(), 6);
    // Weak labels: slot-orientation margins, soft labels and slot bits.
    let labels = rows(
        &root,
        "select margin, soft_label, gt_label, hard_label, correct from labels \
         where run_id = 'teacher' and split = 'w2s' order by split_index",
    );
    let col = |i: usize| -> Vec<f64> { labels.iter().map(|r| r[i].parse().unwrap()).collect() };
    let g = &expected["gt"];
    assert_close("w2s margins", &col(0), &floats(&g["w2s_margins"]), 1e-4);
    assert_close(
        "w2s soft labels",
        &col(1),
        &floats(&g["w2s_soft_labels"]),
        1e-4,
    );
    assert_close("w2s slot bits", &col(2), &floats(&g["w2s_slot_gt"]), 0.0);
    for l in &labels {
        let (soft, hard, gt): (f64, i64, i64) = (
            l[1].parse().unwrap(),
            l[3].parse().unwrap(),
            l[2].parse().unwrap(),
        );
        assert_eq!(hard, i64::from(soft >= 0.5));
        assert_eq!(l[4], (hard == gt).to_string());
    }
    // runs: one row per training run, with its objective, teacher and alpha.
    let runs = rows(
        &root,
        "select run_id, stage, objective, coalesce(teacher, '-'), coalesce(cast(alpha as varchar), '-'), steps \
         from runs order by run_id",
    );
    let want = [
        ["adaptive", "w2s-train", "none", "teacher", "-", "3"],
        ["explicit", "w2s-train", "explicit", "teacher", "0.5", "3"],
        ["implicit", "w2s-train", "implicit", "teacher", "-", "6"],
        ["none", "w2s-train", "none", "teacher", "-", "3"],
        ["teacher", "gt-train", "none", "-", "-", "3"],
    ];
    assert_eq!(runs, want.map(|r| r.map(str::to_string).to_vec()).to_vec());
    // A second invocation finds everything up to date.
    let again = run_with(
        &[
            "gt-train",
            "--artifacts",
            r,
            "--model",
            &model,
            "--run-id",
            "teacher",
        ],
        &args,
    );
    assert!(again.contains("up to date"), "{again}");
}

/// The whole chain with a weak GPT-2 and a strong Llama (different tokenizers), into `root`.
fn chain(root: &Path) {
    split_oracle_data(root);
    let r = s(root);
    let weak = fixture_model("gpt2").display().to_string();
    let strong = fixture_model("llama").display().to_string();
    let common = [
        "--batch",
        "4",
        "--micro-batch",
        "2",
        "--lr",
        "1e-3",
        "--max-ctx",
        "48",
    ];
    let train = |extra: &[&str]| {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend(common);
        ok(w2s(&a))
    };
    train(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &weak,
        "--run-id",
        "weak",
    ]);
    train(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &strong,
        "--run-id",
        "strong",
    ]);
    ok(w2s(&[
        "weak-label",
        "--artifacts",
        r,
        "--run",
        "weak",
        "--max-ctx",
        "48",
    ]));
    for o in ["none", "explicit", "implicit", "adaptive"] {
        let (objective, weighting) = objective_of(o);
        let mut argv = vec![
            "w2s-train",
            "--artifacts",
            r,
            "--model",
            &strong,
            "--teacher",
            "weak",
            "--objective",
            objective,
            "--run-id",
            o,
        ];
        argv.extend(weighting);
        train(&argv);
    }
    for run in ["weak", "strong", "none", "explicit", "implicit", "adaptive"] {
        ok(w2s(&[
            "score",
            "--artifacts",
            r,
            "--run-id",
            run,
            "--max-ctx",
            "48",
        ]));
    }
}

#[test]
fn chain_across_families_scores_six_models_and_repeats_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    chain(&a);
    chain(&b);
    let per_run = rows(
        &a,
        "select run_id, count(*) from scores group by run_id order by run_id",
    );
    assert_eq!(per_run.len(), 6, "{per_run:?}");
    assert!(per_run.iter().all(|r| r[1] == "6"), "{per_run:?}");
    assert_eq!(
        rows(&a, "select count(*) from scores s join pairs p on s.pair_id = p.pair_id where p.split = 'test'"),
        vec![vec!["36".to_string()]]
    );
    // Same seeds, same inputs: identical tables (timing columns aside).
    for q in [
        "select * from scores order by run_id, split_index",
        "select * from labels order by run_id, split_index",
        "select run_id, step, loss, lr, accuracy, pairs, tokens from train_log order by run_id, step",
        "select run_id, stage, objective, teacher, alpha, seed, settings, fingerprint, steps, tokens, final_loss \
         from runs order by run_id",
    ] {
        assert_eq!(rows(&a, q), rows(&b, q), "{q}");
    }
    // The analyses run over the chain: one row per conflict run (the adaptive run is a
    // no-conflict run of its own cell, `(adaptive)` on the weak model).
    let out = ok(w2s(&[
        "analyze",
        "--artifacts",
        s(&a),
        "--bootstrap",
        "100",
    ]));
    assert!(out.contains("analysis_deception (2)"), "{out}");
    assert_eq!(
        rows(&a, "select count(distinct objective) from analysis_summary"),
        vec![vec!["3".to_string()]]
    );
    assert!(out.contains("(adaptive) -> llama, none"), "{out}");
    // The report over the chain: every figure (runs without flips are shown as such); the page
    // opens cleanly in a browser.
    // W2S_TEST_REPORT_COPY=DIR keeps a copy of this report to look at.
    let mut args = vec!["report", "--artifacts", s(&a), "--bootstrap", "100"];
    let keep = std::env::var("W2S_TEST_REPORT_COPY").unwrap_or_default();
    if !keep.is_empty() {
        args.extend(["--out", keep.as_str()]);
    }
    let out = ok(w2s(&args));
    assert!(
        out.contains("17 figures: accuracy, deception_grid, absolute_deception_grid, deception_grid_t0_7, deception_grid_t0_75, deception_grid_t0_8, deception_grid_t0_85, adaptive_accuracy, deception_vs_area, deception_by_strong_gpt2, confidence_scatter_explicit_0_5, confidence_scatter_implicit, flip_breakdown, threshold_sweep, training_loss, training_accuracy, learning_rate"),
        "{out}"
    );
    let page = report_page(&a);
    let html = std::fs::read_to_string(&page).unwrap();
    // Training curves: a line per ceiling and student, named by run and role.
    for name in [
        "weak (ceiling)",
        "strong (ceiling)",
        "implicit (student)",
        "adaptive (student)",
    ] {
        assert!(html.contains(name), "training curve {name}");
    }
    for run in ["weak", "strong", "none", "explicit", "implicit", "adaptive"] {
        assert!(
            html.contains(&format!("<td>{run}</td>")),
            "run {run} in the runs table"
        );
    }
    check_in_chromium(&page);
    // The scores parts are byte-identical files.
    let parts = |root: &Path| -> Vec<Vec<u8>> {
        files_under(root)
            .iter()
            .filter(|f| f.starts_with("tables/scores/"))
            .map(|f| std::fs::read(root.join(f)).unwrap())
            .collect()
    };
    assert_eq!(parts(&a), parts(&b));
}

#[test]
fn a_killed_run_resumes_from_its_last_saved_step_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = |root: &Path| fixture_gt_args(s(root), 1);
    for root in [&a, &b] {
        split_oracle_data(root);
    }
    let a_args = args(&a);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    // Killed right after saving the state of step 3 of 6.
    let killed = w2s_env(&a_args, &[("W2S_FAULT", "saved:3".into())]);
    assert!(!killed.status.success());
    let files = files_under(&a);
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("models/") || f.contains("train_log")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("state/train/ceiling/")),
        "{files:?}"
    );
    let resumed = ok(w2s(&a_args));
    assert!(resumed.contains("resumed at step 3"), "{resumed}");
    assert!(
        !files_under(&a).iter().any(|f| f.starts_with("state/")),
        "state is cleared"
    );

    let b_args = args(&b);
    ok(w2s(&b_args.iter().map(String::as_str).collect::<Vec<_>>()));
    let weights = |root: &Path, name: &str| -> Vec<u8> {
        let f = files_under(root)
            .into_iter()
            .find(|f| f.starts_with("models/ceiling/") && f.ends_with(name))
            .unwrap();
        std::fs::read(root.join(f)).unwrap()
    };
    assert_eq!(
        weights(&a, "model.safetensors"),
        weights(&b, "model.safetensors")
    );
    assert_eq!(
        weights(&a, "reward_head.safetensors"),
        weights(&b, "reward_head.safetensors")
    );
    let q = "select step, loss, lr, accuracy, tokens from train_log order by step";
    assert_eq!(rows(&a, q), rows(&b, q));
    assert_eq!(
        rows(&a, "select resumed_at_step from runs"),
        vec![vec!["3".to_string()]]
    );
}

#[test]
fn misuse_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let r = s(&root);
    let model = fixture_model("gpt2").display().to_string();
    // No pairs yet.
    let o = w2s(&["gt-train", "--artifacts", r, "--model", &model]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("run `w2s split` first"),
        "{}",
        stderr(&o)
    );
    split_oracle_data(&root);
    // A teacher that has no labels.
    let o = w2s(&[
        "w2s-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--teacher",
        "nobody",
    ]);
    assert_eq!(o.status.code(), Some(66));
    assert!(
        stderr(&o).contains("no labels of `nobody`"),
        "{}",
        stderr(&o)
    );
    // Labelling with a run that does not exist, and with a model that has no reward head.
    let o = w2s(&["weak-label", "--artifacts", r, "--run", "nobody"]);
    assert!(
        stderr(&o).contains("no trained run `nobody`"),
        "{}",
        stderr(&o)
    );
    let o = w2s(&[
        "weak-label",
        "--artifacts",
        r,
        "--run",
        "x",
        "--model",
        &model,
    ]);
    // A checkpoint without a reward head labels as a policy (SimPO margins).
    assert!(o.status.success(), "{}", stderr(&o));
    let methods = ok(w2s(&[
        "sql",
        "--artifacts",
        r,
        "--format",
        "csv",
        "select distinct method from labels where run_id = 'x'",
    ]));
    assert_eq!(methods, "method\nsimpo\n");
    // A LoRA rank of 0, high-confidence filtering of a reward model's labels, a batch larger
    // than the data, a bad head file.
    let o = w2s(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--lora-rank",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--lora-rank 0"), "{}", stderr(&o));
    let o = w2s(&[
        "w2s-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--teacher",
        "x",
        "--high-confidence",
        "0.75",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--scenario simpo or dpo"),
        "{}",
        stderr(&o)
    );
    let o = w2s(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--batch",
        "64",
    ]);
    assert!(
        stderr(&o).contains("make no full batch of 64"),
        "{}",
        stderr(&o)
    );
    let bad = dir.path().join("head.safetensors");
    std::fs::write(&bad, b"not safetensors").unwrap();
    let o = w2s(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--init-head",
        s(&bad),
    ]);
    assert!(
        stderr(&o).contains("head.safetensors") && stderr(&o).contains("unreadable head"),
        "{}",
        stderr(&o)
    );
    // Nothing was published by any of these.
    assert!(!files_under(&root)
        .iter()
        .any(|f| f.starts_with("models/") || f.starts_with("manifests/train")));
}

#[test]
fn labels_of_a_retrained_teacher_are_refused_until_relabelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let r = s(&root);
    split_oracle_data(&root);
    let model = fixture_model("gpt2").display().to_string();
    let train = |lr: &str| {
        ok(w2s(&[
            "gt-train",
            "--artifacts",
            r,
            "--model",
            &model,
            "--run-id",
            "t",
            "--batch",
            "4",
            "--max-ctx",
            "48",
            "--lr",
            lr,
        ]))
    };
    let student = || {
        w2s(&[
            "w2s-train",
            "--artifacts",
            r,
            "--model",
            &model,
            "--teacher",
            "t",
            "--batch",
            "4",
            "--max-ctx",
            "48",
        ])
    };
    train("1e-3");
    ok(w2s(&[
        "weak-label",
        "--artifacts",
        r,
        "--run",
        "t",
        "--max-ctx",
        "48",
    ]));
    ok(student());
    train("2e-3");
    let o = student();
    assert_eq!(o.status.code(), Some(66));
    assert!(
        stderr(&o).contains("rerun `w2s weak-label --run t`"),
        "{}",
        stderr(&o)
    );
    let relabel = ok(w2s(&[
        "weak-label",
        "--artifacts",
        r,
        "--run",
        "t",
        "--max-ctx",
        "48",
    ]));
    assert!(!relabel.contains("up to date"), "{relabel}");
    let again = ok(student());
    assert!(
        !again.contains("up to date"),
        "the student retrains on the new labels: {again}"
    );
}

/// A reward model trained as LoRA adapters (the head trains with them): the run publishes
/// the merged checkpoint with its head, labels and scores like any other, and its adapter.
#[test]
fn a_lora_reward_model_trains_labels_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    split_oracle_data(&root);
    let r = root.to_str().unwrap();
    let model = crate::common::fixture_model("llama").display().to_string();
    let o = w2s(&[
        "gt-train",
        "--artifacts",
        r,
        "--model",
        &model,
        "--run-id",
        "t",
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--max-ctx",
        "48",
        "--lora-rank",
        "4",
        "--lora-targets",
        "q_proj,v_proj",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for cmd in [
        vec![
            "weak-label",
            "--artifacts",
            r,
            "--run",
            "t",
            "--max-ctx",
            "48",
        ],
        vec![
            "score",
            "--artifacts",
            r,
            "--run-id",
            "t",
            "--max-ctx",
            "48",
        ],
    ] {
        let o = w2s(&cmd);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let models = root.join("models/t");
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let ckpt = dirs
        .iter()
        .find(|d| !d.ends_with("adapter") && !d.display().to_string().ends_with("-adapter"))
        .unwrap();
    assert!(ckpt.join("reward_head.safetensors").exists());
    let adapter = dirs
        .iter()
        .find(|d| d.display().to_string().ends_with("-adapter"))
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0, "alpha defaults to twice the rank");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    // The merged weights differ from the base where adapters were trained, nowhere else.
    let base =
        w2s::models::Model::load(std::path::Path::new(&model), &candle_core::Device::Cpu).unwrap();
    let trained = w2s::models::Model::load(ckpt, &candle_core::Device::Cpu).unwrap();
    for (k, t) in base.tensors() {
        let d: f32 = (t - &trained.tensors()[k])
            .and_then(|x| x.abs()?.flatten_all()?.max(0)?.to_scalar())
            .unwrap();
        let adapted = k.ends_with("q_proj.weight") || k.ends_with("v_proj.weight");
        assert_eq!(d > 0.0, adapted, "{k}: changed by {d}");
    }
}
