//! Shared-prefix packing: the two sides of a pair in one batch row, their common prefix once.
//!
//! Chosen and rejected usually start with the same prompt. In a causal model the hidden states
//! of that prompt are identical for both sides, so computing them twice is waste. A packed row
//! holds `prefix ++ suffix(a) ++ suffix(b)`; each suffix token carries its position in its own
//! sequence and attends to the prefix and to its own suffix only. Every real token then sees
//! exactly what it would see alone, so hidden states equal the unpacked ones up to the order of
//! floating-point sums (sums over extra keys whose weights are exactly zero).
//!
//! The prefix is the longest common prefix of the two *token* sequences, so whatever the
//! tokenization or truncation did, nothing is shared that was not identical.

use candle_core::{Device, Tensor};

/// Branch of a padding token: attends to nothing, attended by nothing.
const PAD: u16 = u16::MAX;

/// Sequences laid out in batch rows (see the module doc).
#[derive(Debug, Clone)]
pub struct Packed {
    /// Token ids of each row, right-padded with 0.
    pub ids: Vec<Vec<u32>>,
    /// Position of each token in its own sequence.
    pub pos: Vec<Vec<u32>>,
    /// 0: shared prefix (seen by every branch); k >= 1: the k-th sequence's suffix; PAD.
    branch: Vec<Vec<u16>>,
    /// For each input sequence: its row and the packed index of each of its tokens.
    seqs: Vec<(usize, Vec<usize>)>,
}

impl Packed {
    /// One sequence a row, right-padded: the ordinary batch.
    pub fn rows(seqs: &[&[u32]]) -> Packed {
        let groups: Vec<Vec<&[u32]>> = seqs.iter().map(|s| vec![*s]).collect();
        Self::groups(&groups)
    }

    /// Pair `i` (`a[i]`, `b[i]`) in row `i`, the common prefix once. Sequence order: all of `a`,
    /// then all of `b` (as [`Packed::rows`] of `a ++ b`).
    pub fn pairs(a: &[&[u32]], b: &[&[u32]]) -> Packed {
        assert_eq!(a.len(), b.len(), "pairs need as many b sides as a sides");
        let groups: Vec<Vec<&[u32]>> = a.iter().zip(b).map(|(x, y)| vec![*x, *y]).collect();
        let mut p = Self::groups(&groups);
        // Groups list a0, b0, a1, b1, ...; callers index a's first.
        let n = a.len();
        let mut order = Vec::with_capacity(2 * n);
        for k in 0..2 {
            for i in 0..n {
                order.push(p.seqs[2 * i + k].clone());
            }
        }
        p.seqs = order;
        p
    }

    /// [`Packed::pairs`] or [`Packed::rows`] of `a ++ b`, whichever costs less for a model of
    /// `width` (same sequence order, so readers need not know which). Packing saves the prefix
    /// and the padding between two sides but doubles each row's attention span: with no shared
    /// prefix and equal lengths it loses.
    pub fn pairs_or_rows(a: &[&[u32]], b: &[&[u32]], width: usize) -> Packed {
        let packed = Self::pairs(a, b);
        let all: Vec<&[u32]> = a.iter().chain(b).copied().collect();
        let rows = Self::rows(&all);
        if packed.cost(width) <= rows.cost(width) {
            packed
        } else {
            rows
        }
    }

    /// Forward cost in arbitrary units: per row, T tokens each paying the projections and MLP
    /// (about 24 width^2 multiply-adds) and attention over T keys (about 4 T width).
    pub fn cost(&self, width: usize) -> usize {
        let t = self.len();
        self.ids.len() * t * (6 * width + t)
    }

    /// Each group in one row: the group's longest common prefix, then each member's suffix.
    fn groups(groups: &[Vec<&[u32]>]) -> Packed {
        let mut ids = Vec::with_capacity(groups.len());
        let mut pos = Vec::with_capacity(groups.len());
        let mut branch = Vec::with_capacity(groups.len());
        let mut seqs = Vec::new();
        for (row, g) in groups.iter().enumerate() {
            let shared = if g.len() < 2 {
                0
            } else {
                let first = g[0];
                g[1..].iter().fold(first.len(), |n, s| {
                    n.min(
                        first
                            .iter()
                            .zip(s.iter())
                            .take_while(|(x, y)| x == y)
                            .count(),
                    )
                })
            };
            let (mut i, mut p, mut br) = (Vec::new(), Vec::new(), Vec::new());
            for (t, &id) in g
                .first()
                .map_or(&[][..], |s| &s[..shared])
                .iter()
                .enumerate()
            {
                i.push(id);
                p.push(t as u32);
                br.push(0);
            }
            for (k, s) in g.iter().enumerate() {
                let mut index: Vec<usize> = (0..shared).collect();
                for (t, &id) in s.iter().enumerate().skip(shared) {
                    index.push(i.len());
                    i.push(id);
                    p.push(t as u32);
                    br.push(k as u16 + 1);
                }
                seqs.push((row, index));
            }
            ids.push(i);
            pos.push(p);
            branch.push(br);
        }
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        for ((i, p), br) in ids.iter_mut().zip(&mut pos).zip(&mut branch) {
            // Padding sits at position 0: any position is in range, and nothing reads it.
            i.resize(t, 0);
            p.resize(t, 0);
            br.resize(t, PAD);
        }
        Packed {
            ids,
            pos,
            branch,
            seqs,
        }
    }

    /// The largest position id (checked against the model's position table).
    pub fn max_position(&self) -> usize {
        self.pos.iter().flatten().copied().max().unwrap_or(0) as usize
    }

    /// Padded row length.
    pub fn len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of input sequences.
    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Index into the flattened `[rows * len]` hidden states of token `t` of sequence `s`.
    pub fn flat(&self, s: usize, t: usize) -> usize {
        let (row, index) = &self.seqs[s];
        row * self.len() + index[t]
    }

    /// Length of input sequence `s`.
    pub fn seq_len(&self, s: usize) -> usize {
        self.seqs[s].1.len()
    }

    /// Real tokens computed (the packed rows less their padding).
    pub fn tokens(&self) -> usize {
        self.branch.iter().flatten().filter(|&&b| b != PAD).count()
    }

    /// The additive attention bias `[rows, 1, T, T]`: 0 where query `i` may see key `j`
    /// (`j <= i`, same branch or the prefix, inside the sliding window), -1e9 elsewhere.
    /// Padding queries see the prefix only (their outputs are never read).
    pub fn bias(&self, window: Option<usize>, device: &Device) -> candle_core::Result<Tensor> {
        let rows = self.ids.len();
        let t = self.len();
        let mut v = vec![-1e9f32; rows * t * t];
        for r in 0..rows {
            let (br, pos) = (&self.branch[r], &self.pos[r]);
            for i in 0..t {
                for j in 0..=i {
                    let visible = br[j] != PAD && (br[j] == 0 || br[j] == br[i]);
                    let in_window =
                        || window.is_none_or(|w| (pos[i] as i64 - pos[j] as i64) < w as i64);
                    if visible && in_window() {
                        v[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(v, (rows, 1, t, t), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_share_their_common_prefix_and_keep_their_positions() {
        let a: &[u32] = &[1, 2, 3, 4];
        let b: &[u32] = &[1, 2, 9];
        let c: &[u32] = &[7];
        let d: &[u32] = &[8, 8];
        let p = Packed::pairs(&[a, c], &[b, d]);
        assert_eq!(p.ids[0], vec![1, 2, 3, 4, 9]);
        assert_eq!(p.pos[0], vec![0, 1, 2, 3, 2]);
        assert_eq!(p.ids[1], vec![7, 8, 8, 0, 0]);
        assert_eq!(p.pos[1], vec![0, 0, 1, 0, 0]);
        // Sequence order: a0, a1, b0, b1.
        assert_eq!(p.sequences(), 4);
        assert_eq!(
            (0..4).map(|t| p.flat(0, t)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!((0..3).map(|t| p.flat(2, t)).collect::<Vec<_>>(), [0, 1, 4]);
        assert_eq!(p.flat(1, 0), 5);
        assert_eq!((0..2).map(|t| p.flat(3, t)).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(p.tokens(), 5 + 3);
        // Identical sides are computed once; a side that is a prefix of the other lives in it.
        let q = Packed::pairs(&[a], &[a]);
        assert_eq!(q.ids[0], vec![1, 2, 3, 4]);
        assert_eq!(q.flat(1, 3), 3);
        let r = Packed::pairs(&[&a[..2]], &[a]);
        assert_eq!(r.ids[0], vec![1, 2, 3, 4]);
        assert_eq!(r.flat(0, 1), 1);
    }

    #[test]
    fn packing_is_chosen_only_when_it_saves_work() {
        let prompt: Vec<u32> = (1..=60).collect();
        let a: Vec<u32> = prompt.iter().copied().chain([100, 101]).collect();
        let b: Vec<u32> = prompt.iter().copied().chain([102]).collect();
        assert_eq!(Packed::pairs_or_rows(&[&a], &[&b], 64).ids.len(), 1);
        // Nothing shared, equal lengths: two rows of 62 beat one of 124 at a small width.
        let c: Vec<u32> = (200..262).collect();
        assert_eq!(Packed::pairs_or_rows(&[&a], &[&c], 16).ids.len(), 2);
    }

    #[test]
    fn suffix_tokens_see_the_prefix_and_their_own_branch_only() {
        let p = Packed::pairs(&[&[1, 2, 3]], &[&[1, 2, 5, 6]]);
        let bias: Vec<f32> = p
            .bias(None, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let t = p.len();
        let sees =
            |i: usize| -> Vec<usize> { (0..t).filter(|&j| bias[i * t + j] == 0.0).collect() };
        assert_eq!(sees(2), vec![0, 1, 2]); // a's 3
        assert_eq!(sees(3), vec![0, 1, 3]); // b's 5
        assert_eq!(sees(4), vec![0, 1, 3, 4]); // b's 6
                                               // A window of 2 positions: b's 6 (position 3) sees positions 2 and 3 only.
        let w: Vec<f32> = p
            .bias(Some(2), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            (0..t).filter(|&j| w[4 * t + j] == 0.0).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::models::readout::{response_logprobs, sequence_logprobs};
    use crate::models::{ops, Model};

    use crate::models::recompute::tests::{fixture, windowed_mistral};

    /// Right-pads rows with id 0 and returns (ids, attention mask, response mask): the unpacked
    /// batch, the oracle the packed scoring is tested against.
    fn pad(
        rows: &[(Vec<u32>, Vec<u32>)],
        device: &Device,
    ) -> candle_core::Result<(Tensor, Vec<Vec<u32>>, Tensor)> {
        let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len());
        let mut attn = Vec::with_capacity(rows.len());
        let mut resp = Vec::with_capacity(rows.len());
        for (i, m) in rows {
            let n = i.len();
            let mut a = i.clone();
            a.resize(t, 0);
            ids.push(a);
            let mut am = vec![1u32; n];
            am.resize(t, 0);
            attn.push(am);
            let mut rm = m.clone();
            rm.resize(t, 0);
            resp.push(rm);
        }
        Ok((
            ops::ids_tensor(&ids, device)?,
            attn,
            ops::mask_tensor(&resp, device)?,
        ))
    }

    /// Packed hidden states equal each sequence run alone, in every family; gradients reach
    /// every parameter through the packed path; packed policy log-probs equal the padded
    /// batch's.
    #[test]
    fn packed_rows_compute_what_each_sequence_computes_alone() {
        let dev = Device::Cpu;
        let tmp = tempfile::tempdir().unwrap();
        let dirs = [
            fixture("gpt2"),
            fixture("opt"),
            fixture("opt-350m"),
            fixture("llama"),
            windowed_mistral(tmp.path()),
        ];
        let a: &[u32] = &[5, 9, 30, 7, 11, 12];
        let b: &[u32] = &[5, 9, 31, 40];
        let c: &[u32] = &[4, 8];
        let d: &[u32] = &[4, 8, 12, 13, 14, 15, 16];
        let seqs = [a, c, b, d];
        for dir in &dirs {
            let model = Model::load(dir, &dev).unwrap();
            let p = Packed::pairs(&[a, c], &[b, d]);
            assert!(p.tokens() < seqs.iter().map(|s| s.len()).sum::<usize>());
            let hp = model.hidden_packed(&p).unwrap();
            let (rows, t, h) = hp.dims3().unwrap();
            let flat = hp.reshape((rows * t, h)).unwrap();
            for (s, seq) in seqs.iter().enumerate() {
                let ids = ops::ids_tensor(&[seq.to_vec()], &dev).unwrap();
                let alone = model.hidden(&ids, &[vec![1; seq.len()]]).unwrap();
                for (i, _) in seq.iter().enumerate() {
                    let got = flat.get(p.flat(s, i)).unwrap();
                    let want = alone.get(0).unwrap().get(i).unwrap();
                    let diff = crate::models::max_abs_diff(&got, &want);
                    assert!(diff < 1e-5, "{}: seq {s} token {i}: {diff}", dir.display());
                }
            }
            let grads = model
                .backward(&hp.sqr().unwrap().sum_all().unwrap())
                .unwrap();
            for (name, v) in model.params() {
                if name.starts_with("lm_head.") {
                    continue;
                }
                assert!(
                    grads.get(v.as_tensor()).is_some(),
                    "{}: {name}",
                    dir.display()
                );
            }
            // Policy log-probs: responses are the last tokens after position 2.
            let resp: Vec<Vec<u32>> = (seqs.iter())
                .map(|s| (0..s.len()).map(|i| u32::from(i >= 2)).collect())
                .collect();
            let pairs: Vec<(&[u32], &[u32])> =
                seqs.iter().zip(&resp).map(|(s, r)| (*s, &r[..])).collect();
            let got = sequence_logprobs(&model, &pairs, true).unwrap();
            let owned: Vec<(Vec<u32>, Vec<u32>)> = pairs
                .iter()
                .map(|(s, r)| (s.to_vec(), r.to_vec()))
                .collect();
            let (ids, attn, m) = pad(&owned, &dev).unwrap();
            let m = m.to_dtype(candle_core::DType::F32).unwrap();
            let logits = model.logits(&model.hidden(&ids, &attn).unwrap()).unwrap();
            let want = response_logprobs(&logits, &ids, &m).unwrap();
            for (g, w) in [
                (&got.sum, &want.sum),
                (&got.mean, &want.mean),
                (&got.count, &want.count),
            ] {
                let diff = crate::models::max_abs_diff(g, w);
                assert!(diff < 1e-4, "{}: log-probs {diff}", dir.display());
            }
        }
    }
}
