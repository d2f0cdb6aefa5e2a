//! Per-layer activation recompute ("gradient checkpointing"), which candle lacks.
//!
//! candle keeps a forward's whole graph until `backward()`: every layer's intermediate tensors
//! (about 37 `[T, d]` tensors and the `[B, H, T, T]` attention tensors a layer) stay alive at
//! once. Under recompute a forward runs each layer on a detached copy of its input and keeps
//! only that input (`[B, T, d]` a layer); the graph of the embedding and of the final norm
//! onwards is kept as usual. [`backward`] then walks the layers last to first: it rebuilds one
//! layer's graph from its saved input, made a variable, and back-propagates the gradient of
//! the layer's output through it with the surrogate `sum(y · g)` (whose gradient with respect
//! to `y` is exactly `g`), which yields that layer's parameter gradients and the gradient of its
//! input for the layer below. At most one layer's graph is alive at a time.
//!
//! The forward values are bit-for-bit those of the plain path (same ops, same order); the
//! gradients equal the plain path's up to the order of a few floating-point sums (tested below
//! within 1e-6).

use candle_core::backprop::GradStore;
use std::collections::HashSet;

use candle_core::{Tensor, TensorId, Var};

use super::{Net, Shared};
use crate::error::{Error, Result};

/// What one recomputed forward keeps for its backward.
pub struct Tape {
    /// The embedding output, with its graph (the gradient of the embeddings goes through it).
    embedded: Tensor,
    /// Each layer's input, detached.
    inputs: Vec<Tensor>,
    shared: Shared,
    /// The last layer's output as a variable: the head's graph starts here, and the loss's
    /// backward leaves its gradient in the store.
    out: Var,
}

/// A forward that keeps only each layer's input; returns the final hidden states.
pub(super) fn forward(net: &Net, embedded: Tensor, shared: Shared) -> Result<(Tensor, Tape)> {
    let n = net.layers();
    let mut inputs = Vec::with_capacity(n);
    let mut cur = embedded.detach();
    for l in 0..n {
        // The layer's graph (its weights are variables) dies with `y` once detached.
        let y = net.layer(l, &cur, &shared)?.detach();
        inputs.push(cur);
        cur = y;
        crate::alloc::trace_heap(format_args!("forward of layer {l}"));
    }
    let out = Var::from_tensor(&cur)?;
    let hidden = net.finish(out.as_tensor())?;
    Ok((
        hidden,
        Tape {
            embedded,
            inputs,
            shared,
            out,
        },
    ))
}

/// Adds the layers' and the embeddings' gradients of one tape to `grads`, which holds the
/// gradients of the loss's own backward (among them the one of the tape's output).
/// Gradients of the `frozen` tensors are dropped layer by layer.
pub(super) fn backward(
    net: &Net,
    tape: Tape,
    grads: &mut GradStore,
    frozen: &[&Tensor],
    trainable: &HashSet<TensorId>,
) -> Result<()> {
    let Tape {
        embedded,
        mut inputs,
        shared,
        out,
    } = tape;
    // A forward the loss does not depend on (e.g. one only read for statistics).
    let Some(mut g) = grads.remove(out.as_tensor()) else {
        return Ok(());
    };
    drop(out);
    for l in (0..inputs.len()).rev() {
        let input = inputs.pop().expect("one input a layer");
        let x = Var::from_tensor(&input)?;
        drop(input);
        let y = net.layer(l, x.as_tensor(), &shared)?;
        let mut layer = detached((y * &g)?.sum_all()?.backward()?);
        // The surrogate's constant `g` gets a gradient too (candle's mul backward computes both
        // sides): dropped, or every layer would leave a `[T, d]` tensor in the store.
        drop_grads(&mut layer, frozen);
        g = layer.remove(x.as_tensor()).ok_or_else(|| Error::Model {
            file: "training".into(),
            msg: format!("recompute: layer {l} gave no input gradient"),
        })?;
        retain(&mut layer, trainable);
        grads.extend(layer)?;
        crate::alloc::trace_heap(format_args!("backward of layer {l}"));
    }
    if embedded.track_op() {
        let mut emb = detached((embedded * &g)?.sum_all()?.backward()?);
        drop_grads(&mut emb, frozen);
        retain(&mut emb, trainable);
        grads.extend(emb)?;
    }
    Ok(())
}

/// Keeps only the gradients of `ids` (the model's variables) in a layer's or a head chunk's
/// store. candle's backward also leaves one for every operand that is not a variable: the
/// surrogate's constant `g`, the broadcast view of a frozen weight (`[B, T, d]` for a norm's
/// weight under LoRA), a frozen weight's f32 cast. Each would stay in the step's store, a
/// `[B, T, d]` tensor or more per layer, to the end of the backward pass.
pub fn retain(grads: &mut GradStore, ids: &HashSet<TensorId>) {
    // GradStore removes by tensor only: rebuild it with what is kept.
    let mut kept = GradStore::default();
    for id in grads.get_ids() {
        if ids.contains(id) {
            if let Some(g) = grads.get_id(*id) {
                kept.insert_id(*id, g.clone());
            }
        }
    }
    *grads = kept;
}

/// Removes the gradients of `tensors` from `grads`.
pub fn drop_grads(grads: &mut GradStore, tensors: &[&Tensor]) {
    for t in tensors {
        grads.remove(t);
    }
}

/// `grads` with every gradient detached. candle detaches the gradients it propagates but not
/// the ones it leaves for variables: each weight's gradient is still the result of ops on the
/// layer's activations (`dy · xᵀ` keeps `x`), so a stored gradient keeps its layer's whole graph
/// alive, and recompute would save nothing.
pub fn detached(grads: GradStore) -> GradStore {
    let mut grads = grads;
    let ids: Vec<_> = grads.get_ids().copied().collect();
    for id in ids {
        if let Some(g) = grads.get_id(id) {
            let g = g.detach();
            grads.insert_id(id, g);
        }
    }
    grads
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use candle_core::{Device, Tensor};

    use crate::models::engine::Engine;
    use crate::models::pack::Packed;
    use crate::models::weights::LoraSpec;
    use crate::models::{max_abs_diff, ops, Model};

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/models"
        ))
        .join(name)
    }

    /// The Mistral fixture with a 3-token sliding window, so the window is exercised.
    pub(crate) fn windowed_mistral(dir: &Path) -> PathBuf {
        let src = fixture("mistral");
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let p = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg["sliding_window"] = 3.into();
        std::fs::write(&p, cfg.to_string()).unwrap();
        dir.to_path_buf()
    }

    /// A loss over padded rows and one over packed pairs, each read through the LM head.
    pub(crate) fn loss(m: &Model, packed: bool) -> Tensor {
        let dev = Device::Cpu;
        let hidden = if packed {
            let (a, b): (&[u32], &[u32]) = (&[5, 9, 3, 7], &[5, 9, 2]);
            m.hidden_packed(&Packed::pairs(&[a], &[b])).unwrap()
        } else {
            let rows = vec![vec![5u32, 9, 3, 7, 2, 8], vec![4u32, 1, 6, 0, 0, 0]];
            let mask = vec![vec![1u32; 6], vec![1, 1, 1, 0, 0, 0]];
            m.hidden(&ops::ids_tensor(&rows, &dev).unwrap(), &mask)
                .unwrap()
        };
        let logits = m.logits(&hidden).unwrap();
        // Weights that differ by position, so every position's gradient differs.
        let (b, t, v) = logits.dims3().unwrap();
        let w: Vec<f32> = (0..b * t * v)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0)
            .collect();
        let w = Tensor::from_vec(w, (b, t, v), &dev).unwrap();
        (ops::log_softmax(&logits).unwrap() * w)
            .unwrap()
            .sum_all()
            .unwrap()
    }

    /// A loss over sequence log-probs of packed pairs (the policies' path), whose logits are
    /// computed two tokens at a time under recompute.
    pub(crate) fn seq_loss(m: &Model) -> Tensor {
        let seqs: Vec<(&[u32], &[u32])> = vec![
            (&[5, 9, 3, 7, 2, 8], &[0, 0, 1, 1, 1, 1]),
            (&[5, 9, 4, 6, 1], &[0, 0, 1, 1, 1]),
        ];
        let lp = crate::models::readout::sequence_logprobs(m, &seqs, true).unwrap();
        let w = Tensor::new(&[0.7f32, -1.3], &Device::Cpu).unwrap();
        ((lp.sum * &w).unwrap().sum_all().unwrap() + lp.mean.sum_all().unwrap()).unwrap()
    }

    /// Loss and every parameter's gradient, plain and recomputed.
    fn compare(what: &str, load: impl Fn() -> Model, packed: bool) {
        compare_with(what, load, |m| loss(m, packed))
    }

    fn compare_with(what: &str, load: impl Fn() -> Model, loss: impl Fn(&Model) -> Tensor) {
        let run = |recompute: bool| {
            let mut m = load();
            m.head_chunk = Some(2);
            // This module's path (the owned engine has its own tests against it).
            m.set_engine(crate::models::engine::Engine::Autograd);
            m.set_recompute(recompute);
            let loss = loss(&m);
            let value = loss.to_scalar::<f32>().unwrap();
            let grads = m.backward(&loss).unwrap();
            // Gradients of anything but the parameters (the loss's own constants): recompute
            // must not add any (each would be a `[T, d]` tensor kept to the end).
            let params: std::collections::HashSet<_> =
                m.params().values().map(|v| v.as_tensor().id()).collect();
            let extra = (grads.get_ids()).filter(|id| !params.contains(id)).count();
            let g: Vec<(String, Tensor)> = (m.params().iter())
                .map(|(k, v)| {
                    let g = grads.get(v.as_tensor());
                    // A gradient still attached to its graph would keep the activations alive.
                    assert!(
                        !g.is_some_and(|g| g.track_op()),
                        "{what}: {k}: gradient attached"
                    );
                    (
                        k.clone(),
                        g.unwrap_or_else(|| panic!("{what}: {k}: no gradient"))
                            .clone(),
                    )
                })
                .collect();
            (value, g, extra)
        };
        let (plain_loss, plain, plain_extra) = run(false);
        let (loss, recomputed, extra) = run(true);
        assert!(
            extra <= plain_extra,
            "{what}: recompute left {extra} gradients of non-parameters, the plain path {plain_extra}"
        );
        assert_eq!(plain_loss.to_bits(), loss.to_bits(), "{what}: loss");
        assert!(!plain.is_empty());
        assert_eq!(plain.len(), recomputed.len());
        for ((k, a), (_, b)) in plain.iter().zip(&recomputed) {
            // Relative to the gradient's largest entry: the order of a few f32 sums differs.
            let scale = max_abs_diff(a, &a.zeros_like().unwrap()).max(1.0);
            let d = max_abs_diff(a, b);
            assert!(
                d <= 1e-6 * scale,
                "{what}: {k} off by {d} (largest entry {scale})"
            );
        }
    }

    #[test]
    fn recompute_gives_the_plain_gradients_for_every_family() {
        for name in ["gpt2", "opt", "opt-350m", "llama", "mistral"] {
            for packed in [false, true] {
                let load = || Model::load(&fixture(name), &Device::Cpu).unwrap();
                compare(&format!("{name} packed={packed}"), load, packed);
            }
        }
    }

    #[test]
    fn chunked_log_probs_give_the_plain_gradients() {
        for name in ["gpt2", "opt-350m", "llama"] {
            let load = || Model::load(&fixture(name), &Device::Cpu).unwrap();
            compare_with(&format!("{name} chunked log-probs"), load, seq_loss);
        }
        let load = || {
            let spec = LoraSpec {
                r: 2,
                alpha: 4.0,
                targets: Vec::new(),
                seed: 0,
            };
            let m = Model::load_lora(&fixture("llama"), &Device::Cpu, spec).unwrap();
            for (k, v) in m.params() {
                if k.contains("lora_B") {
                    v.set(&(v.as_tensor().ones_like().unwrap() * 0.01).unwrap())
                        .unwrap();
                }
            }
            m
        };
        compare_with("llama lora chunked log-probs", load, seq_loss);
        // Without a graph the chunks give the one-shot values exactly.
        let mut m = Model::load_frozen(&fixture("llama"), &Device::Cpu).unwrap();
        let one = seq_loss(&m).to_scalar::<f32>().unwrap();
        m.head_chunk = Some(1);
        assert_eq!(
            seq_loss(&m).to_scalar::<f32>().unwrap().to_bits(),
            one.to_bits()
        );
    }

    #[test]
    fn recompute_gives_the_plain_adapter_gradients_under_lora() {
        for name in ["gpt2", "llama"] {
            let load = || {
                let spec = LoraSpec {
                    r: 2,
                    alpha: 4.0,
                    targets: Vec::new(),
                    seed: 0,
                };
                let m = Model::load_lora(&fixture(name), &Device::Cpu, spec).unwrap();
                // B starts at zero; move it so the base's input gradient matters.
                for (k, v) in m.params() {
                    if k.contains("lora_B") {
                        let t = (v.as_tensor().ones_like().unwrap() * 0.01).unwrap();
                        v.set(&t).unwrap();
                    }
                }
                m
            };
            compare(&format!("{name} lora"), load, false);
        }
    }

    #[test]
    fn a_forward_without_backward_is_dropped_with_the_next_switch() {
        for engine in [Engine::Autograd, Engine::Owned] {
            let mut m = Model::load(&fixture("gpt2"), &Device::Cpu).unwrap();
            m.set_engine(engine);
            m.set_recompute(true);
            let _ = loss(&m, false);
            let tapes =
                |m: &Model| m.tapes.lock().unwrap().len() + m.owned_tapes.lock().unwrap().len();
            assert_eq!(tapes(&m), 1);
            m.set_recompute(false);
            assert_eq!(tapes(&m), 0);
        }
    }
}
