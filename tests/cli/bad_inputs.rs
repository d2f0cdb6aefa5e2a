//! The bad-input corpus (docs/reliability.md): malformed data files, pipeline files,
//! checkpoints, tokenizer files, artifact roots and command lines. Each case must end within a
//! minute with its documented exit code and a message naming what is wrong (the file, and where
//! it says so the tensor, key or field), never a panic, and commit nothing to the artifact root.
//! (`split_bad_input.rs` holds the data-file cases of `w2s split` that check line and field.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

use crate::common::*;
use crate::rm::split_oracle_data;

struct Case {
    name: &'static str,
    args: Vec<String>,
    code: i32,
    needles: Vec<String>,
}

/// Runs `w2s` with a one-minute limit: (exit code, stderr).
fn run_limited(args: &[String]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_w2s"))
        .args(args)
        .env_remove("W2S_ARTIFACTS")
        .env("W2S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_limited(
        child,
        Duration::from_secs(60),
        &format!("w2s {}", args.join(" ")),
    );
    (o.status.code(), stderr(&o))
}

/// A copy of the GPT-2 fixture checkpoint, changed by `edit`.
fn model_copy(base: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dst = base.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_model("gpt2").join(f), dst.join(f)).unwrap();
    }
    edit(&dst);
    dst
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &p).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn every_bad_input_gets_a_clear_error_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    split_oracle_data(&root);
    let r = s(&root).to_string();
    let gt = |m: &Path| -> Vec<String> {
        strs(&[
            "gt-train",
            "--artifacts",
            &r,
            "--model",
            s(m),
            "--batch",
            "4",
            "--max-ctx",
            "48",
        ])
    };
    let mut cases: Vec<Case> = Vec::new();
    let mut case = |name: &'static str, args: Vec<String>, code: i32, needles: &[&str]| {
        cases.push(Case {
            name,
            args,
            code,
            needles: strs(needles),
        })
    };

    // --- Checkpoints and tokenizer files (gt-train --model).
    let m = model_copy(d, "no-config", |p| {
        std::fs::remove_file(p.join("config.json")).unwrap()
    });
    case(
        "checkpoint without config.json",
        gt(&m),
        74,
        &["no-config", "config.json"],
    );
    let m = model_copy(d, "config-not-json", |p| {
        std::fs::write(p.join("config.json"), "{oops").unwrap()
    });
    case(
        "config.json is not JSON",
        gt(&m),
        65,
        &["config-not-json/config.json"],
    );
    let m = model_copy(d, "config-bert", |p| {
        edit_config(p, |v| v["model_type"] = "bert".into())
    });
    case(
        "unsupported model_type",
        gt(&m),
        65,
        &["config-bert", "bert"],
    );
    let m = model_copy(d, "config-no-embd", |p| {
        edit_config(p, |v| {
            v.as_object_mut().unwrap().remove("n_embd");
        })
    });
    case(
        "config.json lacks a field",
        gt(&m),
        65,
        &["config-no-embd", "n_embd"],
    );
    let m = model_copy(d, "config-heads", |p| {
        edit_config(p, |v| v["n_head"] = 7.into())
    });
    case(
        "width not divisible by heads",
        gt(&m),
        65,
        &["config-heads", "n_head"],
    );
    let m = model_copy(d, "no-weights", |p| {
        std::fs::remove_file(p.join("model.safetensors")).unwrap()
    });
    case(
        "checkpoint without weights",
        gt(&m),
        65,
        &["no-weights", "model.safetensors"],
    );
    let m = model_copy(d, "truncated-weights", |p| {
        let f = p.join("model.safetensors");
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    });
    case(
        "truncated safetensors",
        gt(&m),
        65,
        &["truncated-weights/model.safetensors"],
    );
    let m = model_copy(d, "garbage-weights", |p| {
        std::fs::write(p.join("model.safetensors"), [0xffu8; 64]).unwrap()
    });
    case(
        "safetensors of garbage",
        gt(&m),
        65,
        &["garbage-weights/model.safetensors"],
    );
    let m = model_copy(d, "missing-tensor", |p| {
        edit_tensors(p, |t| {
            t.remove("transformer.h.0.attn.c_attn.weight");
        })
    });
    case(
        "a tensor missing",
        gt(&m),
        65,
        &["missing-tensor", "transformer.h.0.attn.c_attn.weight"],
    );
    let m = model_copy(d, "wrong-shape", |p| {
        edit_tensors(p, |t| {
            t.insert(
                "transformer.h.0.mlp.c_fc.bias".into(),
                Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            );
        })
    });
    case(
        "a tensor of the wrong shape",
        gt(&m),
        65,
        &["wrong-shape", "transformer.h.0.mlp.c_fc.bias", "shape"],
    );
    let m = model_copy(d, "nan-weight", |p| {
        edit_tensors(p, |t| {
            let w = &t["transformer.ln_f.weight"];
            let n = w.dim(0).unwrap();
            let mut v = vec![1f32; n];
            v[n - 1] = f32::NAN;
            t.insert(
                "transformer.ln_f.weight".into(),
                Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
            );
        })
    });
    case(
        "a NaN weight",
        gt(&m),
        65,
        &["nan-weight", "transformer.ln_f.weight", "non-finite"],
    );
    let m = model_copy(d, "int-weight", |p| {
        edit_tensors(p, |t| {
            let w = t["transformer.ln_f.weight"].to_dtype(DType::U32).unwrap();
            t.insert("transformer.ln_f.weight".into(), w);
        })
    });
    case(
        "an integer weight",
        gt(&m),
        65,
        &["int-weight", "transformer.ln_f.weight", "float"],
    );
    let m = model_copy(d, "bad-index", |p| {
        std::fs::remove_file(p.join("model.safetensors")).unwrap();
        std::fs::write(
            p.join("model.safetensors.index.json"),
            r#"{"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
    });
    case(
        "a shard index naming a missing shard",
        gt(&m),
        65,
        &["model-00001-of-00002.safetensors"],
    );
    let m = model_copy(d, "no-tokenizer", |p| {
        std::fs::remove_file(p.join("tokenizer.json")).unwrap()
    });
    case(
        "checkpoint without tokenizer",
        gt(&m),
        65,
        &["no-tokenizer", "tokenizer"],
    );
    let m = model_copy(d, "tokenizer-not-json", |p| {
        std::fs::write(p.join("tokenizer.json"), "[1, 2").unwrap()
    });
    case(
        "tokenizer.json is not a tokenizer",
        gt(&m),
        65,
        &["tokenizer-not-json/tokenizer.json"],
    );
    case(
        "model folder that does not exist",
        gt(&d.join("nowhere")),
        74,
        &["nowhere"],
    );

    // --- Data files (split).
    let split = |gt: &Path| -> Vec<String> {
        let good = d.join("good.jsonl");
        write_lines(&good, &hh_records("g", 5));
        strs(&[
            "split",
            "--artifacts",
            s(&d.join("split-root")),
            "--gt",
            s(gt),
            "--w2s",
            s(&good),
            "--test",
            s(&good),
        ])
    };
    case(
        "data file that does not exist",
        split(&d.join("absent.jsonl")),
        74,
        &["absent.jsonl"],
    );
    let f = d.join("empty.jsonl");
    std::fs::write(&f, "").unwrap();
    case("empty data file", split(&f), 65, &["empty.jsonl"]);
    let f = d.join("binary.jsonl");
    std::fs::write(&f, [0xc3u8, 0x28, 0xff, 0x00, 0x10]).unwrap();
    case(
        "binary data file",
        split(&f),
        65,
        &["binary.jsonl", "line 1"],
    );
    let f = d.join("array.jsonl");
    std::fs::write(&f, "[1, 2, 3]\n").unwrap();
    case(
        "a JSON array instead of a record",
        split(&f),
        65,
        &["array.jsonl", "line 1"],
    );
    let f = d.join("truncated.parquet");
    std::fs::write(&f, b"PAR1\x00\x00garbage").unwrap();
    case(
        "a truncated Parquet data file",
        split(&f),
        65,
        &["truncated.parquet"],
    );

    // --- Pipeline files (w2s plan).
    let pipe = |name: &str, text: &str| -> Vec<String> {
        let f = d.join(name);
        std::fs::write(&f, text).unwrap();
        strs(&["plan", s(&f)])
    };
    let fixture = fixture_model("gpt2").display().to_string();
    let good_pipeline = format!(
        "name = \"p\"\nartifacts = \"{}\"\n[data]\nsource = \"sample\"\n[[model]]\nid = \"a\"\npath = \"{fixture}\"\n[[model]]\nid = \"b\"\npath = \"{fixture}\"\n[grid]\nweak = [\"a\"]\nstrong = [\"b\"]\n",
        s(&d.join("pipe-root"))
    );
    case(
        "pipeline file that is not TOML",
        pipe("broken.toml", "name = \"p\n[data"),
        64,
        &["broken.toml"],
    );
    case(
        "empty pipeline file",
        pipe("empty.toml", ""),
        64,
        &["empty.toml"],
    );
    case(
        "pipeline file with an unknown key",
        pipe(
            "unknown.toml",
            &format!("{good_pipeline}[train]\nlearning_rate = 1e-3\n"),
        ),
        64,
        &["unknown.toml", "learning_rate"],
    );
    case(
        "pipeline value of the wrong type",
        pipe(
            "type.toml",
            &format!("{good_pipeline}[train]\nlr = \"fast\"\n"),
        ),
        64,
        &["type.toml", "lr"],
    );
    case(
        "pipeline model folder that does not exist",
        pipe(
            "nomodel.toml",
            &good_pipeline.replacen(&fixture, "/nonexistent/model", 1),
        ),
        66,
        &["nomodel.toml", "/nonexistent/model"],
    );
    case(
        "pipeline grid naming an unknown model",
        pipe(
            "grid.toml",
            &good_pipeline.replace("strong = [\"b\"]", "strong = [\"zz\"]"),
        ),
        64,
        &["grid.toml", "zz"],
    );

    // --- Artifact roots.
    case(
        "an http artifact root",
        strs(&["split", "--artifacts", "http://127.0.0.1:9/x", "--sample"]),
        64,
        &["http://127.0.0.1:9/x", "read-only"],
    );
    let corrupt = d.join("corrupt-root");
    split_oracle_data(&corrupt);
    let part = files_under(&corrupt)
        .into_iter()
        .find(|f| f.starts_with("tables/pairs/"))
        .unwrap();
    let p = corrupt.join(&part);
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&p, b).unwrap();
    case(
        "a corrupted Parquet part in the root",
        strs(&[
            "gt-train",
            "--artifacts",
            s(&corrupt),
            "--model",
            &fixture,
            "--batch",
            "4",
        ]),
        65,
        &[&part, "checksum"],
    );
    let bad_manifest = d.join("manifest-root");
    split_oracle_data(&bad_manifest);
    std::fs::write(bad_manifest.join("manifests/split.json"), "{\"key\": ").unwrap();
    case(
        "a truncated manifest",
        strs(&[
            "gt-train",
            "--artifacts",
            s(&bad_manifest),
            "--model",
            &fixture,
            "--batch",
            "4",
        ]),
        65,
        &["manifests/split.json"],
    );

    let trained = d.join("trained-root");
    split_oracle_data(&trained);
    ok(w2s(&[
        "gt-train",
        "--artifacts",
        s(&trained),
        "--model",
        &fixture,
        "--run-id",
        "ceiling",
        "--batch",
        "4",
        "--max-ctx",
        "48",
    ]));
    let weights = files_under(&trained)
        .into_iter()
        .find(|f| f.starts_with("models/ceiling/") && f.ends_with("model.safetensors"))
        .unwrap();
    let p = trained.join(&weights);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    case(
        "a truncated checkpoint of a trained run",
        strs(&[
            "weak-label",
            "--artifacts",
            s(&trained),
            "--run",
            "ceiling",
            "--max-ctx",
            "48",
        ]),
        65,
        &["model.safetensors", "checksum"],
    );

    // --- Command lines.
    let m = fixture.as_str();
    case(
        "batch of zero",
        strs(&["gt-train", "--artifacts", &r, "--model", m, "--batch", "0"]),
        64,
        &["--batch"],
    );
    case(
        "batch larger than the data",
        strs(&["gt-train", "--artifacts", &r, "--model", m, "--batch", "64"]),
        64,
        &["64"],
    );
    case(
        "a learning rate that is not a number",
        strs(&["gt-train", "--artifacts", &r, "--model", m, "--lr", "fast"]),
        2,
        &["--lr", "fast"],
    );
    case(
        "an unknown objective",
        strs(&[
            "w2s-train",
            "--artifacts",
            &r,
            "--model",
            m,
            "--teacher",
            "x",
            "--objective",
            "bogus",
        ]),
        2,
        &["bogus"],
    );
    case(
        "an unknown subcommand",
        strs(&["train-everything"]),
        2,
        &["train-everything"],
    );
    case(
        "a missing required argument",
        strs(&["gt-train", "--artifacts", &r]),
        2,
        &["--model"],
    );
    case(
        "a negative count",
        strs(&["split", "--artifacts", &r, "--sample", "--n-gt", "-3"]),
        2,
        &["-3"],
    );

    assert!(cases.len() >= 30, "{} cases", cases.len());
    let committed = |root: &Path| -> Vec<String> {
        files_under(root)
            .into_iter()
            .filter(|f| f.starts_with("manifests/"))
            .collect()
    };
    let before = committed(&root);
    let mut failures = Vec::new();
    for c in &cases {
        let (code, err) = run_limited(&c.args);
        let mut why = Vec::new();
        if code != Some(c.code) {
            why.push(format!("exit {code:?}, expected {}", c.code));
        }
        if err.contains("panicked") {
            why.push("panicked".into());
        }
        for n in &c.needles {
            if !err.contains(n.as_str()) {
                why.push(format!("no `{n}` in the message"));
            }
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}\n  {}", c.name, why.join("; "), err.trim()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        committed(&root),
        before,
        "a failed command committed something"
    );
    for root in ["split-root", "pipe-root"] {
        assert!(
            committed(&d.join(root)).is_empty(),
            "{root}: {:?}",
            files_under(&d.join(root))
        );
    }
}
