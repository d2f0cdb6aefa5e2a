//! The owned engine: the transformer body's forward and backward written out per layer (as
//! llm.c does for GPT-2) over buffers that are allocated once per shape and reused, instead of
//! candle's autograd graph.
//!
//! candle's graph keeps every intermediate of a layer as its own tensor, its backward builds
//! each gradient as zeros plus a sum into fresh tensors, and every elementwise op is a pass
//! over memory of its own. Here a layer is a dozen calls into `kernels` on plain f32 buffers:
//! the matrix products go straight to `gemm` (transposes as strides, bias gradients as column
//! sums), attention runs a head at a time and keeps only each query's log-sum-exp (the
//! probabilities are recomputed in the backward), and a layer keeps about 11 values a token
//! and width (its input, both norms' outputs and statistics, `q | k | v`, the attention output,
//! the residual after attention and the MLP's pre-activation) where the graph kept ~37.
//!
//! Only the layers are owned. The embedding and everything from the final norm on stay in
//! candle's graph: the embedding output's graph is kept (its gradient reaches the token and
//! position tables through it) and the last layer's output is a variable, so the loss's
//! backward leaves that output's gradient in the store, from which [`backward`] walks the
//! layers down, as `recompute` does. Under recompute (`--grad-checkpoint`) a tape keeps only
//! each layer's input and the backward reruns that layer's owned forward first.
//!
//! It applies on the CPU in f32 to GPT-2, OPT (pre- and post-norm) and Llama / Mistral without
//! adapters; anything else (LoRA, bf16, CUDA) takes the autograd path, which is also the
//! oracle the tests compare this one with (values and every parameter's gradient).

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Storage, Tensor, TensorId, Var};

mod buffers;
pub use buffers::{Pool, Sums};

use super::block::PreNorm;
use super::rms_block::RmsBlock;
use super::{Net, Shared};
use crate::error::{Error, Result};

/// Which engine runs the transformer body.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// candle's autograd graph (every family, device and dtype).
    Autograd,
    /// the owned per-layer forward and backward where it applies (CPU, f32, GPT-2, OPT and
    /// Llama / Mistral without adapters), autograd elsewhere.
    #[default]
    Owned,
}

impl Engine {
    pub fn is_owned(&self) -> bool {
        *self == Engine::Owned
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Autograd => "autograd",
            Engine::Owned => "owned",
        }
    }
}

/// The process's engine for every model it loads (`--engine`, `W2S_ENGINE`).
static DEFAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets the engine of every model loaded after this call (the CLI's global `--engine`).
pub fn set_default(e: Engine) {
    DEFAULT.store(e == Engine::Owned, std::sync::atomic::Ordering::Relaxed);
}

/// The engine models load with.
pub fn current() -> Engine {
    if DEFAULT.load(std::sync::atomic::Ordering::Relaxed) {
        Engine::Owned
    } else {
        Engine::Autograd
    }
}

impl std::str::FromStr for Engine {
    type Err = Error;

    fn from_str(s: &str) -> Result<Engine> {
        match s {
            "autograd" => Ok(Engine::Autograd),
            "owned" => Ok(Engine::Owned),
            _ => Err(Error::Config(format!(
                "--engine `{s}`: expected owned or autograd"
            ))),
        }
    }
}

/// One layer call's inputs: the block's weights, its input `[B·T, d]`, the additive
/// attention bias `[B or 1, T, T]` and, for the rotary families, the cos / sin tables
/// (`[T, hd]`, or `[B, T, hd]` at packed positions).
#[derive(Clone, Copy)]
pub struct LayerIo<'a> {
    pub w: &'a [&'a [f32]],
    pub x: &'a [f32],
    pub bias: &'a [f32],
    pub b: usize,
    pub t: usize,
    pub rope: Option<(&'a [f32], &'a [f32])>,
}

impl<'a> LayerIo<'a> {
    /// From the weights, the input and the values of [`tables`] (bias, then cos and sin).
    fn new(w: &'a [&'a [f32]], x: &'a [f32], v: &'a [&'a [f32]], (b, t): (usize, usize)) -> Self {
        LayerIo {
            w,
            x,
            bias: v[0],
            b,
            t,
            rope: v.get(1).zip(v.get(2)).map(|(c, s)| (*c, *s)),
        }
    }
}

/// A layer the owned engine runs: GPT-2's and OPT's block, or Llama's / Mistral's.
pub enum Layer<'a> {
    PreNorm(PreNorm<'a>),
    Rms(RmsBlock<'a>),
}

impl Layer<'_> {
    /// Every weight, in the order `LayerIo::w` and the gradients hold them.
    pub fn weights(&self) -> Vec<&Tensor> {
        match self {
            Layer::PreNorm(l) => l.weights(),
            Layer::Rms(l) => l.weights(),
        }
    }

    pub fn sizes(&self, b: usize, t: usize) -> ActSizes {
        match self {
            Layer::PreNorm(l) => l.sizes(b, t),
            Layer::Rms(l) => l.sizes(b, t),
        }
    }

    pub fn forward(&self, io: LayerIo, a: &mut Acts, y: &mut [f32]) {
        self.forward_rows(io, a, None, y);
    }

    /// The outputs of tokens `rows` only (ascending, distinct; `None`: every token), into the
    /// front of `y`; with `rows`, `a` is fit for no backward.
    pub fn forward_rows(&self, io: LayerIo, a: &mut Acts, rows: Option<&[usize]>, y: &mut [f32]) {
        match self {
            Layer::PreNorm(l) => l.forward_rows(io, a, rows, y),
            Layer::Rms(l) => l.forward_rows(io, a, rows, y),
        }
    }

    /// Recomputes the MLP activation of `n` tokens into `a.act` from what `a` keeps.
    pub fn activate(&self, a: &mut Acts, n: usize) {
        match self {
            Layer::PreNorm(l) => l.activate(&a.up[..n * l.inner], &mut a.act[..n * l.inner]),
            Layer::Rms(l) => l.activate(&a.up[..2 * n * l.inner], &mut a.act[..n * l.inner]),
        }
    }

    pub fn backward(
        &self,
        io: LayerIo,
        a: &mut Acts,
        dy: &[f32],
        dx: &mut [f32],
        g: &mut [Vec<f32>],
        acc: bool,
    ) {
        match self {
            Layer::PreNorm(l) => l.backward(io, a, dy, dx, g, acc),
            Layer::Rms(l) => l.backward(io, a, dy, dx, g, acc),
        }
    }
}

/// Values a token of each activation buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActSizes {
    /// Tokens.
    pub n: usize,
    pub d: usize,
    pub qkv: usize,
    pub att: usize,
    /// The MLP's width.
    pub inner: usize,
    /// The MLP's pre-activation (also the backward's `[T, d]` scratch).
    pub up: usize,
    /// The MLP's activation (also the backward's scratch for the MLP's and `q | k | v`'s
    /// gradients).
    pub act: usize,
    /// Log-sum-exp values in all (`B·H·T`).
    pub lse: usize,
}

/// What one layer's forward keeps for its backward.
pub struct Acts {
    pub n1: Vec<f32>,
    pub mean1: Vec<f32>,
    pub rstd1: Vec<f32>,
    pub qkv: Vec<f32>,
    pub att: Vec<f32>,
    pub lse: Vec<f32>,
    pub x1: Vec<f32>,
    pub n2: Vec<f32>,
    pub mean2: Vec<f32>,
    pub rstd2: Vec<f32>,
    pub up: Vec<f32>,
    /// Scratch: the activation during the forward, gradients during the backward. Not part
    /// of what a tape keeps (the backward recomputes the activation from `up`).
    pub act: Vec<f32>,
}

impl Acts {
    fn take(pool: &Pool, s: ActSizes, act: Vec<f32>) -> Acts {
        let n = s.n;
        Acts {
            n1: pool.take(n * s.d),
            mean1: pool.take(n),
            rstd1: pool.take(n),
            qkv: pool.take(n * s.qkv),
            att: pool.take(n * s.att),
            lse: pool.take(s.lse),
            x1: pool.take(n * s.d),
            n2: pool.take(n * s.d),
            mean2: pool.take(n),
            rstd2: pool.take(n),
            up: pool.take(n * s.up),
            act,
        }
    }

    /// Gives every buffer, the scratch included, back to the pool.
    fn release(self, pool: &Pool) {
        for v in [
            self.n1, self.mean1, self.rstd1, self.qkv, self.att, self.lse, self.x1, self.n2,
            self.mean2, self.rstd2, self.up, self.act,
        ] {
            pool.give(v);
        }
    }
}

/// What every layer of a forward reads besides its weights: the bias, then cos and sin.
fn tables<'a>(bias: &'a Tensor, rope: &'a Option<(Tensor, Tensor)>) -> Vec<&'a Tensor> {
    let mut v = vec![bias];
    if let Some((c, s)) = rope {
        v.extend([c, s]);
    }
    v
}

/// Runs `f` on the values of contiguous f32 CPU tensors.
fn with_values<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut values = Vec::with_capacity(ts.len());
    for (s, l) in &guards {
        let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&**s, l.contiguous_offsets())
        else {
            return Err(Error::Model {
                file: "owned engine".into(),
                msg: "expected contiguous f32 CPU tensors".into(),
            });
        };
        values.push(&v[a..b]);
    }
    Ok(f(&values))
}

/// A tensor's values copied into a pool buffer.
fn to_buffer(pool: &Pool, t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    let mut v = pool.take(t.elem_count());
    with_values(&[&t], |x| v.copy_from_slice(x[0]))?;
    Ok(v)
}

/// Layer `l` as the owned engine runs it, if it can.
fn block(net: &Net, l: usize) -> Option<Layer<'_>> {
    match net {
        Net::Gpt2(m) => m.block(l).map(Layer::PreNorm),
        Net::Opt(m) => m.block(l).map(Layer::PreNorm),
        Net::Llama(m) => m.block(l).map(Layer::Rms),
    }
}

/// Layer `l`, known to apply.
fn block_of(net: &Net, l: usize) -> Result<Layer<'_>> {
    block(net, l).ok_or_else(|| Error::Model {
        file: "owned engine".into(),
        msg: format!("layer {l} cannot run on the owned engine"),
    })
}

/// Whether the owned engine runs this forward: every layer one it has (no adapters) with f32
/// CPU weights, and f32 CPU activations and tables.
pub(super) fn applies(net: &Net, x: &Tensor, shared: &Shared) -> bool {
    let mut ts = tables(&shared.bias, &shared.rope);
    ts.push(x);
    super::fused::applies(&ts)
        && net.layers() > 0
        && (0..net.layers())
            .all(|l| block(net, l).is_some_and(|b| super::fused::applies(&b.weights())))
}

/// What a training forward through the owned engine keeps for [`backward`].
pub struct Tape {
    /// The embedding output, with its graph.
    embedded: Tensor,
    /// Each layer's input `[B·T, d]`.
    inputs: Vec<Vec<f32>>,
    /// Each layer's activations; empty under recompute.
    acts: Vec<Acts>,
    bias: Tensor,
    rope: Option<(Tensor, Tensor)>,
    b: usize,
    t: usize,
    /// The last layer's output as a variable (the loss's backward leaves its gradient).
    out: Var,
}

/// The layers of one forward. `keep`: `None` for inference (buffers go straight back to the
/// pool), `Some(false)` to keep every layer's activations, `Some(true)` to keep only each
/// layer's input (recompute). Returns the last layer's output and the tape if kept.
pub(super) fn forward(
    net: &Net,
    pool: &Pool,
    embedded: Tensor,
    shared: &Shared,
    keep: Option<bool>,
) -> Result<(Tensor, Option<Tape>)> {
    forward_rows(net, pool, embedded, shared, keep, None)
}

/// Inference whose last layer runs its token-wise part (everything after attention) at the
/// flat positions `rows` (ascending, distinct, below `B·T`) only: their outputs, `[1, r, d]`.
/// A reward readout reads one position a sequence, so the last layer's output projection and
/// MLP shrink from every token to those.
pub(super) fn forward_at(
    net: &Net,
    pool: &Pool,
    embedded: Tensor,
    shared: &Shared,
    rows: &[usize],
) -> Result<Tensor> {
    let (b, t, _) = embedded.dims3()?;
    let ascending = rows.windows(2).all(|w| w[0] < w[1]);
    if !ascending || rows.last().is_some_and(|&r| r >= b * t) {
        return Err(Error::Config(format!(
            "readout rows must be ascending, distinct and below {}",
            b * t
        )));
    }
    Ok(forward_rows(net, pool, embedded, shared, None, Some(rows))?.0)
}

fn forward_rows(
    net: &Net,
    pool: &Pool,
    embedded: Tensor,
    shared: &Shared,
    keep: Option<bool>,
    rows: Option<&[usize]>,
) -> Result<(Tensor, Option<Tape>)> {
    debug_assert!(
        rows.is_none() || keep.is_none(),
        "a readout forward keeps no tape"
    );
    let (b, t, d) = embedded.dims3()?;
    let sizes = block_of(net, 0)?.sizes(b, t);
    let mut cur = to_buffer(pool, &embedded)?;
    let mut inputs = Vec::new();
    let mut acts = Vec::new();
    let mut scratch = Some(pool.take(sizes.n * sizes.act));
    let mut kept: Option<Acts> = None;
    for l in 0..net.layers() {
        let mut a = match kept.take() {
            Some(a) => a,
            None => Acts::take(pool, sizes, scratch.take().expect("a scratch")),
        };
        let mut y = pool.take(b * t * d);
        let blk = block_of(net, l)?;
        let ws = blk.weights();
        with_values(&ws, |w| {
            with_values(&tables(&shared.bias, &shared.rope), |v| {
                let io = LayerIo::new(w, &cur, v, (b, t));
                let last = l + 1 == net.layers();
                blk.forward_rows(io, &mut a, rows.filter(|_| last), &mut y);
            })
        })??;
        let x = std::mem::replace(&mut cur, y);
        match keep {
            // Every layer's activations kept; the scratch serves the next layer.
            Some(false) => {
                scratch = Some(std::mem::take(&mut a.act));
                acts.push(a);
                inputs.push(x);
            }
            Some(true) => {
                inputs.push(x);
                kept = Some(a);
            }
            None => {
                pool.give(x);
                kept = Some(a);
            }
        }
        crate::alloc::trace_heap(format_args!("owned forward of layer {l}"));
    }
    if let Some(a) = kept {
        a.release(pool);
    }
    if let Some(s) = scratch {
        pool.give(s);
    }
    let out = match rows {
        Some(r) => {
            cur.truncate(r.len() * d);
            Tensor::from_vec(cur, (1, r.len(), d), &Device::Cpu)?
        }
        None => Tensor::from_vec(cur, (b, t, d), &Device::Cpu)?,
    };
    let Some(_) = keep else {
        return Ok((out, None));
    };
    let out = Var::from_tensor(&out)?;
    Ok((
        out.as_tensor().clone(),
        Some(Tape {
            embedded,
            inputs,
            acts,
            bias: shared.bias.clone(),
            rope: shared.rope.clone(),
            b,
            t,
            out,
        }),
    ))
}

/// Adds the layers' and the embeddings' gradients of one owned tape to `grads` (which holds
/// the gradient of the tape's output from the loss's backward), every pool buffer going back.
/// With `sums`, the layer weights' gradients are added there instead of to `grads`.
pub(super) fn backward(
    net: &Net,
    pool: &Pool,
    tape: Tape,
    grads: &mut GradStore,
    (frozen, trainable): (&[&Tensor], &HashSet<TensorId>),
    sums: Option<&Sums>,
) -> Result<()> {
    let Tape {
        embedded,
        mut inputs,
        mut acts,
        bias,
        rope,
        b,
        t,
        out,
    } = tape;
    let g = grads.remove(out.as_tensor());
    drop(out);
    let Some(g) = g else {
        // A forward the loss does not read: nothing to propagate.
        for v in inputs {
            pool.give(v);
        }
        for a in acts {
            a.release(pool);
        }
        return Ok(());
    };
    let sizes = block_of(net, 0)?.sizes(b, t);
    let recompute = acts.is_empty();
    let mut dy = to_buffer(pool, &g)?;
    drop(g);
    let mut dx = pool.take(dy.len());
    let mut scratch = recompute.then(|| Acts::take(pool, sizes, pool.take(sizes.n * sizes.act)));
    for l in (0..inputs.len()).rev() {
        let x = inputs.pop().expect("one input a layer");
        let blk = block_of(net, l)?;
        let ws = blk.weights();
        let mut a = match scratch.take() {
            Some(a) => a,
            None => {
                let mut a = acts.pop().expect("activations a layer");
                a.act = pool.take(sizes.n * sizes.act);
                a
            }
        };
        let (mut gs, acc) = match sums {
            Some(s) => s.take(&ws, trainable, pool)?,
            None => (
                ws.iter().map(|w| vec![0f32; w.elem_count()]).collect(),
                false,
            ),
        };
        with_values(&ws, |w| {
            with_values(&tables(&bias, &rope), |v| {
                let io = LayerIo::new(w, &x, v, (b, t));
                if recompute {
                    // The forward's output is not needed: only what it keeps.
                    let mut y = pool.take(x.len());
                    blk.forward(io, &mut a, &mut y);
                    pool.give(y);
                } else {
                    // The backward's first product reads the MLP activation, which the tape
                    // does not keep: recomputed from the pre-activation.
                    blk.activate(&mut a, sizes.n);
                }
                blk.backward(io, &mut a, &dy, &mut dx, &mut gs, acc);
            })
        })??;
        pool.give(x);
        if recompute {
            scratch = Some(a);
        } else {
            a.release(pool);
        }
        if let Some(s) = sums {
            s.give(&ws, gs, trainable, pool);
        } else {
            let mut layer = GradStore::default();
            for (w, g) in ws.iter().zip(gs) {
                if trainable.contains(&w.id()) {
                    layer.insert(w, Tensor::from_vec(g, w.shape(), &Device::Cpu)?);
                }
            }
            grads.extend(layer)?;
        }
        std::mem::swap(&mut dy, &mut dx);
        crate::alloc::trace_heap(format_args!("owned backward of layer {l}"));
    }
    if let Some(a) = scratch {
        a.release(pool);
    }
    pool.give(dx);
    let g = Tensor::from_vec(dy, embedded.shape(), &Device::Cpu)?;
    if embedded.track_op() {
        let mut emb = super::recompute::detached((embedded * &g)?.sum_all()?.backward()?);
        super::recompute::drop_grads(&mut emb, frozen);
        super::recompute::retain(&mut emb, trainable);
        grads.extend(emb)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{Device, Tensor};

    use super::Engine;
    use crate::models::recompute::tests::{fixture, loss, seq_loss, windowed_mistral};
    use crate::models::{max_abs_diff, ops, Model};

    /// The loss and every parameter's gradient of one engine (and recompute setting).
    fn run(
        (name, dir): (&str, &Path),
        engine: Engine,
        recompute: bool,
        loss: &dyn Fn(&Model) -> Tensor,
    ) -> (f32, Vec<(String, Tensor)>, usize) {
        let mut m = Model::load(dir, &Device::Cpu).unwrap();
        m.head_chunk = Some(3);
        m.set_engine(engine);
        m.set_recompute(recompute);
        let l = loss(&m);
        let taped = !m.owned_tapes.lock().unwrap().is_empty();
        assert_eq!(
            taped,
            engine == Engine::Owned,
            "{name} {engine:?}: which engine ran"
        );
        let grads = m.backward(&l).unwrap();
        assert!(
            m.owned_tapes.lock().unwrap().is_empty(),
            "a tape left behind"
        );
        let params: std::collections::HashSet<_> =
            m.params().values().map(|v| v.as_tensor().id()).collect();
        let extra = grads.get_ids().filter(|id| !params.contains(id)).count();
        let g = (m.params().iter())
            .map(|(k, v)| {
                let g = grads.get(v.as_tensor());
                let g = g.unwrap_or_else(|| panic!("{name} {engine:?}: {k}: no gradient"));
                assert!(!g.track_op(), "{k}: gradient attached to a graph");
                (k.clone(), g.clone())
            })
            .collect();
        (l.to_scalar::<f32>().unwrap(), g, extra)
    }

    #[test]
    fn owned_layers_give_the_autograd_values_and_gradients() {
        type Loss<'a> = &'a dyn Fn(&Model) -> Tensor;
        let losses: [(&str, Loss); 3] = [
            ("padded", &|m| loss(m, false)),
            ("packed", &|m| loss(m, true)),
            ("sequence log-probs", &seq_loss),
        ];
        // Mistral with a 3-token window, shorter than the rows: the padded row's last query
        // sees no key at all, and the loss reads it.
        let tmp = tempfile::tempdir().unwrap();
        let families = [
            ("gpt2", fixture("gpt2")),
            ("opt", fixture("opt")),
            ("opt-350m (post-norm)", fixture("opt-350m")),
            ("llama", fixture("llama")),
            ("mistral, window 3", windowed_mistral(tmp.path())),
        ];
        for ((name, dir), (what, f)) in families.iter().flat_map(|n| losses.map(|l| (n, l))) {
            let m = (*name, dir.as_path());
            let (want, oracle, extra0) = run(m, Engine::Autograd, false, f);
            for recompute in [false, true] {
                let (got, grads, extra) = run(m, Engine::Owned, recompute, f);
                let what = format!("{name} {what}, recompute {recompute}");
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{what}: loss {got} vs {want}"
                );
                assert!(
                    extra <= extra0,
                    "{what}: {extra} gradients of non-parameters"
                );
                assert_eq!(grads.len(), oracle.len());
                for ((k, a), (_, b)) in oracle.iter().zip(&grads) {
                    let scale = max_abs_diff(a, &a.zeros_like().unwrap()).max(1e-3);
                    let d = max_abs_diff(a, b);
                    assert!(
                        d <= 2e-5 * scale,
                        "{what}: {k} off by {d} (largest entry {scale})"
                    );
                }
            }
        }
    }

    /// Summed across backwards by the engine (the training loop's way, its later micro-batches
    /// on packed weights) or by adding each backward's gradients: the same for every parameter (a part counted twice or missed
    /// would show), whether its gradient was summed, returned or (the position table, looked
    /// up under packing and sliced under a mask) both; and the sums start again after they
    /// are taken. The token table's lookups are summed (its use as the tied LM head is
    /// returned).
    #[test]
    fn summed_layer_gradients_equal_the_sum_of_each_backward() {
        // The simd tier stays put (whether weights get packed depends on it).
        let _lock = crate::simd::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = fixture("gpt2");
        let grads = |m: &Model, l: &Tensor| {
            let g = m.backward(l).unwrap();
            let p = m.params();
            (p.iter())
                .map(|(k, v)| (k.clone(), g.get(v.as_tensor()).cloned()))
                .collect::<Vec<_>>()
        };
        let add = |a: Option<Tensor>, b: Option<Tensor>| match (a, b) {
            (Some(a), Some(b)) => Some((a + b).unwrap()),
            (a, b) => a.or(b),
        };
        let plain = Model::load(&dir, &Device::Cpu).unwrap();
        let g1 = grads(&plain, &loss(&plain, false));
        let g2 = grads(&plain, &loss(&plain, true));
        let mut summed = Model::load(&dir, &Device::Cpu).unwrap();
        summed.set_accumulating(true);
        for round in 0..2 {
            // The pair twice: from the third forward on, the products read packed weights.
            let mut r1 = grads(&summed, &loss(&summed, false));
            let mut r2 = grads(&summed, &loss(&summed, true));
            for (r, packed) in [(&mut r1, false), (&mut r2, true)] {
                let again = grads(&summed, &loss(&summed, packed));
                for ((_, x), (_, y)) in r.iter_mut().zip(again) {
                    *x = add(x.take(), y);
                }
            }
            if crate::models::kernels::packed::available() {
                assert!(summed.packs.bytes() > 0, "no weight was packed");
            }
            let sums = summed.take_sums().unwrap();
            assert!(summed.take_sums().unwrap().get_ids().next().is_none());
            let params = summed.params();
            let mut layer_params = 0;
            for (((k, a), (_, b)), ((_, c), (_, d))) in g1.iter().zip(&g2).zip(r1.iter().zip(&r2)) {
                let s = sums.get(params[k].as_tensor()).cloned();
                layer_params += usize::from(s.is_some() && k.contains(".h."));
                if k == "transformer.wte.weight" {
                    assert!(s.is_some(), "{k}: not summed");
                }
                let want = (add(a.clone(), b.clone()).unwrap() * 2.0).unwrap();
                let got = add(add(c.clone(), d.clone()), s).unwrap_or_else(|| panic!("{k}"));
                let scale = max_abs_diff(&want, &want.zeros_like().unwrap()).max(1e-3);
                let diff = max_abs_diff(&want, &got);
                assert!(diff <= 1e-5 * scale, "round {round}, {k}: off by {diff}");
            }
            assert!(layer_params > 0, "no layer gradient was summed");
        }
    }

    /// An inference model's products read packed weights from its first forward on: the same
    /// hidden states as the autograd path for every family.
    #[test]
    fn owned_inference_on_packed_weights_gives_the_autograd_hidden_states() {
        let _lock = crate::simd::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let rows = vec![vec![5u32, 9, 3, 7, 2, 8], vec![0u32, 0, 4, 1, 6, 2]];
        let mask = vec![vec![1u32; 6], vec![0, 0, 1, 1, 1, 1]];
        let ids = ops::ids_tensor(&rows, &Device::Cpu).unwrap();
        for family in ["gpt2", "opt", "opt-350m", "llama", "mistral"] {
            let hidden = |e: Engine| {
                let mut m = Model::load_frozen(&fixture(family), &Device::Cpu).unwrap();
                m.set_engine(e);
                let h = m.hidden(&ids, &mask).unwrap();
                (h, m.packs.bytes())
            };
            let ((a, _), (b, packed)) = (hidden(Engine::Autograd), hidden(Engine::Owned));
            if crate::models::kernels::packed::available() {
                assert!(packed > 0, "{family}: no weight was packed");
            }
            let diff = max_abs_diff(&a, &b);
            assert!(diff < 1e-5, "{family}: off by {diff}");
        }
    }

    /// A readout forward (the last layer's token-wise part at the read positions only) gives
    /// the full forward's hidden states there, for every family, in the order asked,
    /// repeats included; a trainable model takes the full forward.
    #[test]
    fn readout_rows_give_the_full_forward_hidden_states() {
        use crate::models::pack::Packed;
        let a: [&[u32]; 2] = [&[5, 9, 3, 7, 2], &[4, 1, 6]];
        let b: [&[u32]; 2] = [&[5, 9, 8, 8], &[4, 1, 2, 3, 9, 9]];
        let p = Packed::pairs(&a, &b);
        let flat: Vec<usize> = (0..4)
            .map(|s| p.flat(s, p.seq_len(s) - 1))
            .chain([p.flat(1, 0), p.flat(2, 3), p.flat(3, 1)])
            .collect();
        for family in ["gpt2", "opt", "opt-350m", "llama", "mistral"] {
            let mut m = Model::load_frozen(&fixture(family), &Device::Cpu).unwrap();
            m.set_engine(Engine::Owned);
            let got = m.hidden_packed_at(&p, &flat).unwrap();
            m.set_engine(Engine::Autograd);
            let full = m.hidden_packed(&p).unwrap();
            let (rows, t, d) = full.dims3().unwrap();
            let at: Vec<u32> = flat.iter().map(|&f| f as u32).collect();
            let want = (full.reshape((rows * t, d)).unwrap())
                .index_select(&Tensor::new(at, &Device::Cpu).unwrap(), 0)
                .unwrap();
            assert_eq!(got.dims(), &[flat.len(), d], "{family}");
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "{family}: off by {diff}");
            let trainable = Model::load(&fixture(family), &Device::Cpu).unwrap();
            let t = trainable.hidden_packed_at(&p, &flat).unwrap();
            let diff = max_abs_diff(&t, &want);
            assert!(diff < 1e-5, "{family} trainable: off by {diff}");
        }
    }

    /// Post-norm OPT (OPT-350m) runs on the owned engine too.
    #[test]
    fn post_norm_opt_runs_on_the_owned_engine() {
        let m = Model::load(&fixture("opt-350m"), &Device::Cpu).unwrap();
        assert_eq!(m.engine, Engine::Owned);
        let _ = loss(&m, false);
        assert!(!m.owned_tapes.lock().unwrap().is_empty());
    }
}
