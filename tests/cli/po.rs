//! The preference scenario against its PyTorch oracle (tools/fixtures/make_po_run.py): SFT then
//! SimPO or DPO for the gt ceiling and for students under each objective, per-step losses and
//! learning rates within 1e-4, the teacher's labels and the test margins.

use std::path::Path;

use crate::common::{fixture_model, ok, s, w2s};
use crate::rm::split_oracle_data;

fn expected() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/po_run/expected.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn column(root: &Path, q: &str) -> Vec<f64> {
    ok(w2s(&["sql", "--artifacts", s(root), "--format", "csv", q]))
        .lines()
        .skip(1)
        .map(|l| l.parse().unwrap())
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: w2s {g}, oracle {w} (all: {got:?} vs {want:?})"
        );
    }
}

const ARGS: &[&str] = &[
    "--batch",
    "4",
    "--micro-batch",
    "2",
    "--lr",
    "1e-3",
    "--max-ctx",
    "48",
];

/// The run's logged losses and learning rates against the oracle's SFT then PO phases.
fn check_log(root: &Path, run: &str, want: &serde_json::Value) {
    let q = |col: &str| format!("select {col} from train_log where run_id = '{run}' order by step");
    let mut losses = floats(&want["sft_losses"]);
    losses.extend(floats(&want["po_losses"]));
    let mut lrs = floats(&want["sft_lrs"]);
    lrs.extend(floats(&want["po_lrs"]));
    close(
        &format!("{run} losses"),
        &column(root, &q("loss")),
        &losses,
        1e-4,
    );
    close(&format!("{run} lrs"), &column(root, &q("lr")), &lrs, 1e-12);
}

fn test_margins(root: &Path, run: &str) -> Vec<f64> {
    ok(w2s(&[
        "score",
        "--artifacts",
        s(root),
        "--run-id",
        run,
        "--max-ctx",
        "48",
    ]));
    column(
        root,
        &format!("select margin from scores where run_id = '{run}' order by split_index"),
    )
}

fn scenario(kind: &str) {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    split_oracle_data(root);
    let model = fixture_model("gpt2").display().to_string();
    let train = |extra: &[&str]| {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend([
            "--artifacts",
            s(root),
            "--scenario",
            kind,
            "--model",
            &model,
        ]);
        a.extend(ARGS);
        ok(w2s(&a))
    };
    train(&["gt-train", "--run-id", "weak"]);
    let want = &exp[kind]["gt"];
    check_log(root, "weak", want);
    // DPO margins are sums (larger): the same relative tolerance as the model parity tests.
    let tol = if kind == "dpo" { 1e-3 } else { 1e-4 };
    close(
        "teacher test margins",
        &test_margins(root, "weak"),
        &floats(&want["test_metrics"]),
        tol,
    );

    ok(w2s(&[
        "weak-label",
        "--artifacts",
        s(root),
        "--run",
        "weak",
        "--max-ctx",
        "48",
    ]));
    let labels = column(
        root,
        "select margin from labels where run_id = 'weak' order by split_index",
    );
    close(
        "teacher labels",
        &labels,
        &floats(&want["w2s_metrics"]),
        tol,
    );

    for objective in ["none", "explicit", "implicit"] {
        train(&[
            "w2s-train",
            "--teacher",
            "weak",
            "--objective",
            objective,
            "--run-id",
            objective,
        ]);
        let want = &exp[kind][objective];
        check_log(root, objective, want);
        close(
            &format!("{objective} test margins"),
            &test_margins(root, objective),
            &floats(&want["test_metrics"]),
            tol,
        );
    }
    if kind == "simpo" {
        // A high-confidence student (implicit conflict): the rows the teacher got right with
        // confidence >= T and the helpful pairs at the same indices.
        let want = &exp[kind]["high_confidence"];
        let t = want["threshold"].as_f64().unwrap().to_string();
        train(&[
            "w2s-train",
            "--teacher",
            "weak",
            "--objective",
            "implicit",
            "--run-id",
            "hc",
            "--high-confidence",
            &t,
        ]);
        check_log(root, "hc", want);
        close(
            "hc test margins",
            &test_margins(root, "hc"),
            &floats(&want["test_metrics"]),
            tol,
        );
    }
    // Every student records its scenario; the scores carry the scenario's method.
    let methods = ok(w2s(&[
        "sql",
        "--artifacts",
        s(root),
        "--format",
        "csv",
        "select distinct method from scores",
    ]));
    assert_eq!(methods, format!("method\n{kind}\n"));
}

#[test]
fn simpo_matches_the_pytorch_oracle() {
    scenario("simpo");
}

#[test]
fn dpo_matches_the_pytorch_oracle() {
    scenario("dpo");
}
