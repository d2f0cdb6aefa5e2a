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

    // The checkpoint is an ordinary model folder, and `run:<id>` names it: a reward model
    // trains on it and is scored.
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
        "run:tiny",
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
    assert_eq!(
        rows(
            &a,
            "select base_model from runs where run_id = 'rm-on-tiny'"
        ),
        vec![vec!["run:tiny".to_string()]]
    );
    let o = w2s(&[
        "gt-train",
        "--artifacts",
        s(&a),
        "--model",
        "run:nope",
        "--run-id",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no trained run `nope`"),
        "{}",
        stderr(&o)
    );
    // The report shows the probe (no weak-to-strong runs yet: no other figure).
    let out = ok(w2s(&["report", "--artifacts", s(&a), "--bootstrap", "10"]));
    assert!(
        out.contains("4 figures: knowledge, training_loss, training_accuracy, learning_rate"),
        "{out}"
    );
    let page = std::fs::read_to_string(report_page(&a)).unwrap();
    assert!(page.contains("What each pretrained model knows"));
    check_in_chromium(&report_page(&a));
}

/// The PyTorch oracle of tools/fixtures/make_pretrain_run.py: per-step losses and learning
/// rates, and the probe's margins, on a 12-entity world.
#[test]
fn losses_and_probe_match_the_pytorch_oracle() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pretrain_run");
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("expected.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    ok(w2s(&[
        "split",
        "--world",
        "--world-entities",
        "12",
        "--world-statements",
        "300",
        "--world-seed",
        "5",
        "--artifacts",
        s(&root),
    ]));
    // The oracle's input is this world's corpus.
    let corpus: Vec<String> = rows(&root, "select text from corpus order by doc_index")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let fixture: Vec<String> = std::fs::read_to_string(fx.join("corpus.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        corpus, fixture,
        "the world generator changed: regenerate the fixture"
    );
    ok(w2s(&[
        "pretrain",
        "--artifacts",
        s(&root),
        "--model-id",
        "oracle",
        "--layers",
        "1",
        "--embd",
        "16",
        "--heads",
        "2",
        "--ctx",
        "16",
        "--batch",
        "4",
        "--micro-batch",
        "2",
        "--lr",
        "1e-2",
        "--epochs",
        "1",
        "--init-seed",
        "3",
        "--seed",
        "1",
    ]));
    let log = rows(&root, "select loss, lr from train_log order by step");
    let losses = want["losses"].as_array().unwrap();
    assert_eq!(log.len(), losses.len());
    assert!(log.len() >= 3);
    for (i, (got, w)) in log.iter().zip(losses).enumerate() {
        let (g, w) = (got[0].parse::<f64>().unwrap(), w.as_f64().unwrap());
        assert!((g - w).abs() < 1e-4, "step {}: loss {g} vs {w}", i + 1);
        let (g, w) = (
            got[1].parse::<f64>().unwrap(),
            want["lrs"][i].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 1e-12, "step {}: lr {g} vs {w}", i + 1);
    }
    let margins = rows(&root, "select entity, margin from knowledge");
    assert_eq!(margins.len(), 12);
    for m in margins {
        let (g, w) = (
            m[1].parse::<f64>().unwrap(),
            want["margins"][&m[0]].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 1e-3, "{}: margin {g} vs {w}", m[0]);
    }
}

#[test]
fn pretrain_needs_the_world_and_a_sane_shape() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let o = w2s(&["pretrain", "--artifacts", s(&root), "--model-id", "x"]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
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
