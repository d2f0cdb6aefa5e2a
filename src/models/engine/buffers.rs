//! The owned engine's buffers: the pool a model reuses across forwards, and the layer
//! weights' gradient sums a training step keeps across its micro-batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, TensorId};

use crate::error::{Error, Result};

/// Free f32 buffers by capacity, handed out again best-fit: a step's buffers serve the next
/// step's (and the next micro-batch's) of the same or a slightly smaller size, so the steady
/// state allocates nothing. Holds at most what was out at once at the peak.
#[derive(Default)]
pub struct Pool(Mutex<PoolState>);

#[derive(Default)]
struct PoolState {
    free: BTreeMap<usize, Vec<Vec<f32>>>,
    free_values: usize,
    out: usize,
    peak_out: usize,
}

impl Pool {
    /// A buffer of `len` values (contents unspecified: every user overwrites it).
    pub fn take(&self, len: usize) -> Vec<f32> {
        let mut s = self.0.lock().expect("pool lock");
        s.out += len;
        s.peak_out = s.peak_out.max(s.out);
        // Best fit within twice the size, so a small request never pins a big buffer.
        let cap = s
            .free
            .range(len..=len.saturating_mul(2))
            .next()
            .map(|(c, _)| *c);
        if let Some(cap) = cap {
            let list = s.free.get_mut(&cap).expect("listed capacity");
            let mut v = list.pop().expect("non-empty list");
            if list.is_empty() {
                s.free.remove(&cap);
            }
            s.free_values -= v.len();
            v.truncate(len);
            return v;
        }
        drop(s);
        crate::alloc::zeros(len)
    }

    /// Returns a buffer for reuse (dropped if the pool already holds the peak's worth).
    pub fn give(&self, mut v: Vec<f32>) {
        let mut s = self.0.lock().expect("pool lock");
        s.out = s.out.saturating_sub(v.len());
        // Back to its full (initialised) capacity, so a later best fit can use all of it.
        v.resize(v.capacity(), 0.0);
        if v.is_empty() || s.free_values + v.len() > s.peak_out {
            return;
        }
        s.free_values += v.len();
        s.free.entry(v.len()).or_default().push(v);
    }
}

/// Layer weights' gradients summed across the micro-batches of a step (see
/// `Model::set_accumulating`): each product of the backward adds into the sum (`gemm`
/// reading its destination), so a micro-batch allocates, zeroes and hands over no gradient of
/// its own and the optimizer adds none. Keyed by the weight.
///
/// A cheap handle (clones share the sums): an embedding lookup's backward holds one to add its
/// rows ([`Sums::add_rows`]).
#[derive(Default, Clone)]
pub struct Sums(Arc<Mutex<SumMap>>);

/// Each summed weight, with its running sum.
type SumMap = std::collections::HashMap<TensorId, (Tensor, Vec<f32>)>;

impl Sums {
    /// Buffers for a layer's weights, and whether they hold sums to add to (a weight that is
    /// not trained gets scratch from the pool, whose values are then dropped).
    pub(super) fn take(
        &self,
        ws: &[&Tensor],
        trainable: &HashSet<TensorId>,
        pool: &Pool,
    ) -> Result<(Vec<Vec<f32>>, bool)> {
        let mut map = self.0.lock().expect("sums lock");
        let trained: Vec<bool> = ws.iter().map(|w| trainable.contains(&w.id())).collect();
        let held = (ws.iter().zip(&trained)).filter(|(w, &t)| t && map.contains_key(&w.id()));
        let held = held.count();
        let want = trained.iter().filter(|&&t| t).count();
        if held != 0 && held != want {
            return Err(Error::Model {
                file: "owned engine".into(),
                msg: format!("a layer's gradient sums are partial ({held} of {want})"),
            });
        }
        let acc = held > 0;
        let bufs = (ws.iter().zip(&trained))
            .map(|(w, &t)| match map.remove(&w.id()) {
                Some((_, v)) if t => v,
                _ => pool.take(w.elem_count()),
            })
            .collect();
        Ok((bufs, acc))
    }

    /// Puts a layer's buffers back: the trained weights' as their sums, the rest to the pool.
    pub(super) fn give(
        &self,
        ws: &[&Tensor],
        bufs: Vec<Vec<f32>>,
        trainable: &HashSet<TensorId>,
        pool: &Pool,
    ) {
        let mut map = self.0.lock().expect("sums lock");
        for (w, v) in ws.iter().zip(bufs) {
            if trainable.contains(&w.id()) {
                map.insert(w.id(), ((*w).clone(), v));
            } else {
                pool.give(v);
            }
        }
    }

    /// Adds `grad`'s rows (`[ids.len(), d]`) to rows `ids` of `table`'s sum, which starts at
    /// zero: an embedding's gradient without a dense `[V, d]` tensor per micro-batch.
    pub fn add_rows(&self, table: &Tensor, ids: &[u32], grad: &[f32]) -> Result<()> {
        let d = table.dim(1)?;
        let mut map = self.0.lock().expect("sums lock");
        let (_, sum) = map
            .entry(table.id())
            .or_insert_with(|| (table.clone(), crate::alloc::zeros(table.elem_count())));
        for (&i, g) in ids.iter().zip(grad.chunks_exact(d)) {
            let row = sum.get_mut(i as usize * d..(i as usize + 1) * d);
            let Some(row) = row else {
                return Err(Error::Model {
                    file: "embedding".into(),
                    msg: format!("token id {i} outside a table of {} rows", table.dim(0)?),
                });
            };
            crate::models::kernels::add_slice(row, g);
        }
        Ok(())
    }

    /// The sums as gradients, emptied.
    pub fn take_all(&self) -> Result<GradStore> {
        let map = std::mem::take(&mut *self.0.lock().expect("sums lock"));
        let mut g = GradStore::default();
        for (_, (w, v)) in map {
            g.insert(&w, Tensor::from_vec(v, w.shape(), &Device::Cpu)?);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_reuses_a_close_fit_and_keeps_at_most_the_peak() {
        let pool = Pool::default();
        let a = pool.take(100);
        let p = a.as_ptr();
        pool.give(a);
        let b = pool.take(80);
        assert_eq!((b.len(), b.as_ptr()), (80, p), "best fit reused");
        pool.give(b);
        // Too small a request for the 100-value buffer: a fresh one.
        let c = pool.take(10);
        assert_ne!(c.as_ptr(), p);
        pool.give(c);
        let s = pool.0.lock().unwrap();
        assert!(s.free_values <= s.peak_out);
    }
}
