//! `w2s sql`: queries from the command line and from files, bound parameters, output formats.

use crate::common::*;

#[test]
fn query_file_params_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let q = dir.path().join("count.sql");
    std::fs::write(
        &q,
        "-- pairs of one split\nselect count(*) as n from pairs where split = $split and split_index < $limit\n",
    )
    .unwrap();
    let out = ok(w2s(&[
        "sql",
        s(&q),
        "--artifacts",
        s(&root),
        "--param",
        "split=gt",
        "--param",
        "limit=10",
    ]));
    assert!(out.contains("| 10 |"), "{out}");
    let csv = dir.path().join("out/result.csv");
    ok(w2s(&[
        "sql",
        "--file",
        s(&q),
        "--artifacts",
        s(&root),
        "--param",
        "split=test",
        "--param",
        "limit=100",
        "--output",
        s(&csv),
    ]));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "n\n32\n");
    let pq = dir.path().join("result.parquet");
    ok(w2s(&[
        "sql",
        "--artifacts",
        s(&root),
        "--output",
        s(&pq),
        "select split, count(*) as n from pairs group by split order by split",
    ]));
    let batches = w2s::store::decode_parquet(std::fs::read(&pq).unwrap().into()).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
}

#[test]
fn injection_through_params_is_just_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let out = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&root),
        "--format",
        "csv",
        "--param",
        "split=gt' or '1'='1",
        "select count(*) as n from pairs where split = $split",
    ]));
    assert_eq!(out, "n\n0\n");
}

#[test]
fn unknown_table_lists_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("art");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    let o = w2s(&["sql", "--artifacts", s(&root), "select * from scores"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tables in this artifact root: pairs"),
        "{}",
        stderr(&o)
    );
}
