//! `w2s`: weak-to-strong alignment experiments and weak-to-strong deception measurement.
//!
//! A dataflow pipeline whose stages (split, pretrain, gt-train, weak-label, w2s-train, score)
//! read and write Parquet tables and checkpoints through one [`store::ArtifactStore`], with
//! analyses as DataFusion SQL ([`sql`]). See docs/architecture.md.

pub mod alloc;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod fault;
pub mod models;
pub mod optim;
pub mod pipeline;
pub mod plots;
pub mod progress;
pub mod rng;
pub mod scenarios;
pub mod schema;
pub mod simd;
pub mod sql;
pub mod stages;
pub mod store;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
