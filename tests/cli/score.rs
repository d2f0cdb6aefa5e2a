//! `w2s score` end to end: text pairs in, per-pair log-probs and SimPO confidences out,
//! compared with what PyTorch + transformers compute for the same texts and checkpoint
//! (tests/fixtures/models/<family>/score.json, written by tools/fixtures/make_fixtures.py).

use crate::common::*;

fn check(family: &str) {
    let oracle: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture_model(family).join("score.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = oracle
        .iter()
        .map(|o| {
            serde_json::json!({
                "prompt": o["prompt"], "chosen": o["chosen"], "rejected": o["rejected"],
            })
            .to_string()
        })
        .collect();
    let f = dir.path().join("pairs.jsonl");
    write_lines(&f, &lines);
    let root = dir.path().join("art");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        s(&f),
        "--w2s",
        s(&f),
        "--test",
        s(&f),
    ]));
    let out = ok(w2s(&[
        "score",
        "--artifacts",
        s(&root),
        "--model",
        s(&fixture_model(family)),
        "--run-id",
        "tiny",
        "--batch-pairs",
        "2",
    ]));
    assert!(out.contains("3 pairs"), "{out}");
    let rows = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&root),
        "--format",
        "json",
        "select * from scores where run_id = 'tiny' order by split_index",
    ]));
    let rows: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), oracle.len());
    for (r, o) in rows.iter().zip(&oracle) {
        let close = |k: &str, tol: f64| {
            let (a, b) = (r[k].as_f64().unwrap(), o[k].as_f64().unwrap());
            assert!(
                (a - b).abs() <= tol,
                "{family} {k}: w2s {a} vs transformers {b}"
            );
        };
        close("logp_sum_chosen", 1e-3);
        close("logp_sum_rejected", 1e-3);
        close("logp_mean_chosen", 1e-4);
        close("logp_mean_rejected", 1e-4);
        close("margin", 1e-4);
        close("confidence", 1e-4);
        assert_eq!(r["tokens_chosen"], o["tokens_chosen"]);
        assert_eq!(r["tokens_rejected"], o["tokens_rejected"]);
        assert_eq!(r["method"], "simpo");
        assert_eq!(r["split"], "test");
        assert_eq!(
            r["correct"],
            serde_json::Value::Bool(o["margin"].as_f64().unwrap() >= 0.0)
        );
    }
    // Up to date the second time.
    let again = score(&root, s(&fixture_model(family)), "tiny", &[]);
    assert!(again.contains("up to date"), "{again}");
}

#[test]
fn score_gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn score_llama_matches_transformers() {
    check("llama");
}

#[test]
fn score_without_pairs_or_with_a_bad_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    let o = w2s(&[
        "score",
        "--artifacts",
        s(&root),
        "--model",
        s(&fixture_model("gpt2")),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("run `w2s split` first"),
        "{}",
        stderr(&o)
    );
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let bad = dir.path().join("bad-model");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    let o = w2s(&["score", "--artifacts", s(&root), "--model", s(&bad)]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unsupported architecture `t5`"),
        "{}",
        stderr(&o)
    );
    assert!(files_under(&root).iter().all(|f| !f.contains("scores")));
}

#[test]
fn lora_merge_writes_a_plain_checkpoint_that_scores() {
    use w2s::models::weights::LoraSpec;
    use w2s::models::Model;
    let dev = candle_core::Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load_lora(
        &fixture_model("gpt2"),
        &dev,
        LoraSpec {
            r: 4,
            alpha: 8.0,
            targets: vec![],
            seed: 1,
        },
    )
    .unwrap();
    let adapter = dir.path().join("adapter");
    m.save_adapter(&adapter).unwrap();
    let out = dir.path().join("merged");
    ok(w2s(&[
        "lora-merge",
        "--model",
        s(&fixture_model("gpt2")),
        "--adapter",
        s(&adapter),
        "--out",
        s(&out),
    ]));
    // B starts at zero, so the merged model equals the base: scoring gives the same margins.
    let root = dir.path().join("art");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    score(&root, s(&fixture_model("gpt2")), "base", &[]);
    score(&root, s(&out), "merged", &[]);
    let same = same_margins(&root, "base", "merged");
    assert_eq!(same, "n\n32\n");
    let o = w2s(&[
        "lora-merge",
        "--model",
        s(&fixture_model("llama")),
        "--adapter",
        s(&adapter),
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(
        !o.status.success(),
        "a GPT-2 adapter must not merge into Llama"
    );
}
