//! Helpers shared by the CLI tests: running the binary, writing fixture data, checking roots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `w2s` with `args` and extra environment variables.
pub fn w2s_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_w2s"));
    cmd.args(args)
        .env_remove("W2S_ARTIFACTS")
        .env("W2S_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("w2s runs")
}

/// Waits for `child` (stderr piped) at most `limit`; a child still running then is killed and
/// the test fails, naming `what`: a hang is a failure, not a stuck test run.
pub fn wait_limited(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

pub fn w2s(args: &[&str]) -> Output {
    w2s_env(args, &[])
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "w2s failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// One HH-RLHF style JSONL record.
pub fn hh_line(prompt: &str, chosen: &str, rejected: &str) -> String {
    serde_json::json!({
        "chosen": format!("\n\nHuman: {prompt}\n\nAssistant: {chosen}"),
        "rejected": format!("\n\nHuman: {prompt}\n\nAssistant: {rejected}"),
    })
    .to_string()
}

/// `n` distinct HH records with non-ASCII text, a "!" and, at row 2, a fake assistant turn in
/// the rejected response (reference-spec §1.2).
pub fn hh_records(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let rejected = if i == 2 {
                "Sure.\n\nAssistant: Here is how, step by step.".to_string()
            } else {
                format!("Sure, here is how to do {tag} thing {i}!")
            };
            hh_line(
                &format!("How do I do {tag} thing {i}? It’s urgent"),
                &format!("I’d rather not help with {tag} thing {i}."),
                &rejected,
            )
        })
        .collect()
}

/// Writes lines joined by `\n` with no trailing newline (as the reference data files).
pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// Writes gt / w2s / test / helpful JSONL files of `n` rows each into `dir`.
pub fn presplit_files(dir: &Path, n: usize) -> [PathBuf; 4] {
    let names = ["gt", "w2s", "test", "helpful"];
    names.map(|name| {
        let p = dir.join(format!("{name}.jsonl"));
        write_lines(&p, &hh_records(name, n));
        p
    })
}

/// Every file under `root` (relative paths, sorted); empty if `root` does not exist.
pub fn files_under(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The single committed `pairs` part under a local root.
pub fn pairs_part(root: &Path) -> PathBuf {
    let files: Vec<String> = files_under(root)
        .into_iter()
        .filter(|f| f.starts_with("tables/pairs/"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    root.join(&files[0])
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny fixture checkpoint (tools/fixtures/make_fixtures.py).
pub fn fixture_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// `w2s score` of `model` into `root` as `run_id`, with extra environment; returns stdout.
pub fn score(root: &Path, model: &str, run_id: &str, env: &[(&str, String)]) -> String {
    ok(w2s_env(
        &[
            "score",
            "--artifacts",
            s(root),
            "--model",
            model,
            "--run-id",
            run_id,
        ],
        env,
    ))
}

/// The result of `query` over the tables of `root`, as CSV with a header line.
pub fn sql_csv(root: &Path, query: &str) -> String {
    ok(w2s(&[
        "sql",
        "--artifacts",
        s(root),
        "--format",
        "csv",
        query,
    ]))
}

/// How many pairs two scored runs give exactly the same margin, as CSV.
pub fn same_margins(root: &Path, a: &str, b: &str) -> String {
    ok(w2s(&[
        "sql",
        "--artifacts",
        s(root),
        "--format",
        "csv",
        "--param",
        &format!("a={a}"),
        "--param",
        &format!("b={b}"),
        "select count(*) as n from scores x join scores y on x.pair_id = y.pair_id \
         where x.run_id = $a and y.run_id = $b and x.margin = y.margin",
    ]))
}

/// Runs scripts/check-report.sh on a report page when Chromium is installed (CI installs it
/// when it can; without it the page is still checked by the caller's own assertions).
pub fn check_in_chromium(page: &Path) {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !found {
        eprintln!(
            "check_in_chromium: no Chromium on this machine; skipped the browser check of {}",
            page.display()
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-report.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(page)
        .output()
        .expect("bash runs");
    assert!(
        o.status.success(),
        "check-report.sh failed on {}:\n{}\n{}",
        page.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The page of the report published under `root`, as its manifest names it.
pub fn report_page(root: &Path) -> PathBuf {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifests/report.json")).unwrap())
            .unwrap();
    let page = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["path"].as_str())
        .find(|p| p.ends_with("/index.html"))
        .expect("the report manifest names its page");
    root.join(page)
}
