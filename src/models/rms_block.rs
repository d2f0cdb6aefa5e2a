//! The Llama / Mistral decoder layer written out for the owned engine (`models::engine`):
//! RMSNorm, bias-free `nn.Linear` projections, rotary embeddings on q and k, grouped-query
//! attention (Mistral's sliding window arrives in the attention bias) and the SwiGLU MLP.
//!
//! `x1 = x + attention(rope(rms_1(x) · [W_q; W_k; W_v]ᵀ)) · W_oᵀ`,
//! `y = x1 + (silu(rms_2(x1) · W_gateᵀ) ∘ (rms_2(x1) · W_upᵀ)) · W_downᵀ`.
//!
//! The gate and up products land side by side in one `[n, 2·inner]` buffer (so the SwiGLU
//! backward can overwrite them with their gradients in place), and q, k and v side by side in
//! one `[n, (H + 2·KV)·hd]` row, the layout the attention kernels read.

use candle_core::Tensor;

use super::engine::{ActSizes, Acts, LayerIo};
use super::kernels::{self as k, Heads, Mat};
use super::linear::{Layout, Proj};

/// One Llama layer as the owned engine runs it (weights in `nn.Linear` `[out, in]` layout).
pub struct RmsBlock<'a> {
    pub norm1: &'a Tensor,
    /// q, k, v, o.
    pub attn: [&'a Tensor; 4],
    pub norm2: &'a Tensor,
    /// gate, up, down.
    pub mlp: [&'a Tensor; 3],
    pub eps: f32,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub d: usize,
    pub inner: usize,
}

/// A projection's weight when it is a plain bias-free `nn.Linear` (no adapter).
pub fn plain(p: &Proj) -> Option<&Tensor> {
    (p.bias.is_none() && p.lora.is_none() && p.layout == Layout::Linear).then_some(&p.w)
}

// Positions in [`RmsBlock::weights`].
const NORM1: usize = 0;
const Q: usize = 1;
const O: usize = 4;
const NORM2: usize = 5;
const GATE: usize = 6;
const UP: usize = 7;
const DOWN: usize = 8;

/// `y (+)= x · Wᵀ` for `x` `[n, inp]` (row stride `ldx`) and `W` `[out, inp]`, into `y` at row
/// stride `ldy`.
fn project(y: &mut [f32], ldy: usize, x: Mat, w: &[f32], (n, inp, out): (usize, usize, usize)) {
    k::mm_weight(y, ldy, n, x, w, (inp, out), true, false);
}

impl RmsBlock<'_> {
    /// Every weight in the order the forward reads them.
    pub fn weights(&self) -> Vec<&Tensor> {
        let mut v = vec![self.norm1];
        v.extend(self.attn);
        v.push(self.norm2);
        v.extend(self.mlp);
        v
    }

    fn heads(&self, b: usize, t: usize) -> Heads {
        Heads {
            b,
            t,
            h: self.heads,
            kv: self.kv_heads,
            hd: self.head_dim,
        }
    }

    /// Widths of q, of k (= v) and of a token's `q | k | v` row.
    fn widths(&self) -> (usize, usize, usize) {
        let (qd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        (qd, kvd, qd + 2 * kvd)
    }

    /// Where q, k and v start in a token's `q | k | v` row, and their widths.
    fn columns(&self) -> [(usize, usize); 3] {
        let (qd, kvd, _) = self.widths();
        [(0, qd), (qd, kvd), (qd + kvd, kvd)]
    }

    /// Multiplies the scores `q · kᵀ`.
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Buffer sizes of one layer's activations at `b` rows of `t` tokens: `up` holds gate | up
    /// (and in the backward the `[n, d]` and `[n, q]` gradients), `act` the SwiGLU output (and
    /// in the backward the `[n, d]` and `q | k | v` gradients).
    pub fn sizes(&self, b: usize, t: usize) -> ActSizes {
        let (d, inner) = (self.d, self.inner);
        let (qd, _, row) = self.widths();
        ActSizes {
            n: b * t,
            d,
            qkv: row,
            att: qd,
            inner,
            up: (2 * inner).max(d).max(qd),
            act: inner.max(row).max(d),
            lse: b * self.heads * t,
        }
    }

    /// `y` from `x` (both `[B·T, d]`), keeping in `a` what the backward needs; `io.w` holds
    /// [`RmsBlock::weights`]' values and `io.rope` the cos / sin tables.
    pub fn forward(&self, io: LayerIo, a: &mut Acts, y: &mut [f32]) {
        self.forward_rows(io, a, None, y);
    }

    /// [`RmsBlock::forward`], or with `rows` (ascending, distinct) the outputs of those tokens
    /// only, into the front of `y` (as `PreNorm::forward_rows`).
    pub fn forward_rows(&self, io: LayerIo, a: &mut Acts, rows: Option<&[usize]>, y: &mut [f32]) {
        let LayerIo {
            w,
            x,
            bias,
            b,
            t,
            rope,
        } = io;
        let rope = rope.expect("a rotary layer's forward carries its tables");
        let (d, inner, hd) = (self.d, self.inner, self.head_dim);
        let (qd, _, row) = self.widths();
        k::rms_norm(x, w[NORM1], self.eps, &mut a.n1, &mut a.rstd1);
        let n1 = Mat::rows(&a.n1, d);
        for (j, (off, width)) in self.columns().into_iter().enumerate() {
            project(&mut a.qkv[off..], row, n1, w[Q + j], (b * t, d, width));
        }
        k::rope(&mut a.qkv, row, (0, self.heads, hd), rope, t, false);
        k::rope(&mut a.qkv, row, (qd, self.kv_heads, hd), rope, t, false);
        k::attention(
            &a.qkv,
            bias,
            self.heads(b, t),
            self.scale(),
            &mut a.att,
            &mut a.lse,
        );
        let n = super::block::keep(a, x, d, qd, rows, b * t);
        let att = Mat::rows(&a.att, qd);
        k::mm_weight(&mut a.x1, d, n, att, w[O], (qd, d), true, true);
        let (x1, n2) = (&a.x1[..n * d], &mut a.n2[..n * d]);
        k::rms_norm(x1, w[NORM2], self.eps, n2, &mut a.rstd2[..n]);
        let n2 = Mat::rows(&a.n2, d);
        project(&mut a.up, 2 * inner, n2, w[GATE], (n, d, inner));
        project(&mut a.up[inner..], 2 * inner, n2, w[UP], (n, d, inner));
        self.activate(&a.up[..2 * n * inner], &mut a.act[..n * inner]);
        let y = &mut y[..n * d];
        y.copy_from_slice(&a.x1[..n * d]);
        let act = Mat::rows(&a.act, inner);
        k::mm_weight(y, d, n, act, w[DOWN], (inner, d), true, true);
    }

    /// The SwiGLU output `y` `[n, inner]` from gate | up `gu` `[n, 2·inner]`.
    pub fn activate(&self, gu: &[f32], y: &mut [f32]) {
        k::swiglu(gu, self.inner, y);
    }

    /// The backward of [`RmsBlock::forward`]: from `dy`, the input's gradient into `dx`
    /// (overwritten) and each weight's into `g` (in [`RmsBlock::weights`]' order, each
    /// overwritten, or with `acc` added to what it holds). `a.act` must hold the forward's SwiGLU output (it is overwritten).
    pub fn backward(
        &self,
        io: LayerIo,
        a: &mut Acts,
        dy: &[f32],
        dx: &mut [f32],
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        let LayerIo {
            w,
            x,
            bias,
            b,
            t,
            rope,
        } = io;
        let rope = rope.expect("a rotary layer's backward carries its tables");
        let (n, d, inner, hd) = (b * t, self.d, self.inner, self.head_dim);
        let (qd, _, row) = self.widths();
        let (ni, nd) = (n * inner, n * d);
        // MLP.
        let dyd = Mat::rows(dy, d);
        let act = Mat::rows(&a.act, inner);
        k::mm(&mut g[DOWN], inner, (d, inner, n), dyd.t(), act, 1.0, acc);
        let dact = &mut a.act[..ni];
        k::mm_weight(dact, inner, n, dyd, w[DOWN], (d, inner), false, false);
        let gu = &mut a.up[..2 * ni];
        k::swiglu_backward(&a.act[..ni], inner, gu);
        let n2 = Mat::rows(&a.n2, d);
        for (j, off) in [(GATE, 0), (UP, inner)] {
            let dg = Mat {
                v: &a.up[off..],
                rs: 2 * inner,
                cs: 1,
            };
            k::mm(&mut g[j], d, (inner, d, n), dg.t(), n2, 1.0, acc);
            k::mm_weight(&mut a.act[..nd], d, n, dg, w[j], (inner, d), false, off > 0);
        }
        dx.copy_from_slice(dy);
        if !acc {
            g[NORM2].fill(0.0);
        }
        k::rms_norm_backward(&a.x1, w[NORM2], &a.rstd2, &a.act[..nd], dx, &mut g[NORM2]);
        // Attention.
        let dxd = Mat::rows(dx, d);
        k::mm(
            &mut g[O],
            qd,
            (d, qd, n),
            dxd.t(),
            Mat::rows(&a.att, qd),
            1.0,
            acc,
        );
        let datt = &mut a.up[..n * qd];
        k::mm_weight(datt, qd, n, dxd, w[O], (d, qd), false, false);
        let dqkv = &mut a.act[..n * row];
        let kept = (&a.att[..], &a.lse[..]);
        let datt = &a.up[..n * qd];
        k::attention_backward(
            &a.qkv,
            bias,
            self.heads(b, t),
            self.scale(),
            kept,
            datt,
            dqkv,
        );
        k::rope(dqkv, row, (0, self.heads, hd), rope, t, true);
        k::rope(dqkv, row, (qd, self.kv_heads, hd), rope, t, true);
        let n1 = Mat::rows(&a.n1, d);
        let dn1 = &mut a.up[..nd];
        for (j, (off, width)) in self.columns().into_iter().enumerate() {
            let dq = Mat {
                v: &a.act[off..],
                rs: row,
                cs: 1,
            };
            k::mm(&mut g[Q + j], d, (width, d, n), dq.t(), n1, 1.0, acc);
            k::mm_weight(dn1, d, n, dq, w[Q + j], (width, d), false, j > 0);
        }
        if !acc {
            g[NORM1].fill(0.0);
        }
        k::rms_norm_backward(x, w[NORM1], &a.rstd1, &a.up[..nd], dx, &mut g[NORM1]);
    }
}
