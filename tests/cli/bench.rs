//! `w2s bench parity`: the GPU check's parity command, run on the CPU (bf16 mixed precision
//! against f32), its JSON and its exit status.

use crate::common::*;

#[test]
fn parity_passes_in_bf16_and_fails_below_bf16_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("parity.json");
    let (gpt2, llama) = (fixture_model("gpt2"), fixture_model("llama"));
    let args = |tol: Option<&'static str>| {
        let mut a = vec![
            "--engine",
            "autograd",
            "bench",
            "parity",
            "--dtype",
            "bf16",
            "--out",
            s(&json),
            "--model",
            s(&gpt2),
            s(&llama),
        ];
        if let Some(t) = tol {
            a.extend(["--tolerance", t]);
        }
        a
    };
    let table = ok(w2s(&args(None)));
    assert!(
        table.contains("| policy | cpu | bf16 | autograd |"),
        "{table}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "two checkpoints, two probes");
    for r in rows {
        assert_eq!(r["pass"], true, "{r}");
        assert!(r["params"].as_u64().unwrap() > 10, "{r}");
        assert!(r["worst_error"].as_f64().unwrap() > 0.0, "bf16 ran: {r}");
        assert!(r["missing"].as_array().unwrap().is_empty(), "{r}");
    }
    // Tighter than bf16's rounding: the command fails and names what failed.
    let o = w2s(&args(Some("1e-6")));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("parity failed for") && e.contains("(policy)"),
        "{e}"
    );
}

#[test]
fn parity_refuses_an_unknown_dtype() {
    let gpt2 = fixture_model("gpt2");
    let o = w2s(&["bench", "parity", "--dtype", "f8", "--model", s(&gpt2)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("f8"), "{}", stderr(&o));
}
