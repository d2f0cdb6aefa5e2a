//! Make-style pipelines: a TOML file describing a grid ([`spec`]), expanded into stage
//! invocations ([`plan`]) that `w2s run` executes, skipping what is up to date ([`record`],
//! [`exec`]); [`planned`] is a file planned against its root. See docs/pipelines.md.

pub mod args;
pub mod exec;
mod overrides;
pub mod plan;
pub mod planned;
pub mod record;
pub mod slurm;
pub mod spec;

pub use exec::{RootLock, RunOptions, Status, StepStatus};
pub use plan::Step;
pub use planned::Planned;
pub use spec::Pipeline;
