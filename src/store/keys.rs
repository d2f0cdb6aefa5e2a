//! Manifest keys and part names, in one place for the stages that publish them and the
//! pipeline plans that look for them.

/// The `pairs` table (and the world's `corpus` and `entities`): `w2s split`.
pub const SPLIT: &str = "split";
/// The `analysis_*` tables: `w2s analyze`.
pub const ANALYZE: &str = "analyze";
/// The HTML report: `w2s report`.
pub const REPORT: &str = "report";

/// A trained or pretrained run: its checkpoint, `train_log` and `runs` rows.
pub fn train(run_id: &str) -> String {
    format!("train/{run_id}")
}

/// A run's labels on a split: `w2s weak-label`.
pub fn labels(run_id: &str, split: &str) -> String {
    format!("weak-label/{run_id}/{split}")
}

/// A run's scores on a split: `w2s score`.
pub fn scores(run_id: &str, split: &str) -> String {
    format!("score/{run_id}/{split}")
}

/// Where the resumable state of the output `key` (a training phase: `train/<run>[/sft|/po]`)
/// lives until it is published.
pub fn state(key: &str) -> String {
    format!("state/{key}")
}

/// The part of a fingerprint that names what a stage writes (table parts, checkpoint and
/// report folders): stable for the same settings and inputs.
pub fn part_tag(fingerprint: &str) -> &str {
    &fingerprint[..16]
}
