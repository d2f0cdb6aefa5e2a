//! The pre-norm transformer block of GPT-2 and OPT, written out for the owned engine
//! (`models::engine`): forward and backward over buffers, from a description each family
//! builds of its own weights (fused `c_attn` or separate q / k / v projections, `Conv1D` or
//! `nn.Linear` layouts, `gelu_new` or ReLU).
//!
//! `x1 = x + attention(ln_1(x) · W_qkv + b_qkv) · W_o + b_o`,
//! `y = x1 + act(ln_2(x1) · W_1 + b_1) · W_2 + b_2`.
//!
//! OPT-350m puts the norms after the residual adds instead (`post`):
//! `x1 = ln_1(x + attention(x · W_qkv + b_qkv) · W_o + b_o)`,
//! `y = ln_2(x1 + act(x1 · W_1 + b_1) · W_2 + b_2)`; its activations live in the same buffers
//! (the sums before each norm where the pre-norm layer keeps the norms' outputs).

use candle_core::Tensor;

use super::engine::{ActSizes, Acts, LayerIo};
use super::kernels::{self as k, Heads, Mat};
use super::linear::{Layout, Proj};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    GeluNew,
    Relu,
}

/// A projection with its bias, in its layout.
#[derive(Clone, Copy)]
pub struct Lin<'a> {
    pub w: &'a Tensor,
    pub b: &'a Tensor,
    pub layout: Layout,
}

impl<'a> Lin<'a> {
    /// A plain projection (no adapter) with a bias, or `None`.
    pub fn of(p: &'a Proj) -> Option<Lin<'a>> {
        match (&p.bias, &p.lora) {
            (Some(b), None) => Some(Lin {
                w: &p.w,
                b,
                layout: p.layout,
            }),
            _ => None,
        }
    }

    /// `y (+)= x · W` (`[n, inp]` to `[n, out]`, `y` at row stride `ldy`).
    fn forward(
        &self,
        w: &[f32],
        x: &[f32],
        (n, inp, out): (usize, usize, usize),
        y: &mut [f32],
        ldy: usize,
        acc: bool,
    ) {
        let t = self.layout == Layout::Linear;
        k::mm_weight(y, ldy, n, Mat::rows(x, inp), w, (inp, out), t, acc);
    }

    /// The weight's gradient from the input `x` `[n, inp]` and the output's gradient `dy`
    /// (`[n, out]`, any row stride), overwritten or with `acc` added.
    fn weight_grad(
        &self,
        gw: &mut [f32],
        x: Mat,
        dy: Mat,
        (n, inp, out): (usize, usize, usize),
        acc: bool,
    ) {
        match self.layout {
            Layout::Linear => k::mm(gw, inp, (out, inp, n), dy.t(), x, 1.0, acc),
            Layout::Conv1d => k::mm(gw, out, (inp, out, n), x.t(), dy, 1.0, acc),
        }
    }

    /// `dx (+)= dy · Wᵀ`.
    fn input_grad(
        &self,
        w: &[f32],
        dy: Mat,
        dx: &mut [f32],
        (n, inp, out): (usize, usize, usize),
        acc: bool,
    ) {
        let t = self.layout == Layout::Conv1d;
        k::mm_weight(dx, inp, n, dy, w, (out, inp), t, acc);
    }
}

/// The attention's input projections.
#[derive(Clone, Copy)]
pub enum Qkv<'a> {
    /// One `[d, 3d]` projection (GPT-2's `c_attn`).
    Fused(Lin<'a>),
    /// q, k and v projections of `[d, d]` each (OPT).
    Split([Lin<'a>; 3]),
}

/// One block as the owned engine runs it.
pub struct PreNorm<'a> {
    /// OPT-350m's post-norm order instead (module doc).
    pub post: bool,
    pub ln1: (&'a Tensor, &'a Tensor),
    pub qkv: Qkv<'a>,
    pub o: Lin<'a>,
    pub ln2: (&'a Tensor, &'a Tensor),
    pub up: Lin<'a>,
    pub down: Lin<'a>,
    pub act: Act,
    pub eps: f32,
    pub heads: usize,
    pub d: usize,
    pub inner: usize,
    /// Multiplies the scores `q · kᵀ`.
    pub scale: f32,
}

/// Where each weight sits in [`PreNorm::weights`].
/// Which kept buffer the MLP read: `a.n2` (pre-norm: `ln_2`'s output) or `a.n1` (post-norm:
/// `x1`).
#[derive(Clone, Copy)]
enum MlpInput {
    N1,
    N2,
}

struct Idx {
    qkv: usize,
    o: usize,
    ln2: usize,
    up: usize,
    down: usize,
}

impl PreNorm<'_> {
    fn idx(&self) -> Idx {
        let n = match self.qkv {
            Qkv::Fused(_) => 2,
            Qkv::Split(_) => 6,
        };
        let o = 2 + n;
        Idx {
            qkv: 2,
            o,
            ln2: o + 2,
            up: o + 4,
            down: o + 6,
        }
    }

    /// Every weight in the order the forward reads them (each projection's weight then bias).
    pub fn weights(&self) -> Vec<&Tensor> {
        let mut v = vec![self.ln1.0, self.ln1.1];
        match &self.qkv {
            Qkv::Fused(l) => v.extend([l.w, l.b]),
            Qkv::Split(ls) => ls.iter().for_each(|l| v.extend([l.w, l.b])),
        }
        v.extend([self.o.w, self.o.b, self.ln2.0, self.ln2.1]);
        v.extend([self.up.w, self.up.b, self.down.w, self.down.b]);
        v
    }

    fn heads(&self, b: usize, t: usize) -> Heads {
        Heads {
            b,
            t,
            h: self.heads,
            kv: self.heads,
            hd: self.d / self.heads,
        }
    }

    /// Buffer sizes of one block's activations at `b` rows of `t` tokens.
    pub fn sizes(&self, b: usize, t: usize) -> ActSizes {
        let d = self.d;
        ActSizes {
            n: b * t,
            d,
            qkv: 3 * d,
            att: d,
            inner: self.inner,
            up: self.inner.max(d),
            act: self.inner.max(3 * d),
            lse: b * self.heads * t,
        }
    }

    /// `y` from `x` (both `[B·T, d]`), keeping in `a` what the backward needs; `io.w` holds
    /// [`PreNorm::weights`]' values.
    /// `q | k | v` of `input` `[n, d]` into `out` `[n, 3d]`.
    fn qkv_forward(&self, w: &[&[f32]], input: &[f32], n: usize, out: &mut [f32]) {
        let (d, i) = (self.d, self.idx());
        match &self.qkv {
            Qkv::Fused(l) => {
                l.forward(w[i.qkv], input, (n, d, 3 * d), out, 3 * d, false);
                k::add_bias(out, w[i.qkv + 1]);
            }
            Qkv::Split(ls) => {
                let mut bias = Vec::with_capacity(3 * d);
                for (j, l) in ls.iter().enumerate() {
                    let dst = &mut out[j * d..];
                    l.forward(w[i.qkv + 2 * j], input, (n, d, d), dst, 3 * d, false);
                    bias.extend_from_slice(w[i.qkv + 2 * j + 1]);
                }
                k::add_bias(out, &bias);
            }
        }
    }

    /// The `q | k | v` projection's backward from `dqkv` `[n, 3d]`: its weights' and biases'
    /// gradients (overwritten, or added with `acc`) and `dst (+)= dqkv · Wᵀ` (added with
    /// `dst_acc`).
    #[allow(clippy::too_many_arguments)]
    fn qkv_backward(
        &self,
        w: &[&[f32]],
        input: Mat,
        dqkv: &[f32],
        n: usize,
        dst: &mut [f32],
        dst_acc: bool,
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        let (d, i) = (self.d, self.idx());
        match &self.qkv {
            Qkv::Fused(l) => {
                let dq = Mat::rows(dqkv, 3 * d);
                l.weight_grad(&mut g[i.qkv], input, dq, (n, d, 3 * d), acc);
                k::col_sums(&dqkv[..n * 3 * d], 3 * d, &mut g[i.qkv + 1], acc);
                l.input_grad(w[i.qkv], dq, dst, (n, d, 3 * d), dst_acc);
            }
            Qkv::Split(ls) => {
                let mut sums = vec![0f32; 3 * d];
                k::col_sums(&dqkv[..n * 3 * d], 3 * d, &mut sums, false);
                for (j, l) in ls.iter().enumerate() {
                    let dq = Mat {
                        v: &dqkv[j * d..],
                        rs: 3 * d,
                        cs: 1,
                    };
                    l.weight_grad(&mut g[i.qkv + 2 * j], input, dq, (n, d, d), acc);
                    let part = &sums[j * d..(j + 1) * d];
                    if acc {
                        k::add_slice(&mut g[i.qkv + 2 * j + 1], part);
                    } else {
                        g[i.qkv + 2 * j + 1].copy_from_slice(part);
                    }
                    l.input_grad(w[i.qkv + 2 * j], dq, dst, (n, d, d), dst_acc || j > 0);
                }
            }
        }
    }

    /// The MLP's first projection of `input` into `a.up` and its activation into `a.act`.
    fn mlp_up(&self, w: &[&[f32]], a: &mut Acts, input: MlpInput, n: usize) {
        let (d, inner, i) = (self.d, self.inner, self.idx());
        let ni = n * inner;
        let x = match input {
            MlpInput::N1 => &a.n1,
            MlpInput::N2 => &a.n2,
        };
        let up = &mut a.up[..ni];
        self.up.forward(w[i.up], x, (n, d, inner), up, inner, false);
        k::add_bias(up, w[i.up + 1]);
        self.activate(&a.up[..ni], &mut a.act[..ni]);
    }

    /// Attention over `a.qkv` (into `a.att`, `a.lse`), then `a.x1 = x + att · W_o + b_o` for
    /// every token, or with `rows` for those tokens only (compacted to the front of `a.att`
    /// and `a.x1`). Returns how many tokens `a.x1` holds.
    fn attend(&self, io: LayerIo, a: &mut Acts, rows: Option<&[usize]>) -> usize {
        let LayerIo {
            w, x, bias, b, t, ..
        } = io;
        let (d, i) = (self.d, self.idx());
        k::attention(
            &a.qkv,
            bias,
            self.heads(b, t),
            self.scale,
            &mut a.att,
            &mut a.lse,
        );
        let m = keep(a, x, d, d, rows, b * t);
        self.o
            .forward(w[i.o], &a.att, (m, d, d), &mut a.x1, d, true);
        k::add_bias(&mut a.x1[..m * d], w[i.o + 1]);
        m
    }

    pub fn forward(&self, io: LayerIo, a: &mut Acts, y: &mut [f32]) {
        self.forward_rows(io, a, None, y);
    }

    /// [`PreNorm::forward`], or with `rows` (ascending, distinct) the outputs of those tokens
    /// only, into the front of `y`: attention still reads every token, but everything after
    /// it is token-wise, so a readout's last layer needs it at its few positions only. What
    /// `a` keeps is then fit for no backward.
    pub fn forward_rows(&self, io: LayerIo, a: &mut Acts, rows: Option<&[usize]>, y: &mut [f32]) {
        if self.post {
            return self.forward_post(io, a, rows, y);
        }
        let LayerIo { w, x, b, t, .. } = io;
        let (d, inner) = (self.d, self.inner);
        let i = self.idx();
        k::layer_norm(
            x,
            (w[0], w[1]),
            self.eps,
            &mut a.n1,
            (&mut a.mean1, &mut a.rstd1),
        );
        self.qkv_forward(w, &a.n1, b * t, &mut a.qkv);
        let n = self.attend(io, a, rows);
        let (l2w, l2b) = (w[i.ln2], w[i.ln2 + 1]);
        k::layer_norm(
            &a.x1[..n * d],
            (l2w, l2b),
            self.eps,
            &mut a.n2[..n * d],
            (&mut a.mean2[..n], &mut a.rstd2[..n]),
        );
        let ni = n * inner;
        self.mlp_up(w, a, MlpInput::N2, n);
        let y = &mut y[..n * d];
        y.copy_from_slice(&a.x1[..n * d]);
        self.down
            .forward(w[i.down], &a.act[..ni], (n, inner, d), y, d, true);
        k::add_bias(y, w[i.down + 1]);
    }

    /// The MLP's activation of the pre-activation `u` into `y`.
    /// The MLP's backward from the gradient `dm` `[n, d]` of its output: both projections'
    /// weight and bias gradients (overwritten, or added with `acc`), leaving the gradient of
    /// the activation's input in `a.act` (`[n, inner]`). `a.act` must hold the activation and
    /// `a.up` its input; the MLP read `input`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_backward(
        &self,
        w: &[&[f32]],
        a: &mut Acts,
        dm: &[f32],
        input: MlpInput,
        n: usize,
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        let (d, inner, i) = (self.d, self.inner, self.idx());
        let ni = n * inner;
        let dmm = Mat::rows(dm, d);
        let act = Mat::rows(&a.act, inner);
        self.down
            .weight_grad(&mut g[i.down], act, dmm, (n, inner, d), acc);
        k::col_sums(&dm[..n * d], d, &mut g[i.down + 1], acc);
        let du = &mut a.act[..ni];
        self.down
            .input_grad(w[i.down], dmm, du, (n, inner, d), false);
        match self.act {
            Act::GeluNew => k::gelu_backward(&a.up[..ni], du),
            // candle's ReLU passes the gradient where the input is >= 0.
            Act::Relu => du.iter_mut().zip(&a.up[..ni]).for_each(|(g, &u)| {
                if u < 0.0 {
                    *g = 0.0;
                }
            }),
        }
        let x = match input {
            MlpInput::N1 => &a.n1,
            MlpInput::N2 => &a.n2,
        };
        let dum = Mat::rows(&a.act, inner);
        self.up
            .weight_grad(&mut g[i.up], Mat::rows(x, d), dum, (n, d, inner), acc);
        k::col_sums(&a.act[..ni], inner, &mut g[i.up + 1], acc);
    }

    /// [`PreNorm::forward`] in the post-norm order. Keeps `z1 = x + attention` in `a.x1`,
    /// `x1 = ln_1(z1)` in `a.n1` and `z2 = x1 + mlp` in `a.n2`, with each norm's statistics.
    fn forward_post(&self, io: LayerIo, a: &mut Acts, rows: Option<&[usize]>, y: &mut [f32]) {
        let LayerIo { w, x, b, t, .. } = io;
        let (d, inner) = (self.d, self.inner);
        let i = self.idx();
        self.qkv_forward(w, x, b * t, &mut a.qkv);
        let n = self.attend(io, a, rows);
        k::layer_norm(
            &a.x1[..n * d],
            (w[0], w[1]),
            self.eps,
            &mut a.n1[..n * d],
            (&mut a.mean1[..n], &mut a.rstd1[..n]),
        );
        let ni = n * inner;
        self.mlp_up(w, a, MlpInput::N1, n);
        a.n2[..n * d].copy_from_slice(&a.n1[..n * d]);
        self.down
            .forward(w[i.down], &a.act[..ni], (n, inner, d), &mut a.n2, d, true);
        k::add_bias(&mut a.n2[..n * d], w[i.down + 1]);
        let (l2w, l2b) = (w[i.ln2], w[i.ln2 + 1]);
        k::layer_norm(
            &a.n2[..n * d],
            (l2w, l2b),
            self.eps,
            &mut y[..n * d],
            (&mut a.mean2[..n], &mut a.rstd2[..n]),
        );
    }

    /// [`PreNorm::backward`] in the post-norm order.
    #[allow(clippy::too_many_arguments)]
    fn backward_post(
        &self,
        io: LayerIo,
        a: &mut Acts,
        dy: &[f32],
        dx: &mut [f32],
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        let LayerIo {
            w, x, bias, b, t, ..
        } = io;
        let (n, d, inner) = (b * t, self.d, self.inner);
        let (i, nd) = (self.idx(), n * d);
        let zero_norm = |g: &mut [Vec<f32>], at: usize| {
            if !acc {
                g[at].fill(0.0);
                g[at + 1].fill(0.0);
            }
        };
        // The second norm: dz2 (in dx).
        dx.fill(0.0);
        zero_norm(g, i.ln2);
        let (gl2, rest) = g[i.ln2..].split_at_mut(1);
        let stats2 = (&a.mean2[..], &a.rstd2[..]);
        k::layer_norm_backward(&a.n2, w[i.ln2], stats2, dy, dx, &mut gl2[0], &mut rest[0]);
        // MLP, from x1.
        self.mlp_backward(w, a, dx, MlpInput::N1, n, g, acc);
        let dum = Mat::rows(&a.act, inner);
        // dx1 = dz2 + du · W_1ᵀ (in a.up).
        let dx1 = &mut a.up[..nd];
        dx1.copy_from_slice(dx);
        self.up.input_grad(w[i.up], dum, dx1, (n, d, inner), true);
        // The first norm: dz1 (in dx).
        dx.fill(0.0);
        zero_norm(g, 0);
        let (gl1, rest) = g.split_at_mut(1);
        let stats1 = (&a.mean1[..], &a.rstd1[..]);
        k::layer_norm_backward(
            &a.x1,
            w[0],
            stats1,
            &a.up[..nd],
            dx,
            &mut gl1[0],
            &mut rest[0],
        );
        // Attention, from x: dx = dz1 + dqkv · W_qkvᵀ.
        let dz1 = Mat::rows(dx, d);
        self.o
            .weight_grad(&mut g[i.o], Mat::rows(&a.att, d), dz1, (n, d, d), acc);
        k::col_sums(dx, d, &mut g[i.o + 1], acc);
        let datt = &mut a.up[..nd];
        self.o.input_grad(w[i.o], dz1, datt, (n, d, d), false);
        let dqkv = &mut a.act[..n * 3 * d];
        k::attention_backward(
            &a.qkv,
            bias,
            self.heads(b, t),
            self.scale,
            (&a.att[..], &a.lse[..]),
            &a.up[..nd],
            dqkv,
        );
        self.qkv_backward(w, Mat::rows(x, d), &a.act, n, dx, true, g, acc);
    }

    pub fn activate(&self, u: &[f32], y: &mut [f32]) {
        match self.act {
            Act::GeluNew => k::gelu(u, y),
            Act::Relu => y.iter_mut().zip(u).for_each(|(y, &u)| *y = u.max(0.0)),
        }
    }

    /// The backward of [`PreNorm::forward`]: from `dy`, the input's gradient into `dx`
    /// (overwritten) and each weight's into `g` (in [`PreNorm::weights`]' order, each
    /// overwritten, or with `acc` added to what it holds). `a.act` must hold the forward's activation (it is overwritten).
    pub fn backward(
        &self,
        io: LayerIo,
        a: &mut Acts,
        dy: &[f32],
        dx: &mut [f32],
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        if self.post {
            return self.backward_post(io, a, dy, dx, g, acc);
        }
        let LayerIo {
            w, x, bias, b, t, ..
        } = io;
        let (n, d, inner) = (b * t, self.d, self.inner);
        let i = self.idx();
        // MLP.
        self.mlp_backward(w, a, dy, MlpInput::N2, n, g, acc);
        let dum = Mat::rows(&a.act, inner);
        let dn = &mut a.up[..n * d];
        self.up.input_grad(w[i.up], dum, dn, (n, d, inner), false);
        dx.copy_from_slice(dy);
        let (gl2, rest) = g[i.ln2..].split_at_mut(1);
        if !acc {
            gl2[0].fill(0.0);
            rest[0].fill(0.0);
        }
        let stats2 = (&a.mean2[..], &a.rstd2[..]);
        k::layer_norm_backward(&a.x1, w[i.ln2], stats2, dn, dx, &mut gl2[0], &mut rest[0]);
        // Attention.
        let dxd = Mat::rows(dx, d);
        self.o
            .weight_grad(&mut g[i.o], Mat::rows(&a.att, d), dxd, (n, d, d), acc);
        k::col_sums(dx, d, &mut g[i.o + 1], acc);
        let datt = &mut a.up[..n * d];
        self.o.input_grad(w[i.o], dxd, datt, (n, d, d), false);
        let dqkv = &mut a.act[..n * 3 * d];
        let (out, lse) = (&a.att[..], &a.lse[..]);
        k::attention_backward(
            &a.qkv,
            bias,
            self.heads(b, t),
            self.scale,
            (out, lse),
            datt,
            dqkv,
        );
        let dn = &mut a.up[..n * d];
        let n1 = Mat::rows(&a.n1, d);
        self.qkv_backward(w, n1, &a.act, n, dn, false, g, acc);
        let (gl1, rest) = g.split_at_mut(1);
        if !acc {
            gl1[0].fill(0.0);
            rest[0].fill(0.0);
        }
        let stats1 = (&a.mean1[..], &a.rstd1[..]);
        k::layer_norm_backward(x, w[0], stats1, dn, dx, &mut gl1[0], &mut rest[0]);
    }
}

/// After attention: `a.x1` takes the layer input `x` (`[n, d]`) and `a.att` (`[n, width]`)
/// stays, each at every token, or with `rows` at those tokens only, compacted to the front.
/// Returns how many tokens they hold.
pub(super) fn keep(
    a: &mut Acts,
    x: &[f32],
    d: usize,
    width: usize,
    rows: Option<&[usize]>,
    n: usize,
) -> usize {
    match rows {
        Some(r) => {
            k::keep_rows(&mut a.att, width, r);
            k::gather_rows(x, d, r, &mut a.x1);
            r.len()
        }
        None => {
            a.x1.copy_from_slice(x);
            n
        }
    }
}
