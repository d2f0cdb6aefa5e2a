//! Parity with PyTorch + transformers on the tiny fixtures that
//! tools/fixtures/make_fixtures.py writes to tests/fixtures/models/ (values computed by
//! transformers, never by this code).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

use super::readout::{last_real_index, response_logprobs, reward};
use super::{max_abs_diff, ops, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

struct Expected(HashMap<String, Tensor>);

impl Expected {
    fn load(name: &str) -> Expected {
        let p = fixture(name).join("expected.safetensors");
        Expected(candle_core::safetensors::load(p, &Device::Cpu).unwrap())
    }
    fn t(&self, k: &str) -> &Tensor {
        self.0
            .get(k)
            .unwrap_or_else(|| panic!("fixture has no `{k}`"))
    }
    fn rows(&self, k: &str) -> Vec<Vec<u32>> {
        self.t(k)
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    }
}

/// ||a - b|| / max(||b||, 1e-4). The floor matters only for gradients that are analytically
/// zero: a key-projection bias shifts every score of a query equally, which softmax ignores, so
/// both frameworks give rounding noise (~1e-9) there, while real gradients here are ~1e-2.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num: f32 = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let den: f32 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    num.sqrt() / den.sqrt().max(1e-4)
}

/// Zeroes padded positions of a `[B, T, ...]` tensor.
fn real_only(x: &Tensor, mask: &[Vec<u32>]) -> Tensor {
    let m = ops::mask_tensor(mask, &Device::Cpu).unwrap();
    let mut shape = m.dims().to_vec();
    shape.resize(x.rank(), 1);
    x.broadcast_mul(&m.reshape(shape).unwrap()).unwrap()
}

fn check_family(name: &str) {
    let dev = Device::Cpu;
    let model = Model::load(&fixture(name), &dev).unwrap();
    let e = Expected::load(name);
    let mask = e.rows("attention_mask");
    let ids = ops::ids_tensor(&e.rows("input_ids"), &dev).unwrap();
    let resp = ops::mask_tensor(&e.rows("response_mask"), &dev).unwrap();

    let hidden = model.hidden(&ids, &mask).unwrap();
    let logits = model.logits(&hidden).unwrap();
    let d = max_abs_diff(&real_only(&logits, &mask), &real_only(e.t("logits"), &mask));
    assert!(d < 1e-4, "{name}: logits differ by {d}");
    let d = max_abs_diff(&real_only(&hidden, &mask), &real_only(e.t("hidden"), &mask));
    assert!(d < 1e-4, "{name}: hidden states differ by {d}");

    let head = Var::from_tensor(e.t("head_weight")).unwrap();
    let rewards = reward(&hidden, &last_real_index(&mask), head.as_tensor()).unwrap();
    let d = max_abs_diff(&rewards, e.t("rewards"));
    assert!(d < 1e-4, "{name}: rewards differ by {d}");

    let lp = response_logprobs(&logits, &ids, &resp).unwrap();
    let d = max_abs_diff(&lp.sum, e.t("logp_sum"));
    assert!(d < 1e-3, "{name}: log-prob sums differ by {d}");
    let d = max_abs_diff(&lp.mean, e.t("logp_mean"));
    assert!(d < 1e-4, "{name}: log-prob means differ by {d}");

    let loss = ((lp.mean.neg().unwrap().sum_all().unwrap()
        + (rewards.sum_all().unwrap() * 0.5).unwrap())
    .unwrap())
    .reshape(1)
    .unwrap();
    let d = max_abs_diff(&loss, e.t("loss"));
    assert!(d < 1e-4, "{name}: loss differs by {d}");

    let grads = model.backward(&loss).unwrap();
    let mut checked = 0;
    for (pname, var) in model.params() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for `{pname}`"));
        let want = e.t(&format!("grad.{pname}"));
        let r = rel_err(g, want);
        assert!(
            r < 1e-3,
            "{name}: gradient of `{pname}` off by {r} (relative)"
        );
        checked += 1;
    }
    let g = grads.get(head.as_tensor()).expect("head gradient");
    assert!(rel_err(g, e.t("grad.head")) < 1e-3, "{name}: head gradient");
    // Every parameter transformers trains has a gradient here too.
    let expected_params =
        e.0.keys()
            .filter(|k| k.starts_with("grad.") && *k != "grad.head")
            .count();
    assert_eq!(checked, expected_params, "{name}: parameter count");

    // Padded rows give the same real-token logits as the same rows alone.
    let all_ids = e.rows("input_ids");
    for (b, m) in mask.iter().enumerate() {
        let n = m.iter().filter(|&&x| x != 0).count();
        let row = vec![all_ids[b][..n].to_vec()];
        let alone = model
            .logits(
                &model
                    .hidden(&ops::ids_tensor(&row, &dev).unwrap(), &[vec![1; n]])
                    .unwrap(),
            )
            .unwrap();
        let padded = logits.narrow(0, b, 1).unwrap().narrow(1, 0, n).unwrap();
        let d = max_abs_diff(&alone, &padded);
        assert!(d < 1e-5, "{name}: row {b} padded vs alone differ by {d}");
    }
}

#[test]
fn gpt2_matches_transformers() {
    check_family("gpt2");
}

#[test]
fn opt_matches_transformers() {
    check_family("opt");
}

#[test]
fn opt_350m_layout_matches_transformers() {
    check_family("opt-350m");
}

#[test]
fn llama_matches_transformers() {
    check_family("llama");
}

#[test]
fn mistral_matches_transformers() {
    check_family("mistral");
}

#[test]
fn tokenizers_match_transformers_ids() {
    for name in ["gpt2", "opt", "llama"] {
        let dir = fixture(name);
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap())
                .unwrap();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{name}: {text:?}");
        }
    }
}

#[test]
fn mismatched_weights_name_the_tensor() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    tensors.remove("transformer.h.1.ln_2.bias");
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let e = Model::load(dir.path(), &dev).err().unwrap().to_string();
    assert!(
        e.contains("missing tensor `transformer.h.1.ln_2.bias`"),
        "{e}"
    );

    tensors.insert(
        "transformer.h.1.ln_2.bias".into(),
        Tensor::zeros(7, DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let e = Model::load(dir.path(), &dev).err().unwrap().to_string();
    assert!(
        e.contains("tensor `transformer.h.1.ln_2.bias` has shape [7], the config expects [32]"),
        "{e}"
    );
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    let dev = Device::Cpu;
    for (name, dtype) in [("gpt2", DType::BF16), ("llama", DType::F16)] {
        let model = Model::load_frozen_as(&fixture(name), &dev, dtype).unwrap();
        assert!(
            model.tensors().values().all(|t| t.dtype() == dtype),
            "{name}"
        );
        let e = Expected::load(name);
        let mask = e.rows("attention_mask");
        let ids = ops::ids_tensor(&e.rows("input_ids"), &dev).unwrap();
        let resp = ops::mask_tensor(&e.rows("response_mask"), &dev).unwrap();
        let logits = model.logits(&model.hidden(&ids, &mask).unwrap()).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let lp = response_logprobs(&logits, &ids, &resp).unwrap();
        assert_eq!(lp.mean.dtype(), DType::F32, "log-probs are computed in f32");
        let d = max_abs_diff(&lp.mean, e.t("logp_mean"));
        // bf16 keeps ~3 significant digits; mean log-probs here are about -5.7.
        assert!(d < 3e-2, "{name} {dtype:?}: mean log-probs differ by {d}");
    }
}

#[test]
fn device_and_dtype_arguments() {
    assert!(super::parse_device("cpu").is_ok());
    let e = super::parse_device("gpu").unwrap_err().to_string();
    assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = super::parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("built without `--features cuda`"), "{e}");
    }
    assert_eq!(super::parse_dtype("bf16").unwrap(), DType::BF16);
    assert!(super::parse_dtype("f8").is_err());
}
