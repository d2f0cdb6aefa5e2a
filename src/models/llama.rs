//! Llama and Mistral (`LlamaForCausalLM`, `MistralForCausalLM`): RMSNorm, rotary embeddings
//! (rope_theta, Llama-3.1 rope scaling), grouped-query attention, SwiGLU MLP, Mistral's sliding
//! window; the head is separate unless `tie_word_embeddings`.

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::engine::Sums;
use super::linear::{Layout, Proj};
use super::rms_block::{plain, RmsBlock};
use super::weights::Weights;
use super::{embed, ops};
use super::{Attend, Shared};
use crate::error::Result;

struct Layer {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    gate: Proj,
    up: Proj,
    down: Proj,
    input_norm: Tensor,
    post_norm: Tensor,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
}

/// Rotary inverse frequencies as transformers computes them (f32), with llama3 scaling.
pub fn inv_freq(cfg: &LlamaConfig) -> Result<Vec<f32>> {
    let dim = cfg.head_dim();
    let base = cfg.rope_theta() as f32;
    let mut f: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    if let Some(s) = cfg.llama3_scaling()? {
        let (factor, low, high, old) = (
            s.factor as f32,
            s.low_freq_factor as f32,
            s.high_freq_factor as f32,
            s.original_max_position_embeddings as f32,
        );
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        for x in f.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *x;
            let scaled = if wavelen > low_wavelen {
                *x / factor
            } else {
                *x
            };
            // transformers: ~(wavelen < high) & ~(wavelen > low); wavelengths are finite.
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
            *x = if medium {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            };
        }
    }
    Ok(f)
}

impl Llama {
    pub fn new(cfg: &LlamaConfig, w: &Weights) -> Result<Llama> {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let qd = cfg.num_attention_heads * hd;
        let kvd = cfg.kv_heads() * hd;
        let i = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let n = format!("model.layers.{l}");
            let g = |s: &str, shape: &[usize]| w.get(&format!("{n}.{s}.weight"), shape);
            let p = |s: &str, out: usize, inp: usize| {
                w.proj(&format!("{n}.{s}"), out, inp, false, Layout::Linear)
            };
            layers.push(Layer {
                q: p("self_attn.q_proj", qd, d)?,
                k: p("self_attn.k_proj", kvd, d)?,
                v: p("self_attn.v_proj", kvd, d)?,
                o: p("self_attn.o_proj", d, qd)?,
                gate: p("mlp.gate_proj", i, d)?,
                up: p("mlp.up_proj", i, d)?,
                down: p("mlp.down_proj", d, i)?,
                input_norm: g("input_layernorm", &[d])?,
                post_norm: g("post_attention_layernorm", &[d])?,
            });
        }
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, d])?
        };
        Ok(Llama {
            cfg: cfg.clone(),
            norm: w.get("model.norm.weight", &[d])?,
            embed_tokens,
            layers,
            lm_head,
            inv_freq: inv_freq(cfg)?,
        })
    }

    /// cos and sin `[T, d]` at positions 0..T, or `[B, 1, T, d]` at packed positions.
    fn rotary(&self, t: usize, attend: Attend, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let rows: Vec<Vec<u32>> = match attend {
            Attend::Mask(_) => vec![(0..t as u32).collect()],
            Attend::Packed(p) => p.pos.clone(),
        };
        let mut cos = Vec::with_capacity(rows.len() * t * 2 * half);
        let mut sin = Vec::with_capacity(rows.len() * t * 2 * half);
        for &p in rows.iter().flatten() {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape: &[usize] = match attend {
            Attend::Mask(_) => &[t, 2 * half],
            Attend::Packed(_) => &[rows.len(), 1, t, 2 * half],
        };
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }

    /// The embedded tokens `[B, T, hidden]` and what every layer of this forward shares (the
    /// attention bias and the rotary tables).
    pub fn embed(
        &self,
        ids: &Tensor,
        attend: Attend,
        device: &Device,
        sums: Option<&Sums>,
    ) -> Result<(Tensor, Shared)> {
        let (_, t) = ids.dims2()?;
        let x = embed::lookup(&self.embed_tokens, ids, sums)?;
        let dtype = x.dtype();
        let (cos, sin) = self.rotary(t, attend, device)?;
        let rope = Some((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?));
        let bias = attend
            .bias(self.cfg.sliding_window, device)?
            .to_dtype(dtype)?;
        Ok((x, Shared { bias, rope }))
    }

    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `l` of the residual stream.
    pub fn layer(&self, l: usize, x: &Tensor, s: &Shared) -> Result<Tensor> {
        let l = &self.layers[l];
        let h = self.cfg.num_attention_heads;
        let kvh = self.cfg.kv_heads();
        let eps = self.cfg.rms_norm_eps;
        let scale = 1.0 / (self.cfg.head_dim() as f64).sqrt();
        let (cos, sin) = s.rope.as_ref().expect("Llama forwards carry rotary tables");
        let a = ops::rms_norm(x, &l.input_norm, eps)?;
        let q = ops::rope(&ops::split_heads(&l.q.forward(&a)?, h)?, cos, sin)?;
        let k = ops::rope(&ops::split_heads(&l.k.forward(&a)?, kvh)?, cos, sin)?;
        let v = ops::split_heads(&l.v.forward(&a)?, kvh)?;
        let k = ops::repeat_kv(&k, h / kvh)?;
        let v = ops::repeat_kv(&v, h / kvh)?;
        let att = ops::merge_heads(&ops::attention(&q, &k, &v, &s.bias, scale)?)?;
        let x = (x + l.o.forward(&att)?)?;
        let m = ops::rms_norm(&x, &l.post_norm, eps)?;
        let act = (ops::silu(&l.gate.forward(&m)?)? * l.up.forward(&m)?)?;
        Ok((x + l.down.forward(&act)?)?)
    }

    /// Layer `l` as the owned engine runs it (Mistral's window arrives in the attention bias),
    /// or `None` under adapters.
    pub fn block(&self, l: usize) -> Option<RmsBlock<'_>> {
        let l = &self.layers[l];
        let attn = [&l.q, &l.k, &l.v, &l.o].map(plain);
        let mlp = [&l.gate, &l.up, &l.down].map(plain);
        let (Some(q), Some(k), Some(v), Some(o)) = (attn[0], attn[1], attn[2], attn[3]) else {
            return None;
        };
        let (Some(gate), Some(up), Some(down)) = (mlp[0], mlp[1], mlp[2]) else {
            return None;
        };
        let c = &self.cfg;
        Some(RmsBlock {
            norm1: &l.input_norm,
            attn: [q, k, v, o],
            norm2: &l.post_norm,
            mlp: [gate, up, down],
            eps: c.rms_norm_eps as f32,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            d: c.hidden_size,
            inner: c.intermediate_size,
        })
    }

    /// Final hidden states `[B, T, hidden]` (after the final norm) from the last layer's output.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(hidden, &self.lm_head, None)?)
    }

    /// The LM head `[V, d]`: the logits are `hidden · headᵀ`.
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

/// The shape of a random Llama checkpoint (`w2s bench checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitShape {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    /// Positions.
    pub ctx: usize,
}

/// The `config.json` of a Llama of this shape (untied head, SiLU, rope_theta 10000).
pub fn config_json(s: &InitShape) -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": s.ctx,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16"
    })
}

/// Random Llama weights in `dtype`, as transformers initialises them (normal, std 0.02; norms
/// 1), each drawn in f32 and converted at once, so a 1B-parameter bf16 checkpoint never holds
/// its f32 values whole.
pub fn init_weights(s: &InitShape, seed: u64, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    let mut rng = crate::rng::NumpyPcg64::new(seed);
    let dev = Device::Cpu;
    let (d, hd) = (s.hidden, s.hidden / s.heads);
    let mut out = Vec::new();
    let mut push = |name: String, shape: &[usize], v: Vec<f32>| -> Result<()> {
        out.push((name, Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)?));
        Ok(())
    };
    let mut normal = |n: usize| super::gpt2::normal(&mut rng, n, 0.02);
    push(
        "model.embed_tokens.weight".into(),
        &[s.vocab, d],
        normal(s.vocab * d),
    )?;
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (m, o, i) in [
            ("self_attn.q_proj", s.heads * hd, d),
            ("self_attn.k_proj", s.kv_heads * hd, d),
            ("self_attn.v_proj", s.kv_heads * hd, d),
            ("self_attn.o_proj", d, s.heads * hd),
            ("mlp.gate_proj", s.intermediate, d),
            ("mlp.up_proj", s.intermediate, d),
            ("mlp.down_proj", d, s.intermediate),
        ] {
            push(format!("{p}.{m}.weight"), &[o, i], normal(o * i))?;
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            push(format!("{p}.{n}.weight"), &[d], vec![1.0; d])?;
        }
    }
    push("model.norm.weight".into(), &[d], vec![1.0; d])?;
    push("lm_head.weight".into(), &[s.vocab, d], normal(s.vocab * d))?;
    Ok(out)
}
