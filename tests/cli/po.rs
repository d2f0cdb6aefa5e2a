//! The preference scenario against its PyTorch oracle (tools/fixtures/make_po_run.py): SFT then
//! SimPO or DPO for the gt ceiling and for students under each objective, per-step losses and
//! learning rates within 1e-4, the teacher's labels and the test margins.

use std::path::Path;

use crate::common::{fixture_model, ok, s, w2s};
use crate::rm::split_oracle_data;

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/po_run")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The LoRA oracle (tools/fixtures/make_lora_run.py) and the PEFT adapter its runs start from.
fn lora_fixture() -> (serde_json::Value, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora_run");
    let exp = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (exp, dir.join("init").display().to_string())
}

fn expected() -> serde_json::Value {
    fixture("expected.json")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn column(root: &Path, q: &str) -> Vec<f64> {
    ok(w2s(&["sql", "--artifacts", s(root), "--format", "csv", q]))
        .lines()
        .skip(1)
        .map(|l| l.parse().unwrap())
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: w2s {g}, oracle {w} (all: {got:?} vs {want:?})"
        );
    }
}

const ARGS: &[&str] = &[
    "--batch",
    "4",
    "--micro-batch",
    "2",
    "--lr",
    "1e-3",
    "--max-ctx",
    "48",
];

/// The run's logged losses and learning rates against the oracle's SFT then PO phases.
fn check_log(root: &Path, run: &str, want: &serde_json::Value) {
    let q = |col: &str| format!("select {col} from train_log where run_id = '{run}' order by step");
    let mut losses = floats(&want["sft_losses"]);
    losses.extend(floats(&want["po_losses"]));
    let mut lrs = floats(&want["sft_lrs"]);
    lrs.extend(floats(&want["po_lrs"]));
    close(
        &format!("{run} losses"),
        &column(root, &q("loss")),
        &losses,
        1e-4,
    );
    close(&format!("{run} lrs"), &column(root, &q("lr")), &lrs, 1e-12);
}

fn test_margins(root: &Path, run: &str) -> Vec<f64> {
    // The tokenization comes from the checkpoint (w2s.json), as the run was trained.
    ok(w2s(&[
        "score",
        "--artifacts",
        s(root),
        "--run-id",
        run,
        "--max-ctx",
        "48",
    ]));
    column(
        root,
        &format!("select margin from scores where run_id = '{run}' order by split_index"),
    )
}

/// Which fixture model and tokenization a scenario runs with, and further training flags.
struct Setup {
    model: &'static str,
    tokenization: &'static str,
    expected: serde_json::Value,
    extra: Vec<String>,
}

fn scenario(kind: &str) {
    run_scenario(
        kind,
        Setup {
            model: "gpt2",
            tokenization: "joint",
            expected: expected(),
            extra: vec![],
        },
    )
}

fn run_scenario(kind: &str, setup: Setup) {
    let exp = setup.expected;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    split_oracle_data(root);
    let model = fixture_model(setup.model).display().to_string();
    let train = |extra: &[&str]| {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend([
            "--artifacts",
            s(root),
            "--scenario",
            kind,
            "--model",
            &model,
            "--tokenization",
            setup.tokenization,
        ]);
        a.extend(ARGS);
        a.extend(setup.extra.iter().map(String::as_str));
        ok(w2s(&a))
    };
    train(&["gt-train", "--run-id", "weak"]);
    let want = &exp[kind]["gt"];
    check_log(root, "weak", want);
    // DPO margins are sums (larger): the same relative tolerance as the model parity tests.
    let tol = if kind == "dpo" { 1e-3 } else { 1e-4 };
    close(
        "teacher test margins",
        &test_margins(root, "weak"),
        &floats(&want["test_metrics"]),
        tol,
    );

    ok(w2s(&[
        "weak-label",
        "--artifacts",
        s(root),
        "--run",
        "weak",
        "--max-ctx",
        "48",
    ]));
    let labels = column(
        root,
        "select margin from labels where run_id = 'weak' order by split_index",
    );
    close(
        "teacher labels",
        &labels,
        &floats(&want["w2s_metrics"]),
        tol,
    );

    for objective in ["none", "explicit", "implicit"] {
        train(&[
            "w2s-train",
            "--teacher",
            "weak",
            "--objective",
            objective,
            "--run-id",
            objective,
        ]);
        let want = &exp[kind][objective];
        check_log(root, objective, want);
        close(
            &format!("{objective} test margins"),
            &test_margins(root, objective),
            &floats(&want["test_metrics"]),
            tol,
        );
    }
    if kind == "simpo" && exp[kind].get("high_confidence").is_some() {
        // A high-confidence student (implicit conflict): the rows the teacher got right with
        // confidence >= T and the helpful pairs at the same indices.
        let want = &exp[kind]["high_confidence"];
        let t = want["threshold"].as_f64().unwrap().to_string();
        train(&[
            "w2s-train",
            "--teacher",
            "weak",
            "--objective",
            "implicit",
            "--run-id",
            "hc",
            "--high-confidence",
            &t,
        ]);
        check_log(root, "hc", want);
        close(
            "hc test margins",
            &test_margins(root, "hc"),
            &floats(&want["test_metrics"]),
            tol,
        );
    }
    // Every student records its scenario; the scores carry the scenario's method.
    let methods = ok(w2s(&[
        "sql",
        "--artifacts",
        s(root),
        "--format",
        "csv",
        "select distinct method from scores",
    ]));
    assert_eq!(methods, format!("method\n{kind}\n"));
}

#[test]
fn simpo_matches_the_pytorch_oracle() {
    scenario("simpo");
}

#[test]
fn dpo_matches_the_pytorch_oracle() {
    scenario("dpo");
}

#[test]
fn simpo_with_reference_tokenization_matches_the_oracle_on_llama() {
    run_scenario(
        "simpo",
        Setup {
            model: "llama",
            tokenization: "reference",
            expected: fixture("reference_llama.json"),
            extra: vec![],
        },
    );
}

#[test]
fn dpo_with_reference_tokenization_matches_the_oracle_on_llama() {
    run_scenario(
        "dpo",
        Setup {
            model: "llama",
            tokenization: "reference",
            expected: fixture("reference_llama.json"),
            extra: vec![],
        },
    );
}

/// LoRA: SFT then SimPO or DPO training PEFT-initialised adapters on the frozen Llama fixture,
/// against PEFT (per-step losses within 1e-4; DPO's reference is the SFT policy). The run
/// publishes the merged checkpoint, which labelling and scoring read like any other, and the
/// adapter in PEFT's layout, which folded into the base gives the same model.
fn lora_scenario(kind: &str) {
    let (expected, init) = lora_fixture();
    let extra = [
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--lora-init",
        &init,
    ];
    run_scenario(
        kind,
        Setup {
            model: "llama",
            tokenization: "reference",
            expected,
            extra: extra.iter().map(|x| x.to_string()).collect(),
        },
    );
}

#[test]
fn simpo_with_lora_matches_peft_on_llama() {
    lora_scenario("simpo");
}

#[test]
fn dpo_with_lora_matches_peft_on_llama() {
    lora_scenario("dpo");
}

#[test]
fn a_lora_run_publishes_its_adapter_beside_the_merged_checkpoint() {
    let (_, init) = lora_fixture();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    split_oracle_data(&root);
    let llama = fixture_model("llama").display().to_string();
    let mut a = vec![
        "gt-train",
        "--artifacts",
        s(&root),
        "--scenario",
        "simpo",
        "--model",
        &llama,
        "--run-id",
        "lora",
        "--tokenization",
        "reference",
        "--lora-rank",
        "8",
        "--lora-init",
        &init,
    ];
    a.extend(ARGS);
    ok(w2s(&a));
    let models = root.join("models/lora");
    let folders: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let adapter = folders.iter().find(|f| f.ends_with("-adapter")).unwrap();
    let ckpt = folders.iter().find(|f| !f.ends_with("-adapter")).unwrap();
    let adapter = models.join(adapter);
    assert!(adapter.join("adapter_model.safetensors").exists());
    assert!(!models.join(ckpt).join("adapter_config.json").exists());
    // Base + published adapter, folded by `w2s lora-merge`, scores as the run's checkpoint.
    let merged = dir.path().join("merged");
    ok(w2s(&[
        "lora-merge",
        "--model",
        &llama,
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]));
    let run = test_margins(&root, "lora");
    ok(w2s(&[
        "score",
        "--artifacts",
        s(&root),
        "--model",
        s(&merged),
        "--run-id",
        "folded",
        "--tokenization",
        "reference",
        "--max-ctx",
        "48",
    ]));
    let folded = column(
        &root,
        "select margin from scores where run_id = 'folded' order by split_index",
    );
    close("folded adapter margins", &folded, &run, 1e-4);
    // The adapter counts among the run's inputs: another start is another run.
    let o = w2s(&{
        let mut b = a.clone();
        b.retain(|x| *x != "--lora-init" && *x != init.as_str());
        b
    });
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("up to date"),
        "a fresh adapter is a different run: it trains ({out})"
    );
}

/// The reference's separate encoding gives the oracle's ids and masks on every test and
/// helpful side (all three truncation cases of reference-spec §1.7 at max_ctx 48).
#[test]
fn reference_tokenization_matches_the_oracle_ids() {
    let exp = fixture("reference_llama.json");
    let tok =
        w2s::tokenize::Tokenizer::load(&fixture_model("llama").join("tokenizer.json")).unwrap();
    let sides = exp["tokens"].as_array().unwrap();
    let (mut mid_bos, mut fully_scored, mut cut) = (0, 0, 0);
    for x in sides {
        let ids: Vec<u32> = x["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mask: Vec<u32> = x["mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let e = tok
            .encode_pair_side(
                x["prompt"].as_str().unwrap(),
                x["response"].as_str().unwrap(),
                48,
                w2s::tokenize::Tokenization::Reference,
            )
            .unwrap();
        let at = format!("{} row {} {}", x["split"], x["row"], x["side"]);
        assert_eq!(e.ids, ids, "{at}");
        assert_eq!(e.response_mask, mask, "{at}");
        mid_bos += usize::from(ids.iter().skip(1).any(|&i| i == 1));
        fully_scored += usize::from(mask.iter().all(|&m| m == 1));
        cut += usize::from(e.truncated > 0);
    }
    // The fixture covers the cases it is there for.
    assert!(
        mid_bos > 0 && fully_scored > 0 && cut > fully_scored,
        "{mid_bos} {fully_scored} {cut}"
    );
}
