//! Wider vectors for the engine's elementwise and row loops, chosen at run time.
//!
//! The crate is built for the baseline x86-64 target (SSE2: four f32 lanes, no FMA), so a
//! binary runs on any x86-64 machine. The loops of the owned engine, the fused kernels and
//! Adam (exponentials, GELU, norms, softmax rows, bias adds and column sums) are written so
//! that the compiler vectorizes them; [`dispatch!`] compiles each such function twice more,
//! for AVX2 (eight lanes) and for AVX-512 (sixteen), and calls the widest the CPU has. The
//! detection runs once per process.
//!
//! Every version does the same IEEE operations in the same order (no fused multiply-add is
//! introduced: Rust never contracts `a * b + c`), so all three give the same bits: a table
//! does not depend on which one ran. `every_tier_gives_the_same_bits` checks that on the
//! kernels, for each tier the test machine has.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets a dispatched function may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Tier {
    /// the build's baseline (SSE2 on x86-64)
    Base = 1,
    /// AVX2 and FMA (x86-64-v3)
    Avx2 = 2,
    /// AVX-512 F on top of AVX2 (x86-64-v4's vector width)
    Avx512 = 3,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Base => "base",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }
}

/// 0 until detected; then a `Tier` (possibly lowered by [`set_tier`]).
static TIER: AtomicU8 = AtomicU8::new(0);

/// The widest tier this CPU supports.
pub fn best() -> Tier {
    #[cfg(target_arch = "x86_64")]
    {
        let v3 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if v3 && std::arch::is_x86_feature_detected!("avx512f") {
            return Tier::Avx512;
        }
        if v3 {
            return Tier::Avx2;
        }
    }
    Tier::Base
}

/// The tier dispatched functions use now.
#[inline]
pub fn tier() -> Tier {
    match TIER.load(Ordering::Relaxed) {
        1 => Tier::Base,
        2 => Tier::Avx2,
        3 => Tier::Avx512,
        _ => {
            let t = best();
            TIER.store(t as u8, Ordering::Relaxed);
            t
        }
    }
}

/// Uses at most `t` from now on (capped at what the CPU has): the global `--simd` flag, and
/// the tests that compare tiers.
pub fn set_tier(t: Tier) {
    TIER.store(t.min(best()) as u8, Ordering::Relaxed);
}

/// Independent partial results of a row reduction. A single running f32 sum or max is a
/// dependency chain the compiler may not reorder, so it neither vectorizes nor pipelines; 16
/// lanes are one AVX-512 register, two AVX2 ones, four SSE ones.
pub const LANES: usize = 16;

/// The sum of the lanes, pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1): four vector steps, where a
/// left-to-right sum is sixteen dependent adds (as long as a whole row of 64 takes).
#[inline(always)]
pub fn tree_sum(mut a: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// `Σ f(x[i])` over a row in [`LANES`] partial sums (lane `i % LANES`), then [`tree_sum`].
#[inline(always)]
pub fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut a = [0f32; LANES];
    let mut c = x.chunks_exact(LANES);
    for c in &mut c {
        a.iter_mut().zip(c).for_each(|(a, &x)| *a += f(x));
    }
    a.iter_mut()
        .zip(c.remainder())
        .for_each(|(a, &x)| *a += f(x));
    tree_sum(a)
}

/// [`lane_sum`] of `f(x[i], y[i], z[i])` over three rows of one length.
#[inline(always)]
pub fn lane_sum3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut a = [0f32; LANES];
    let (mut cx, mut cy, mut cz) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        z.chunks_exact(LANES),
    );
    for ((x, y), z) in (&mut cx).zip(&mut cy).zip(&mut cz) {
        for (l, a) in a.iter_mut().enumerate() {
            *a += f(x[l], y[l], z[l]);
        }
    }
    let rest = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .zip(cz.remainder());
    for (a, ((&x, &y), &z)) in a.iter_mut().zip(rest) {
        *a += f(x, y, z);
    }
    tree_sum(a)
}

/// The largest value of a row (NaNs are passed over; −∞ for an empty row).
#[inline(always)]
pub fn lane_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut c = x.chunks_exact(LANES);
    for c in &mut c {
        m.iter_mut()
            .zip(c)
            .for_each(|(m, &x)| *m = if x > *m { x } else { *m });
    }
    m.iter_mut()
        .zip(c.remainder())
        .for_each(|(m, &x)| *m = if x > *m { x } else { *m });
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            m[i] = if m[i + w] > m[i] { m[i + w] } else { m[i] };
        }
        w /= 2;
    }
    m[0]
}

/// Held by the tests that change the tier, so that they do not change it under each other.
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Defines a function whose body is compiled for each [`Tier`] and dispatched at run time.
/// The function may not be generic over types (lifetimes are fine) and its body may not use
/// `Self`; it is otherwise an ordinary `fn`.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($a: $t),*) $(-> $r)? {
                    imp($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? {
                    imp($($a),*)
                }
                match $crate::simd::tier() {
                    // SAFETY: the tier is at most what the CPU reported.
                    $crate::simd::Tier::Avx512 => return unsafe { v4($($a),*) },
                    $crate::simd::Tier::Avx2 => return unsafe { v3($($a),*) },
                    $crate::simd::Tier::Base => {}
                }
            }
            imp($($a),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    dispatch! {
        /// A loop that vectorizes: the three versions must agree bit for bit.
        fn scaled_sum(x: &[f32], s: f32) -> f32 {
            let mut a = [0f32; 16];
            for c in x.chunks_exact(16) {
                for i in 0..16 {
                    a[i] += c[i] * s + 1.0;
                }
            }
            a.iter().sum()
        }
    }

    #[test]
    fn tiers_are_capped_by_the_cpu_and_agree() {
        let _lock = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut seen = Vec::new();
        for t in [Tier::Base, Tier::Avx2, Tier::Avx512] {
            set_tier(t);
            assert!(tier() <= best());
            seen.push(scaled_sum(&x, 0.3).to_bits());
        }
        set_tier(Tier::Avx512);
        assert_eq!(tier(), best());
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    }
}
