//! Preference optimization (paper §5, docs/reference.md §3): SFT on the chosen side, then SimPO or
//! DPO, with the explicit conflict term. The per-pair losses are computed in f64 from the
//! pair's log-probability statistics together with their derivatives, so a training step
//! backpropagates one weighted sum (`Σ dℓ/dx · x`) through the model: the indicator of the
//! explicit conflict never carries a gradient, as in the reference (`.item()`).

use serde::{Deserialize, Serialize};

/// SimPO's β and γ (docs/reference.md §3.4).
pub const SIMPO_BETA: f64 = 2.0;
pub const SIMPO_GAMMA: f64 = 1.0;
/// DPO's β (§3.5).
pub const DPO_BETA: f64 = 0.1;
/// DPO confidences divide the summed log-prob margin by this (§3.8, §4).
pub const DPO_SCALE: f64 = 50.0;

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Simpo,
    Dpo,
}

/// What the loss sees of one pair, chosen side `c` (the teacher's preferred text in a
/// weak-to-strong run) and rejected side `r`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStats {
    /// Length-normalised response log-probs A(c), A(r) (SimPO).
    pub mean_c: f64,
    pub mean_r: f64,
    /// Summed response log-probs S(c), S(r) (DPO).
    pub sum_c: f64,
    pub sum_r: f64,
    /// The frozen reference model's sums (DPO; zero for SimPO).
    pub ref_c: f64,
    pub ref_r: f64,
    /// Whether the chosen side is the ground-truth chosen answer (the teacher was right).
    pub acc: bool,
}

/// A pair's loss and its derivatives with respect to the statistics it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairGrad {
    pub loss: f64,
    /// dℓ/dA(c), dℓ/dA(r) (SimPO) or dℓ/dS(c), dℓ/dS(r) (DPO).
    pub d_c: f64,
    pub d_r: f64,
    /// Whether the policy prefers the chosen side (for the logged accuracy).
    pub prefers_chosen: bool,
}

/// −log σ(x) and its derivative −σ(−x), computed stably.
fn neg_log_sigmoid(x: f64) -> (f64, f64) {
    let loss = if x >= 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    };
    let s_neg = 1.0 / (1.0 + x.exp());
    (loss, -s_neg)
}

/// The loss of one pair: `loss` itself, plus `alpha` times the reversed-preference term while
/// the student currently prefers the ground-truth-rejected answer (explicit conflict, §3.6).
pub fn pair_loss(kind: Loss, p: &PairStats, explicit: Option<f64>) -> PairGrad {
    // x = the margin the main term pushes up; dx/dc = +k, dx/dr = -k.
    let (x, k, policy_c, policy_r) = match kind {
        Loss::Simpo => (
            SIMPO_BETA * (p.mean_c - p.mean_r) - SIMPO_GAMMA,
            SIMPO_BETA,
            p.mean_c,
            p.mean_r,
        ),
        Loss::Dpo => (
            DPO_BETA * ((p.sum_c - p.sum_r) - (p.ref_c - p.ref_r)),
            DPO_BETA,
            p.sum_c,
            p.sum_r,
        ),
    };
    let (main, dmain) = neg_log_sigmoid(x);
    let mut g = PairGrad {
        loss: main,
        d_c: dmain * k,
        d_r: -dmain * k,
        prefers_chosen: policy_c >= policy_r,
    };
    let Some(alpha) = explicit else {
        return g;
    };
    // The reversed term has y_r (ground-truth rejected) as the winner: when the teacher was
    // right that is the rejected side, otherwise the chosen side. SimPO: R = −log σ(∓βΔ − γ);
    // DPO: R = −log σ(∓βρ). The indicator "the student currently prefers y_r" uses the policy
    // only (means for SimPO, sums for DPO), strict on one side as the reference.
    let (indicator, y) = if p.acc {
        (policy_c < policy_r, -1.0)
    } else {
        (policy_c >= policy_r, 1.0)
    };
    if !indicator {
        return g;
    }
    let (xr, kr) = match kind {
        Loss::Simpo => (
            y * SIMPO_BETA * (p.mean_c - p.mean_r) - SIMPO_GAMMA,
            y * SIMPO_BETA,
        ),
        Loss::Dpo => (
            y * DPO_BETA * ((p.sum_c - p.sum_r) - (p.ref_c - p.ref_r)),
            y * DPO_BETA,
        ),
    };
    let (rev, drev) = neg_log_sigmoid(xr);
    g.loss += alpha * rev;
    g.d_c += alpha * drev * kr;
    g.d_r -= alpha * drev * kr;
    g
}

/// Rows kept by high-confidence filtering (docs/reference.md §3.8), ascending: the teacher got the
/// row right and its confidence toward the ground-truth chosen answer, σ(s) with s its margin
/// (SimPO) or margin / 50 (DPO), is at least `threshold`. `labels` holds (right, confidence)
/// per row in file order.
pub fn high_confidence_keep(labels: &[(bool, f64)], threshold: f64) -> Vec<usize> {
    labels
        .iter()
        .enumerate()
        .filter(|(_, &(right, conf))| right && conf >= threshold)
        .map(|(i, _)| i)
        .collect()
}

/// The confidence toward the ground-truth chosen answer from its response statistics
/// (§4): SimPO σ(A(c) − A(r)); DPO σ((S(c) − S(r)) / 50), without the reference model.
pub fn confidence(kind: Loss, mean_c: f64, mean_r: f64, sum_c: f64, sum_r: f64) -> f64 {
    let s = match kind {
        Loss::Simpo => mean_c - mean_r,
        Loss::Dpo => (sum_c - sum_r) / DPO_SCALE,
    };
    1.0 / (1.0 + (-s).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mc: f64, mr: f64, acc: bool) -> PairStats {
        PairStats {
            mean_c: mc,
            mean_r: mr,
            sum_c: 10.0 * mc,
            sum_r: 7.0 * mr,
            ref_c: -3.0,
            ref_r: -2.5,
            acc,
        }
    }

    /// Each analytic derivative against a central difference of the loss.
    #[test]
    fn derivatives_match_finite_differences() {
        let h = 1e-6;
        for kind in [Loss::Simpo, Loss::Dpo] {
            for (mc, mr, acc) in [
                (-1.2, -1.5, true),
                (-2.0, -0.4, true),
                (-0.3, -0.9, false),
                (-1.0, -0.2, false),
            ] {
                for explicit in [None, Some(0.5)] {
                    let p = stats(mc, mr, acc);
                    let g = pair_loss(kind, &p, explicit);
                    let bump = |dc: f64, dr: f64| {
                        let mut q = p;
                        match kind {
                            Loss::Simpo => {
                                q.mean_c += dc;
                                q.mean_r += dr;
                            }
                            Loss::Dpo => {
                                q.sum_c += dc;
                                q.sum_r += dr;
                            }
                        }
                        pair_loss(kind, &q, explicit).loss
                    };
                    let fc = (bump(h, 0.0) - bump(-h, 0.0)) / (2.0 * h);
                    let fr = (bump(0.0, h) - bump(0.0, -h)) / (2.0 * h);
                    assert!(
                        (fc - g.d_c).abs() < 1e-6,
                        "{kind:?} {mc} {mr} {acc} {explicit:?}: {fc} vs {}",
                        g.d_c
                    );
                    assert!(
                        (fr - g.d_r).abs() < 1e-6,
                        "{kind:?} {mc} {mr} {acc} {explicit:?}: {fr} vs {}",
                        g.d_r
                    );
                }
            }
        }
    }

    #[test]
    fn simpo_and_the_explicit_term_by_hand() {
        // Δ = 0.3: ℓ = −log σ(2·0.3 − 1) = ln(1 + e^0.4).
        let p = stats(-1.0, -1.3, true);
        let g = pair_loss(Loss::Simpo, &p, None);
        assert!((g.loss - (0.4f64).exp().ln_1p()).abs() < 1e-12);
        // The student prefers the chosen (= ground truth) side: no extra term.
        assert_eq!(pair_loss(Loss::Simpo, &p, Some(0.5)).loss, g.loss);
        // The teacher was wrong (chosen = gt-rejected) and the student agrees with it: the
        // reversed term equals the main one, so the pair weighs 1 + α (docs/reference.md §3.6).
        let q = stats(-1.0, -1.3, false);
        let e = pair_loss(Loss::Simpo, &q, Some(0.5));
        assert!((e.loss - 1.5 * g.loss).abs() < 1e-12);
        // DPO's indicator uses policy sums only: S(c) = -10 < S(r) = -7·1.3 = -9.1.
        let d = pair_loss(Loss::Dpo, &p, Some(0.5));
        let rho = (-10.0 + 9.1) - (-3.0 + 2.5);
        let main = -(1.0 / (1.0 + (-0.1f64 * rho).exp())).ln();
        let rev = -(1.0 / (1.0 + (0.1f64 * rho).exp())).ln();
        assert!((d.loss - (main + 0.5 * rev)).abs() < 1e-12, "{}", d.loss);
    }

    /// The kept rows against the Python oracle's (tests/fixtures/po_run, docs/reference.md §3.8),
    /// on scores around the ln 3 boundary, negative and large ones.
    #[test]
    fn high_confidence_rows_match_the_oracle() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/po_run/expected.json");
        let e: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let hc = &e["high_confidence"];
        let scores: Vec<f64> = hc["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let t = hc["threshold"].as_f64().unwrap();
        for (kind, name) in [(Loss::Simpo, "simpo"), (Loss::Dpo, "dpo")] {
            let labels: Vec<(bool, f64)> = scores
                .iter()
                .map(|&m| (m >= 0.0, confidence(kind, m, 0.0, m, 0.0)))
                .collect();
            let want: Vec<usize> = hc[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(high_confidence_keep(&labels, t), want, "{name}");
        }
    }

    #[test]
    fn confidences() {
        assert!((confidence(Loss::Simpo, -1.0, -1.0, 0.0, 0.0) - 0.5).abs() < 1e-12);
        let c = confidence(Loss::Dpo, 0.0, 0.0, -10.0, -60.0);
        assert!((c - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
    }
}
