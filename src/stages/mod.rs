//! Pipeline stages, one per file (training is one package of three). Each is a function of
//! its settings and its input artifacts to outputs published through the artifact store with
//! a manifest: `run(store, &settings, force)`.

pub mod analyze;
pub mod common;
pub mod order;
pub mod policy;
pub mod report;
pub mod score;
pub mod split;
pub mod training;
pub mod uncertainty;
pub mod weak_label;
