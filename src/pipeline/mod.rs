//! Make-style pipelines: a TOML file describing a grid ([`spec`]), expanded into stage
//! invocations ([`plan`]) that `w2s run` executes, skipping what is up to date ([`exec`]).
//! See docs/pipelines.md.

pub mod exec;
pub mod plan;
pub mod slurm;
pub mod spec;

pub use exec::{RootLock, RunOptions, Status};
pub use plan::Step;
pub use spec::Pipeline;
