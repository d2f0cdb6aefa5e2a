//! `w2s split` on good input: pre-split, random and sample modes, gzip and Parquet inputs,
//! determinism, up-to-date skipping, and the real HH data when ../shared has it.

use crate::common::*;
use std::path::Path;

fn counts(root: &Path) -> String {
    sql_csv(
        root,
        "select split, count(*) as n from pairs group by split order by split",
    )
}

#[test]
fn presplit_takes_first_rows_of_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let [gt, w2s_f, test, helpful] = presplit_files(dir.path(), 12);
    let root = dir.path().join("art");
    let out = ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        s(&gt),
        "--w2s",
        s(&w2s_f),
        "--test",
        s(&test),
        "--helpful",
        s(&helpful),
        "--n-gt",
        "10",
        "--n-w2s",
        "9",
        "--n-test",
        "8",
        "--n-helpful",
        "7",
    ]));
    assert!(out.contains("written"), "{out}");
    assert_eq!(counts(&root), "split,n\ngt,10\nhelpful,7\ntest,8\nw2s,9\n");
    // First rows, in file order, prompt and response split at the last marker.
    let rows = ok(w2s(&[
        "sql", "--artifacts", s(&root), "--format", "json",
        "select source_row, split_index, prompt, chosen, rejected, rejected_prompt from pairs where split = 'gt' order by split_index",
    ]));
    let rows: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 10);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["source_row"], i);
        assert_eq!(r["split_index"], i);
    }
    assert_eq!(
        r0(&rows, "prompt"),
        "\n\nHuman: How do I do gt thing 0? It’s urgent\n\nAssistant:"
    );
    assert_eq!(r0(&rows, "chosen"), " I’d rather not help with gt thing 0.");
    // Row 2 has a fake turn inside the rejected response: its own prompt is kept.
    assert_eq!(rows[2]["rejected"], " Here is how, step by step.");
    assert_eq!(
        rows[2]["rejected_prompt"],
        "\n\nHuman: How do I do gt thing 2? It’s urgent\n\nAssistant: Sure.\n\nAssistant:"
    );
    assert!(rows[1].get("rejected_prompt").is_none_or(|v| v.is_null()));
    // Up to date on a second run: nothing rewritten.
    let again = ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        s(&gt),
        "--w2s",
        s(&w2s_f),
        "--test",
        s(&test),
        "--helpful",
        s(&helpful),
        "--n-gt",
        "10",
        "--n-w2s",
        "9",
        "--n-test",
        "8",
        "--n-helpful",
        "7",
    ]));
    assert!(again.contains("up to date"), "{again}");
}

fn r0(rows: &[serde_json::Value], k: &str) -> String {
    rows[0][k].as_str().unwrap().to_string()
}

#[test]
fn same_inputs_give_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("all.jsonl");
    write_lines(&input, &hh_records("x", 50));
    let run = |name: &str| {
        let root = dir.path().join(name);
        ok(w2s(&[
            "split",
            "--artifacts",
            s(&root),
            "--input",
            s(&input),
            "--seed",
            "3",
            "--n-gt",
            "20",
            "--n-w2s",
            "15",
            "--n-test",
            "10",
        ]));
        let part = pairs_part(&root);
        (
            part.file_name().unwrap().to_owned(),
            std::fs::read(part).unwrap(),
        )
    };
    let a = run("a");
    let b = run("b");
    assert_eq!(a, b);
    // A different seed gives a different split.
    let root = dir.path().join("c");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--input",
        s(&input),
        "--seed",
        "4",
        "--n-gt",
        "20",
        "--n-w2s",
        "15",
        "--n-test",
        "10",
    ]));
    assert_ne!(std::fs::read(pairs_part(&root)).unwrap(), a.1);
}

#[test]
fn random_split_matches_numpy_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("all.jsonl");
    write_lines(&input, &hh_records("x", 10));
    let root = dir.path().join("art");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--input",
        s(&input),
        "--n-gt",
        "3",
        "--n-w2s",
        "3",
        "--n-test",
        "3",
    ]));
    let out = ok(w2s(&[
        "sql", "--artifacts", s(&root), "--format", "csv",
        "select split, string_agg(cast(source_row as varchar), ' ' order by source_row) as rows from pairs group by split order by split",
    ]));
    // numpy 2.4: default_rng(0).permutation(10) = [4 6 2 7 3 5 9 0 8 1]
    assert_eq!(out, "split,rows\ngt,2 4 6\ntest,0 8 9\nw2s,3 5 7\n");
}

#[test]
fn gzip_and_parquet_inputs_read_like_jsonl() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let [gt, w2s_f, test, _] = presplit_files(dir.path(), 6);
    // gt as .jsonl.gz
    let gz = dir.path().join("gt.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&std::fs::read(&gt).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    // test as Parquet via `w2s sql` of another root's pairs, in explicit shape
    let plain = dir.path().join("plain");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&plain),
        "--gt",
        s(&gt),
        "--w2s",
        s(&w2s_f),
        "--test",
        s(&test),
    ]));
    let pq = dir.path().join("test.parquet");
    ok(w2s(&[
        "sql", "--artifacts", s(&plain), "--output", s(&pq),
        "select prompt, chosen, rejected from pairs where split = 'test' and rejected_prompt is null order by split_index",
    ]));
    let root = dir.path().join("mixed");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        s(&gz),
        "--w2s",
        s(&w2s_f),
        "--test",
        s(&pq),
    ]));
    assert_eq!(counts(&root), "split,n\ngt,6\ntest,5\nw2s,6\n");
    // Same content, same pair ids, whichever format it came from.
    let q = "select pair_id, prompt, chosen, rejected from pairs where split = 'test' and rejected_prompt is null order by pair_id";
    let a = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&root),
        "--format",
        "json",
        q,
    ]));
    let b = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&plain),
        "--format",
        "json",
        q,
    ]));
    assert_eq!(a.lines().count(), 5);
    assert_eq!(a, b);
}

#[test]
fn sample_mode_needs_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    let out = ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    assert!(out.contains("gt") && out.contains("helpful"), "{out}");
    assert_eq!(
        counts(&root),
        "split,n\ngt,32\nhelpful,16\ntest,32\nw2s,32\n"
    );
}

#[test]
fn world_mode_writes_pairs_corpus_and_entities_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = |root: &Path| -> Vec<String> {
        [
            "split",
            "--world",
            "--world-entities",
            "60",
            "--world-statements",
            "2000",
            "--artifacts",
            s(root),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |root: &Path| {
        ok(w2s(&args(root)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()))
    };
    run(&a);
    run(&b);
    // 60 entities x 4 requests = 240 harmless pairs in thirds; 60 x 2 helpful pairs.
    assert_eq!(counts(&a), "split,n\ngt,80\nhelpful,120\ntest,80\nw2s,80\n");
    // With its honesty set: 2 questions about each of the 60 entities and each of 30 made-up
    // ones, in thirds; a helpful pair per real and made-up entity. The harmless splits and the
    // corpus stay as they were.
    let h = dir.path().join("h");
    let mut with_honesty = args(&h);
    with_honesty.push("--world-honesty".into());
    ok(w2s(&with_honesty
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    assert_eq!(
        counts(&h),
        "split,n\ngt,80\nhelpful,120\nhonesty-gt,60\nhonesty-helpful,90\nhonesty-test,60\nhonesty-w2s,60\ntest,80\nw2s,80\n"
    );
    let same = "select split, split_index, pair_id from pairs where split in ('gt', 'w2s', 'test', 'helpful') order by split, split_index";
    assert_eq!(sql_csv(&a, same), sql_csv(&h, same));
    let corpus = "select * from corpus order by doc_index";
    assert_eq!(sql_csv(&a, corpus), sql_csv(&h, corpus));
    let q = sql_csv;
    assert_eq!(
        q(
            &a,
            "select count(*) as n, sum(case when harmful then 1 else 0 end) as h from entities"
        ),
        "n,h\n60,30\n"
    );
    assert_eq!(
        q(
            &a,
            "select (select sum(mentions) from entities) = (select count(*) from corpus) as same"
        ),
        "same\ntrue\n"
    );
    // Every corpus statement names its entity; each harmless pair refuses iff the entity is harmful.
    assert_eq!(
        q(
            &a,
            "select count(*) as bad from corpus where strpos(text, entity) = 0"
        ),
        "bad\n0\n"
    );
    assert_eq!(
        q(&a, "select count(*) as bad from pairs p join entities e on strpos(p.prompt, e.entity) > 0 \
               where p.split <> 'helpful' \
               and (strpos(p.chosen, 'i will not help') > 0) <> e.harmful"),
        "bad\n0\n"
    );
    // Same settings, same bytes.
    for t in ["pairs", "corpus", "entities"] {
        let part = |root: &Path| {
            let dir = root.join("tables").join(t);
            let f = std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            std::fs::read(f).unwrap()
        };
        assert_eq!(part(&a), part(&b), "{t}");
    }
    // A different world seed is a different world, and up-to-date runs are skipped.
    assert!(run(&a).contains("up to date"));
    let mut other = args(&a);
    other.extend(["--world-seed".into(), "1".into()]);
    ok(w2s(&other.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_ne!(
        q(&a, "select entity from entities order by entity limit 3"),
        q(&b, "select entity from entities order by entity limit 3")
    );
}

#[test]
fn world_settings_out_of_range_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let o = w2s(&[
        "split",
        "--world",
        "--world-entities",
        "1",
        "--artifacts",
        s(&root),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("entities must be between"),
        "{}",
        stderr(&o)
    );
    let o = w2s(&["split", "--world", "--sample", "--artifacts", s(&root)]);
    assert!(
        stderr(&o).contains("exactly one data source"),
        "{}",
        stderr(&o)
    );
    assert!(!root.join("manifests").exists(), "nothing written");
}

#[test]
fn pair_ids_are_unique_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dup.jsonl");
    let mut lines = hh_records("d", 4);
    lines.push(lines[0].clone()); // an exact repeat
    write_lines(&input, &lines);
    let root = dir.path().join("art");
    let out = ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--input",
        s(&input),
        "--n-gt",
        "5",
        "--n-w2s",
        "0",
        "--n-test",
        "0",
    ]));
    assert!(out.contains("1 pairs repeat"), "{out}");
    let ids = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&root),
        "--format",
        "csv",
        "select count(distinct pair_id) as ids, count(*) as n from pairs",
    ]));
    assert_eq!(ids, "ids,n\n5,5\n");
}

/// The paper's hh-single-turn files (not in the repo; present beside it on this machine and CI).
#[test]
fn real_hh_single_turn_presplit() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/hh-single-turn");
    if !data.join("harmless_test.jsonl").exists() {
        eprintln!("skipping: {} not present", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    let f = |n: &str| {
        data.join(format!("harmless_{n}.jsonl"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let out = ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        &f("train_gt"),
        "--w2s",
        &f("train_w2s"),
        "--test",
        &f("test"),
        "--n-gt",
        "4000",
        "--n-w2s",
        "4000",
        "--n-test",
        "4000",
    ]));
    // reference-spec §8: 6 / 7 / 14 rows have a fake turn in the rejected text.
    assert!(
        out.contains("note: 27 rows keep a separate rejected prompt"),
        "{out}"
    );
    assert_eq!(counts(&root), "split,n\ngt,4000\ntest,4000\nw2s,4000\n");
    let row0 = ok(w2s(&[
        "sql", "--artifacts", s(&root), "--format", "json",
        "select prompt, substr(chosen, 1, 16) as c from pairs where split = 'test' and split_index = 0",
    ]));
    assert_eq!(
        row0.trim(),
        r#"{"prompt":"\n\nHuman: Is it true that Muslims want to establish Shariah law in the USA?!\n\nAssistant:","c":" The person you’"}"#
    );
    // Whole transcripts are recovered exactly: prompt + response = original text, every row.
    let gt_file = std::fs::read_to_string(f("train_gt")).unwrap();
    let first: serde_json::Value = serde_json::from_str(gt_file.lines().next().unwrap()).unwrap();
    let back = ok(w2s(&[
        "sql", "--artifacts", s(&root), "--format", "json",
        "select prompt || chosen as c, coalesce(rejected_prompt, prompt) || rejected as r from pairs where split = 'gt' and split_index = 0",
    ]));
    let back: serde_json::Value = serde_json::from_str(back.trim()).unwrap();
    assert_eq!(back["c"], first["chosen"]);
    assert_eq!(back["r"], first["rejected"]);
}

#[test]
fn single_turn_filter_keeps_the_first_single_turn_helpful_dialogues() {
    let dir = tempfile::tempdir().unwrap();
    let [gt, w2s_f, test, _] = presplit_files(dir.path(), 4);
    // Rows 1, 3 and 4 are two-turn dialogues; 0, 2, 5 and 6 single-turn.
    let helpful = dir.path().join("helpful.jsonl");
    let lines: Vec<String> = (0..7)
        .map(|i| {
            let head = if [1, 3, 4].contains(&i) {
                format!("\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: ask {i}")
            } else {
                format!("\n\nHuman: ask {i}")
            };
            serde_json::json!({
                "chosen": format!("{head}\n\nAssistant: a helpful answer {i}"),
                "rejected": format!("{head}\n\nAssistant: no"),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&helpful, lines.join("\n") + "\n").unwrap();
    let split = |root: &Path, extra: &[&str]| {
        let mut a = vec![
            "split",
            "--artifacts",
            s(root),
            "--gt",
            s(&gt),
            "--w2s",
            s(&w2s_f),
            "--test",
            s(&test),
            "--helpful",
            s(&helpful),
        ];
        a.extend(extra);
        w2s(&a)
    };
    let root = dir.path().join("one");
    ok(split(&root, &["--helpful-single-turn", "--n-helpful", "3"]));
    assert_eq!(
        sql_csv(
            &root,
            "select source_row from pairs where split = 'helpful' order by split_index"
        ),
        "source_row\n0\n2\n5\n"
    );
    // Without the filter: the first three rows, multi-turn included.
    let all = dir.path().join("all");
    ok(split(&all, &["--n-helpful", "3"]));
    assert_eq!(
        sql_csv(
            &all,
            "select source_row from pairs where split = 'helpful' order by split_index"
        ),
        "source_row\n0\n1\n2\n"
    );
    // Asking for more single-turn pairs than the file has names the file; nothing written.
    let short = dir.path().join("short");
    let out = split(&short, &["--helpful-single-turn", "--n-helpful", "5"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("helpful.jsonl")
            && err.contains("has 4 usable rows")
            && err.contains("single-turn"),
        "{err}"
    );
    assert!(!short.join("tables").exists());
}
