//! `w2s bench`: the engine against PyTorch (docs/performance.md).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::bench::{self, CheckpointArgs, EngineOpts, OneArgs};

#[derive(Subcommand, Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchCommand {
    /// Reward-model and policy training and scoring, GPT-2-small and tiny shapes, each in its
    /// own process, beside PyTorch on the same random checkpoint; medians and ratios.
    Engine(EngineOpts),
    /// One measurement in this process, printed as JSON (what `bench engine` runs).
    #[command(hide = true)]
    One(OneArgs),
    /// Write the seeded random checkpoint of a shape into a folder (what bench/e2e.sh trains).
    Checkpoint(CheckpointArgs),
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Engine(o) => {
            let exe = std::env::current_exe().context("locating the w2s executable")?;
            let (table, json) = bench::engine(&o, &exe)?;
            print!("{table}");
            if let Some(out) = &o.out {
                std::fs::write(out, serde_json::to_vec_pretty(&json)?)
                    .with_context(|| out.clone())?;
            }
        }
        BenchCommand::One(a) => {
            let dev = crate::models::parse_device(&a.device)?;
            let m = bench::run_one(
                a.arch,
                a.task,
                std::path::Path::new(&a.model),
                &dev,
                crate::models::engine::current(),
            )?;
            println!("{}", serde_json::to_string(&m)?);
        }
        BenchCommand::Checkpoint(a) => {
            let dir = bench::checkpoint(a.arch, std::path::Path::new(&a.out))?;
            println!("{}", dir.display());
        }
    }
    Ok(())
}
