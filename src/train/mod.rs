//! The optimizer loop every training stage shares: a fixed data order (numpy's
//! `default_rng(seed).permutation`, repeated each epoch, docs/reference.md §1.6), optimizer steps
//! of `batch` items built from micro-batches with gradient accumulation, the learning-rate
//! schedule, a per-step log, and resumable state (`state`).
//!
//! A scenario supplies one closure: given the item indices of a micro-batch, its share of the
//! step loss (already divided by the batch size) and the gradients of that share.

pub mod memory;
pub mod state;

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::optim::{Adam, Schedule};
use crate::progress;
use crate::rng::numpy_permutation;
pub use state::Resume;

/// The shape of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopSettings {
    /// Items per optimizer step.
    pub batch: usize,
    /// Items per forward/backward pass; gradients are summed over the micro-batches of a step.
    pub micro_batch: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    /// Seed of the training order (numpy `default_rng(seed).permutation(n)`).
    pub shuffle_seed: u64,
}

impl LoopSettings {
    /// The item order and the number of optimizer steps, ⌊n · epochs / batch⌋ (the reference
    /// drops a last partial batch).
    pub fn plan(&self, n: usize) -> Result<(Vec<usize>, usize)> {
        if self.batch == 0 || self.micro_batch == 0 || self.epochs == 0 {
            return Err(Error::Config(
                "--batch, --micro-batch and --epochs must be at least 1".into(),
            ));
        }
        let steps = n * self.epochs / self.batch;
        if steps == 0 {
            return Err(Error::Config(format!(
                "{n} training pairs make no full batch of {} (lower --batch)",
                self.batch
            )));
        }
        let perm = numpy_permutation(self.shuffle_seed, n);
        let order: Vec<usize> = (0..self.epochs)
            .flat_map(|_| perm.iter().copied())
            .collect();
        Ok((order, steps))
    }
}

/// One optimizer step, as logged to the `train_log` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based optimizer step.
    pub step: u64,
    /// Mean loss over the step's items.
    pub loss: f64,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Share of the step's items the model got right before the update.
    pub accuracy: f64,
    pub pairs: u64,
    pub tokens: u64,
    /// Wall-clock seconds of the step (a measurement: differs between runs).
    pub seconds: f64,
}

/// What one micro-batch contributes to a step.
pub struct MicroOut {
    /// This micro-batch's share of the step loss (its items' losses summed, over `batch`).
    pub loss: f64,
    pub correct: usize,
    pub tokens: usize,
    pub grads: GradStore,
}

/// Runs the optimizer steps not done yet, saving resumable state every `resume.every` steps.
/// `vars` are the trainable parameters by name (the same the optimizer holds); `sizes` holds
/// each item's token count (its length is the number of items). `model` is the one `micro`
/// trains: once a step, after its micro-batches, the gradients it summed across them itself
/// (`Model::take_sums`) join the rest. Returns the step it started from (0, or the step a
/// saved state was at) and the full log.
#[allow(clippy::too_many_arguments)]
pub async fn optimize<F>(
    adam: &mut Adam,
    vars: &[(String, Var)],
    settings: &LoopSettings,
    sizes: &[usize],
    resume: &Resume<'_>,
    model: &Model,
    mut micro: F,
) -> Result<(usize, Vec<StepLog>)>
where
    F: FnMut(&[usize]) -> Result<MicroOut>,
{
    let (order, steps) = settings.plan(sizes.len())?;
    let (start, mut log) = match resume.load(adam, vars).await? {
        Some((step, log)) if step <= steps => {
            tracing::info!("resuming at step {step} of {steps}");
            (step, log)
        }
        _ => (0, Vec::new()),
    };
    let bar = progress::items(steps as u64, "training");
    bar.set_position(start as u64);
    let started = Instant::now();
    let mut tokens_done = 0usize;
    for step in start..steps {
        let lr = settings.schedule.lr(settings.lr, step, steps);
        adam.set_lr(lr);
        let items = &order[step * settings.batch..(step + 1) * settings.batch];
        let t0 = Instant::now();
        let (mut loss, mut correct, mut tokens) = (0.0f64, 0usize, 0usize);
        for (k, mb) in micro_batches(items, sizes, settings.micro_batch)
            .iter()
            .enumerate()
        {
            let out = micro(mb)?;
            // Stop at the first non-finite micro-batch, before its gradients touch anything:
            // the state saved so far stays the last good one, and the message names the batch.
            if !out.loss.is_finite() {
                return Err(Error::Model {
                    file: "training".into(),
                    msg: format!(
                        "loss is {} at optimizer step {} of {steps}, micro-batch {} (rows {:?} of the \
                         training set); stopping",
                        out.loss,
                        step + 1,
                        k + 1,
                        mb
                    ),
                });
            }
            adam.accumulate(&out.grads)?;
            loss += out.loss;
            correct += out.correct;
            tokens += out.tokens;
        }
        adam.accumulate(&model.take_sums()?)?;
        if !loss.is_finite() {
            return Err(Error::Model {
                file: "training".into(),
                msg: format!(
                    "loss is {loss} at optimizer step {} (items {:?}); stopping",
                    step + 1,
                    items
                ),
            });
        }
        let missing = adam.without_gradient();
        if !missing.is_empty() {
            return Err(Error::Model {
                file: "training".into(),
                msg: format!(
                    "{} trainable parameters got no gradient at step {} (first: {})",
                    missing.len(),
                    step + 1,
                    missing[0]
                ),
            });
        }
        adam.step_accumulated()?;
        tokens_done += tokens;
        log.push(StepLog {
            step: step as u64 + 1,
            loss,
            lr,
            accuracy: correct as f64 / items.len() as f64,
            pairs: items.len() as u64,
            tokens: tokens as u64,
            seconds: t0.elapsed().as_secs_f64(),
        });
        bar.set_message(format!(
            "loss {loss:.4}, {:.0} tok/s",
            tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9)
        ));
        bar.inc(1);
        let done = step + 1;
        crate::fault::hit("step").map_err(|source| Error::Io {
            path: "training state".into(),
            source,
        })?;
        if resume.every > 0 && done % resume.every == 0 && done < steps {
            resume.save(done, adam, vars, &log).await?;
        }
    }
    bar.finish_and_clear();
    Ok((start, log))
}

/// A step's items in micro-batches of `micro` items. With more than one item a micro-batch,
/// the items go longest first, so each micro-batch holds items of about one length and pads
/// little (the step's gradient is a sum over its items, so their grouping changes only the
/// order of floating-point sums). Ties keep the data order; one item a micro-batch keeps it
/// entirely.
fn micro_batches(items: &[usize], sizes: &[usize], micro: usize) -> Vec<Vec<usize>> {
    let mut items = items.to_vec();
    if micro > 1 {
        items.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    }
    items.chunks(micro).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_repeats_one_permutation_and_drops_the_partial_batch() {
        let s = LoopSettings {
            batch: 3,
            micro_batch: 1,
            lr: 1e-5,
            schedule: Schedule::Cosine,
            epochs: 2,
            shuffle_seed: 0,
        };
        let (order, steps) = s.plan(5).unwrap();
        assert_eq!(steps, 3);
        assert_eq!(order[..5], order[5..]);
        assert_eq!(order[..5], numpy_permutation(0, 5)[..]);
        assert!(s.plan(1).is_err());
    }

    #[test]
    fn micro_batches_group_items_of_one_length() {
        let sizes = [5, 9, 1, 9, 3, 7];
        let items = [0, 1, 2, 3, 4, 5];
        assert_eq!(
            micro_batches(&items, &sizes, 2),
            [vec![1, 3], vec![5, 0], vec![4, 2]]
        );
        assert_eq!(
            micro_batches(&items[..5], &sizes, 1),
            [[0], [1], [2], [3], [4]].map(|x| x.to_vec())
        );
    }
}
