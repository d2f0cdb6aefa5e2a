//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-layer-norm blocks, `Conv1D` projections
//! (`[in, out]` weights), `gelu_new`, final `ln_f`, language-model head tied to `wte`.

use candle_core::{Device, Tensor};

use super::block::{Act, Lin, PreNorm, Qkv};
use super::config::Gpt2Config;
use super::engine::Sums;
use super::linear::{Layout, Proj};
use super::weights::Weights;
use super::{embed, ops};
use super::{Attend, Shared};
use crate::error::Result;

struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: Proj,
    c_proj: Proj,
    ln_2: (Tensor, Tensor),
    c_fc: Proj,
    mlp_proj: Proj,
}

pub struct Gpt2 {
    cfg: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
    lm_head: Tensor,
}

impl Gpt2 {
    pub fn new(cfg: &Gpt2Config, w: &Weights) -> Result<Gpt2> {
        let d = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: w.layer_norm(&format!("{p}.ln_1"), d)?,
                c_attn: w.proj(&format!("{p}.attn.c_attn"), 3 * d, d, true, Layout::Conv1d)?,
                c_proj: w.proj(&format!("{p}.attn.c_proj"), d, d, true, Layout::Conv1d)?,
                ln_2: w.layer_norm(&format!("{p}.ln_2"), d)?,
                c_fc: w.proj(&format!("{p}.mlp.c_fc"), inner, d, true, Layout::Conv1d)?,
                mlp_proj: w.proj(&format!("{p}.mlp.c_proj"), d, inner, true, Layout::Conv1d)?,
            });
        }
        let wte = w.get("transformer.wte.weight", &[cfg.vocab_size, d])?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            wte.clone()
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, d])?
        };
        Ok(Gpt2 {
            cfg: cfg.clone(),
            wpe: w.get("transformer.wpe.weight", &[cfg.n_positions, d])?,
            ln_f: w.layer_norm("transformer.ln_f", d)?,
            wte,
            blocks,
            lm_head,
        })
    }

    /// The embedded tokens `[B, T, d]` and what every block of this forward shares.
    pub fn embed(
        &self,
        ids: &Tensor,
        attend: Attend,
        device: &Device,
        sums: Option<&Sums>,
    ) -> Result<(Tensor, Shared)> {
        let (_, t) = ids.dims2()?;
        let tok = embed::lookup(&self.wte, ids, sums)?;
        let x = match attend {
            // Positions 0..T whatever the mask, as GPT2Model without position_ids.
            Attend::Mask(_) => tok.broadcast_add(&self.wpe.narrow(0, 0, t)?)?,
            Attend::Packed(p) => {
                (tok + {
                    let pos = ops::ids_tensor(&p.pos, device)?;
                    embed::lookup(&self.wpe, &pos, sums)?
                })?
            }
        };
        let bias = attend.bias(None, device)?.to_dtype(x.dtype())?;
        Ok((x, Shared { bias, rope: None }))
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Block `l` of the residual stream.
    pub fn layer(&self, l: usize, x: &Tensor, s: &Shared) -> Result<Tensor> {
        let b = &self.blocks[l];
        let eps = self.cfg.layer_norm_epsilon;
        let h = self.cfg.n_head;
        let d = self.cfg.n_embd;
        let scale = if self.cfg.scale_attn_weights {
            1.0 / ((d / h) as f64).sqrt()
        } else {
            1.0
        };
        let a = ops::layer_norm(x, &b.ln_1.0, &b.ln_1.1, eps)?;
        let qkv = b.c_attn.forward(&a)?;
        let q = ops::split_heads(&qkv.narrow(2, 0, d)?, h)?;
        let k = ops::split_heads(&qkv.narrow(2, d, d)?, h)?;
        let v = ops::split_heads(&qkv.narrow(2, 2 * d, d)?, h)?;
        let att = ops::merge_heads(&ops::attention(&q, &k, &v, &s.bias, scale)?)?;
        let x = (x + b.c_proj.forward(&att)?)?;
        let m = ops::layer_norm(&x, &b.ln_2.0, &b.ln_2.1, eps)?;
        let m = ops::gelu_new(&b.c_fc.forward(&m)?)?;
        Ok((x + b.mlp_proj.forward(&m)?)?)
    }

    /// Block `l` as the owned engine runs it (`None` with adapters).
    pub fn block(&self, l: usize) -> Option<PreNorm<'_>> {
        let b = &self.blocks[l];
        let d = self.cfg.n_embd;
        let h = self.cfg.n_head;
        let scale = if self.cfg.scale_attn_weights {
            1.0 / ((d / h) as f32).sqrt()
        } else {
            1.0
        };
        Some(PreNorm {
            post: false,
            ln1: (&b.ln_1.0, &b.ln_1.1),
            qkv: Qkv::Fused(Lin::of(&b.c_attn)?),
            o: Lin::of(&b.c_proj)?,
            ln2: (&b.ln_2.0, &b.ln_2.1),
            up: Lin::of(&b.c_fc)?,
            down: Lin::of(&b.mlp_proj)?,
            act: Act::GeluNew,
            eps: self.cfg.layer_norm_epsilon as f32,
            heads: h,
            d,
            inner: self.cfg.n_inner.unwrap_or(4 * d),
            scale,
        })
    }

    /// Final hidden states `[B, T, d]` (after `ln_f`) from the last block's output.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_epsilon;
        Ok(ops::layer_norm(x, &self.ln_f.0, &self.ln_f.1, eps)?)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(hidden, &self.lm_head, None)?)
    }

    /// The LM head `[V, d]`: the logits are `hidden · headᵀ`.
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

/// The shape of a freshly initialised GPT-2 (`w2s pretrain`, `w2s bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitShape {
    pub layers: usize,
    pub embd: usize,
    /// Positions.
    pub ctx: usize,
    pub vocab: usize,
}

/// `n` draws from N(0, std²), Box-Muller from two 53-bit uniforms of `rng` (the random
/// checkpoints of `w2s pretrain` and `w2s bench`). Tensors of [`PARALLEL_DRAWS`] values and
/// more (only `w2s bench`'s large shapes: a 7B model draws 7 billion) are drawn in chunks of
/// 2^20, each from its own generator seeded by the next value of `rng`, in parallel: the
/// values depend on the seed only, not on the threads.
pub fn normal(rng: &mut crate::rng::NumpyPcg64, n: usize, std: f64) -> Vec<f32> {
    use rayon::prelude::*;
    if n < PARALLEL_DRAWS {
        return draws(rng, n, std);
    }
    const CHUNK: usize = 1 << 20;
    let seeds: Vec<u64> = (0..n.div_ceil(CHUNK)).map(|_| rng.next_u64()).collect();
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).zip(seeds).for_each(|(c, seed)| {
        let mut r = crate::rng::NumpyPcg64::new(seed);
        c.copy_from_slice(&draws(&mut r, c.len(), std));
    });
    out
}

/// Tensors at least this large are drawn in parallel chunks by [`normal`].
pub const PARALLEL_DRAWS: usize = 1 << 22;

fn draws(rng: &mut crate::rng::NumpyPcg64, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// GPT-2 initial weights as transformers draws them (normal, std 0.02; biases 0; layer norms
/// 1 and 0), from our own seeded generator so the same seed gives the same model everywhere.
pub fn init_weights(s: &InitShape, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let vocab = s.vocab;
    let mut rng = crate::rng::NumpyPcg64::new(seed);
    let mut normal = |n: usize| normal(&mut rng, n, 0.02);
    let d = s.embd;
    let dev = Device::Cpu;
    let mut out = Vec::new();
    let mut push = |name: String, shape: &[usize], v: Vec<f32>| -> Result<()> {
        out.push((name, Tensor::from_vec(v, shape, &dev)?));
        Ok(())
    };
    push(
        "transformer.wte.weight".into(),
        &[vocab, d],
        normal(vocab * d),
    )?;
    push(
        "transformer.wpe.weight".into(),
        &[s.ctx, d],
        normal(s.ctx * d),
    )?;
    for i in 0..s.layers {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            push(format!("{p}.{ln}.weight"), &[d], vec![1.0; d])?;
            push(format!("{p}.{ln}.bias"), &[d], vec![0.0; d])?;
        }
        for (m, inp, outp) in [
            ("attn.c_attn", d, 3 * d),
            ("attn.c_proj", d, d),
            ("mlp.c_fc", d, 4 * d),
            ("mlp.c_proj", 4 * d, d),
        ] {
            push(format!("{p}.{m}.weight"), &[inp, outp], normal(inp * outp))?;
            push(format!("{p}.{m}.bias"), &[outp], vec![0.0; outp])?;
        }
    }
    push("transformer.ln_f.weight".into(), &[d], vec![1.0; d])?;
    push("transformer.ln_f.bias".into(), &[d], vec![0.0; d])?;
    Ok(out)
}

/// The `config.json` of a GPT-2 of this shape (tied head, `gelu_new`, transformers' names).
pub fn config_json(s: &InitShape, heads: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": s.vocab,
        "n_positions": s.ctx,
        "n_ctx": s.ctx,
        "n_embd": s.embd,
        "n_layer": s.layers,
        "n_head": heads,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "bos_token_id": 0,
        "eos_token_id": 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::NumpyPcg64;

    /// Large draws come in parallel chunks: the same values on any number of threads, each
    /// chunk from its own stream, N(0, std²) as a whole; small draws are the sequential ones.
    #[test]
    fn parallel_draws_depend_on_the_seed_only() {
        let n = PARALLEL_DRAWS + 12345;
        let a = normal(&mut NumpyPcg64::new(3), n, 0.02);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| normal(&mut NumpyPcg64::new(3), n, 0.02));
        assert_eq!(a, b);
        let (mean, var) = a.iter().fold((0f64, 0f64), |(m, v), &x| {
            (m + x as f64 / n as f64, v + (x as f64).powi(2) / n as f64)
        });
        assert!(
            mean.abs() < 1e-4 && (var.sqrt() - 0.02).abs() < 1e-4,
            "{mean} {var}"
        );
        // Chunks are not copies of one another.
        assert_ne!(a[..1000], a[1 << 20..(1 << 20) + 1000]);
        let small = normal(&mut NumpyPcg64::new(3), 1000, 0.02);
        assert_eq!(small, draws(&mut NumpyPcg64::new(3), 1000, 0.02));
    }
}
