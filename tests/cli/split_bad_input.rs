//! Bad input to `w2s split`: each case must give one clear error that names the file, the line
//! or row and the field, exit non-zero, and leave nothing behind in the artifact root.

use crate::common::*;
use std::path::Path;

struct Case {
    gt: Vec<u8>,
    gt_name: &'static str,
    extra: Vec<&'static str>,
}

fn good(n: usize) -> Vec<u8> {
    hh_records("g", n).join("\n").into_bytes()
}

/// Runs a pre-split with `gt` as given and good w2s/test files; returns (exit code, stderr, root).
fn run(case: Case) -> (i32, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join(case.gt_name);
    std::fs::write(&gt, &case.gt).unwrap();
    let w2s_f = dir.path().join("w2s.jsonl");
    let test = dir.path().join("test.jsonl");
    std::fs::write(&w2s_f, good(5)).unwrap();
    std::fs::write(&test, good(5)).unwrap();
    let root = dir.path().join("art");
    let mut args = vec![
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        s(&gt),
        "--w2s",
        s(&w2s_f),
        "--test",
        s(&test),
    ];
    args.extend(case.extra.iter().copied());
    let o = w2s(&args);
    (
        o.status.code().unwrap_or(-1),
        stderr(&o),
        files_under(&root),
    )
}

fn bad(lines: &[String]) -> Vec<u8> {
    let mut v = good(2);
    for l in lines {
        v.push(b'\n');
        v.extend_from_slice(l.as_bytes());
    }
    v
}

fn expect(case: Case, needle: &str) {
    let name = case.gt_name;
    let (code, err, left) = run(case);
    assert_ne!(code, 0, "should fail: {err}");
    assert_ne!(code, 101, "panicked: {err}");
    assert!(err.contains(name), "error does not name the file: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear error line: {err}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn jsonl(gt: Vec<u8>) -> Case {
    Case {
        gt,
        gt_name: "gt.jsonl",
        extra: vec![],
    }
}

#[test]
fn invalid_json() {
    expect(
        jsonl(bad(&["{\"chosen\": \"x\", ".into()])),
        "gt.jsonl, line 3, row 2: invalid JSON",
    );
}

#[test]
fn missing_field() {
    expect(
        jsonl(bad(&[
            "{\"chosen\": \"\\n\\nHuman: q\\n\\nAssistant: a\"}".into()
        ])),
        "line 3, row 2, field `rejected`: missing field",
    );
}

#[test]
fn non_string_field() {
    expect(
        jsonl(bad(&["{\"chosen\": 12, \"rejected\": \"x\"}".into()])),
        "line 3, row 2, field `chosen`: expected a string, found a number",
    );
}

#[test]
fn invalid_utf8() {
    let mut gt = good(2);
    gt.extend_from_slice(b"\n{\"chosen\": \"\xc3\x28\", \"rejected\": \"x\"}");
    expect(jsonl(gt), "line 3, row 2: invalid UTF-8");
}

#[test]
fn truncated_gzip() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&good(50)).unwrap();
    let mut gz = enc.finish().unwrap();
    gz.truncate(gz.len() / 2);
    expect(
        Case {
            gt: gz,
            gt_name: "gt.jsonl.gz",
            extra: vec![],
        },
        "truncated or corrupt gzip data",
    );
}

#[test]
fn empty_response() {
    let line = serde_json::json!({
        "chosen": "\n\nHuman: q\n\nAssistant:",
        "rejected": "\n\nHuman: q\n\nAssistant: a",
    });
    expect(
        jsonl(bad(&[line.to_string()])),
        "line 3, row 2, field `chosen`: empty response",
    );
}

#[test]
fn chosen_identical_to_rejected() {
    expect(
        jsonl(bad(&[hh_line("q", "same", "same")])),
        "line 3, row 2, field `rejected`: identical to `chosen`",
    );
}

#[test]
fn no_assistant_turn() {
    let line = serde_json::json!({"chosen": "hello", "rejected": "\n\nHuman: q\n\nAssistant: a"});
    expect(
        jsonl(bad(&[line.to_string()])),
        "line 3, row 2, field `chosen`: no",
    );
}

#[test]
fn unknown_file_type() {
    expect(
        Case {
            gt: good(5),
            gt_name: "gt.csv",
            extra: vec![],
        },
        "unknown file type",
    );
}

#[test]
fn fewer_rows_than_requested() {
    expect(
        Case {
            gt: good(5),
            gt_name: "gt.jsonl",
            extra: vec!["--n-gt", "10"],
        },
        "has 5 usable rows, fewer than the 10 that --n-gt asks for",
    );
}

#[test]
fn null_in_parquet() {
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("chosen", DataType::Utf8, true),
        Field::new("rejected", DataType::Utf8, true),
    ]));
    let t = "\n\nHuman: q\n\nAssistant: a";
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some(t), Some(t)])),
            Arc::new(StringArray::from(vec![
                Some("\n\nHuman: q\n\nAssistant: b"),
                None,
            ])),
        ],
    )
    .unwrap();
    let bytes = w2s::store::encode_parquet(&batch).unwrap().to_vec();
    expect(
        Case {
            gt: bytes,
            gt_name: "gt.parquet",
            extra: vec![],
        },
        "gt.parquet, row 1, field `rejected`: null value",
    );
}

#[test]
fn unwritable_artifact_root() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let root = blocker.join("art");
    let o = w2s(&["split", "--sample", "--artifacts", s(&root)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(
        err.contains("artifact root") && err.contains("not-a-dir"),
        "{err}"
    );
    assert!(!Path::new(&root).exists());
}

#[test]
fn bad_arguments_are_clear() {
    let o = w2s(&["split", "--sample", "--input", "x.jsonl"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("exactly one data source"),
        "{}",
        stderr(&o)
    );
    let o = w2s(&["split", "--gt", "x.jsonl"]);
    assert!(stderr(&o).contains("needs all of --gt, --w2s and --test"));
    let o = w2s(&[
        "split",
        "--input",
        "/nonexistent/x.jsonl",
        "--n-gt",
        "1",
        "--n-w2s",
        "1",
        "--n-test",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(74));
    assert!(
        stderr(&o).contains("/nonexistent/x.jsonl"),
        "{}",
        stderr(&o)
    );
}
