//! `w2s pretrain`, `w2s gt-train` and `w2s w2s-train`.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::ArtifactsArg;
use crate::stages::training::pretrain::{self, PretrainOpts, PretrainSettings};
use crate::stages::training::{self, Run, Student, TrainReport};
use crate::store::ArtifactStore;

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct PretrainArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    /// Name of the model (its run id); the checkpoint goes to models/<id>/<fingerprint>/.
    #[arg(long)]
    pub model_id: String,
    #[command(flatten)]
    #[serde(flatten)]
    pub opts: PretrainOpts,
    /// Retrain even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct GtTrainArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: Run,
    /// Print the run's memory plan (estimated peak memory of a training step, by what holds
    /// it) and stop, training nothing.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Retrain even if up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct W2sTrainArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub root: ArtifactsArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: Run,
    #[command(flatten)]
    #[serde(flatten)]
    pub student: Student,
    /// Print the run's memory plan (estimated peak memory of a training step, by what holds
    /// it) and stop, training nothing.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Retrain even if up to date.
    #[arg(long)]
    pub force: bool,
}

pub async fn pretrain(a: PretrainArgs) -> Result<()> {
    let s = PretrainSettings::new(&a.model_id, &a.opts);
    let store = ArtifactStore::open(&a.root.artifacts)?;
    let r = pretrain::run(&store, &s, a.force).await?;
    let at = super::shown(&store.url_of(&r.checkpoint));
    if r.up_to_date {
        println!("pretrain {} is up to date -> {at}", a.model_id);
    } else {
        println!(
            "pretrain {}: {} steps, {} tokens, final loss {:.4}; knows {}/{} entities -> {at}",
            a.model_id, r.steps, r.tokens, r.final_loss, r.known, r.entities
        );
    }
    Ok(())
}

pub async fn gt_train(a: GtTrainArgs) -> Result<()> {
    let store = ArtifactStore::open(&a.root.artifacts)?;
    if a.dry_run {
        print!(
            "{}",
            training::memory_plan(&store, &a.run, None).await?.table()
        );
        return Ok(());
    }
    let (run_id, r) = training::gt_train(&store, &a.run, a.force).await?;
    print_train(&run_id, store.root(), &r);
    Ok(())
}

pub async fn w2s_train(a: W2sTrainArgs) -> Result<()> {
    let store = ArtifactStore::open(&a.root.artifacts)?;
    if a.dry_run {
        let plan = training::memory_plan(&store, &a.run, Some(&a.student)).await?;
        print!("{}", plan.table());
        return Ok(());
    }
    let (run_id, r) = training::w2s_train(&store, &a.run, &a.student, a.force).await?;
    print_train(&run_id, store.root(), &r);
    Ok(())
}

fn print_train(run_id: &str, root: &str, r: &TrainReport) {
    if r.up_to_date {
        println!(
            "run `{run_id}` is up to date ({} steps, final loss {:.4})",
            r.steps, r.final_loss
        );
    } else {
        println!(
            "run `{run_id}` -> {root}: {} steps, {} pairs, final loss {:.4}, {:.0} tokens/s ({:.1}s){}",
            r.steps,
            r.pairs,
            r.final_loss,
            r.tokens as f64 / r.seconds.max(1e-9),
            r.seconds,
            if r.resumed_at > 0 {
                format!("; resumed at step {}", r.resumed_at)
            } else {
                String::new()
            }
        );
    }
}
