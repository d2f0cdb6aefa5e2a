//! Ops with a frozen operand (a projection's weight, the attention bias, the rotary tables)
//! whose backward gives the other operand's gradient alone.
//!
//! candle's matmul backward always computes both operands' gradients and keeps the weight's in
//! the gradient store until the end of `backward()`, even for a plain (untracked) weight, and a
//! broadcast weight's gradient is first materialised at the broadcast size. Under LoRA every
//! base projection and the LM head are frozen: that is a full-size gradient per weight, the
//! memory LoRA is meant to save, and a third of the backward's matmul work. Here the weight is
//! held by the op instead of being one of its arguments, so the graph never reaches it: the
//! backward is dy · W (Linear) or dy · Wᵀ (Conv1D), nothing else. The same holds for a
//! broadcast add or multiply by a constant: the additive attention bias (`[B, 1, T, T]`, whose
//! gradient candle keeps at `[B, H, T, T]` per layer) and the rotary `cos` / `sin` tables.
//! Forward and backward compute exactly what the composed ops do (the same candle ops), on
//! contiguous CPU tensors (f32, bf16, f16); other devices keep the composed path.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Storage, Tensor};

/// How the frozen operand combines with the input.
#[derive(Clone, Copy)]
enum Side {
    /// `w` is `[out, in]`: `y = x wᵀ`.
    Transposed,
    /// `w` is `[in, out]`: `y = x w`.
    Plain,
    /// `y = x + c`, `c` broadcast to `x`.
    Add,
    /// `y = x · c` elementwise, `c` broadcast to `x`.
    Mul,
}

struct FrozenProj {
    w: Tensor,
    side: Side,
}

impl FrozenProj {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self.side {
            Side::Transposed => x.broadcast_matmul(&self.w.t()?),
            Side::Plain => x.broadcast_matmul(&self.w),
            Side::Add => x.broadcast_add(&self.w),
            Side::Mul => x.broadcast_mul(&self.w),
        }
    }
}

impl CustomOp1 for FrozenProj {
    fn name(&self) -> &'static str {
        "frozen-proj"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // Plain tensors on both sides: no graph is built here.
        let y = self.apply(&plain(s, l, "frozen-proj")?)?;
        Ok((storage(&y, "frozen-proj")?, y.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = match self.side {
            Side::Transposed => grad.broadcast_matmul(&self.w)?,
            Side::Plain => grad.broadcast_matmul(&self.w.t()?)?,
            Side::Add => grad.clone(),
            Side::Mul => grad.broadcast_mul(&self.w)?,
        };
        Ok(Some(dx))
    }
}

/// A plain CPU tensor holding a copy of a contiguous float storage's values (no graph reaches
/// it): how a custom op's forward runs candle ops on its input.
pub(super) fn plain(s: &CpuStorage, l: &Layout, op: &str) -> Result<Tensor> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only");
    };
    let cpu = Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], l.shape(), &cpu),
        CpuStorage::BF16(v) => Tensor::from_slice(&v[a..b], l.shape(), &cpu),
        CpuStorage::F16(v) => Tensor::from_slice(&v[a..b], l.shape(), &cpu),
        _ => candle_core::bail!("{op}: f32, bf16 or f16 only"),
    }
}

/// A CPU float tensor's values as a storage (a custom op's forward result).
pub(super) fn storage(y: &Tensor, op: &str) -> Result<CpuStorage> {
    let y = y.contiguous()?;
    let (s, l) = y.storage_and_layout();
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous result expected");
    };
    Ok(match &*s {
        Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[a..b].to_vec()),
        Storage::Cpu(CpuStorage::BF16(v)) => CpuStorage::BF16(v[a..b].to_vec()),
        Storage::Cpu(CpuStorage::F16(v)) => CpuStorage::F16(v[a..b].to_vec()),
        _ => candle_core::bail!("{op}: a float CPU result expected"),
    })
}

/// Whether `x · w` should go through the frozen op: `w` a plain weight no gradient should
/// reach, `x` part of a graph (training), both on the CPU in one float dtype (f32, or bf16 /
/// f16 under mixed precision).
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    use candle_core::DType;
    !w.track_op()
        && x.track_op()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// `x` combined with the constant `c` as `side` says, through the op that holds `c`.
fn held(x: &Tensor, c: &Tensor, side: Side) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenProj { w: c.clone(), side })
}

/// `x · wᵀ` with `w` `[out, in]` frozen.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    held(x, w, Side::Transposed)
}

/// `x · w` with `w` `[in, out]` frozen.
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    held(x, w, Side::Plain)
}

/// `x + c` (broadcast) with `c` constant.
pub fn add(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if applies(x, c) {
        held(x, c, Side::Add)
    } else {
        x.broadcast_add(c)
    }
}

/// `x · c` (elementwise, broadcast) with `c` constant.
pub fn mul(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if applies(x, c) {
        held(x, c, Side::Mul)
    } else {
        x.broadcast_mul(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap()
    }

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_the_same_one() {
        let x = Var::from_tensor(&seeded(&[2, 5, 6], 1)).unwrap();
        for (w, transposed) in [(seeded(&[4, 6], 2), true), (seeded(&[6, 4], 3), false)] {
            let (fast, slow) = if transposed {
                (
                    matmul_t(x.as_tensor(), &w).unwrap(),
                    x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap(),
                )
            } else {
                (
                    matmul(x.as_tensor(), &w).unwrap(),
                    x.as_tensor().broadcast_matmul(&w).unwrap(),
                )
            };
            assert!(applies(x.as_tensor(), &w));
            assert_eq!(max_diff(&fast, &slow), 0.0, "same forward");
            let loss = |y: &Tensor| y.sqr().unwrap().sum_all().unwrap();
            let gf = loss(&fast).backward().unwrap();
            let gs = loss(&slow).backward().unwrap();
            let dx = max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gs.get(x.as_tensor()).unwrap(),
            );
            assert!(dx < 1e-5, "input gradient differs by {dx}");
            assert!(gf.get(&w).is_none());
        }
        // A plain matmul keeps a full-size gradient for the frozen weight; the frozen op none.
        let x2 = Var::from_tensor(&seeded(&[5, 6], 5)).unwrap();
        let w = seeded(&[6, 4], 3);
        let g = x2
            .as_tensor()
            .matmul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(g.get(&w).map(|t| t.dims().to_vec()), Some(vec![6, 4]));
        let g = matmul(x2.as_tensor(), &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&w).is_none() && g.get(x2.as_tensor()).is_some());
        // Constant operands of broadcast ops: same values and input gradients, none kept for
        // the constant.
        let c = seeded(&[5, 6], 7);
        for (fast, slow) in [
            (
                add(x.as_tensor(), &c).unwrap(),
                x.as_tensor().broadcast_add(&c).unwrap(),
            ),
            (
                mul(x.as_tensor(), &c).unwrap(),
                x.as_tensor().broadcast_mul(&c).unwrap(),
            ),
        ] {
            assert_eq!(max_diff(&fast, &slow), 0.0);
            let gf = fast.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gs = slow.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let dx = max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gs.get(x.as_tensor()).unwrap(),
            );
            assert!(dx < 1e-5, "input gradient differs by {dx}");
            assert!(gf.get(&c).is_none());
        }
        // Not for scoring (no graph) nor for trained weights.
        let w = seeded(&[4, 6], 2);
        assert!(!applies(&seeded(&[2, 6], 4), &w));
        let wv = Var::from_tensor(&w).unwrap();
        assert!(!applies(x.as_tensor(), wv.as_tensor()));
    }
}
