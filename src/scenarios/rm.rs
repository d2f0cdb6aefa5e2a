//! Reward modeling (docs/reference.md §1.4, §2; paper §4 and App. P): a backbone plus a linear
//! head scores each side of a pair; the pair's probability is sigmoid(r(a) - r(b)).
//!
//! Pairs are shown to the model in "slots": slot a holds the ground-truth chosen text when the
//! pair's slot bit is 1 and the rejected text otherwise, the bit drawn from CPython's
//! `Random(seed)` restarted for every split, exactly as the reference. Labels are in slot
//! orientation: the probability that slot a is preferred.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::pack::Packed;
use crate::models::{ops, readout, Model};
use crate::rng::PyRandom;

/// What pulls at the student besides the teacher's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The teacher's soft labels only.
    None,
    /// Plus alpha * BCE toward the ground-truth-rejected side while the student is currently
    /// right about the pair (docs/reference.md §2.3, `train_reward_model_v2`).
    Explicit,
    /// The helpful pairs, with ground-truth labels, mixed into the training set (§2.3).
    Implicit,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::None => "none",
            Objective::Explicit => "explicit",
            Objective::Implicit => "implicit",
        }
    }
}

/// Where the reward is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Readout {
    /// The last real token of each sequence (attention-mask aware).
    LastToken,
    /// The reference's position: (number of non-zero ids) - 1 (docs/reference.md §2.1). With
    /// GPT-2, id 0 is the real token "!", so each "!" moves the readout one token left.
    Reference,
}

impl Readout {
    /// Readout position of each (right-padded) row.
    pub fn positions(self, rows: &[&[u32]], padded_len: usize) -> Vec<usize> {
        rows.iter()
            .map(|r| match self {
                Readout::LastToken => r.len().saturating_sub(1),
                Readout::Reference => {
                    let n = r.iter().filter(|&&id| id != 0).count();
                    // Python's h[n - 1] with n = 0 reads the last (padded) position.
                    if n == 0 {
                        padded_len - 1
                    } else {
                        n - 1
                    }
                }
            })
            .collect()
    }
}

/// Slot bits of a split of `n` pairs: `Random(seed).random() < 0.5`, one draw per row.
pub fn slot_bits(seed: u64, n: usize) -> Vec<bool> {
    let mut rng = PyRandom::new(seed);
    (0..n).map(|_| rng.random() < 0.5).collect()
}

/// One training pair in slot orientation, tokenized.
#[derive(Debug, Clone)]
pub struct Sample {
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    /// Probability that slot a is preferred (the training target).
    pub label: f32,
    /// Ground truth in slot orientation: slot a holds the chosen text.
    pub gt: bool,
}

/// A pair's loss and its derivative with respect to the margin z.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLoss {
    pub loss: f32,
    pub dz: f32,
}

/// `torch.nn.functional.binary_cross_entropy(p, y)` for one element, in f32: each log term
/// clamped at -100, and its gradient d/dp = (p - y) / max(p (1 - p), 1e-12).
fn bce(p: f32, y: f32) -> (f32, f32) {
    // torch.clamp propagates NaN; f32::max would turn a NaN log into -100 and hide it.
    let clamp = |x: f32| if x.is_nan() { x } else { x.max(-100.0) };
    let loss = (y - 1.0) * clamp((-p).ln_1p()) - y * clamp(p.ln());
    let dp = (p - y) / ((1.0 - p) * p).max(1e-12);
    (loss, dp)
}

/// The loss of one pair with margin `z`, target `y` (slot orientation) and ground truth `gt`,
/// with PyTorch's floating-point behaviour (docs/reference.md §2.3): `binary_cross_entropy` on
/// `sigmoid(z)`, so a saturated sigmoid gives loss 100 and gradient 0 as in the reference.
/// `adaptive` weights the label term by the label's certainty |2y - 1| (paper App. P): a
/// teacher's soft label counts as much as the teacher is sure of it, a ground-truth label
/// (helpful pairs, y in {0, 1}) fully; the explicit conflict term is not weighted.
pub fn pair_loss(
    z: f32,
    y: f32,
    gt: bool,
    objective: Objective,
    alpha: f32,
    adaptive: bool,
) -> PairLoss {
    let p = 1.0 / (1.0 + (-z).exp());
    // sigmoid's backward: grad * (1 - p) * p.
    let dsig = (1.0 - p) * p;
    let (base, dp) = bce(p, y);
    // Times 1.0 (not adaptive) is exact: the plain loss is unchanged bit for bit.
    let w = if adaptive { (2.0 * y - 1.0).abs() } else { 1.0 };
    let (base, dp) = (w * base, w * dp);
    match objective {
        Objective::None | Objective::Implicit => PairLoss {
            loss: base,
            dz: dp * dsig,
        },
        Objective::Explicit => {
            // m = 1 iff the student's current prediction disagrees with the ground truth
            // (ties: z = 0 counts as preferring slot a). No gradient through m.
            let wrong_way = (z >= 0.0) != gt;
            if !wrong_way {
                return PairLoss {
                    loss: base,
                    dz: dp * dsig,
                };
            }
            let target = if gt { 0.0 } else { 1.0 };
            let (extra, dp2) = bce(p, target);
            PairLoss {
                loss: base + alpha * extra,
                dz: (dp + alpha * dp2) * dsig,
            }
        }
    }
}

/// A reward model: a causal LM's final hidden states and a bias-free linear head `[1, H]`.
pub struct RewardModel {
    pub model: Model,
    /// Trainable head (a `Var`), or a plain tensor for a frozen model.
    pub head: Head,
    pub readout: Readout,
}

pub enum Head {
    Trainable(Var),
    Frozen(Tensor),
}

impl Head {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Head::Trainable(v) => v.as_tensor(),
            Head::Frozen(t) => t,
        }
    }
}

/// A head initialised as PyTorch's `nn.Linear(H, 1, bias=False)` does: uniform on
/// [-1/sqrt(H), 1/sqrt(H)] (values from a seeded CPython `Random`, not torch's generator).
pub fn init_head(width: usize, seed: u64, device: &candle_core::Device) -> Result<Tensor> {
    let bound = 1.0 / (width as f64).sqrt();
    let mut rng = PyRandom::new(seed);
    let w: Vec<f32> = (0..width)
        .map(|_| ((rng.random() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Ok(Tensor::from_vec(w, (1, width), device)?)
}

impl RewardModel {
    /// Rewards of each sequence, `[N]`: the sequences are right-padded with id 0 into one
    /// batch and read at the readout position.
    pub fn rewards(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if t == 0 {
            return Err(Error::Config("cannot score an empty sequence".into()));
        }
        let mut ids = Vec::with_capacity(seqs.len());
        let mut mask = Vec::with_capacity(seqs.len());
        for s in seqs {
            let mut row = s.to_vec();
            row.resize(t, 0);
            ids.push(row);
            let mut m = vec![1u32; s.len()];
            m.resize(t, 0);
            mask.push(m);
        }
        let ids = ops::ids_tensor(&ids, self.model.device())?;
        let hidden = self.model.hidden(&ids, &mask)?;
        let pos = self.readout.positions(seqs, t);
        readout::reward(&hidden, &pos, self.head.tensor())
    }

    /// Margins r(a) - r(b) of each pair, `[N]`. The two sides of a pair share one row and
    /// their common prefix is computed once where that saves work (`models::pack`).
    pub fn margins(&self, a: &[&[u32]], b: &[&[u32]]) -> Result<Tensor> {
        let n = a.len();
        let all: Vec<&[u32]> = a.iter().chain(b).copied().collect();
        // The reference readout of a sequence with no non-zero id reads a padding position,
        // which only the padded batch defines; empty sequences likewise.
        let odd = all.iter().any(|s| {
            s.is_empty() || (self.readout == Readout::Reference && s.iter().all(|&x| x == 0))
        });
        let r = if odd {
            self.rewards(&all)?
        } else {
            let packed = Packed::pairs_or_rows(a, b, self.model.config.hidden_width());
            let pos = self.readout.positions(&all, packed.len());
            let flat: Vec<usize> = (pos.iter().enumerate())
                .map(|(s, &t)| packed.flat(s, t))
                .collect();
            let picked = self
                .model
                .hidden_packed_at(&packed, &flat)?
                .to_dtype(self.head.tensor().dtype())?;
            ops::linear(&picked, self.head.tensor(), None)?.squeeze(1)?
        };
        Ok((r.narrow(0, 0, n)? - r.narrow(0, n, n)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;
    use std::path::Path;

    fn fixture() -> HashMap<String, Tensor> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rm_losses.safetensors");
        candle_core::safetensors::load(p, &Device::Cpu).unwrap()
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    // Oracle: tools/fixtures/make_fixtures.py --optim (PyTorch's binary_cross_entropy on
    // sigmoid(z), with ties and saturated margins).
    #[test]
    fn pair_losses_and_gradients_match_pytorch() {
        let e = fixture();
        let (z, y, g) = (v(&e["z"]), v(&e["y"]), v(&e["g"]));
        for (name, obj, adaptive) in [
            ("none", Objective::None, false),
            ("explicit", Objective::Explicit, false),
            ("adaptive", Objective::None, true),
        ] {
            let (want_loss, want_grad) = (
                v(&e[&format!("{name}.loss")]),
                v(&e[&format!("{name}.grad")]),
            );
            for i in 0..z.len() {
                let got = pair_loss(z[i], y[i], g[i] == 1.0, obj, 0.5, adaptive);
                let tol = |w: f32| 1e-6 * w.abs().max(1.0);
                assert!(
                    (got.loss - want_loss[i]).abs() <= tol(want_loss[i]),
                    "{name} loss {i}: {} vs {}",
                    got.loss,
                    want_loss[i]
                );
                assert!(
                    (got.dz - want_grad[i]).abs() <= 1e-9 + 1e-4 * want_grad[i].abs(),
                    "{name} grad {i}: {} vs {}",
                    got.dz,
                    want_grad[i]
                );
            }
        }
        // A NaN margin gives a NaN loss, as PyTorch (not a clamped 100).
        assert!(pair_loss(f32::NAN, 1.0, true, Objective::None, 0.5, false)
            .loss
            .is_nan());
        // The explicit indicator on ties: g = 1, z = 0 -> 0; g = 0, z = 0 -> 1.
        assert_eq!(v(&e["explicit.indicator"])[..2], [0.0, 1.0]);
    }

    #[test]
    fn adaptive_weighting_composes_with_every_objective() {
        // The label term scaled by |2y - 1|, the explicit conflict term left as it is.
        for (z, y, gt) in [
            (0.7f32, 0.8f32, true),
            (-0.3, 0.35, true),
            (1.2, 0.1, false),
        ] {
            let w = (2.0 * y - 1.0).abs();
            for obj in [Objective::None, Objective::Implicit, Objective::Explicit] {
                let plain = pair_loss(z, y, gt, obj, 0.5, false);
                let base = pair_loss(z, y, gt, Objective::None, 0.5, false);
                let got = pair_loss(z, y, gt, obj, 0.5, true);
                let want_loss = plain.loss - base.loss + w * base.loss;
                let want_dz = plain.dz - base.dz + w * base.dz;
                assert!((got.loss - want_loss).abs() < 1e-6, "{obj:?} {z} {y}");
                assert!((got.dz - want_dz).abs() < 1e-6, "{obj:?} {z} {y}");
            }
            // A ground-truth label (y = 1) is weighted fully.
            let hard = pair_loss(z, 1.0, gt, Objective::Implicit, 0.5, true);
            assert_eq!(hard, pair_loss(z, 1.0, gt, Objective::Implicit, 0.5, false));
        }
    }

    #[test]
    fn slot_bits_are_cpythons_random_0() {
        let bits: String = slot_bits(0, 32)
            .iter()
            .map(|&b| if b { '1' } else { '0' })
            .collect();
        assert_eq!(bits, "00110101100010010000100011100010");
    }

    #[test]
    fn readouts() {
        // GPT-2: id 0 is "!", a real token. The default reads the last token; the reference
        // counts non-zero ids, so one "!" moves its readout one position left.
        let a: &[u32] = &[5, 0, 7, 9];
        let b: &[u32] = &[3, 4];
        assert_eq!(Readout::LastToken.positions(&[a, b], 4), vec![3, 1]);
        assert_eq!(Readout::Reference.positions(&[a, b], 4), vec![2, 1]);
        assert_eq!(Readout::Reference.positions(&[&[0, 0]], 3), vec![2]);
    }

    #[test]
    fn head_init_is_bounded_and_seeded() {
        let h = init_head(32, 0, &Device::Cpu).unwrap();
        let w: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / 32f32.sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound));
        assert_eq!(
            w,
            init_head(32, 0, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_ne!(
            w,
            init_head(32, 1, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}

/// The readout a checkpoint was trained with (`w2s.json`), if it says.
pub fn saved_readout(dir: &std::path::Path) -> Option<Readout> {
    let text = std::fs::read_to_string(dir.join("w2s.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(v.get("provenance")?.get("readout")?.clone()).ok()
}

impl RewardModel {
    /// Loads a trained reward model for inference (detached weights). `readout` overrides
    /// the one the checkpoint records (default: last token).
    pub fn load_frozen(
        dir: &std::path::Path,
        device: &candle_core::Device,
        readout: Option<Readout>,
    ) -> Result<RewardModel> {
        if !dir.join("reward_head.safetensors").exists() {
            return Err(Error::Model {
                file: dir.display().to_string(),
                msg: "not a reward model: no reward_head.safetensors".into(),
            });
        }
        let model = Model::load_frozen(dir, device)?;
        let head = crate::models::save::load_reward_head(dir, device)?;
        let want = [1, model.config.hidden_width()];
        if head.dims() != want {
            return Err(Error::Model {
                file: dir.join("reward_head.safetensors").display().to_string(),
                msg: format!("head has shape {:?}, the model needs {want:?}", head.dims()),
            });
        }
        Ok(RewardModel {
            model,
            head: Head::Frozen(head),
            readout: readout
                .or_else(|| saved_readout(dir))
                .unwrap_or(Readout::LastToken),
        })
    }
}

#[cfg(test)]
mod gradient_tests {
    use super::*;
    use candle_core::Device;
    use std::path::Path;

    /// Every backbone parameter and the head get a gradient from the pair margin, in every
    /// family (candle's fused ops would drop some silently; `models::ops` avoids them).
    #[test]
    fn every_reward_model_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        for family in ["gpt2", "opt", "opt-350m", "llama", "mistral"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models")
                .join(family);
            let model = Model::load(&dir, &dev).unwrap();
            let head = Var::from_tensor(&init_head(model.config.hidden_width(), 0, &dev).unwrap())
                .unwrap();
            let rm = RewardModel {
                model,
                head: Head::Trainable(head.clone()),
                readout: Readout::LastToken,
            };
            let a: [&[u32]; 2] = [&[5, 9, 30, 7, 11], &[4, 8]];
            let b: [&[u32]; 2] = [&[5, 9, 31], &[4, 8, 12, 13]];
            let z = rm.margins(&a, &b).unwrap();
            // The packed margins equal the padded batch's (a and b share the prefix [5, 9]).
            let all: Vec<&[u32]> = a.iter().chain(&b).copied().collect();
            let r: Vec<f32> = rm.rewards(&all).unwrap().to_vec1().unwrap();
            let zv: Vec<f32> = z.to_vec1().unwrap();
            for i in 0..2 {
                let want = r[i] - r[2 + i];
                assert!((zv[i] - want).abs() < 1e-4, "{family}: {} vs {want}", zv[i]);
            }
            let grads = rm.model.backward(&z.sum_all().unwrap()).unwrap();
            assert!(grads.get(head.as_tensor()).is_some(), "{family}: head");
            for (name, v) in rm.model.params() {
                if name.starts_with("lm_head.") {
                    continue;
                }
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{family}: no gradient for {name}"));
                let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(norm.is_finite(), "{family}: {name}");
            }
        }
    }
}
