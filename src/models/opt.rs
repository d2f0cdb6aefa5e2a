//! OPT (`OPTForCausalLM`): learned positions with offset 2 counted from the attention mask,
//! optional `project_in` / `project_out` (OPT-350M), pre- or post-layer-norm blocks, ReLU MLP,
//! language-model head tied to `embed_tokens`.

use candle_core::{Device, Tensor};

use super::block::{Act, Lin, PreNorm, Qkv};
use super::config::OptConfig;
use super::engine::Sums;
use super::linear::{Layout, Proj};
use super::weights::Weights;
use super::{embed, ops};
use super::{Attend, Shared};
use crate::error::Result;

/// OPT's learned positional embedding is indexed from 2 (fairseq legacy).
const POSITION_OFFSET: usize = 2;

/// Every OPT layer norm's epsilon (transformers' default; not in config.json).
const LN_EPS: f64 = 1e-5;

struct Layer {
    q: Proj,
    k: Proj,
    v: Proj,
    out: Proj,
    attn_ln: (Tensor, Tensor),
    fc1: Proj,
    fc2: Proj,
    final_ln: (Tensor, Tensor),
}

pub struct Opt {
    cfg: OptConfig,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Tensor>,
    project_out: Option<Tensor>,
    final_layer_norm: Option<(Tensor, Tensor)>,
    layers: Vec<Layer>,
    lm_head: Tensor,
}

impl Opt {
    pub fn new(cfg: &OptConfig, w: &Weights) -> Result<Opt> {
        let d = cfg.hidden_size;
        let p = cfg.proj_dim();
        let f = cfg.ffn_dim;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = format!("model.decoder.layers.{i}");
            layers.push(Layer {
                q: w.proj(&format!("{n}.self_attn.q_proj"), d, d, true, Layout::Linear)?,
                k: w.proj(&format!("{n}.self_attn.k_proj"), d, d, true, Layout::Linear)?,
                v: w.proj(&format!("{n}.self_attn.v_proj"), d, d, true, Layout::Linear)?,
                out: w.proj(
                    &format!("{n}.self_attn.out_proj"),
                    d,
                    d,
                    true,
                    Layout::Linear,
                )?,
                attn_ln: w.layer_norm(&format!("{n}.self_attn_layer_norm"), d)?,
                fc1: w.proj(&format!("{n}.fc1"), f, d, true, Layout::Linear)?,
                fc2: w.proj(&format!("{n}.fc2"), d, f, true, Layout::Linear)?,
                final_ln: w.layer_norm(&format!("{n}.final_layer_norm"), d)?,
            });
        }
        let embed_tokens = w.get("model.decoder.embed_tokens.weight", &[cfg.vocab_size, p])?;
        let (project_in, project_out) = if p != d {
            (
                Some(w.get("model.decoder.project_in.weight", &[d, p])?),
                Some(w.get("model.decoder.project_out.weight", &[p, d])?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if cfg.has_final_layer_norm() {
            Some(w.layer_norm("model.decoder.final_layer_norm", d)?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, p])?
        };
        Ok(Opt {
            cfg: cfg.clone(),
            embed_positions: w.get(
                "model.decoder.embed_positions.weight",
                &[cfg.max_position_embeddings + POSITION_OFFSET, d],
            )?,
            embed_tokens,
            project_in,
            project_out,
            final_layer_norm,
            layers,
            lm_head,
        })
    }

    /// Position ids as transformers computes them: `cumsum(mask) * mask - 1 + 2`, so padding
    /// (mask 0) gets index 1 and real tokens count from 2 whatever the padding side.
    fn positions(mask: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let rows: Vec<Vec<u32>> = mask
            .iter()
            .map(|m| {
                let mut c = 0i64;
                m.iter()
                    .map(|&x| {
                        c += x as i64;
                        (c * x as i64 - 1 + POSITION_OFFSET as i64) as u32
                    })
                    .collect()
            })
            .collect();
        Ok(ops::ids_tensor(&rows, device)?)
    }

    /// The embedded tokens `[B, T, hidden]` (after project_in, positions added) and what every
    /// layer of this forward shares.
    pub fn embed(
        &self,
        ids: &Tensor,
        attend: Attend,
        device: &Device,
        sums: Option<&Sums>,
    ) -> Result<(Tensor, Shared)> {
        let mut x = embed::lookup(&self.embed_tokens, ids, sums)?;
        if let Some(pin) = &self.project_in {
            x = ops::linear(&x, pin, None)?;
        }
        let pos = match attend {
            Attend::Mask(mask) => Self::positions(mask, device)?,
            Attend::Packed(p) => {
                let rows: Vec<Vec<u32>> = (p.pos.iter())
                    .map(|r| r.iter().map(|&x| x + POSITION_OFFSET as u32).collect())
                    .collect();
                ops::ids_tensor(&rows, device)?
            }
        };
        x = (x + embed::lookup(&self.embed_positions, &pos, sums)?)?;
        let bias = attend.bias(None, device)?.to_dtype(x.dtype())?;
        Ok((x, Shared { bias, rope: None }))
    }

    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l` as the owned engine runs it, pre- or post-norm (`None` with adapters).
    pub fn block(&self, l: usize) -> Option<PreNorm<'_>> {
        let y = &self.layers[l];
        let d = self.cfg.hidden_size;
        let h = self.cfg.num_attention_heads;
        Some(PreNorm {
            post: !self.cfg.do_layer_norm_before,
            ln1: (&y.attn_ln.0, &y.attn_ln.1),
            qkv: Qkv::Split([Lin::of(&y.q)?, Lin::of(&y.k)?, Lin::of(&y.v)?]),
            o: Lin::of(&y.out)?,
            ln2: (&y.final_ln.0, &y.final_ln.1),
            up: Lin::of(&y.fc1)?,
            down: Lin::of(&y.fc2)?,
            act: Act::Relu,
            eps: LN_EPS as f32,
            heads: h,
            d,
            inner: self.cfg.ffn_dim,
            scale: 1.0 / ((d / h) as f32).sqrt(),
        })
    }

    /// Decoder layer `l` of the residual stream.
    pub fn layer(&self, l: usize, x: &Tensor, s: &Shared) -> Result<Tensor> {
        let l = &self.layers[l];
        let h = self.cfg.num_attention_heads;
        let d = self.cfg.hidden_size;
        let scale = 1.0 / ((d / h) as f64).sqrt();
        let pre = self.cfg.do_layer_norm_before;
        let eps = LN_EPS;
        let residual = x.clone();
        let mut a = if pre {
            ops::layer_norm(x, &l.attn_ln.0, &l.attn_ln.1, eps)?
        } else {
            x.clone()
        };
        let q = ops::split_heads(&l.q.forward(&a)?, h)?;
        let k = ops::split_heads(&l.k.forward(&a)?, h)?;
        let v = ops::split_heads(&l.v.forward(&a)?, h)?;
        a = ops::merge_heads(&ops::attention(&q, &k, &v, &s.bias, scale)?)?;
        let mut x = (residual + l.out.forward(&a)?)?;
        if !pre {
            x = ops::layer_norm(&x, &l.attn_ln.0, &l.attn_ln.1, eps)?;
        }
        let residual = x.clone();
        let mut m = if pre {
            ops::layer_norm(&x, &l.final_ln.0, &l.final_ln.1, eps)?
        } else {
            x.clone()
        };
        m = l.fc1.forward(&m)?.relu()?;
        x = (residual + l.fc2.forward(&m)?)?;
        if !pre {
            x = ops::layer_norm(&x, &l.final_ln.0, &l.final_ln.1, eps)?;
        }
        Ok(x)
    }

    /// Final hidden states `[B, T, word_embed_proj_dim]` (after the final norm and
    /// project_out) from the last layer's output.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some((w, b)) = &self.final_layer_norm {
            x = ops::layer_norm(&x, w, b, LN_EPS)?;
        }
        if let Some(pout) = &self.project_out {
            x = ops::linear(&x, pout, None)?;
        }
        Ok(x)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(hidden, &self.lm_head, None)?)
    }

    /// The LM head `[V, d]`: the logits are `hidden · headᵀ`.
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}
