//! The optimizer and learning-rate schedules of the reference (spec §2.4, §3.10), matching
//! PyTorch: `torch.optim.Adam` with its defaults (no weight decay), `CosineAnnealingLR` to 0 with
//! no warmup (reward models), and a linear warmup over ⌊0.1·n⌋+1 steps then constant (SFT,
//! SimPO, DPO).
//!
//! Adam's moments and the gradient accumulators are f32 tensors on the parameters' device, so
//! a step moves nothing to the host. On the CPU one fused pass updates the parameter and both
//! moments in place; elsewhere the same arithmetic runs as composed tensor ops, which a test
//! holds equal to the fused pass. This replaces candle-nn's `AdamW`, which builds a dozen
//! temporary tensors per parameter per step on every device and keeps its moments in the
//! weights' dtype.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, Var};
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

/// The gradient summed over the micro-batches of the current step.
struct Accumulated {
    t: Tensor,
    /// Whether `t` is this optimizer's own buffer (and so may be added into in place) rather
    /// than the first micro-batch's gradient itself, which may share storage with another.
    owned: bool,
}

struct Slot {
    name: String,
    var: Var,
    /// First and second moments: f32, the parameter's shape and device.
    m: Tensor,
    v: Tensor,
    /// `None`: no gradient yet this step.
    grad: Option<Accumulated>,
    /// Steps taken by this parameter (PyTorch counts per parameter; a parameter without a
    /// gradient is skipped and its count does not advance).
    steps: u64,
    /// Casts of this (f32 master) parameter the model computes with under mixed precision,
    /// rewritten in place from the master after every update.
    mirrors: Vec<Tensor>,
}

/// One parameter's optimizer state, for checkpoints: handles on the live moments (no copy).
pub struct SlotState {
    pub name: String,
    pub m: Tensor,
    pub v: Tensor,
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

crate::simd::dispatch! {
/// [`Update::apply`]'s loop.
fn adam_update(k: Update, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
        m[i] += k.w1 * (g[i] - m[i]);
        v[i] = v[i] * k.b2 + k.w2 * g[i] * g[i];
        let denom = v[i].sqrt() / k.bc2_sqrt + k.eps;
        p[i] -= k.step_size * m[i] / denom;
    }
}
}

impl Update {
    /// The update in place, in parallel chunks (each element's update is independent, so the
    /// result does not depend on the split).
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let k = *self;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| adam_update(k, p, g, m, v));
    }

    /// The same update as tensor ops, for any device: returns the new parameter and moments.
    fn composed(&self, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<[Tensor; 3]> {
        let k = *self;
        let m = (m + ((g - m)? * f64::from(k.w1))?)?;
        let v = ((v * f64::from(k.b2))? + (g.sqr()? * f64::from(k.w2))?)?;
        let denom = ((v.sqrt()? / f64::from(k.bc2_sqrt))? + f64::from(k.eps))?;
        let p = (p - ((&m / denom)? * f64::from(k.step_size))?)?;
        Ok([p, m, v])
    }
}

/// An in-place op that hands the f32 values of a contiguous CPU tensor to a closure.
struct Mutate<F>(Mutex<F>);

impl<F: FnMut(&mut [f32]) -> candle_core::Result<()>> candle_core::InplaceOp1 for Mutate<F> {
    fn name(&self) -> &'static str {
        "adam-mutate"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("adam: f32 tensors only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adam: contiguous tensors only");
        };
        let mut f = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: poisoned".into()))?;
        (f)(&mut data[start..end])
    }
}

/// Runs `f` on the values of `t` (an f32 contiguous CPU tensor), in place.
fn mutate(
    t: &Tensor,
    f: impl FnMut(&mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    t.inplace_op1(&Mutate(Mutex::new(f)))
}

/// Runs `f` on the values of `t` (an f32 contiguous CPU tensor).
fn read<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("adam: f32 CPU tensors only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("adam: contiguous tensors only");
    };
    Ok(f(&data[start..end]))
}

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
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
    /// Update on the CPU with one fused in-place pass (off: composed ops, as on other devices).
    fused: bool,
}

impl Adam {
    /// An optimizer over unnamed parameters (named `0`, `1`, ... in its state).
    pub fn new(params: impl IntoIterator<Item = Var>, cfg: AdamConfig) -> Result<Adam> {
        Self::named(
            params
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v)),
            cfg,
        )
    }

    /// An optimizer over named parameters; the names key its saved state. The moments are
    /// allocated here, as f32 zeros on each parameter's device.
    pub fn named(params: impl IntoIterator<Item = (String, Var)>, cfg: AdamConfig) -> Result<Adam> {
        let mut slots = Vec::new();
        for (name, var) in params {
            let t = var.as_tensor();
            // Written zeros on the CPU: the first step reads the moments before it writes.
            let zeros = || match t.device() {
                Device::Cpu => {
                    Tensor::from_vec(crate::alloc::zeros(t.elem_count()), t.shape(), t.device())
                }
                d => Tensor::zeros(t.shape(), DType::F32, d),
            };
            slots.push(Slot {
                name,
                m: zeros()?,
                v: zeros()?,
                var,
                grad: None,
                steps: 0,
                mirrors: Vec::new(),
            });
        }
        Ok(Adam {
            cfg,
            slots,
            fused: true,
        })
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

    /// Adds the gradients in `grads` to the pending step (PyTorch's `.grad +=`), on their
    /// device. The first micro-batch's gradient is kept as it is (detached, no copy); the
    /// second makes the step's own buffer, which later ones add into in place on the CPU.
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = g.detach().to_dtype(DType::F32)?;
            slot.grad = Some(match slot.grad.take() {
                None => Accumulated { t: g, owned: false },
                Some(acc) if acc.owned && is_cpu_f32(&acc.t) && self.fused => {
                    let g = g.contiguous()?;
                    mutate(&acc.t, |a| {
                        read(&g, |g| crate::models::kernels::add_into(a, g))
                    })?;
                    acc
                }
                Some(acc) => Accumulated {
                    t: (acc.t + g)?.contiguous()?,
                    owned: true,
                },
            });
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

    /// One update from the accumulated gradients, which are then released.
    pub fn step_accumulated(&mut self) -> Result<()> {
        let c = self.cfg;
        for slot in &mut self.slots {
            let Some(acc) = slot.grad.take() else {
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
            let g = acc.t.contiguous()?;
            if self.fused && is_cpu_f32(t) && is_cpu_f32(&g) {
                // One pass: parameter, moments and gradient each touched once.
                let (m, v) = (&slot.m, &slot.v);
                mutate(t, |p| {
                    mutate(m, |m| mutate(v, |v| read(&g, |g| k.apply(p, g, m, v))))
                })?;
            } else {
                let p = t.to_dtype(DType::F32)?;
                let [p, m, v] = k.composed(&p, &g, &slot.m, &slot.v)?;
                slot.var.set(&p.to_dtype(t.dtype())?)?;
                slot.m = m;
                slot.v = v;
            }
            refresh(slot)?;
        }
        Ok(())
    }

    /// The moments and step counts of every parameter: handles on the live tensors, so saving
    /// them copies one tensor at a time, never the whole state.
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

    /// The names and shapes of the moments [`Adam::restore`] expects.
    pub fn slots(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.slots.iter().map(|s| (s.name.as_str(), s.m.dims()))
    }

    /// Restores one parameter's saved moments and step count (moved to its device as f32).
    pub fn restore_slot(
        &mut self,
        name: &str,
        m: &Tensor,
        v: &Tensor,
        steps: u64,
    ) -> std::result::Result<(), String> {
        let slot = (self.slots.iter_mut())
            .find(|s| s.name == name)
            .ok_or_else(|| format!("optimizer state for unknown parameter `{name}`"))?;
        if m.dims() != slot.m.dims() || v.dims() != slot.v.dims() {
            return Err(format!(
                "optimizer state of `{name}` has shape {:?}, the parameter {:?}",
                m.dims(),
                slot.m.dims()
            ));
        }
        let dev = slot.m.device().clone();
        let on = |t: &Tensor| -> std::result::Result<Tensor, String> {
            // A copy of its own: the fused update writes into the moments in place.
            (t.to_device(&dev).and_then(|t| t.to_dtype(DType::F32)))
                .and_then(|t| t.copy())
                .map_err(|e| format!("optimizer state of `{name}`: {e}"))
        };
        slot.m = on(m)?;
        slot.v = on(v)?;
        slot.steps = steps;
        slot.grad = None;
        Ok(())
    }

    /// Restores state saved by [`Adam::state`]; every parameter must be there with its shape.
    pub fn restore(&mut self, state: Vec<SlotState>) -> std::result::Result<(), String> {
        let mut by_name: std::collections::HashMap<String, SlotState> =
            state.into_iter().map(|s| (s.name.clone(), s)).collect();
        let names: Vec<String> = self.slots.iter().map(|s| s.name.clone()).collect();
        for name in names {
            let s = by_name
                .remove(&name)
                .ok_or_else(|| format!("no optimizer state for `{name}`"))?;
            self.restore_slot(&name, &s.m, &s.v, s.steps)?;
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
        let mut adam = Adam::new([p1.clone(), p2.clone()], AdamConfig::default()).unwrap();
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
        let mut adam = Adam::new([a.clone(), b.clone()], AdamConfig::default()).unwrap();
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

    /// Three micro-batches a step, four steps, through both update paths: the composed ops
    /// (what a GPU runs) and the fused CPU pass agree, and accumulation sums exactly.
    #[test]
    fn composed_update_and_accumulation_match_the_fused_pass() {
        let dev = Device::Cpu;
        let init = Tensor::randn(0f32, 0.02, (7, 5), &dev).unwrap();
        let mk = || Var::from_tensor(&init.copy().unwrap()).unwrap();
        let (pf, pc) = (mk(), mk());
        let mut fused = Adam::new([pf.clone()], AdamConfig::default()).unwrap();
        let mut composed = Adam::new([pc.clone()], AdamConfig::default()).unwrap();
        composed.fused = false;
        for step in 0..4 {
            let mut total = Tensor::zeros((7, 5), DType::F32, &dev).unwrap();
            for _ in 0..3 {
                let g = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
                total = (total + &g).unwrap();
                for (adam, p) in [(&mut fused, &pf), (&mut composed, &pc)] {
                    let loss = (p.as_tensor() * &g).unwrap().sum_all().unwrap();
                    adam.accumulate(&loss.backward().unwrap()).unwrap();
                }
            }
            let acc = fused.slots[0].grad.as_ref().unwrap().t.clone();
            assert!(
                crate::models::max_abs_diff(&acc, &total) < 1e-6,
                "step {step}"
            );
            fused.step_accumulated().unwrap();
            composed.step_accumulated().unwrap();
            let d = crate::models::max_abs_diff(pf.as_tensor(), pc.as_tensor());
            assert!(d < 1e-7, "step {step}: parameters differ by {d}");
            for (a, b) in [
                (&fused.slots[0].m, &composed.slots[0].m),
                (&fused.slots[0].v, &composed.slots[0].v),
            ] {
                assert!(crate::models::max_abs_diff(a, b) < 1e-7, "step {step}");
            }
        }
        assert!(crate::models::max_abs_diff(pf.as_tensor(), &init) > 1e-4);
    }

    /// The moments live on the parameter's device as f32 and survive a restore exactly.
    #[test]
    fn state_restores_into_a_fresh_optimizer() {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &dev).unwrap()).unwrap();
        let mut a = Adam::named([("w".to_string(), p.clone())], AdamConfig::default()).unwrap();
        a.step(
            &p.as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap(),
        )
        .unwrap();
        let st = a.state();
        assert_eq!(st[0].m.dtype(), DType::F32);
        assert_eq!(st[0].m.dims(), &[2, 3]);
        let mut b = Adam::named([("w".to_string(), p.clone())], AdamConfig::default()).unwrap();
        b.restore(a.state()).unwrap();
        assert_eq!(b.slots[0].steps, 1);
        assert_eq!(crate::models::max_abs_diff(&b.slots[0].v, &st[0].v), 0.0);
        // Restored moments are the optimizer's own: updating them leaves the source alone.
        let before = st[0].m.to_vec2::<f32>().unwrap();
        b.step(&p.as_tensor().sum_all().unwrap().backward().unwrap())
            .unwrap();
        assert_eq!(a.slots[0].m.to_vec2::<f32>().unwrap(), before);
        let wrong = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let e = b.restore_slot("w", &wrong, &wrong, 1).unwrap_err();
        assert!(e.contains("`w`") && e.contains("[4]"), "{e}");
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
