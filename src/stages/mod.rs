//! Pipeline stages, one per file. Each is a function of its settings and its input artifacts
//! to outputs published through the artifact store with a manifest.

pub mod score;
pub mod split;

/// Stages the CLI knows about but that are not built yet, with the issue that builds them.
pub const PENDING: &[(&str, &str)] = &[
    ("pretrain", "the embedded default (issue 6)"),
    ("gt-train", "the reward-modeling scenario (issue 4)"),
    ("weak-label", "the reward-modeling scenario (issue 4)"),
    ("w2s-train", "the reward-modeling scenario (issue 4)"),
    ("analyze", "the SQL analyses (issue 5)"),
    ("report", "the SQL analyses (issue 5)"),
    ("run", "the make-style pipelines (issue 6)"),
];
