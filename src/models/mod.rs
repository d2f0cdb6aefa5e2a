//! Causal language models on candle: GPT-2, OPT and Llama/Mistral, loaded from Hugging Face
//! layout folders, with a backward pass through every op (see `ops`).

pub mod attention;
pub mod block;
pub mod config;
pub mod cuda_kernels;
pub mod embed;
pub mod engine;
pub mod frozen;
pub mod fused;
pub mod fused_head;
pub mod gpt2;
pub mod head;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod ops;
pub mod opt;
pub mod pack;
pub mod readout;
pub mod recompute;
pub mod rms_block;
pub mod save;
pub mod source;
pub mod tensor_file;
pub mod weights;

#[cfg(test)]
mod parity_tests;

/// Largest absolute elementwise difference (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar())
        .expect("tensors of one shape")
}

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

pub use config::Config;
use weights::Weights;

use crate::error::{Error, Result};

/// A file's text and its JSON value; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<(String, serde_json::Value)> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: file.clone(),
        source,
    })?;
    let v = serde_json::from_str(&text).map_err(|e| Error::Model {
        file,
        msg: format!("invalid JSON: {e}"),
    })?;
    Ok((text, v))
}

/// `config.json` of a checkpoint folder, parsed, with its raw JSON.
pub(crate) fn read_config(dir: &Path) -> Result<(Config, serde_json::Value)> {
    let p = dir.join("config.json");
    let (text, raw) = read_json(&p)?;
    Ok((Config::parse(&p.display().to_string(), &text)?, raw))
}

/// The default device of every stage.
pub const CPU: &str = "cpu";

/// `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda`.
pub fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Some(0),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(i) = ordinal else {
        return Err(Error::Config(format!(
            "--device `{s}`: expected cpu, cuda or cuda:N"
        )));
    };
    Device::new_cuda(i).map_err(|e| {
        let hint = if cfg!(feature = "cuda") {
            ""
        } else {
            " (this w2s was built without `--features cuda`)"
        };
        Error::Config(format!("--device `{s}`: no CUDA device{hint}: {e}"))
    })
}

/// `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(Error::Config(format!(
            "--dtype `{s}`: expected f32, bf16 or f16"
        ))),
    }
}

enum Net {
    Gpt2(gpt2::Gpt2),
    Opt(opt::Opt),
    Llama(llama::Llama),
}

/// What every layer of one forward pass shares: the additive attention bias and, for the
/// rotary families, the cos / sin tables. Built once a forward (and kept by a recompute tape).
pub struct Shared {
    pub bias: Tensor,
    pub rope: Option<(Tensor, Tensor)>,
}

impl Net {
    fn embed(
        &self,
        ids: &Tensor,
        attend: Attend,
        device: &Device,
        sums: Option<&engine::Sums>,
    ) -> Result<(Tensor, Shared)> {
        match self {
            Net::Gpt2(m) => m.embed(ids, attend, device, sums),
            Net::Opt(m) => m.embed(ids, attend, device, sums),
            Net::Llama(m) => m.embed(ids, attend, device, sums),
        }
    }

    fn layers(&self) -> usize {
        match self {
            Net::Gpt2(m) => m.layers(),
            Net::Opt(m) => m.layers(),
            Net::Llama(m) => m.layers(),
        }
    }

    fn layer(&self, l: usize, x: &Tensor, s: &Shared) -> Result<Tensor> {
        match self {
            Net::Gpt2(m) => m.layer(l, x, s),
            Net::Opt(m) => m.layer(l, x, s),
            Net::Llama(m) => m.layer(l, x, s),
        }
    }

    fn finish(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Net::Gpt2(m) => m.finish(x),
            Net::Opt(m) => m.finish(x),
            Net::Llama(m) => m.finish(x),
        }
    }
}

/// How the tokens of a batch see each other and where they sit.
#[derive(Clone, Copy)]
pub enum Attend<'a> {
    /// One sequence a row; mask 0 marks padding (either side). Positions as each family's
    /// reference forward computes them without `position_ids`.
    Mask(&'a [Vec<u32>]),
    /// Shared-prefix packing with explicit positions.
    Packed(&'a pack::Packed),
}

impl Attend<'_> {
    /// The additive attention bias `[B, 1, T, T]`.
    fn bias(&self, window: Option<usize>, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Attend::Mask(m) => ops::attention_bias(m, window, device),
            Attend::Packed(p) => p.bias(window, device),
        }
    }
}

/// A causal LM with its parameters as trainable variables.
pub struct Model {
    pub config: Config,
    /// config.json as read, written back unchanged by `save` so no field is lost.
    raw_config: serde_json::Value,
    net: Net,
    /// Every weight by transformers name (tied weights once).
    tensors: BTreeMap<String, Tensor>,
    /// The trainable ones (empty for a frozen model; the adapters alone under LoRA).
    params: BTreeMap<String, Var>,
    /// Modules carrying LoRA adapters, and the adapter settings.
    adapted: Vec<(String, linear::Layout)>,
    lora: Option<weights::LoraSpec>,
    device: Device,
    /// The dtype the forward computes in (the weights' or, under mixed precision, their casts').
    dtype: DType,
    /// Mixed precision: f32 master variables and the casts the forward uses.
    mirrors: Vec<(Var, Tensor)>,
    /// Largest weights file `save` writes before sharding (`save::SHARD_BYTES`).
    pub(crate) shard_bytes: usize,
    /// Per-layer activation recompute (`--grad-checkpoint`): forwards keep only each layer's
    /// input, and [`Model::backward`] recomputes one layer at a time.
    recompute: bool,
    /// The forwards since the last [`Model::backward`] under recompute.
    tapes: std::sync::Mutex<Vec<recompute::Tape>>,
    /// The chunked log-prob heads since the last [`Model::backward`] under recompute.
    head_tapes: std::sync::Mutex<Vec<head::HeadTape>>,
    /// Tokens per log-prob chunk (`None`: [`head::chunk_tokens`] of the vocabulary).
    pub(crate) head_chunk: Option<usize>,
    /// Which engine runs the layers (see [`engine`]).
    engine: engine::Engine,
    /// The owned engine's buffers, reused across forwards.
    pool: engine::Pool,
    /// The owned engine's training forwards since the last [`Model::backward`].
    owned_tapes: std::sync::Mutex<Vec<engine::Tape>>,
    /// With [`Model::set_accumulating`]: the owned layers' weight gradients summed across
    /// backwards until [`Model::take_sums`].
    sums: Option<engine::Sums>,
    /// The owned layers' weights packed for their products (see [`Model::packs`]).
    packs: kernels::packed::Packs,
}

impl Model {
    /// Loads `config.json` and the safetensors weights of a Hugging Face layout folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Model> {
        Self::load_opts(dir, device, false, None, DType::F32)
    }

    /// Loads for inference only: weights are not variables, so no autograd graph is kept.
    pub fn load_frozen(dir: &Path, device: &Device) -> Result<Model> {
        Self::load_opts(dir, device, true, None, DType::F32)
    }

    /// Loads for training in `dtype`: f32 as [`Model::load`]; bf16 / f16 as mixed precision
    /// (f32 master variables, the forward on their casts, see [`Model::mirrors`]).
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
        Self::load_opts(dir, device, false, None, dtype)
    }

    /// Loads for inference with weights in `dtype` (f32 on CPU; bf16 / f16 for CUDA).
    pub fn load_frozen_as(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
        Self::load_opts(dir, device, true, None, dtype)
    }

    pub(crate) fn load_opts(
        dir: &Path,
        device: &Device,
        frozen: bool,
        lora: Option<(weights::LoraSpec, std::collections::HashMap<String, Tensor>)>,
        dtype: DType,
    ) -> Result<Model> {
        let (config, raw) = read_config(dir)?;
        let mut weights = Weights::load(dir, device)?;
        weights = weights.with_dtype(dtype);
        if frozen {
            weights = weights.frozen();
        }
        if let Some((spec, init)) = lora {
            weights = weights.with_lora(spec, init);
        }
        let mut model = Model::from_weights(config, weights, device)?;
        model.raw_config = raw;
        Ok(model)
    }

    /// Builds a model from a config and weights (every tensor the config needs must be there).
    pub fn from_weights(config: Config, weights: Weights, device: &Device) -> Result<Model> {
        let net = match &config {
            Config::Gpt2(c) => Net::Gpt2(gpt2::Gpt2::new(c, &weights)?),
            Config::Opt(c) => Net::Opt(opt::Opt::new(c, &weights)?),
            Config::Llama(c, _) => Net::Llama(llama::Llama::new(c, &weights)?),
        };
        let dtype = weights.dtype();
        let parts = weights.into_parts();
        // A model without trainable weights packs each weight at its first product.
        let pack_after = if parts.params.is_empty() {
            1
        } else {
            kernels::packed::PACK_AFTER
        };
        Ok(Model {
            config,
            raw_config: serde_json::Value::Null,
            net,
            tensors: parts.tensors,
            params: parts.params,
            adapted: parts.adapted,
            lora: parts.lora,
            device: device.clone(),
            dtype,
            mirrors: parts.mirrors,
            shard_bytes: save::SHARD_BYTES,
            recompute: false,
            tapes: std::sync::Mutex::new(Vec::new()),
            head_tapes: std::sync::Mutex::new(Vec::new()),
            head_chunk: None,
            engine: engine::current(),
            pool: engine::Pool::default(),
            owned_tapes: std::sync::Mutex::new(Vec::new()),
            sums: None,
            packs: kernels::packed::Packs::new(kernels::packed::LIMIT, pack_after),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the forward computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Under mixed precision, each f32 master variable and the cast of it the forward uses
    /// (empty otherwise): the optimizer refreshes the casts after every update.
    pub fn mirrors(&self) -> &[(Var, Tensor)] {
        &self.mirrors
    }

    /// A frozen copy of the current function (own storage: later updates of `self` do not
    /// reach it; LoRA adapters folded into their base weights), e.g. DPO's reference model.
    pub fn frozen_copy(&self) -> Result<Model> {
        let mut tensors = std::collections::HashMap::new();
        // One weight at a time: the copy never holds a second merged model beside it.
        for p in self.merged_pending() {
            let t = (p.make)()?;
            tensors.insert(p.name.clone(), t.copy()?.detach());
        }
        let weights = Weights::from_tensors("frozen copy".into(), tensors)
            .with_dtype(self.dtype)
            .frozen();
        let mut m = Model::from_weights(self.config.clone(), weights, &self.device)?;
        m.raw_config = self.raw_config.clone();
        Ok(m)
    }

    /// Every weight by Hugging Face name (tied weights appear once).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Trainable parameters by Hugging Face name (tied weights appear once); empty when frozen.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Final hidden states `[B, T, H]` for `ids` `[B, T]` (u32) and the attention mask rows.
    /// Padding may be on either side; padded keys are never attended.
    pub fn hidden(&self, ids: &Tensor, mask: &[Vec<u32>]) -> Result<Tensor> {
        self.check_positions(ids.dim(1)?)?;
        self.forward(ids, Attend::Mask(mask))
    }

    /// Final hidden states `[rows, T, H]` of packed sequences (`pack`): read them through
    /// [`pack::Packed::flat`].
    pub fn hidden_packed(&self, p: &pack::Packed) -> Result<Tensor> {
        self.check_positions(p.max_position() + 1)?;
        let ids = ops::ids_tensor(&p.ids, &self.device)?;
        self.forward(&ids, Attend::Packed(p))
    }

    /// The final hidden states `[r, d]` at flat positions `flat` (`row · T + t`, see
    /// `pack::Packed::flat`) of a packed batch, in that order: what a reward readout reads.
    /// Inference on the owned engine (no trainable parameters) runs the last layer's
    /// token-wise part at those positions only; elsewhere the full forward, then a gather.
    pub fn hidden_packed_at(&self, p: &pack::Packed, flat: &[usize]) -> Result<Tensor> {
        self.check_positions(p.max_position() + 1)?;
        let ids = ops::ids_tensor(&p.ids, &self.device)?;
        let index = |v: Vec<u32>| Tensor::from_vec(v, flat.len(), &self.device);
        let (x, shared) =
            self.net
                .embed(&ids, Attend::Packed(p), &self.device, self.sums.as_ref())?;
        let owned = self.engine == engine::Engine::Owned && engine::applies(&self.net, &x, &shared);
        if owned && self.params.is_empty() && !flat.is_empty() {
            let mut rows = flat.to_vec();
            rows.sort_unstable();
            rows.dedup();
            let y = kernels::packed::scope(self.packs(), || {
                engine::forward_at(&self.net, &self.pool, x, &shared, &rows)
            })?;
            let h = self.net.finish(&y)?.squeeze(0)?;
            let at = flat.iter().map(|f| rows.partition_point(|r| r < f) as u32);
            return Ok(h.index_select(&index(at.collect())?, 0)?);
        }
        let hidden = self.layers(x, shared)?;
        let (rows, t, h) = hidden.dims3()?;
        let at = flat.iter().map(|&f| f as u32).collect();
        Ok(hidden
            .reshape((rows * t, h))?
            .index_select(&index(at)?, 0)?)
    }

    fn check_positions(&self, t: usize) -> Result<()> {
        if t > self.config.max_positions() {
            return Err(Error::Config(format!(
                "sequence of {t} tokens is longer than the model's {} positions",
                self.config.max_positions()
            )));
        }
        Ok(())
    }

    fn forward(&self, ids: &Tensor, attend: Attend) -> Result<Tensor> {
        let (x, shared) = self
            .net
            .embed(ids, attend, &self.device, self.sums.as_ref())?;
        self.layers(x, shared)
    }

    /// The layers and the final norm over the embedded input `x`.
    fn layers(&self, x: Tensor, shared: Shared) -> Result<Tensor> {
        let training = !self.params.is_empty();
        if self.engine == engine::Engine::Owned && engine::applies(&self.net, &x, &shared) {
            let keep = training.then_some(self.recompute);
            let (y, tape) = kernels::packed::scope(self.packs(), || {
                engine::forward(&self.net, &self.pool, x, &shared, keep)
            })?;
            if let Some(tape) = tape {
                self.owned_tapes.lock().expect("tapes lock").push(tape);
            }
            return self.net.finish(&y);
        }
        if self.recompute && training {
            let (hidden, tape) = recompute::forward(&self.net, x, shared)?;
            self.tapes.lock().expect("tapes lock").push(tape);
            return Ok(hidden);
        }
        let mut x = x;
        for l in 0..self.net.layers() {
            x = self.net.layer(l, &x, &shared)?;
        }
        self.net.finish(&x)
    }

    /// Turns per-layer activation recompute on or off (see [`recompute`]); pending tapes are
    /// dropped.
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
        self.clear_tapes();
    }

    /// Chooses the engine of the layers (see [`engine`]); pending tapes are dropped.
    pub fn set_engine(&mut self, e: engine::Engine) {
        self.engine = e;
        self.clear_tapes();
    }

    /// Sums the owned layers' weight gradients across [`Model::backward`] calls (a step's
    /// micro-batches) instead of returning them from each: the training loop takes the sums
    /// once a step ([`Model::take_sums`]) and hands them to the optimizer with the rest. The
    /// gradients of everything else (embeddings, final norm, head, layers the owned engine
    /// does not run) still come from each backward.
    pub fn set_accumulating(&mut self, on: bool) {
        self.sums = on.then(engine::Sums::default);
        self.packs.release();
    }

    /// The packed weights the owned layers' products may read (`kernels::packed`): an
    /// inference model's always (its weights never change), a training model's only while it
    /// sums a step's gradients, since [`Model::take_sums`], which the training loop calls
    /// before every update, marks them stale. Packed once, a weight serves the rest of the
    /// step's micro-batches, forward and backward.
    fn packs(&self) -> Option<&kernels::packed::Packs> {
        (self.params.is_empty() || self.sums.is_some()).then_some(&self.packs)
    }

    /// The summed layer gradients since the last call (empty unless accumulating).
    pub fn take_sums(&self) -> Result<candle_core::backprop::GradStore> {
        // The weights are about to change: their packs must not outlive this step.
        self.packs.clear();
        match &self.sums {
            Some(s) => s.take_all(),
            None => Ok(candle_core::backprop::GradStore::default()),
        }
    }

    fn clear_tapes(&mut self) {
        self.tapes.lock().expect("tapes lock").clear();
        self.head_tapes.lock().expect("tapes lock").clear();
        self.owned_tapes.lock().expect("tapes lock").clear();
    }

    /// The gradients of `loss` for every trainable parameter: `loss.backward()`, and under
    /// recompute the layers of every forward since the last call, recomputed one at a time.
    ///
    /// Gradients candle leaves for frozen weights (it computes them wherever the frozen-operand
    /// op does not apply) are dropped as soon as each backward returns: kept, they would add up
    /// to a full-size copy of the base model under LoRA.
    pub fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        let frozen: Vec<&Tensor> = (self.tensors.values()).filter(|t| !t.track_op()).collect();
        let trainable: std::collections::HashSet<candle_core::TensorId> =
            (self.params.values()).map(|v| v.as_tensor().id()).collect();
        let mut grads = recompute::detached(loss.backward()?);
        recompute::drop_grads(&mut grads, &frozen);
        crate::alloc::trace_heap(format_args!("the loss's backward"));
        // The heads first: their backward reaches the last layer's output.
        let heads = std::mem::take(&mut *self.head_tapes.lock().expect("tapes lock"));
        let chunk = self.head_chunk();
        for tape in heads.into_iter().rev() {
            head::backward(
                |x| self.logits(x),
                tape,
                &mut grads,
                &frozen,
                &trainable,
                chunk,
            )?;
        }
        crate::alloc::trace_heap(format_args!("the head's backward"));
        let tapes = std::mem::take(&mut *self.tapes.lock().expect("tapes lock"));
        for tape in tapes.into_iter().rev() {
            recompute::backward(&self.net, tape, &mut grads, &frozen, &trainable)?;
        }
        let owned = std::mem::take(&mut *self.owned_tapes.lock().expect("tapes lock"));
        for tape in owned.into_iter().rev() {
            let sets = (&frozen[..], &trainable);
            kernels::packed::scope(self.packs(), || {
                engine::backward(
                    &self.net,
                    &self.pool,
                    tape,
                    &mut grads,
                    sets,
                    self.sums.as_ref(),
                )
            })?;
        }
        Ok(grads)
    }

    /// Log-probs `[n]` (f32) of `targets` `[n]` (u32) under the next-token logits of `hidden`
    /// `[n, d]`. Without a graph, and in training under recompute, the logits are computed a
    /// chunk of tokens at a time (see [`head`]); otherwise at once.
    pub fn token_logprobs(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let head = self.lm_head();
        // On the CPU in f32 the head and the log-softmax are one op that never holds the
        // logits (a test-set chunk size keeps the chunked path, which other devices take).
        if self.head_chunk.is_none() && fused_head::applies(hidden, head) {
            let t = targets.to_vec1::<u32>()?;
            return Ok(fused_head::logprobs(hidden, head, &t)?);
        }
        let chunk = self.head_chunk();
        let logits = |x: &Tensor| self.logits(x);
        if !hidden.track_op() {
            return head::logprobs_no_graph(logits, hidden, targets, chunk);
        }
        if self.recompute {
            let (t, tape) = head::logprobs_taped(logits, hidden, targets, chunk)?;
            self.head_tapes.lock().expect("tapes lock").push(tape);
            return Ok(t);
        }
        head::chunk_logprobs(logits, hidden, targets)
    }

    fn head_chunk(&self) -> usize {
        (self.head_chunk).unwrap_or_else(|| head::chunk_tokens(self.config.vocab_size()))
    }

    /// The LM head `[V, d]`.
    pub fn lm_head(&self) -> &Tensor {
        match &self.net {
            Net::Gpt2(m) => m.lm_head(),
            Net::Opt(m) => m.lm_head(),
            Net::Llama(m) => m.lm_head(),
        }
    }

    /// Next-token logits `[B, T, V]` from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Gpt2(m) => m.logits(hidden),
            Net::Opt(m) => m.logits(hidden),
            Net::Llama(m) => m.logits(hidden),
        }
    }
}
