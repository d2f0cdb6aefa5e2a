//! `w2s run` and `w2s plan`: a small grid on the embedded world run end to end, skipped when up
//! to date, partly redone after an output is deleted or the file changes, killed with SIGKILL
//! during training and resumed to the same tables as an uninterrupted `-j 2` run; the lock;
//! every pipeline in pipelines/ planned offline; bad files named by key; the quickstart itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{files_under, ok, s, stderr, stdout, w2s};

/// A quickstart-shaped grid small enough for a test: 24 entities, two tiny pretrained rungs.
fn mini(root: &Path, objectives: &str) -> String {
    mini_with(root, objectives, r#"["rm"]"#)
}

fn mini_with(root: &Path, objectives: &str, scenarios: &str) -> String {
    mini_at(s(root), objectives, scenarios)
}

/// The mini grid with its artifacts at `root` (a path or an s3:// URL).
pub fn mini_at(root: &str, objectives: &str, scenarios: &str) -> String {
    format!(
        r#"
name = "mini"
artifacts = "{}"
[data]
source = "world"
[data.world]
entities = 24
statements = 600
[[model]]
id = "a"
pretrain = {{ layers = 1, embd = 16, heads = 2, ctx = 32, epochs = 1 }}
[[model]]
id = "b"
pretrain = {{ layers = 1, embd = 32, heads = 2, ctx = 32, epochs = 2 }}
[train]
batch = 4
micro_batch = 4
lr = 3e-3
schedule = "constant"
epochs = 3
max_ctx = 48
save_every = 1
[grid]
scenarios = {scenarios}
weak = ["a"]
strong = ["b"]
objectives = {objectives}
[analysis]
bootstrap = 50
"#,
        root
    )
}

fn write_mini(dir: &Path, root: &Path, objectives: &str) -> PathBuf {
    let file = dir.join("mini.toml");
    std::fs::write(&file, mini(root, objectives)).unwrap();
    file
}

/// Step ids the output says were started.
fn started(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_once("] ").map(|(_, r)| r))
        .filter_map(|r| r.split_once(": w2s ").map(|(id, _)| id.to_string()))
        .collect()
}

fn run(file: &Path) -> String {
    ok(w2s(&["run", s(file)]))
}

/// `w2s ARGS` with `--set S` for each of `sets`: its stdout (it must succeed).
fn w2s_with_sets(args: &[&str], sets: &[String]) -> String {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for x in sets {
        v.extend(["--set".to_string(), x.clone()]);
    }
    ok(w2s(&v.iter().map(String::as_str).collect::<Vec<_>>()))
}

fn query(root: &Path, q: &str) -> String {
    ok(w2s(&["sql", "--artifacts", s(root), "--format", "csv", q]))
}

/// The tables two runs must agree on (timing columns aside).
const SAME: &[&str] = &[
    "select * from pairs order by pair_id",
    "select * from knowledge order by model_id, entity",
    "select * from labels order by run_id, split_index",
    "select * from scores order by run_id, split_index",
    "select run_id, step, loss, lr, accuracy, pairs, tokens from train_log order by run_id, step",
    "select run_id, stage, objective, teacher, alpha, seed, settings, fingerprint, steps, tokens, final_loss from runs order by run_id",
    "select * from analysis_summary order by 1, 2, 3, 4, 5",
];

#[test]
fn a_grid_runs_then_skips_and_redoes_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_mini(dir.path(), &root, r#"["none", "explicit"]"#);

    let out = run(&file);
    let first = started(&out);
    assert_eq!(first.len(), 13, "{out}");
    assert!(out.contains("mini: 13 steps ran, 0 up to date"), "{out}");
    assert_eq!(
        query(&root, "select count(distinct run_id) from scores"),
        "count(DISTINCT scores.run_id)\n4\n"
    );
    assert!(files_under(&root).iter().any(|f| f.ends_with("index.html")));

    // Again: nothing runs.
    let out = run(&file);
    assert!(started(&out).is_empty(), "{out}");
    assert!(out.contains("mini: all 13 steps up to date"), "{out}");
    let dry = ok(w2s(&["run", s(&file), "--dry-run"]));
    assert!(dry.contains("(13 up to date, 0 to run"), "{dry}");

    // Delete one stage's output file: that stage runs again; what it feeds is unchanged
    // (identical bytes), so nothing else does.
    let scores: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|f| f.starts_with("tables/scores/") && f.contains("w2s-a-b-none"))
        .collect();
    assert_eq!(scores.len(), 1, "{scores:?}");
    std::fs::remove_file(root.join(&scores[0])).unwrap();
    let dry = ok(w2s(&["run", s(&file), "--dry-run"]));
    assert!(
        dry.contains("(11 up to date, 1 to run, 1 to check after their inputs)"),
        "{dry}"
    );
    assert!(
        dry.contains("why: outputs missing: score/w2s-a-b-none/test")
            && dry.contains("why: `score:w2s-a-b-none` runs first"),
        "{dry}"
    );
    let out = run(&file);
    assert_eq!(started(&out), vec!["score:w2s-a-b-none"], "{out}");

    // A checkpoint file of the teacher's ceiling: its training reruns, its labels read the
    // same bytes, so the students stay.
    let ckpt: Vec<String> = files_under(&root)
        .into_iter()
        .filter(|f| f.starts_with("models/gt-a/") && f.ends_with(".safetensors"))
        .collect();
    std::fs::remove_file(root.join(&ckpt[0])).unwrap();
    let out = run(&file);
    assert_eq!(started(&out), vec!["gt-train:gt-a"], "{out}");

    // A manifest: the same.
    std::fs::remove_file(root.join("manifests/weak-label/gt-a/w2s.json")).unwrap();
    let out = run(&file);
    assert_eq!(started(&out), vec!["weak-label:gt-a"], "{out}");

    // A new objective in the file: its student, its score and the report.
    let file = write_mini(dir.path(), &root, r#"["none", "explicit", "implicit"]"#);
    let out = run(&file);
    assert_eq!(
        started(&out),
        vec![
            "w2s-train:w2s-a-b-implicit",
            "score:w2s-a-b-implicit",
            "report"
        ],
        "{out}"
    );

    // --target with --force: that step only (its inputs are up to date).
    let out = ok(w2s(&["run", s(&file), "--target", "score:gt-b", "--force"]));
    assert_eq!(
        started(&out),
        vec!["split", "pretrain:b", "gt-train:gt-b", "score:gt-b"],
        "{out}"
    );
    let o = w2s(&["run", s(&file), "--target", "nope"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("--target nope"), "{}", stderr(&o));
}

/// `grid.seeds` replicates whole cells: each seed has its own ceilings, labels and students,
/// and every analysis cell pools the seeds (a t interval over them), none dropped.
#[test]
fn seeds_replicate_whole_cells_and_every_seed_counts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("mini.toml");
    let text = mini(&root, r#"["none", "explicit"]"#)
        .replace("objectives = [", "seeds = [0, 1]\nobjectives = [");
    std::fs::write(&file, text).unwrap();
    run(&file);
    assert_eq!(
        query(
            &root,
            "select run_id, seed, teacher from runs where stage = 'gt-train' order by run_id"
        ),
        "run_id,seed,teacher\ngt-a,0,\ngt-a-s1,1,\ngt-b,0,\ngt-b-s1,1,\n"
    );
    // Each seed's students learn from that seed's teacher.
    assert_eq!(
        query(
            &root,
            "select run_id, teacher from runs where stage = 'w2s-train' order by run_id"
        ),
        "run_id,teacher\nw2s-a-b-explicit,gt-a\nw2s-a-b-explicit-s1,gt-a-s1\n\
         w2s-a-b-none,gt-a\nw2s-a-b-none-s1,gt-a-s1\n"
    );
    let summary = query(
        &root,
        "select distinct seeds, interval_method from analysis_summary \
         where interval_method != 'none' order by 1, 2",
    );
    assert_eq!(
        summary, "seeds,interval_method\n2,t over seeds\n",
        "{summary}"
    );
    // The ladder's order reaches the analyses (recorded in their settings and table).
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifests/analyze.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["settings"]["model_order"],
        serde_json::json!(["run:a", "run:b"]),
        "{m}"
    );
    assert_eq!(
        query(
            &root,
            "select model, rank from analysis_model_order order by rank"
        ),
        "model,rank\nrun:a,0\nrun:b,1\n"
    );

    // A student of a seed with no ceiling and no no-conflict run of its own: analyze names it
    // instead of leaving it out.
    let plan: serde_json::Value =
        serde_json::from_str(&ok(w2s(&["plan", s(&file), "--json"]))).unwrap();
    let step = (plan["steps"].as_array().unwrap().iter())
        .find(|st| st["id"] == "w2s-train:w2s-a-b-explicit")
        .unwrap();
    let mut argv: Vec<String> = (step["command"].as_array().unwrap().iter().skip(1))
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let at = argv.iter().position(|a| a == "--run-id").unwrap();
    argv[at + 1] = "orphan".into();
    argv.extend(["--seed".into(), "7".into()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    ok(w2s(&argv));
    let out = w2s(&["analyze", "--artifacts", s(&root)]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("orphan (no strong ceiling, no no-conflict run)"),
        "{err}"
    );
}

#[test]
fn a_killed_run_resumes_to_the_same_tables_and_holds_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let file_a = dir.path().join("a.toml");
    let file_b = dir.path().join("b.toml");
    let objectives = r#"["none", "explicit"]"#;
    std::fs::write(&file_a, mini(&a, objectives)).unwrap();
    std::fs::write(&file_b, mini(&b, objectives)).unwrap();
    // Root a: uninterrupted, two steps at a time (the tables must not depend on it).
    let out = ok(w2s(&["run", s(&file_a), "-j", "2"]));
    assert!(out.contains("mini: 13 steps ran"), "{out}");

    // Kill `w2s run` (SIGKILL) once the first student has saved a training step.
    let mut child = Command::new(env!("CARGO_BIN_EXE_w2s"))
        .args(["run", s(&file_b)])
        .env("W2S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `latest.json` is written after a step's state: from then on a rerun resumes.
    let state = b.join("state/train/w2s-a-b-none/latest.json");
    let student_done = || {
        files_under(&b.join("runner"))
            .iter()
            .any(|f| f.starts_with("steps/w2s-train_w2s-a-b-none"))
    };
    let t0 = Instant::now();
    // A second run on the same root refuses while the first holds it.
    while !b.join("runner/lock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no lock appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let o = w2s(&["run", s(&file_b)]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("another `w2s run`"), "{}", stderr(&o));
    while !state.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no training state appeared"
        );
        assert!(
            !student_done(),
            "the student finished before a saved step was seen"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let record_made = student_done();

    // The rerun (the stage the runner was running died with it: the root is free at once).
    let out = run(&file_b);
    eprintln!("killed during the student's training: {}", !record_made);
    if !record_made {
        assert!(out.contains("resumed at step"), "{out}");
    }
    for q in SAME {
        assert_eq!(query(&a, q), query(&b, q), "{q}");
    }
}

/// Reward modeling, SimPO and DPO in one root: ceilings and references are matched within a
/// scenario, and the analyses keep the scenarios apart (`<model> · <scenario>`).
#[test]
fn three_scenarios_share_a_root_and_stay_apart_in_the_analyses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("mini.toml");
    std::fs::write(
        &file,
        mini_with(
            &root,
            r#"["none", "explicit"]"#,
            r#"["rm", "simpo", "dpo"]"#,
        ),
    )
    .unwrap();
    let out = run(&file);
    // split, 2 pretrain, then per scenario 2 ceilings, 1 label, 2 students, 4 scores; report.
    assert!(out.contains("mini: 31 steps ran"), "{out}");
    let cells = query(
        &root,
        "select distinct weak_model, strong_model from analysis_summary order by 2",
    );
    assert_eq!(
        cells,
        "weak_model,strong_model\nrun:a,run:b\nrun:a · dpo,run:b · dpo\nrun:a · simpo,run:b · simpo\n"
    );
    let methods = query(&root, "select distinct method from scores order by 1");
    assert_eq!(methods, "method\ndpo\nrm\nsimpo\n");
    let page = crate::common::report_page(&root);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("a · simpo") && html.contains("b · dpo"),
        "scenario names in the report"
    );
}

/// High-confidence students (paper §6.1) beside the all-data ones in one root: their own run
/// ids, their own no-conflict reference, their own cells, and the Fig. 9a / 21 comparison.
#[test]
fn high_confidence_students_live_beside_the_all_data_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("mini.toml");
    let text = mini_with(&root, r#"["none", "implicit"]"#, r#"["simpo"]"#)
        .replace("objectives = [", "high_confidence = 0.5\nobjectives = [");
    std::fs::write(&file, text).unwrap();
    run(&file);
    assert_eq!(
        query(
            &root,
            "select run_id from runs where stage = 'w2s-train' order by run_id"
        ),
        "run_id\nw2s-a-b-implicit-hc-simpo\nw2s-a-b-implicit-simpo\n\
         w2s-a-b-none-hc-simpo\nw2s-a-b-none-simpo\n"
    );
    // Each student against the no-conflict run of its own labels.
    assert_eq!(
        query(
            &root,
            "select run_id, reference_run, weak_model from experiments order by run_id"
        ),
        "run_id,reference_run,weak_model\n\
         w2s-a-b-implicit-hc-simpo,w2s-a-b-none-hc-simpo,run:a (confident ≥ 0.5) · simpo\n\
         w2s-a-b-implicit-simpo,w2s-a-b-none-simpo,run:a · simpo\n\
         w2s-a-b-none-hc-simpo,w2s-a-b-none-hc-simpo,run:a (confident ≥ 0.5) · simpo\n\
         w2s-a-b-none-simpo,w2s-a-b-none-simpo,run:a · simpo\n"
    );
    // The high-confidence students trained on fewer pairs than the all-data ones.
    let pairs = query(
        &root,
        "select (select pairs from runs where run_id = 'w2s-a-b-none-hc-simpo') < \
         (select pairs from runs where run_id = 'w2s-a-b-none-simpo') as fewer",
    );
    assert_eq!(pairs, "fewer\ntrue\n");
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    for id in ["high_confidence_accuracy", "high_confidence_deception"] {
        assert!(html.contains(&format!("<figure id=\"{id}\"")), "{id}");
    }
    assert!(html.contains("confident ≥ 0.5"), "the series name");
}

/// Adaptive weighting (paper App. P) as a setting beside any objective: the weighted students
/// have their own ids and their own no-conflict reference, and the report draws Fig. 23.
#[test]
fn adaptive_students_are_measured_against_an_adaptive_reference() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("mini.toml");
    let text = mini(&root, r#"["none", "implicit"]"#)
        .replace("objectives = [", "adaptive = true\nobjectives = [");
    std::fs::write(&file, text).unwrap();
    run(&file);
    assert_eq!(
        query(
            &root,
            "select run_id, reference_run, weak_model from experiments order by run_id"
        ),
        "run_id,reference_run,weak_model\n\
         w2s-a-b-implicit,w2s-a-b-none,run:a\n\
         w2s-a-b-implicit-ad,w2s-a-b-none-ad,run:a (adaptive)\n\
         w2s-a-b-none,w2s-a-b-none,run:a\n\
         w2s-a-b-none-ad,w2s-a-b-none-ad,run:a (adaptive)\n"
    );
    // The weighting changes training: the two no-conflict students differ.
    let differ = query(
        &root,
        "select count(*) as differ from scores a join scores b on a.split_index = b.split_index \
         and a.split = b.split where a.run_id = 'w2s-a-b-none' and b.run_id = 'w2s-a-b-none-ad' \
         and a.margin <> b.margin",
    );
    assert_ne!(differ, "differ\n0\n", "{differ}");
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    for id in ["adaptive_accuracy", "adaptive_deception"] {
        assert!(html.contains(&format!("<figure id=\"{id}\"")), "{id}");
    }
}

/// Bootstrapping on the embedded world (weak -> intermediate -> strong, SimPO, the conflict in
/// the last stage only): the bootstrapped cells sit beside the direct ones in the analyses and
/// the report has the Fig. 9 comparison.
#[test]
fn bootstrapping_runs_on_the_world_and_the_report_compares_it_with_direct_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("boot.toml");
    let text = mini_with(&root, r#"["none", "implicit"]"#, r#"["simpo"]"#)
        .replace(
            "weak = [\"a\"]\nstrong = [\"b\"]",
            "pairs = [[\"a\", \"c\"]]\nintermediates = [\"b\"]",
        )
        .replace(
            "[train]",
            "[[model]]\nid = \"c\"\npretrain = { layers = 1, embd = 32, heads = 2, ctx = 32, epochs = 3 }\n[train]",
        );
    std::fs::write(&file, text).unwrap();
    let out = run(&file);
    assert!(out.contains("mini: "), "{out}");
    let cells = query(
        &root,
        "select distinct weak_model, objective from analysis_summary order by 1, 2",
    );
    assert_eq!(
        cells,
        "weak_model,objective\nrun:a via run:b · simpo,implicit\nrun:a via run:b · simpo,none\nrun:a · simpo,implicit\nrun:a · simpo,none\n"
    );
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    for id in ["bootstrap_accuracy", "bootstrap_deception"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} in the report");
    }
    assert!(html.contains("via b"), "the intermediate names its series");
}

#[test]
fn every_pipeline_plans_offline() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&pipelines)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{names:?}");
    for file in &names {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let root = dir.path().join(name);
        let set = format!("artifacts={}", s(&root));
        // The honesty data is the user's own (not released): the small fixture files stand in.
        let honesty = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/honesty");
        let mut sets = vec![set];
        if name == "paper-honesty" {
            for split in ["gt", "w2s", "test", "helpful"] {
                sets.push(format!(
                    "data.{split}={}",
                    s(&honesty.join(format!("{split}.jsonl")))
                ));
            }
        }
        let dry = w2s_with_sets(&["run", s(file), "--dry-run"], &sets);
        assert!(dry.contains("to run"), "{name}: {dry}");
        let json = w2s_with_sets(&["plan", s(file), "--json"], &sets);
        let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
        let steps = plan["steps"].as_array().unwrap();
        let level = |id: &str| {
            steps.iter().find(|s| s["id"] == id).unwrap()["level"]
                .as_u64()
                .unwrap()
        };
        for step in steps {
            assert_eq!(step["status"], "run", "{name}: {step}");
            assert_eq!(step["command"][0], "w2s");
            for need in step["needs"].as_array().unwrap() {
                assert!(level(need.as_str().unwrap()) < step["level"].as_u64().unwrap());
            }
        }
        assert_eq!(steps.last().unwrap()["id"], "report", "{name}");
        if name == "paper-rm" {
            // 15 stronger pairs x 3 objectives, 6 ceilings, 5 teachers' labels, 51 scores.
            let count = |stage: &str| steps.iter().filter(|s| s["stage"] == stage).count();
            assert_eq!(
                [
                    count("w2s-train"),
                    count("gt-train"),
                    count("weak-label"),
                    count("score")
                ],
                [45, 6, 5, 51]
            );
        }
        if name == "paper-bootstrap" {
            assert!(steps
                .iter()
                .any(|s| s["id"] == "weak-label:w2s-gpt2-large-opt-2.7b-none-simpo:gt"));
            assert!(
                steps
                    .iter()
                    .any(|s| s["id"]
                        == "w2s-train:boot-gpt2-large-opt-6.7b-mistral-7b-implicit-simpo")
            );
        }
    }
    // Nothing was downloaded or trained: the roots hold no manifest.
    assert!(files_under(dir.path())
        .iter()
        .all(|f| !f.contains("manifests/")));
}

#[test]
fn bad_pipeline_files_are_named_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let good = mini(&root, r#"["none"]"#);
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown key",
            good.replace("[grid]", "[grid]\nobjectivs = []"),
            "objectivs",
        ),
        (
            "unknown model",
            good.replace(r#"strong = ["b"]"#, r#"strong = ["c"]"#),
            "grid.strong[0]",
        ),
        (
            "not stronger",
            good.replace(r#"weak = ["a"]"#, r#"weak = ["b"]"#).replace(
                r#"strong = ["b"]"#,
                "strong = [\"a\"]\ncheck_stronger = true",
            ),
            "not stronger",
        ),
        (
            "no data source",
            good.replace("[data]\nsource = \"world\"\n", "")
                .replace("[data.world]\nentities = 24\nstatements = 600\n", ""),
            "data source is missing",
        ),
        (
            "files without gt",
            good.replace("source = \"world\"", "source = \"files\"")
                .replace("[data.world]\nentities = 24\nstatements = 600\n", ""),
            "data.gt",
        ),
        (
            "bad objective",
            good.replace(r#"objectives = ["none"]"#, r#"objectives = ["nope"]"#),
            "grid.objectives[0]",
        ),
        ("syntax", good.replace("[grid]", "[grid"), "line"),
    ];
    for (what, text, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let o = w2s(&["run", s(&file), "--dry-run"]);
        assert_eq!(o.status.code(), Some(64), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("bad.toml") && e.contains(key), "{what}: {e}");
        assert!(stdout(&o).is_empty(), "{what}");
    }
    let o = w2s(&["run", s(&dir.path().join("missing.toml"))]);
    assert_eq!(o.status.code(), Some(74), "{}", stderr(&o));
    assert!(!root.exists(), "nothing was created for a bad file");
}

/// The paper's LoRA pipeline (App. H: SimPO, Llama students trained as LoRA adapters) on the
/// oracle's small data files with fixture checkpoints: GPT-2 and OPT teachers, the tiny Llama
/// student with rank-8 adapters (its ceiling too), no conflict and the implicit one.
#[test]
fn the_lora_pipeline_runs_on_fixture_checkpoints() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rm_run");
    let fixture = |name: &str| s(&crate::common::fixture_model(name)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/paper-llama-lora.toml");
    let sets = [
        format!("artifacts={}", s(&root)),
        format!("data.gt={}", s(&data.join("gt.jsonl"))),
        format!("data.w2s={}", s(&data.join("w2s.jsonl"))),
        format!("data.test={}", s(&data.join("test.jsonl"))),
        format!("data.helpful={}", s(&data.join("helpful.jsonl"))),
        "data.n_gt=12".into(),
        "data.n_w2s=12".into(),
        "data.n_test=6".into(),
        "data.n_helpful=10".into(), // its single-turn rows (the file has 12)
        format!("model.*.path={}", fixture("llama")),
        format!("model.gpt2-large.path={}", fixture("gpt2")),
        format!("model.gpt2-xl.path={}", fixture("opt")),
        r#"grid.strong=["llama-3-8b"]"#.into(),
        r#"grid.objectives=["none", "implicit"]"#.into(),
        "train.device=cpu".into(),
        "score.device=cpu".into(),
        "train.batch=4".into(),
        "train.max_ctx=48".into(),
        "train.lr=1e-3".into(),
        "model.llama-3-8b.train.lr=1e-3".into(),
        "analysis.bootstrap=20".into(),
    ];
    let out = w2s_with_sets(&["run", s(&file)], &sets);
    // 3 ceilings, 2 labels, 4 students, 7 scores, split, report.
    assert!(out.contains("paper-llama-lora: 18 steps ran"), "{out}");
    assert!(out.contains("--lora-rank 8"), "{out}");
    // The Llama runs are LoRA runs: their settings say so and each published an adapter.
    let lora_runs = query(
        &root,
        "select count(*) from runs where settings like '%\"r\":8%'",
    );
    assert_eq!(lora_runs, "count(*)\n5\n", "the ceiling and 4 students");
    let adapters = files_under(&root)
        .into_iter()
        .filter(|f| f.ends_with("-adapter/adapter_model.safetensors"))
        .count();
    assert_eq!(adapters, 5);
    let tests: usize = query(&root, "select count(*) from pairs where split = 'test'")
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        query(&root, "select count(*) from scores"),
        format!("count(*)\n{}\n", 7 * tests)
    );
}

/// The paper's reward-modeling, SimPO and DPO pipelines on the real HH-RLHF stand-in with tiny
/// fixture checkpoints for the rungs (skipped when ../shared/data is absent, as on a fresh
/// clone): 32 pairs per split, two teachers, one student, no conflict and the explicit one
/// (the stand-in has no helpful pairs).
#[test]
fn paper_pipelines_run_on_the_hh_stand_in_with_fixture_checkpoints() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/hh-single-turn");
    if !data.join("harmless_test.jsonl").exists() {
        eprintln!("skipped: {} is not here", data.display());
        return;
    }
    let fixture = |name: &str| s(&crate::common::fixture_model(name)).to_string();
    for name in ["paper-rm", "paper-simpo", "paper-dpo"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.toml"));
        let sets = [
            format!("artifacts={}", s(&root)),
            format!("data.gt={}", s(&data.join("harmless_train_gt.jsonl"))),
            format!("data.w2s={}", s(&data.join("harmless_train_w2s.jsonl"))),
            format!("data.test={}", s(&data.join("harmless_test.jsonl"))),
            "data.helpful=".into(),
            // One checkpoint for every rung, then a different family for each rung used (the
            // analyses tell ceilings apart by their base model).
            format!("model.*.path={}", fixture("gpt2")),
            format!("model.gpt2-medium.path={}", fixture("opt")),
            format!("model.gpt2-large.path={}", fixture("llama")),
            "data.n_gt=32".into(),
            "data.n_w2s=32".into(),
            "data.n_test=32".into(),
            r#"grid.weak=["gpt2", "gpt2-medium"]"#.into(),
            r#"grid.strong=["gpt2-large"]"#.into(),
            r#"grid.objectives=["none", "explicit"]"#.into(),
            "grid.alphas=[0.5]".into(),
            "train.device=cpu".into(),
            "score.device=cpu".into(),
            "train.max_ctx=64".into(),
            "train.lr=1e-4".into(),
            "analysis.bootstrap=50".into(),
        ];
        let out = w2s_with_sets(&["run", s(&file)], &sets);
        // 3 ceilings, 2 labels, 4 students, 7 scores, split, report.
        assert!(out.contains(&format!("{name}: 18 steps ran")), "{out}");
        assert_eq!(
            query(&root, "select count(*) from scores"),
            "count(*)\n224\n"
        );
        assert!(
            files_under(&root).iter().any(|f| f.ends_with("index.html")),
            "{name}"
        );
    }
}

/// The paper's honesty pipeline (App. O) on small explicit-column files (prompt / chosen /
/// rejected in plain text: knowable questions answered, unknowable ones declined) with
/// fixture checkpoints: every run records the honesty dimension and trains and scores on the
/// honesty splits, and the report names its cells by the dimension.
#[test]
fn the_honesty_pipeline_runs_on_explicit_columns_with_fixture_checkpoints() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/honesty");
    let fixture = |name: &str| s(&crate::common::fixture_model(name)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/paper-honesty.toml");
    let mut sets = vec![format!("artifacts={}", s(&root))];
    for split in ["gt", "w2s", "test", "helpful"] {
        sets.push(format!(
            "data.{split}={}",
            s(&data.join(format!("{split}.jsonl")))
        ));
        sets.push(format!("data.n_{split}=8"));
    }
    sets.extend([
        format!("model.*.path={}", fixture("gpt2")),
        format!("model.gpt2-medium.path={}", fixture("opt")),
        format!("model.gpt2-large.path={}", fixture("llama")),
        r#"grid.weak=["gpt2", "gpt2-medium"]"#.into(),
        r#"grid.strong=["gpt2-medium", "gpt2-large"]"#.into(),
        "train.device=cpu".into(),
        "score.device=cpu".into(),
        "train.max_ctx=64".into(),
        "train.lr=1e-4".into(),
        "train.batch=4".into(),
        "analysis.bootstrap=50".into(),
    ]);
    let out = w2s_with_sets(&["run", s(&file)], &sets);
    // 3 ceilings, 2 labels, 6 students, 9 scores, split, report.
    assert!(out.contains("paper-honesty: 22 steps ran"), "{out}");
    assert_eq!(
        query(
            &root,
            "select split, count(*) as n from pairs group by split order by split"
        ),
        "split,n\nhonesty-gt,8\nhonesty-helpful,8\nhonesty-test,8\nhonesty-w2s,8\n"
    );
    assert_eq!(
        query(
            &root,
            "select count(*) as runs, sum(case when settings like '%\"dimension\":\"honesty\"%' then 1 else 0 end) as honest, sum(case when run_id like '%-honesty' then 1 else 0 end) as named from runs"
        ),
        "runs,honest,named\n9,9,9\n"
    );
    assert_eq!(
        query(&root, "select distinct split from scores"),
        "split\nhonesty-test\n"
    );
    let cells = query(
        &root,
        "select distinct weak_model, strong_model, objective from analysis_summary order by 1, 2, 3",
    );
    assert_eq!(cells.lines().count(), 1 + 6, "{cells}");
    assert!(
        cells
            .lines()
            .skip(1)
            .all(|l| l.matches(" · honesty simpo").count() == 2),
        "{cells}"
    );
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    assert!(
        html.contains("gpt2 · honesty simpo"),
        "the cells name the dimension"
    );
}

/// One root of the paper's reward-modeling pipeline with fixture checkpoints and the embedded
/// world, grown to hold every kind of student: direct, high-confidence (the preference
/// scenario of the same grid), adaptive (reward modeling), bootstrapped through every model
/// between a pair, and two alphas of the explicit objective. Its report draws every figure of
/// the paper that such a root has data for, models in the ladder's order. (The fixture models
/// are random, so their confidences sit near 0.5: the thresholds are lowered to match.)
#[test]
fn one_root_holds_every_kind_of_student_and_the_report_draws_every_figure() {
    let fixture = |name: &str| s(&crate::common::fixture_model(name)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/paper-rm.toml");
    let sets = [
        format!("artifacts={}", s(&root)),
        "data.source=world".into(),
        "data.gt=".into(),
        "data.w2s=".into(),
        "data.test=".into(),
        "data.helpful=".into(),
        "data.helpful_single_turn=false".into(),
        "data.n_gt=32".into(),
        "data.n_w2s=32".into(),
        "data.n_test=64".into(),
        "data.n_helpful=32".into(),
        "data.world.entities=40".into(),
        "data.world.statements=400".into(),
        format!("model.*.path={}", fixture("gpt2")),
        format!("model.gpt2-medium.path={}", fixture("opt")),
        format!("model.gpt2-large.path={}", fixture("llama")),
        r#"grid.scenarios=["rm", "simpo"]"#.into(),
        r#"grid.weak=["gpt2", "gpt2-medium"]"#.into(),
        r#"grid.strong=["gpt2-medium", "gpt2-large"]"#.into(),
        "grid.alphas=[0.5, 1.0]".into(),
        "grid.adaptive=true".into(),
        "grid.high_confidence=0.5".into(),
        r#"grid.intermediates=["*"]"#.into(),
        "train.device=cpu".into(),
        "score.device=cpu".into(),
        "train.max_ctx=48".into(),
        "train.lr=1e-3".into(),
        "train.batch=8".into(),
        "train.micro_batch=8".into(),
        "train.epochs=2".into(),
        "analysis.bootstrap=50".into(),
        "analysis.threshold=0.5".into(),
        "analysis.sweep=[0.5, 0.51, 0.52, 0.53]".into(),
    ];
    let out = w2s_with_sets(&["run", s(&file)], &sets);
    assert!(out.contains("paper-rm: 132 steps ran"), "{out}");
    // Students of every kind, in both scenarios where they apply.
    assert_eq!(
        query(
            &root,
            "select \
               sum(case when run_id like 'boot-%' then 1 else 0 end) as bootstrapped, \
               sum(case when run_id like '%-hc-simpo' then 1 else 0 end) as confident, \
               sum(case when run_id like '%-ad' then 1 else 0 end) as adaptive, \
               sum(case when run_id like '%-a1%' then 1 else 0 end) as alpha_1, \
               count(*) as students \
             from runs where stage = 'w2s-train'"
        ),
        // 3 pairs x 4 settings: rm naive + adaptive, simpo all data + high confidence, plus
        // 4 settings x 2 scenarios bootstrapped; alpha 1 in each kind.
        "bootstrapped,confident,adaptive,alpha_1,students\n8,12,12,14,56\n"
    );
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    for id in [
        "accuracy",                        // Fig. 4
        "deception_grid",                  // Fig. 5, 7
        "absolute_deception_grid",         // Fig. 6, 17, 18
        "deception_vs_area",               // Fig. 8
        "deception_by_strong_gpt2",        // Fig. 8, per weak model
        "high_confidence_deception",       // Fig. 9a
        "bootstrap_deception",             // Fig. 9b, 9c
        "deception_grid_t0_51",            // Fig. 14, 15
        "alpha_deception",                 // Fig. 16
        "confidence_scatter_implicit",     // Fig. 19, 20
        "confidence_scatter_explicit_0_5", // Fig. 19, 20
        "high_confidence_accuracy",        // Fig. 21
        "adaptive_deception",              // Fig. 23
        "adaptive_accuracy",               // Fig. 23
        "case_study",                      // App. Q
        "deception_controls",
        "threshold_sweep",
        "flip_breakdown",
        "training_loss",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} in the report");
    }
    // Capability order (the [[model]] list), not names: gpt2 < opt < llama fixtures.
    let order = query(
        &root,
        "select model from analysis_model_order where model not like '%(%' and model not like '% via %' order by rank",
    );
    let rungs: Vec<String> = order
        .lines()
        .skip(1)
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        rungs,
        [
            "gpt2",
            "opt",
            "llama",
            "gpt2 · simpo",
            "opt · simpo",
            "llama · simpo"
        ],
        "{order}"
    );
    let at = |needle: &str| html.find(needle).unwrap_or(usize::MAX);
    assert!(at("gpt2 → opt") < at("gpt2 → llama") && at("gpt2 → llama") < at("opt → llama"));
}

/// README's main command, on a temporary root: the whole quickstart grid, then a rerun that
/// does nothing. Checks what the quickstart is meant to show: stronger pretrained rungs know
/// more of the world's entities, and the strongest ceiling beats the weakest.
#[test]
fn the_quickstart_runs_end_to_end_and_then_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("quickstart");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.toml");
    let set = format!("artifacts={}", s(&root));
    let out = ok(w2s(&["run", s(&file), "--set", &set]));
    assert!(
        out.contains("quickstart: 83 steps ran, 0 up to date"),
        "{out}"
    );

    let known = query(
        &root,
        "select model_id, sum(case when knows then 1 else 0 end) as known from knowledge group by model_id order by model_id",
    );
    let known: Vec<u64> = known
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(known.len(), 3);
    assert!(
        known[0] < known[1] && known[1] < known[2],
        "entities known: {known:?}"
    );
    let acc = |run: &str| -> f64 {
        let q = format!(
            "select avg(case when correct then 1.0 else 0.0 end) from scores where run_id = '{run}'"
        );
        query(&root, &q).lines().nth(1).unwrap().parse().unwrap()
    };
    let (weak, strong) = (acc("gt-tiny-1"), acc("gt-tiny-3"));
    assert!(strong > weak, "ceilings: weak {weak}, strong {strong}");
    eprintln!("quickstart: entities known {known:?}; ceilings weak {weak}, strong {strong}");
    // Strong enough to read: 960 test pairs, every cell over three seeds with t intervals,
    // and the report says for each conflict cell whether its score clears its controls.
    assert_eq!(
        query(&root, "select count(distinct split_index) as n from scores"),
        "n\n960\n"
    );
    assert_eq!(
        query(
            &root,
            "select min(seeds) as lo, max(seeds) as hi, count(distinct interval_method) as m, min(interval_method) as method from analysis_summary where measure = 'accuracy'"
        ),
        "lo,hi,m,method\n3,3,1,t over seeds\n"
    );
    let html = std::fs::read_to_string(crate::common::report_page(&root)).unwrap();
    assert!(html.contains("Does deception clear its controls?"));
    for id in [
        "deception_controls",
        "deception_grid_t0_7",
        "deception_by_strong_tiny_1",
        "confidence_scatter_implicit",
        "knowledge_truth",
        "case_study",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} in the report");
    }
    crate::common::check_in_chromium(&crate::common::report_page(&root));

    let out = ok(w2s(&["run", s(&file), "--set", &set]));
    assert!(out.contains("quickstart: all 83 steps up to date"), "{out}");

    // A changed setting: every step that would rerun says why, naming the setting (its own,
    // or at the root of the input that changed), and the steps it does not touch stay.
    let dry = ok(w2s(&[
        "run",
        s(&file),
        "--set",
        &set,
        "--dry-run",
        "--set",
        "train.lr=2e-3",
    ]));
    assert!(
        dry.contains("(4 up to date, 79 to run, 0 to check after their inputs)"),
        "{dry}"
    );
    assert_eq!(rerun_reasons(&dry, "--lr 0.002 (was 0.001)"), 79, "{dry}");
}

/// How many steps of a plan table run, each with a `why:` line that contains `cause`.
fn rerun_reasons(plan: &str, cause: &str) -> usize {
    let lines: Vec<&str> = plan.lines().collect();
    let mut n = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.split_whitespace().nth(2) == Some("run") {
            let why = lines.get(i + 1).copied().unwrap_or_default();
            assert!(why.trim_start().starts_with("why:"), "{l}\n{why}");
            assert!(why.contains(cause), "{l}\n{why}");
            n += 1;
        }
    }
    n
}

/// `w2s plan --format slurm` run through a stand-in `sbatch` that executes each job array's
/// tasks at submission (so afterok holds by construction) and records its arguments: the
/// tables equal those of a local `w2s run`, and each level depends on the job before it.
/// (A real single-node Slurm cluster: scripts/slurm-check.sh, docs/reliability.md.)
#[test]
fn a_slurm_plan_run_as_job_arrays_gives_the_local_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let objectives = r#"["none", "explicit"]"#;
    let file_a = dir.path().join("a.toml");
    let file_b = dir.path().join("b.toml");
    std::fs::write(&file_a, mini(&a, objectives)).unwrap();
    std::fs::write(&file_b, mini(&b, objectives)).unwrap();
    run(&file_a);

    let script = ok(w2s(&["plan", s(&file_b), "--format", "slurm"]));
    let plan = dir.path().join("plan.sh");
    std::fs::write(&plan, &script).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("sbatch.log");
    std::fs::write(
        bin.join("sbatch"),
        r#"#!/usr/bin/env bash
# Stand-in for sbatch: runs every task of the array now, in order; prints a job id.
set -euo pipefail
echo "$*" >> "$SBATCH_LOG"
array=""; script=""
for a in "$@"; do
    case "$a" in
        --array=*) array=${a#--array=} ;;
        -*) ;;
        *) script=$a ;;
    esac
done
for i in $(seq "${array%-*}" "${array#*-}"); do
    SLURM_ARRAY_TASK_ID=$i bash "$script" >> "$SBATCH_LOG.tasks" 2>&1
done
n=$(wc -l < "$SBATCH_LOG")
echo "$((1000 + n));cluster"
"#,
    )
    .unwrap();
    let status = std::process::Command::new("chmod")
        .args(["+x", s(&bin.join("sbatch"))])
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::process::Command::new("bash")
        .arg(&plan)
        .arg("--partition=test")
        .env(
            "PATH",
            format!("{}:{}", s(&bin), std::env::var("PATH").unwrap()),
        )
        .env("W2S", env!("CARGO_BIN_EXE_w2s"))
        .env("W2S_LOG", "warn")
        .env("JOBS_DIR", dir.path().join("jobs"))
        .env("SBATCH_LOG", &log)
        .output()
        .unwrap();
    let tasks = std::fs::read_to_string(dir.path().join("sbatch.log.tasks")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\n{tasks}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // split, pretrain a+b, gt-train a+b, weak-label, 2 students, scores, report: levels 0..=5.
    assert!(calls.len() >= 5, "{calls:?}");
    assert!(!calls[0].contains("--dependency"), "{}", calls[0]);
    for (k, c) in calls.iter().enumerate().skip(1) {
        assert!(
            c.contains(&format!("--dependency=afterok:{}", 1000 + k)),
            "level call {k}: {c}"
        );
        assert!(c.contains("--partition=test"), "{c}");
    }
    for q in SAME {
        assert_eq!(query(&a, q), query(&b, q), "{q}");
    }
    // Submitted again, everything is up to date: the plan has no step left.
    let again = ok(w2s(&["plan", s(&file_b), "--format", "slurm"]));
    assert!(again.contains("# 0 steps in 0 job arrays"), "{again}");
}
