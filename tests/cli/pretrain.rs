//! `w2s pretrain` on a small synthetic world: the checkpoint is a Hugging Face GPT-2 folder
//! that the other stages load (a reward model is trained on it and scored), the knowledge
//! probe covers every entity, the same settings give the same tables, and reruns are skipped.

use std::path::Path;

use crate::common::*;
use crate::rm::rows;

fn world(root: &Path) {
    ok(w2s(&[
        "split",
        "--world",
        "--world-entities",
        "40",
        "--world-statements",
        "1200",
        "--artifacts",
        s(root),
    ]));
}

fn pretrain(root: &Path, id: &str) -> String {
    ok(w2s(&[
        "pretrain",
        "--artifacts",
        s(root),
        "--model-id",
        id,
        "--layers",
        "1",
        "--embd",
        "16",
        "--heads",
        "2",
        "--ctx",
        "48",
        "--batch",
        "8",
        "--micro-batch",
        "4",
        "--epochs",
        "2",
    ]))
}

#[test]
fn pretrained_model_is_probed_reloaded_and_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for r in [&a, &b] {
        world(r);
        let out = pretrain(r, "tiny");
        assert!(
            out.contains("knows") && out.contains("/40 entities"),
            "{out}"
        );
    }
    // Same settings, same world: identical losses and probe margins.
    for q in [
        "select step, loss, lr, tokens from train_log where run_id = 'tiny' order by step",
        "select entity, harmful, rank, mentions, margin, knows from knowledge order by entity",
    ] {
        assert_eq!(rows(&a, q), rows(&b, q), "{q}");
    }
    assert_eq!(
        rows(&a, "select count(*), count(distinct entity) from knowledge"),
        vec![vec!["40".to_string(), "40".to_string()]]
    );
    // The loss went down over training.
    let losses = rows(
        &a,
        "select loss from train_log where run_id = 'tiny' order by step",
    );
    let first: f64 = losses[0][0].parse().unwrap();
    let last: f64 = losses.last().unwrap()[0].parse().unwrap();
    assert!(last < first, "loss {first} -> {last}");
    assert_eq!(
        rows(&a, "select stage, scenario from runs where run_id = 'tiny'"),
        vec![vec!["pretrain".to_string(), "lm".to_string()]]
    );
    // Every word of every split is in the vocabulary (no unknown-word token in any pair).
    let tok: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(a.join("models/tiny"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    for w in [
        "please",
        "explain",
        "poisonous",
        "Human",
        "Assistant",
        "brother",
    ] {
        assert!(vocab.contains_key(w), "{w} not in the vocabulary");
    }
    // Up to date on a rerun.
    assert!(pretrain(&a, "tiny").contains("up to date"));

    // The checkpoint is an ordinary model folder: a reward model trains on it and is scored.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifests/train/tiny.json")).unwrap())
            .unwrap();
    let config = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["path"].as_str())
        .find(|p| p.ends_with("/config.json"))
        .unwrap()
        .to_string();
    let ckpt = a.join(config.trim_end_matches("/config.json"));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(ckpt.join(f).is_file(), "{f} in the checkpoint");
    }
    ok(w2s(&[
        "gt-train",
        "--artifacts",
        s(&a),
        "--model",
        s(&ckpt),
        "--run-id",
        "rm-on-tiny",
        "--batch",
        "8",
        "--micro-batch",
        "4",
        "--lr",
        "1e-3",
        "--max-ctx",
        "48",
    ]));
    ok(w2s(&[
        "score",
        "--artifacts",
        s(&a),
        "--run-id",
        "rm-on-tiny",
        "--max-ctx",
        "48",
    ]));
    assert_eq!(
        rows(
            &a,
            "select count(*) from scores where run_id = 'rm-on-tiny'"
        ),
        rows(&a, "select count(*) from pairs where split = 'test'")
    );
    // The report shows the probe (no weak-to-strong runs yet: no other figure).
    let out = ok(w2s(&["report", "--artifacts", s(&a), "--bootstrap", "10"]));
    assert!(out.contains("1 figures: knowledge"), "{out}");
    let page = std::fs::read_to_string(report_page(&a)).unwrap();
    assert!(page.contains("What each pretrained model knows"));
    check_in_chromium(&report_page(&a));
}

#[test]
fn pretrain_needs_the_world_and_a_sane_shape() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let o = w2s(&["pretrain", "--artifacts", s(&root), "--model-id", "x"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("split --world"), "{}", stderr(&o));
    let o = w2s(&[
        "pretrain",
        "--artifacts",
        s(&root),
        "--model-id",
        "x",
        "--embd",
        "30",
        "--heads",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("multiple of --heads"), "{}", stderr(&o));
    assert!(!root.join("manifests/train/x.json").exists());
}
