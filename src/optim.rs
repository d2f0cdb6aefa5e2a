//! The optimizer and learning-rate schedules of the reference (spec §2.4, §3.10), matching
//! PyTorch: `torch.optim.Adam` with its defaults (no weight decay), `CosineAnnealingLR` to 0 with
//! no warmup (reward models), and a linear warmup over ⌊0.1·n⌋+1 steps then constant (SFT,
//! SimPO, DPO).
//!
//! Adam keeps its moments as plain `f32` vectors and updates each parameter with one pass over
//! its values, instead of candle-nn's `AdamW`, which builds a dozen temporary tensors per
//! parameter per step (the brief measured ~6 s a step at 124M parameters).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Adam's hyper-parameters; `Default` is PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Gradient summed over the micro-batches of the current step (`None`: no gradient yet).
    grad: Option<Vec<f32>>,
    /// Steps taken by this parameter (PyTorch counts per parameter; a parameter without a
    /// gradient is skipped and its count does not advance).
    steps: u64,
    /// Casts of this (f32 master) parameter the model computes with under mixed precision,
    /// rewritten in place from the master after every update.
    mirrors: Vec<Tensor>,
}

/// One parameter's optimizer state, for checkpoints.
pub struct SlotState {
    pub name: String,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub steps: u64,
}

/// One Adam update's constants (PyTorch's single-tensor Adam).
#[derive(Clone, Copy)]
struct Update {
    step_size: f32,
    w1: f32,
    b2: f32,
    w2: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl Update {
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let k = *self;
        for i in 0..p.len() {
            // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
            m[i] += k.w1 * (g[i] - m[i]);
            v[i] = v[i] * k.b2 + k.w2 * g[i] * g[i];
            let denom = v[i].sqrt() / k.bc2_sqrt + k.eps;
            p[i] -= k.step_size * m[i] / denom;
        }
    }
}

/// The update as an in-place op on a parameter's CPU storage.
struct InPlace<'a> {
    k: Update,
    g: &'a [f32],
    mv: std::cell::RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("adam-update: f32 parameters only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adam-update: contiguous parameters only");
        };
        let mut mv = self.mv.borrow_mut();
        let (m, v) = &mut *mv;
        if end - start != self.g.len() {
            candle_core::bail!(
                "adam-update: {} values, {} gradients",
                end - start,
                self.g.len()
            );
        }
        self.k.apply(&mut data[start..end], self.g, m, v);
        Ok(())
    }
}

/// Rewrites a slot's compute-dtype casts from its master, in place (the casts stay the same
/// graph nodes, so the model's tensors keep pointing at them).
fn refresh(slot: &Slot) -> Result<()> {
    for cast in &slot.mirrors {
        cast.inplace_op2(slot.var.as_tensor(), &CastInto)?;
    }
    Ok(())
}

/// `dst = src as dst's dtype`, in place on `dst`'s storage.
struct CastInto;

impl CastInto {
    fn run<S: candle_core::backend::BackendStorage>(
        dst: &mut S,
        dl: &candle_core::Layout,
        src: &S,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        if dl.shape() != sl.shape() || !dl.is_contiguous() {
            candle_core::bail!("cast-into: shapes {:?} and {:?}", dl.shape(), sl.shape());
        }
        let converted = src.to_dtype(sl, dst.dtype())?;
        converted.copy_strided_src(
            dst,
            dl.start_offset(),
            &candle_core::Layout::contiguous(sl.shape()),
        )
    }
}

impl candle_core::InplaceOp2 for CastInto {
    fn name(&self) -> &'static str {
        "cast-into"
    }

    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        dl: &candle_core::Layout,
        src: &candle_core::CpuStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        Self::run(dst, dl, src, sl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &candle_core::Layout,
        src: &candle_core::CudaStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        Self::run(dst, dl, src, sl)
    }
}

/// `torch.optim.Adam` (single-tensor implementation, as PyTorch uses on CPU), with gradient
/// accumulation over micro-batches as `loss.backward()` into `.grad` does in PyTorch.
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
}

impl Adam {
    /// An optimizer over unnamed parameters (named `0`, `1`, ... in its state).
    pub fn new(params: impl IntoIterator<Item = Var>, cfg: AdamConfig) -> Adam {
        Self::named(
            params
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v)),
            cfg,
        )
    }

    /// An optimizer over named parameters; the names key its saved state.
    pub fn named(params: impl IntoIterator<Item = (String, Var)>, cfg: AdamConfig) -> Adam {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.as_tensor().elem_count();
                Slot {
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    grad: None,
                    steps: 0,
                    mirrors: Vec::new(),
                }
            })
            .collect();
        Adam { cfg, slots }
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Registers the compute-dtype casts of master parameters (`Model::mirrors`): after each
    /// update of a master its casts are rewritten from it. Casts of variables this optimizer
    /// does not hold are ignored.
    pub fn mirror(&mut self, pairs: &[(Var, Tensor)]) {
        for (var, cast) in pairs {
            if let Some(slot) =
                (self.slots.iter_mut()).find(|s| s.var.as_tensor().id() == var.as_tensor().id())
            {
                slot.mirrors.push(cast.clone());
            }
        }
    }

    /// Rewrites every registered cast from its master (after restoring saved parameters).
    pub fn refresh_mirrors(&self) -> Result<()> {
        for slot in &self.slots {
            refresh(slot)?;
        }
        Ok(())
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Adds the gradients in `grads` to the pending step (PyTorch's `.grad +=`).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            match &mut slot.grad {
                Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                None => slot.grad = Some(g),
            }
        }
        Ok(())
    }

    /// Parameters that got no gradient since the last step (for the "every trainable
    /// parameter learns" checks).
    pub fn without_gradient(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.grad.is_none())
            .map(|s| s.name.as_str())
            .collect()
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.accumulate(grads)?;
        self.step_accumulated()
    }

    /// One update from the accumulated gradients, which are then cleared. On the CPU the
    /// parameter's storage is updated in place (no copy of the weights out and back in).
    pub fn step_accumulated(&mut self) -> Result<()> {
        let c = self.cfg;
        for slot in &mut self.slots {
            let Some(g) = slot.grad.take() else {
                continue;
            };
            slot.steps += 1;
            let step = slot.steps as i32;
            let bc1 = 1.0 - c.beta1.powi(step);
            let bc2_sqrt = (1.0 - c.beta2.powi(step)).sqrt();
            let k = Update {
                step_size: (c.lr / bc1) as f32,
                w1: (1.0 - c.beta1) as f32,
                b2: c.beta2 as f32,
                w2: (1.0 - c.beta2) as f32,
                bc2_sqrt: bc2_sqrt as f32,
                eps: c.eps as f32,
            };
            let t = slot.var.as_tensor();
            if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
                let op = InPlace {
                    k,
                    g: &g,
                    mv: std::cell::RefCell::new((&mut slot.m, &mut slot.v)),
                };
                t.inplace_op1(&op)?;
            } else {
                let mut p: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                k.apply(&mut p, &g, &mut slot.m, &mut slot.v);
                let new = Tensor::from_vec(p, t.shape(), t.device())?.to_dtype(t.dtype())?;
                slot.var.set(&new)?;
            }
            refresh(slot)?;
        }
        Ok(())
    }

    /// The moments and step counts of every parameter.
    pub fn state(&self) -> Vec<SlotState> {
        self.slots
            .iter()
            .map(|s| SlotState {
                name: s.name.clone(),
                m: s.m.clone(),
                v: s.v.clone(),
                steps: s.steps,
            })
            .collect()
    }

    /// Restores state saved by [`Adam::state`]; every parameter must be there with its size.
    pub fn restore(&mut self, state: Vec<SlotState>) -> std::result::Result<(), String> {
        let mut by_name: std::collections::HashMap<String, SlotState> =
            state.into_iter().map(|s| (s.name.clone(), s)).collect();
        for slot in &mut self.slots {
            let s = by_name
                .remove(&slot.name)
                .ok_or_else(|| format!("no optimizer state for `{}`", slot.name))?;
            if s.m.len() != slot.m.len() || s.v.len() != slot.v.len() {
                return Err(format!(
                    "optimizer state of `{}` has the wrong size",
                    slot.name
                ));
            }
            slot.m = s.m;
            slot.v = s.v;
            slot.steps = s.steps;
            slot.grad = None;
        }
        Ok(())
    }
}

/// Learning rate as a function of the optimizer step.
///
/// Written `warmup-constant` on the command line and in pipeline files; fingerprinted
/// settings (and so every recorded run) keep the older `warmup_constant`, which both also
/// accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all(serialize = "snake_case", deserialize = "kebab-case"))]
pub enum Schedule {
    /// Cosine decay to 0, no warmup (reward models; PyTorch `CosineAnnealingLR`, `eta_min` 0):
    /// `lr · ½(1 + cos(π s / n))`.
    Cosine,
    /// Linear warmup over ⌊0.1·steps⌋+1 steps, then constant (SFT, SimPO, DPO):
    /// `lr · min(1, (s + 1) / (⌊0.1 n⌋ + 1))`.
    #[serde(alias = "warmup_constant")]
    #[value(alias = "warmup_constant")]
    WarmupConstant,
    /// The base rate throughout.
    Constant,
}

impl Schedule {
    /// The learning rate at 0-based optimizer step `step` of `total`.
    pub fn lr(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Schedule::Cosine => {
                base * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos())
            }
            Schedule::WarmupConstant => {
                let warm = (0.1 * total as f64).floor() + 1.0;
                base * ((step as f64 + 1.0) / warm).min(1.0)
            }
            Schedule::Constant => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;
    use std::path::Path;

    fn fixtures() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    // Expected values from tools/fixtures/make_fixtures.py (torch.optim.Adam, 4 steps).
    #[test]
    fn adam_matches_pytorch() {
        let dev = Device::Cpu;
        let e: HashMap<String, Tensor> =
            candle_core::safetensors::load(fixtures().join("adam.safetensors"), &dev).unwrap();
        let p1 = Var::from_tensor(&e["p1.init"]).unwrap();
        let p2 = Var::from_tensor(&e["p2.init"]).unwrap();
        let mut adam = Adam::new([p1.clone(), p2.clone()], AdamConfig::default());
        for i in 0..4 {
            // The gradient of sum(p * g) is g: a real backward pass feeds the optimizer.
            let loss = ((p1.as_tensor() * &e[&format!("grad1.{i}")])
                .unwrap()
                .sum_all()
                .unwrap()
                + (p2.as_tensor() * &e[&format!("grad2.{i}")])
                    .unwrap()
                    .sum_all()
                    .unwrap())
            .unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
            for (p, name) in [(&p1, "p1"), (&p2, "p2")] {
                let want = &e[&format!("{name}.{i}")];
                let d = crate::models::max_abs_diff(p.as_tensor(), want);
                assert!(d < 1e-7, "{name} after step {i}: off by {d}");
            }
        }
    }

    #[test]
    fn parameters_without_gradients_are_left_alone() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let mut adam = Adam::new([a.clone(), b.clone()], AdamConfig::default());
        adam.step(&a.as_tensor().sum_all().unwrap().backward().unwrap())
            .unwrap();
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0; 3]);
        assert!(a
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| *x < 1.0));
    }

    #[test]
    fn schedules_match_pytorch() {
        let text = std::fs::read_to_string(fixtures().join("schedules.json")).unwrap();
        let all: HashMap<String, Vec<f64>> = serde_json::from_str(&text).unwrap();
        for (name, lrs) in all {
            let (schedule, base) = if name.starts_with("cosine") {
                (Schedule::Cosine, 1e-5)
            } else {
                (Schedule::WarmupConstant, 1e-6)
            };
            let n = lrs.len();
            for (s, want) in lrs.iter().enumerate() {
                let got = schedule.lr(base, s, n);
                // PyTorch's cosine schedule is computed recursively; equal up to rounding.
                assert!(
                    (got - want).abs() <= 1e-9 * base + 1e-12,
                    "{name} step {s}: {got} vs {want}"
                );
            }
        }
        // docs/reference.md §3.10: warmup denominators 13, 26, 38, 76.
        for (n, d) in [(125, 13.0), (250, 26.0), (375, 38.0), (750, 76.0)] {
            assert_eq!(Schedule::WarmupConstant.lr(1.0, 0, n), 1.0 / d);
        }
    }
}
