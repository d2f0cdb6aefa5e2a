//! A projection (`nn.Linear` or GPT-2's `Conv1D`) with an optional LoRA adapter.
//!
//! LoRA (Hu et al. 2021; the paper's App. H uses r = 8, alpha = 16 on attention and MLP
//! projections): `y = base(x) + (alpha / r) * x A^T B^T`, `A: [r, in]` initialised
//! Kaiming-uniform (bound 1/sqrt(in), as PEFT), `B: [out, r]` zeros, so training starts from
//! the base model. Only `A` and `B` are trainable; the base weight is a plain (untracked)
//! tensor. Adapters are saved in PEFT's layout (`base_model.model.<module>.lora_A.weight`).

use candle_core::{Tensor, Var};

use super::ops;
use crate::error::Result;

/// How the base weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`, `y = x W^T` (nn.Linear).
    Linear,
    /// `[in, out]`, `y = x W` (GPT-2 Conv1D).
    Conv1d,
}

/// A LoRA adapter on one projection.
pub struct Lora {
    /// The trainable matrices (f32 master weights under mixed precision).
    pub a: Var,
    pub b: Var,
    /// What the forward multiplies by: `a` and `b` themselves, or their tracked casts to the
    /// compute dtype under mixed precision (refreshed after every optimizer step).
    pub ac: Tensor,
    pub bc: Tensor,
    pub scale: f64,
}

pub struct Proj {
    /// Module name (transformers naming, without `.weight`).
    pub name: String,
    pub w: Tensor,
    pub bias: Option<Tensor>,
    pub layout: Layout,
    pub lora: Option<Lora>,
}

impl Proj {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some(l) = &self.lora else {
            return Ok(match self.layout {
                Layout::Linear => ops::linear(x, &self.w, self.bias.as_ref())?,
                Layout::Conv1d => {
                    let b = self.bias.as_ref().expect("Conv1D has a bias");
                    ops::conv1d(x, &self.w, b)?
                }
            });
        };
        // The scale goes into B (`[out, r]`), and the base product and the adapter's term are
        // one op: the graph keeps the projection's output alone (`frozen::lora_projection`).
        let sb = (&l.bc * l.scale)?;
        let transposed = self.layout == Layout::Linear;
        let y = super::frozen::lora_projection(x, &self.w, transposed, &l.ac, &sb)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
