//! Embedding lookups whose gradient is sparse while a training step sums its gradients.
//!
//! candle's `index_select` backward builds a dense `[V, d]` gradient per call (zeros, then the
//! rows added), and the optimizer then adds that whole table into its sum: for GPT-2's 50k x
//! 768 token table that is 150 MB zeroed and 300 MB read per micro-batch, to move the few
//! hundred rows a micro-batch of short sequences touches (a tenth of an end-to-end
//! reward-model run at micro-batch 1). While the model sums a step's gradients
//! ([`super::Model::set_accumulating`]) a lookup of a trained f32 CPU table instead adds the
//! rows it read straight into the step's sum ([`Sums::add_rows`]) and hands candle no gradient;
//! everything else takes [`ops::embed`].

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::engine::Sums;
use super::fused::{input, with_f32};
use super::ops;

/// Rows `ids` (`[B, T]` u32) of `table` (`[V, d]`) as `[B, T, d]`; with `sums`, a trained
/// (variable) f32 CPU table's gradient goes there.
pub fn lookup(table: &Tensor, ids: &Tensor, sums: Option<&Sums>) -> Result<Tensor> {
    let sink = sums.filter(|_| {
        table.is_variable() && super::fused::applies(&[table]) && table.is_contiguous()
    });
    let Some(sums) = sink else {
        return ops::embed(table, ids);
    };
    let (b, t) = ids.dims2()?;
    let d = table.dim(1)?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let rows = table.dim(0)?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        candle_core::bail!("embedding: token id {bad} outside a table of {rows} rows");
    }
    let op = Lookup {
        ids,
        sums: sums.clone(),
    };
    table.apply_op1(op)?.reshape((b, t, d))
}

struct Lookup {
    ids: Vec<u32>,
    sums: Sums,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "embedding-lookup"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let table = input(s, l, "embedding-lookup")?;
        let d = l.dims()[1];
        let mut y = Vec::with_capacity(self.ids.len() * d);
        for &i in &self.ids {
            let i = i as usize;
            y.extend_from_slice(&table[i * d..(i + 1) * d]);
        }
        Ok((CpuStorage::F32(y), Shape::from((self.ids.len(), d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        with_f32(grad, |g| {
            (self.sums.add_rows(arg, &self.ids, g)).map_err(candle_core::Error::wrap)
        })?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// The sink's sum after two lookups equals the sum of index_select's two dense gradients;
    /// candle gets no gradient for the table.
    #[test]
    fn lookup_adds_its_rows_to_the_sums() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let table = Var::from_tensor(&Tensor::from_vec(vals, (5, 3), &dev).unwrap()).unwrap();
        let batches = [
            Tensor::new(&[[0u32, 2, 2], [4, 0, 3]], &dev).unwrap(),
            Tensor::new(&[[1u32, 1], [2, 4]], &dev).unwrap(),
        ];
        let sums = Sums::default();
        let mut dense = Tensor::zeros((5, 3), candle_core::DType::F32, &dev).unwrap();
        for (k, ids) in batches.iter().enumerate() {
            let (b, t) = ids.dims2().unwrap();
            let w: Vec<f32> = (0..b * t * 3)
                .map(|i| (i as f32 + k as f32).sin())
                .collect();
            let w = Tensor::from_vec(w, (b, t, 3), &dev).unwrap();
            let y = lookup(table.as_tensor(), ids, Some(&sums)).unwrap();
            let reference = ops::embed(table.as_tensor(), ids).unwrap();
            assert_eq!(
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                reference.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(g.get(table.as_tensor()).is_none(), "no dense gradient");
            let g = (reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            dense = (dense + g.get(table.as_tensor()).unwrap()).unwrap();
        }
        let got = sums.take_all().unwrap();
        let got = got.get(table.as_tensor()).expect("the table's sum");
        let diff = (got - &dense).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    /// Without sums, or for a table that is not a variable, the lookup is index_select.
    #[test]
    fn lookup_without_sums_is_dense() {
        let dev = Device::Cpu;
        let table = Var::from_tensor(&Tensor::ones((4, 2), candle_core::DType::F32, &dev).unwrap())
            .unwrap();
        let ids = Tensor::new(&[[3u32, 1]], &dev).unwrap();
        let y = lookup(table.as_tensor(), &ids, None).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(table.as_tensor()).is_some());
        let frozen = table.as_tensor().detach();
        let sums = Sums::default();
        let y = lookup(&frozen, &ids, Some(&sums)).unwrap();
        assert!(!y.track_op());
        assert!(sums.take_all().unwrap().get_ids().next().is_none());
    }

    #[test]
    fn an_id_outside_the_table_is_an_error() {
        let dev = Device::Cpu;
        let table = Var::zeros((4, 2), candle_core::DType::F32, &dev).unwrap();
        let ids = Tensor::new(&[[4u32]], &dev).unwrap();
        let err = lookup(table.as_tensor(), &ids, Some(&Sums::default())).unwrap_err();
        assert!(err.to_string().contains("token id 4"), "{err}");
    }
}
