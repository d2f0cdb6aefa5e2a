//! `w2s bench`: the engine against PyTorch (docs/performance.md).

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::bench::parity::{self, ParityArgs};
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
    /// A checkpoint's loss and every parameter's gradient on a device and dtype against the
    /// CPU in f32 (autograd); fails if any is off by more than the tolerance or missing.
    Parity(ParityArgs),
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
                a.dtype.get()?,
            )?;
            println!("{}", serde_json::to_string(&m)?);
        }
        BenchCommand::Checkpoint(a) => {
            let dir = bench::checkpoint(a.arch, std::path::Path::new(&a.out))?;
            println!("{}", dir.display());
        }
        BenchCommand::Parity(a) => {
            let rows = parity::run(&a, crate::models::engine::current())?;
            print!("{}", parity::table(&rows));
            if let Some(out) = &a.out {
                std::fs::write(out, serde_json::to_vec_pretty(&rows)?)
                    .with_context(|| out.clone())?;
            }
            let failed: Vec<String> = (rows.iter().filter(|r| !r.pass))
                .map(|r| format!("{} ({})", r.model, r.probe))
                .collect();
            if !failed.is_empty() {
                anyhow::bail!("parity failed for {}", failed.join(", "));
            }
        }
    }
    Ok(())
}
