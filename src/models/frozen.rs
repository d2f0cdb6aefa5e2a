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

use super::kernels::{mm, Mat};

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
            Side::Transposed => product(x, &self.w, true),
            Side::Plain => product(x, &self.w, false),
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
            Side::Transposed => product(grad, &self.w, false)?,
            Side::Plain => product(grad, &self.w, true)?,
            Side::Add => grad.clone(),
            Side::Mul => grad.broadcast_mul(&self.w)?,
        };
        Ok(Some(dx))
    }
}

/// Values of a bf16 weight widened to f32 at a time by [`product`] (16 MiB of f32).
const WIDEN_VALUES: usize = 4 << 20;

/// `x · wᵀ` (`transposed`: `w` is `[out, in]`) or `x · w` (`w` is `[in, out]`), `x` `[.., in]`,
/// with no graph. candle's CPU matmul has no bf16 kernel: it widens both operands whole to f32
/// and narrows the product back, so every bf16 projection made an f32 copy of its weight (a
/// 250 MiB one per call for a `[32000, 2048]` LM head: the largest transient of a ~1B LoRA step
/// under bf16). For contiguous bf16 CPU operands this widens `x` once and the weight a block of
/// [`WIDEN_VALUES`] at a time, multiplies in f32 and narrows the product once: the same values
/// multiplied and added in f32, at most a block of the weight in f32. Elsewhere candle's matmul.
/// The result has no graph: for plain operands (inference) and the frozen op's own passes.
pub fn product(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    product_in_blocks(x, w, transposed, WIDEN_VALUES)
}

/// candle's `x · wᵀ` or `x · w`, which a graph can run through.
fn composed(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    if transposed {
        x.broadcast_matmul(&w.t()?)
    } else {
        x.broadcast_matmul(w)
    }
}

/// A projection `x · wᵀ` (`transposed`) or `x · w`, the way its operands call for: through the
/// frozen op in training with a frozen weight, by [`product`] with no graph on either side, else
/// candle's matmul (a trained weight).
pub fn project(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    if applies(x, w) {
        if transposed {
            matmul_t(x, w)
        } else {
            matmul(x, w)
        }
    } else if !x.track_op() && !w.track_op() {
        product(x, w, transposed)
    } else {
        composed(x, w, transposed)
    }
}

fn product_in_blocks(x: &Tensor, w: &Tensor, transposed: bool, block: usize) -> Result<Tensor> {
    use candle_core::DType;
    let bf16_cpu = |t: &Tensor| t.dtype() == DType::BF16 && t.device().is_cpu();
    if !(bf16_cpu(x) && bf16_cpu(w) && w.rank() == 2 && w.is_contiguous()) {
        return composed(x, w, transposed);
    }
    let (wr, wc) = w.dims2()?;
    let (k, out) = if transposed { (wc, wr) } else { (wr, wc) };
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "product: input {:?} against weight {:?}",
            x.dims(),
            w.dims()
        );
    }
    let x = x.contiguous()?;
    let n = x.elem_count() / k.max(1);
    let widen = |t: &Tensor| -> Result<Vec<f32>> {
        let (s, l) = t.storage_and_layout();
        let (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) = (&*s, l.contiguous_offsets())
        else {
            candle_core::bail!("product: contiguous bf16 CPU operands expected")
        };
        Ok(v[a..b].iter().map(|v| v.to_f32()).collect())
    };
    let x32 = widen(&x)?;
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::BF16(wv)), Some((a, _))) = (&*ws, wl.contiguous_offsets()) else {
        candle_core::bail!("product: contiguous bf16 CPU weight expected")
    };
    let wv = &wv[a..a + wr * wc];
    let mut y = vec![0f32; n * out];
    let mut wb: Vec<f32> = Vec::new();
    let take = |r0: usize, r1: usize, wb: &mut Vec<f32>| {
        wb.clear();
        wb.extend(wv[r0 * wc..r1 * wc].iter().map(|v| v.to_f32()));
    };
    // Blocks of whole rows of `w`: output columns (transposed) or input rows (plain).
    let rows = (block / wc.max(1)).max(1);
    for r0 in (0..wr).step_by(rows) {
        let r1 = (r0 + rows).min(wr);
        take(r0, r1, &mut wb);
        let xm = Mat::rows(&x32, k);
        if transposed {
            let b = Mat::rows(&wb, k).t();
            mm(&mut y[r0..], out, (n, r1 - r0, k), xm, b, 1.0, false);
        } else {
            let b = Mat::rows(&wb, out);
            mm(&mut y, out, (n, out, r1 - r0), xm.at(r0), b, 1.0, r0 > 0);
        }
    }
    let y: Vec<half::bf16> = y.iter().map(|&v| half::bf16::from_f32(v)).collect();
    *dims.last_mut().expect("a last dimension") = out;
    Tensor::from_vec(y, dims, &Device::Cpu)
}

/// A LoRA projection through a frozen base weight as one op over `(x, A, s·B)`:
/// `y = x · Wᵀ + (x Aᵀ)(s·B)ᵀ` (`transposed`, `W` `[out, in]`) or `x · W + …` (`W` `[in, out]`),
/// `A` `[r, in]`, `B` `[out, r]`. Composed, the graph kept the base product, the adapter's
/// product, its scaled copy and the sum, each `[tokens, out]` (an MLP projection of a ~1B
/// Llama at 1024 tokens: 11 MiB each, and their gradients again in the backward); here it
/// keeps the sum alone. The backward recomputes `x Aᵀ` (`[tokens, r]`) and gives the input's,
/// `A`'s and `B`'s gradients, none for `W`.
struct LoraProj {
    w: Tensor,
    transposed: bool,
}

impl LoraProj {
    fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let up = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
        product(x, &self.w, self.transposed)? + up
    }
}

impl candle_core::CustomOp3 for LoraProj {
    fn name(&self) -> &'static str {
        "lora-proj"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, a, b] = [(s1, l1), (s2, l2), (s3, l3)].map(|(s, l)| plain(s, l, "lora-proj"));
        let y = self.forward(&x?, &a?, &b?)?;
        Ok((storage(&y, "lora-proj")?, y.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let (k, out) = (a.dim(1)?, b.dim(0)?);
        let x2 = x.reshape(((), k))?;
        let dy2 = dy.reshape(((), out))?;
        let low = x2.matmul(&a.t()?)?;
        let dlow = dy2.matmul(&b)?;
        let db = dy2.t()?.matmul(&low)?;
        let da = dlow.t()?.matmul(&x2)?;
        let dx = (product(&dy2, &self.w, !self.transposed)? + dlow.matmul(&a)?)?;
        Ok((Some(dx.reshape(x.shape())?), Some(da), Some(db)))
    }
}

/// A LoRA projection `x · Wᵀ + (x Aᵀ)(s·B)ᵀ` (`transposed`) or `x · W + …`, `sb` being `s·B`:
/// one op ([`LoraProj`]) where the base weight is frozen and every operand is a CPU tensor of
/// `x`'s dtype, else composed.
pub fn lora_projection(
    x: &Tensor,
    w: &Tensor,
    transposed: bool,
    a: &Tensor,
    sb: &Tensor,
) -> Result<Tensor> {
    let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().is_cpu();
    if applies(x, w) && same(a) && same(sb) {
        let op = LoraProj {
            w: w.clone(),
            transposed,
        };
        return x
            .contiguous()?
            .apply_op3(&a.contiguous()?, &sb.contiguous()?, op);
    }
    project(x, w, transposed)? + x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&sb.t()?)?
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
    use candle_core::{DType, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap()
    }

    /// The largest absolute entry.
    fn largest(t: &Tensor) -> f32 {
        t.abs()
            .and_then(|a| a.max_all()?.to_scalar::<f32>())
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
        // bf16: the product in blocks of the weight equals candle's (whole operands widened to
        // f32) up to the order of f32 sums (within one bf16 rounding), on both sides, and the
        // frozen op's input gradient likewise.
        let xb = seeded(&[2, 5, 6], 11).to_dtype(DType::BF16).unwrap();
        for (w, transposed) in [(seeded(&[7, 6], 12), true), (seeded(&[6, 7], 13), false)] {
            let w = w.to_dtype(DType::BF16).unwrap();
            let want = if transposed {
                xb.broadcast_matmul(&w.t().unwrap()).unwrap()
            } else {
                xb.broadcast_matmul(&w).unwrap()
            };
            // 12 values a block: 2 rows of `w` per block, the last one ragged when plain.
            let got = product_in_blocks(&xb, &w, transposed, 12).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(got.dtype(), DType::BF16);
            let (got, want) = (
                got.to_dtype(DType::F32).unwrap(),
                want.to_dtype(DType::F32).unwrap(),
            );
            let scale = largest(&want);
            let d = max_diff(&got, &want);
            assert!(
                d <= scale / 128.0,
                "bf16 product off by {d} (largest {scale})"
            );
            let xv = Var::from_tensor(&xb).unwrap();
            let y = if transposed {
                matmul_t(xv.as_tensor(), &w).unwrap()
            } else {
                matmul(xv.as_tensor(), &w).unwrap()
            };
            let y32 = y.to_dtype(DType::F32).unwrap();
            assert!(max_diff(&y32, &want) <= scale / 128.0);
            let g = y32.sum_all().unwrap().backward().unwrap();
            let dx = g.get(xv.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
            // d(sum y)/dx: each input column's weights summed over the outputs.
            let w32 = w.to_dtype(DType::F32).unwrap();
            let per_in = if transposed {
                w32.sum(0).unwrap()
            } else {
                w32.sum(1).unwrap()
            };
            let want_dx = per_in.broadcast_as(dx.shape()).unwrap();
            let d = max_diff(&dx, &want_dx);
            assert!(d <= 0.05, "bf16 input gradient off by {d}");
            assert!(g.get(&w).is_none());
        }
        // A LoRA projection as one op: the composed values and the input's, A's and B's
        // gradients, none for the frozen weight; in f32 and in bf16.
        for dtype in [DType::F32, DType::BF16] {
            let cast = |t: Tensor| t.to_dtype(dtype).unwrap();
            for (w, transposed) in [(seeded(&[4, 6], 2), true), (seeded(&[6, 4], 3), false)] {
                let w = cast(w);
                let xv = Var::from_tensor(&cast(seeded(&[2, 5, 6], 1))).unwrap();
                let a = Var::from_tensor(&cast(seeded(&[3, 6], 8))).unwrap();
                let b = Var::from_tensor(&cast(seeded(&[4, 3], 9))).unwrap();
                let (xt, at, bt) = (xv.as_tensor(), a.as_tensor(), b.as_tensor());
                let fused = lora_projection(xt, &w, transposed, at, bt).unwrap();
                let base = if transposed {
                    xt.broadcast_matmul(&w.t().unwrap()).unwrap()
                } else {
                    xt.broadcast_matmul(&w).unwrap()
                };
                let up = xt.broadcast_matmul(&at.t().unwrap()).unwrap();
                let composed = (base + up.broadcast_matmul(&bt.t().unwrap()).unwrap()).unwrap();
                let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 0.05 };
                assert!(max_diff(&f32(&fused), &f32(&composed)) < tol);
                let loss = |y: &Tensor| f32(y).sqr().unwrap().sum_all().unwrap();
                let gf = loss(&fused).backward().unwrap();
                let gs = loss(&composed).backward().unwrap();
                for v in [xt, at, bt] {
                    let (p, q) = (f32(gf.get(v).unwrap()), f32(gs.get(v).unwrap()));
                    let scale = largest(&q);
                    let d = max_diff(&p, &q);
                    assert!(d <= tol * scale.max(1.0), "{dtype:?}: gradient off by {d}");
                }
                assert!(gf.get(&w).is_none());
            }
        }
        // Not for scoring (no graph) nor for trained weights.
        let w = seeded(&[4, 6], 2);
        assert!(!applies(&seeded(&[2, 6], 4), &w));
        let wv = Var::from_tensor(&w).unwrap();
        assert!(!applies(x.as_tensor(), wv.as_tensor()));
    }
}
