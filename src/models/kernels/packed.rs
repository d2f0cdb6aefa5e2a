//! Products with a weight packed once and read many times.
//!
//! `gemm` packs its right operand into column panels on every call. A training step of
//! GPT-2 small at micro-batch 1 multiplies each layer weight by ~110-token inputs 32 times
//! forward and 32 times backward (as `W` and as `Wᵀ`) between two optimizer updates, so most
//! of that packing repeats itself; and for such short products `gemm`'s blocking leaves it at
//! 210-270 GFLOP/s where PyTorch's BLAS gets 290-320 on the same host. Here a weight is packed
//! once per orientation into panels of `NR` columns ([`Packed`]) and the product runs a
//! register-tiled micro-kernel over the panels: `MR` rows of the (unpacked, row-major) input
//! against one panel, the `MR x NR` block of the output held in registers across a `KC`-deep
//! slice of the shared dimension. Panels split across threads, so threads never share an
//! output element.
//!
//! Each output element is one fused multiply-add chain over the shared dimension in
//! ascending order, started from zero or from the destination's value: the AVX2 (`6 x 16`)
//! and AVX-512 (`12 x 32`) kernels give the same bits, and results do not depend on the
//! thread count. CPUs without AVX2 (and other architectures) keep `gemm`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::Mat;
use crate::simd::Tier;

/// Depth of the shared-dimension slice a micro-kernel call covers: its panel slice
/// (`KC x NR`, 32 KiB at `NR` 32) stays in L1 while the row blocks of the input pass over it.
const KC: usize = 256;

/// Most bytes of packed weights a model holds: GPT-2 small needs 680 MB for both
/// orientations; past this a model's further weights keep `gemm`'s own packing rather than be
/// held three times over.
pub const LIMIT: usize = 4 << 30;

/// The request for a weight's pack (since the last clear) that packs it in training, where
/// the packs are cleared every optimizer step: a step's first micro-batch and the backward of
/// a step of one never pay for a pack they would read once. A step boundary resets the
/// count, so a run resumed at a step takes the same kernels as one that was not stopped.
pub const PACK_AFTER: usize = 3;

/// Most rows of a product that takes the packed kernel: it leaves its left operand unpacked,
/// which costs more than `gemm`'s packing saves once the rows' slice outgrows L2 (at 512 rows
/// of GPT-2 small's products `gemm` was 9% faster, at 115 and 230 rows the packed kernel
/// 14-22% and 5-20%).
pub const MAX_ROWS: usize = 320;

/// A `[k, n]` right operand in panels of `nr` columns: panel `j` holds rows `0..k` of columns
/// `j·nr .. j·nr + nr` (zero past `n`), row after row.
pub struct Packed {
    k: usize,
    n: usize,
    nr: usize,
    v: Vec<f32>,
}

/// Register tile of a tier: (`MR` rows, `NR` columns); `None` where `gemm` stays.
fn tile(t: Tier) -> Option<(usize, usize)> {
    match t {
        Tier::Avx512 => Some((12, 32)),
        Tier::Avx2 => Some((6, 16)),
        Tier::Base => None,
    }
}

/// Whether products can run packed on this CPU (at the current `--simd` cap).
pub fn available() -> bool {
    cfg!(target_arch = "x86_64") && tile(crate::simd::tier()).is_some()
}

impl Packed {
    /// Packs `b` (`[k, n]`, any strides) for the current tier; `None` where there is no kernel.
    pub fn new(b: Mat, k: usize, n: usize) -> Option<Packed> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let (_, nr) = tile(crate::simd::tier())?;
        let v = crate::alloc::zeros(n.div_ceil(nr) * k * nr);
        let mut p = Packed { k, n, nr, v };
        p.fill(b);
        Some(p)
    }

    /// Packs `b`'s values again (the same shape), in place: a step's packs reuse the last
    /// step's memory.
    fn fill(&mut self, b: Mat) {
        let (k, n, nr) = (self.k, self.n, self.nr);
        b.check(k, n);
        self.v
            .par_chunks_mut((k * nr).max(1))
            .enumerate()
            .for_each(|(j, panel)| {
                let cols = nr.min(n - j * nr);
                if b.cs > b.rs {
                    // A transposed weight: each column is contiguous, read it in one pass.
                    for c in 0..cols {
                        let col = &b.v[(j * nr + c) * b.cs..];
                        for p in 0..k {
                            panel[p * nr + c] = col[p * b.rs];
                        }
                    }
                } else {
                    for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                        for (c, x) in row[..cols].iter_mut().enumerate() {
                            *x = b.v[p * b.rs + (j * nr + c) * b.cs];
                        }
                    }
                }
            });
    }

    pub fn bytes(&self) -> usize {
        self.v.len() * std::mem::size_of::<f32>()
    }
}

/// `c (+)= a · b` for `a` `[m, k]` with unit column stride, `b` packed `[k, n]`, `c` row-major
/// `[m, n]` at row stride `ldc`: with `acc` each element's chain starts from its value.
pub fn mm(c: &mut [f32], ldc: usize, m: usize, a: Mat, b: &Packed, acc: bool) {
    let (k, n, nr) = (b.k, b.n, b.nr);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "packed product destination");
    assert!(
        a.cs == 1,
        "packed product: the left operand's rows must be contiguous"
    );
    a.check(m, k);
    if k == 0 {
        if !acc {
            c.chunks_mut(ldc).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    let panels = n.div_ceil(nr);
    let out = super::Out(c.as_mut_ptr());
    let run = |js: std::ops::Range<usize>| {
        // SAFETY: panels `js` write only their columns of rows `0..m`, inside `c` (checked
        // above); groups of panels are disjoint.
        unsafe { group(out.ptr(), ldc, m, a, b, js, acc) }
    };
    let threads = rayon::current_num_threads();
    if threads < 2 || m * n * k < super::PARALLEL_WORK {
        run(0..panels);
    } else {
        // Two groups a thread, for balance; each keeps its input slice in its core's cache.
        let per = panels.div_ceil(2 * threads);
        let groups = panels.div_ceil(per);
        (0..groups)
            .into_par_iter()
            .for_each(|g| run(g * per..((g + 1) * per).min(panels)));
    }
}

/// Output columns of panels `js`, every row, a `KC` slice of the shared dimension at a time:
/// the slice of the input (`m x KC`) stays in cache across the group's panels, and each
/// panel's slice stays in L1 across the row blocks.
///
/// # Safety
/// `c` must hold `[m, n]` at row stride `ldc`, the panels' columns written by no other thread.
unsafe fn group(
    c: *mut f32,
    ldc: usize,
    m: usize,
    a: Mat,
    b: &Packed,
    js: std::ops::Range<usize>,
    acc: bool,
) {
    let (k, nr) = (b.k, b.nr);
    let mr = if nr == 32 { 12 } else { 6 };
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let load = acc || p0 > 0;
        for j in js.clone() {
            let cols = nr.min(b.n - j * nr);
            let bp = b.v.as_ptr().add(j * k * nr + p0 * nr);
            for i0 in (0..m).step_by(mr) {
                let tile = Tile {
                    a: a.v.as_ptr().add(i0 * a.rs + p0),
                    lda: a.rs,
                    b: bp,
                    c: c.add(i0 * ldc + j * nr),
                    ldc,
                    kc,
                    cols,
                    load,
                };
                #[cfg(target_arch = "x86_64")]
                if nr == 32 {
                    x86::tile512(mr.min(m - i0), tile);
                } else {
                    x86::tile256(mr.min(m - i0), tile);
                }
            }
        }
    }
}

/// One micro-kernel call: `rows` rows of `a` (from `a`, stride `lda`) times a `kc`-deep panel
/// slice (`b`, `nr` values a row) into `cols` columns of `c`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    kc: usize,
    cols: usize,
    /// Start from `c`'s values (else from zero).
    load: bool,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Tile;

    macro_rules! rows {
        ($f:ident, $rows:expr, $t:expr, $($r:literal)*) => {
            match $rows {
                $($r => $f::<$r>($t),)*
                _ => unreachable!("micro-kernel rows"),
            }
        };
    }

    /// The AVX-512 kernel: up to 12 rows by 32 columns.
    pub(super) unsafe fn tile512(rows: usize, t: Tile) {
        rows!(k512, rows, t, 1 2 3 4 5 6 7 8 9 10 11 12)
    }

    /// The AVX2 kernel: up to 6 rows by 16 columns.
    pub(super) unsafe fn tile256(rows: usize, t: Tile) {
        rows!(k256, rows, t, 1 2 3 4 5 6)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn k512<const R: usize>(t: Tile) {
        let m0: __mmask16 = mask16(t.cols.min(16));
        let m1: __mmask16 = mask16(t.cols.saturating_sub(16));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if t.load {
            for (i, a) in acc.iter_mut().enumerate() {
                let c = t.c.add(i * t.ldc);
                a[0] = _mm512_maskz_loadu_ps(m0, c);
                a[1] = _mm512_maskz_loadu_ps(m1, c.add(16));
            }
        }
        let mut b = t.b;
        for p in 0..t.kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (i, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*t.a.add(i * t.lda + p));
                a[0] = _mm512_fmadd_ps(x, b0, a[0]);
                a[1] = _mm512_fmadd_ps(x, b1, a[1]);
            }
            b = b.add(32);
        }
        for (i, a) in acc.iter().enumerate() {
            let c = t.c.add(i * t.ldc);
            _mm512_mask_storeu_ps(c, m0, a[0]);
            _mm512_mask_storeu_ps(c.add(16), m1, a[1]);
        }
    }

    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn k256<const R: usize>(t: Tile) {
        let m0 = mask8(t.cols.min(8));
        let m1 = mask8(t.cols.saturating_sub(8));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if t.load {
            for (i, a) in acc.iter_mut().enumerate() {
                let c = t.c.add(i * t.ldc);
                a[0] = _mm256_maskload_ps(c, m0);
                a[1] = _mm256_maskload_ps(c.add(8), m1);
            }
        }
        let mut b = t.b;
        for p in 0..t.kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, a) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*t.a.add(i * t.lda + p));
                a[0] = _mm256_fmadd_ps(x, b0, a[0]);
                a[1] = _mm256_fmadd_ps(x, b1, a[1]);
            }
            b = b.add(16);
        }
        for (i, a) in acc.iter().enumerate() {
            let c = t.c.add(i * t.ldc);
            _mm256_maskstore_ps(c, m0, a[0]);
            _mm256_maskstore_ps(c.add(8), m1, a[1]);
        }
    }

    /// Lanes `0..n` of 8 on (the sign bit set), for masked loads and stores.
    #[target_feature(enable = "avx2")]
    unsafe fn mask8(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
    }
}

/// A weight's values (address, length) and orientation.
type Key = (usize, usize, bool);

/// A model's packed weights, by weight and orientation, valid until [`Packs::clear`]: the
/// owner clears them whenever the weights may change (every optimizer step), so a pack never
/// outlives the values it was made from.
#[derive(Default)]
pub struct Packs {
    /// Each pack, and whether it is current (a cleared one keeps its memory for the next
    /// step's values).
    map: Mutex<HashMap<Key, (Arc<Packed>, bool)>>,
    /// Requests since the last [`Packs::clear`] of weights not packed yet: a weight is packed
    /// on its [`PACK_AFTER`]-th, so a step of one micro-batch (a forward and a backward each
    /// reading it once) never pays for packing what it reads once.
    asked: Mutex<HashMap<Key, usize>>,
    bytes: Mutex<usize>,
    /// Most bytes held at once; past it products take `gemm` (a model too large to hold its
    /// weights twice more keeps the memory).
    pub limit: usize,
    /// The request that packs a weight (counted since the last clear).
    after: usize,
}

impl Packs {
    /// Packs up to `limit` bytes, each weight on its `after`-th request since the last clear:
    /// [`PACK_AFTER`] for a model in training, 1 for one whose weights never change (so that
    /// which products took which kernel depends on nothing but the batch's shape: a scoring
    /// run resumed part way gives the same bits as one that was not stopped).
    pub fn new(limit: usize, after: usize) -> Packs {
        Packs {
            limit,
            after: after.max(1),
            ..Packs::default()
        }
    }

    /// The weight `w` as the right operand `W` (`[k, n]` row-major, `t` false) or `Wᵀ` (`w`
    /// `[n, k]` row-major, `t` true), packed on first use; `None` without a kernel or past
    /// the limit. Keyed by the values' address: valid while the weights it was made from are
    /// alive and unchanged, which the owner guarantees by clearing.
    pub fn get(&self, w: &[f32], (k, n): (usize, usize), t: bool) -> Option<Arc<Packed>> {
        if !available() {
            return None;
        }
        let key = (w.as_ptr() as usize, w.len(), t);
        let b = if t {
            Mat::rows(w, k).t()
        } else {
            Mat::rows(w, n)
        };
        let mut map = self.map.lock().expect("packs lock");
        if let Some((p, current)) = map.get_mut(&key) {
            if p.k != k || p.n != n || p.nr != tile(crate::simd::tier())?.1 {
                return None;
            }
            if !*current {
                // No product holds it between steps; if one did, pack anew.
                match Arc::get_mut(p) {
                    Some(inner) => inner.fill(b),
                    None => *p = Arc::new(Packed::new(b, k, n)?),
                }
                *current = true;
            }
            return Some(p.clone());
        }
        let mut asked = self.asked.lock().expect("packs lock");
        let times = asked.entry(key).or_insert(0);
        *times += 1;
        if *times < self.after {
            return None;
        }
        let mut held = self.bytes.lock().expect("packs lock");
        if *held + k * n * 4 > self.limit {
            return None;
        }
        asked.remove(&key);
        let p = Arc::new(Packed::new(b, k, n)?);
        *held += p.bytes();
        map.insert(key, (p.clone(), true));
        Some(p)
    }

    /// Bytes of packs held.
    pub fn bytes(&self) -> usize {
        *self.bytes.lock().expect("packs lock")
    }

    /// Marks every pack stale (the weights are about to change): the next use packs the
    /// weight's new values into the same memory.
    pub fn clear(&self) {
        for (_, current) in self.map.lock().expect("packs lock").values_mut() {
            *current = false;
        }
        self.asked.lock().expect("packs lock").clear();
    }

    /// Drops every pack and its memory.
    pub fn release(&self) {
        self.map.lock().expect("packs lock").clear();
        self.asked.lock().expect("packs lock").clear();
        *self.bytes.lock().expect("packs lock") = 0;
    }
}

thread_local! {
    /// The packs of the model whose layers this thread is running ([`scope`]).
    static SCOPE: std::cell::Cell<Option<std::ptr::NonNull<Packs>>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `f` with `packs` (or none) as the calling thread's packs: the engine sets them around
/// a model's layers, so that [`super::mm_weight`] finds them without every layer function
/// carrying them. The previous scope comes back when `f` returns or unwinds.
pub fn scope<R>(packs: Option<&Packs>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<std::ptr::NonNull<Packs>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let prev = SCOPE.with(|s| s.replace(packs.map(std::ptr::NonNull::from)));
    let _restore = Restore(prev);
    f()
}

/// The packed form of `w` from the thread's packs in scope (see [`Packs::get`]).
pub fn in_scope(w: &[f32], (k, n): (usize, usize), t: bool) -> Option<Arc<Packed>> {
    let p = SCOPE.with(|s| s.get())?;
    // SAFETY: `scope` keeps the pointer only while the `&Packs` it was made from is borrowed
    // (it restores the previous value before returning, unwinding included).
    unsafe { p.as_ref() }.get(w, (k, n), t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{best, set_tier};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.618).sin()).collect()
    }

    /// `c (+)= a · b` in f64, the oracle.
    fn reference(c: &mut [f32], ldc: usize, (m, n, k): (usize, usize, usize), a: &[f32], b: Mat) {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b.v[p * b.rs + j * b.cs] as f64)
                    .sum();
                c[i * ldc + j] = (c[i * ldc + j] as f64 + s) as f32;
            }
        }
    }

    /// Every tier with a kernel, odd shapes (row and column tails, several `KC` slices),
    /// both orientations, overwriting and adding: within f32 rounding of the f64 oracle, and
    /// the AVX2 and AVX-512 kernels bit for bit the same.
    #[test]
    fn packed_products_match_the_oracle_on_every_tier() {
        let _lock = crate::simd::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut outs: Vec<Vec<f32>> = Vec::new();
        for tier in [Tier::Avx2, Tier::Avx512] {
            set_tier(tier);
            if crate::simd::tier() != tier || !available() {
                continue;
            }
            let mut all = Vec::new();
            for &(m, n, k) in &[
                (1, 1, 1),
                (13, 37, 300),
                (25, 64, 513),
                (7, 5, 3),
                (40, 33, 17),
            ] {
                for t in [false, true] {
                    for acc in [false, true] {
                        let w = values(k * n, 1.0);
                        let b = if t {
                            Mat::rows(&w, k).t()
                        } else {
                            Mat::rows(&w, n)
                        };
                        let a = values(m * k, 2.0);
                        let ldc = n + 3;
                        let mut c = values(m * ldc, 3.0);
                        let mut want = c.clone();
                        if !acc {
                            want.iter_mut().for_each(|x| *x = 0.0);
                        }
                        // The stride's gap keeps its values.
                        for i in 0..m {
                            for j in n..ldc {
                                want[i * ldc + j] = c[i * ldc + j];
                            }
                        }
                        reference(&mut want, ldc, (m, n, k), &a, b);
                        let p = Packed::new(b, k, n).unwrap();
                        mm(&mut c, ldc, m, Mat::rows(&a, k), &p, acc);
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - y).abs() <= 1e-5 * (k as f32).sqrt() * 4.0, "{x} {y}");
                        }
                        all.extend(c);
                    }
                }
            }
            outs.push(all);
        }
        set_tier(best());
        if let [a, b] = &outs[..] {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn packs_are_kept_until_cleared_and_capped() {
        let _lock = crate::simd::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set_tier(best());
        if !available() {
            return;
        }
        let w = values(24 * 40, 0.5);
        let mut packs = Packs::new(usize::MAX, PACK_AFTER);
        for _ in 1..PACK_AFTER {
            assert!(
                packs.get(&w, (24, 40), false).is_none(),
                "packed before it paid off"
            );
            assert!(packs.get(&w, (40, 24), true).is_none());
        }
        let a = packs.get(&w, (24, 40), false).unwrap();
        assert!(Arc::ptr_eq(&a, &packs.get(&w, (24, 40), false).unwrap()));
        let _t = packs.get(&w, (40, 24), true).unwrap();
        // At the limit: no third pack.
        packs.limit = packs.bytes();
        let w2 = values(10, 0.1);
        for _ in 0..PACK_AFTER {
            assert!(packs.get(&w2, (2, 5), false).is_none());
        }
        // Cleared and the weight changed: the same memory, the new values.
        packs.clear();
        drop(a);
        let w_new: Vec<f32> = w.iter().map(|x| x * 2.0).collect();
        let mut w = w;
        w.copy_from_slice(&w_new);
        let again = packs.get(&w, (24, 40), false).unwrap();
        let fresh = Packed::new(Mat::rows(&w, 40), 24, 40).unwrap();
        assert_eq!(again.v, fresh.v);
        drop(again);
        packs.release();
        assert_eq!(packs.bytes(), 0);
    }
}
