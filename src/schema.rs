//! Arrow schemas of the artifact tables. docs/artifacts.md documents every column; keep the two
//! in step.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Split names, in the order rows are written.
pub const SPLITS: [&str; 4] = ["gt", "w2s", "test", "helpful"];

/// The split a teacher labels and a student trains on (`gt` in bootstrapping's second stage).
pub const LABEL_SPLIT: &str = "w2s";

/// The honesty dimension's splits, as [`SPLITS`] (paper App. O).
pub const HONESTY_SPLITS: [&str; 4] = [
    "honesty-gt",
    "honesty-w2s",
    "honesty-test",
    "honesty-helpful",
];

/// The alignment dimension a split's pairs judge: harmlessness (the paper's main experiments;
/// the splits keep their plain names) or honesty (App. O: decline what cannot be known; the
/// splits are named `honesty-<split>`), so both can share a root without mixing.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    /// Harmlessness: refuse what could hurt someone (paper §4-6).
    #[default]
    Harmless,
    /// Honesty: decline what cannot be known, answer what can (paper App. O).
    Honesty,
}

impl Dimension {
    pub const ALL: [Dimension; 2] = [Dimension::Harmless, Dimension::Honesty];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Harmless => "harmless",
            Dimension::Honesty => "honesty",
        }
    }

    /// Whether this is the default (kept out of fingerprints, so runs from before the
    /// setting existed keep theirs).
    pub fn is_harmless(&self) -> bool {
        *self == Dimension::Harmless
    }

    /// This dimension's four split names, in [`SPLITS`] order.
    pub fn splits(self) -> [&'static str; 4] {
        match self {
            Dimension::Harmless => SPLITS,
            Dimension::Honesty => HONESTY_SPLITS,
        }
    }

    /// This dimension's name of split `base` (one of [`SPLITS`]; any other name is kept).
    pub fn split(self, base: &str) -> String {
        match (self, SPLITS.iter().position(|s| *s == base)) {
            (Dimension::Honesty, Some(i)) => HONESTY_SPLITS[i].to_string(),
            _ => base.to_string(),
        }
    }

    /// The dimension whose split `name` is.
    pub fn of_split(name: &str) -> Dimension {
        if HONESTY_SPLITS.contains(&name) {
            Dimension::Honesty
        } else {
            Dimension::Harmless
        }
    }
}

/// Every split name of every dimension.
pub fn all_splits() -> impl Iterator<Item = &'static str> {
    SPLITS.into_iter().chain(HONESTY_SPLITS)
}

/// `pairs`: one row per preference pair, written by `w2s split`.
pub fn pairs() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pair_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("split_index", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("source_row", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("chosen", DataType::Utf8, false),
        Field::new("rejected", DataType::Utf8, false),
        Field::new("rejected_prompt", DataType::Utf8, true),
    ]))
}

/// `entities`: the synthetic world's entities (`w2s split --world`).
pub fn entities() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("entity", DataType::Utf8, false),
        Field::new("harmful", DataType::Boolean, false),
        Field::new("rank", DataType::Int64, false),
        Field::new("mentions", DataType::Int64, false),
        Field::new("harm_mentions", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("place", DataType::Utf8, false),
    ]))
}

/// `corpus`: the synthetic world's pretraining statements (`w2s split --world`).
pub fn corpus() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("doc_index", DataType::Int64, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

/// `knowledge`: which world entities a pretrained model knows (`w2s pretrain`'s probe).
pub fn knowledge() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model_id", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("harmful", DataType::Boolean, false),
        Field::new("rank", DataType::Int64, false),
        Field::new("mentions", DataType::Int64, false),
        Field::new("margin", DataType::Float64, false),
        Field::new("knows", DataType::Boolean, false),
    ]))
}

/// `scores`: one row per (scored model, pair), written by `w2s score`.
pub fn scores() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pair_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("split_index", DataType::Int64, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("margin", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
        Field::new("correct", DataType::Boolean, false),
        Field::new("logp_sum_chosen", DataType::Float64, true),
        Field::new("logp_sum_rejected", DataType::Float64, true),
        Field::new("logp_mean_chosen", DataType::Float64, true),
        Field::new("logp_mean_rejected", DataType::Float64, true),
        Field::new("tokens_chosen", DataType::Int64, true),
        Field::new("tokens_rejected", DataType::Int64, true),
    ]))
}

/// `labels`: one row per (labelling model, pair), written by `w2s weak-label`. Reward-model
/// labels are in slot orientation (docs/reference.md §1.4, §1.8).
pub fn labels() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pair_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("split_index", DataType::Int64, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("gt_label", DataType::Int64, false),
        Field::new("margin", DataType::Float64, false),
        Field::new("soft_label", DataType::Float64, false),
        Field::new("hard_label", DataType::Int64, false),
        Field::new("correct", DataType::Boolean, false),
    ]))
}

/// `train_log`: one row per optimizer step of a training run.
pub fn train_log() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("accuracy", DataType::Float64, false),
        Field::new("pairs", DataType::Int64, false),
        Field::new("tokens", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
    ]))
}

/// `runs`: one row per training run.
pub fn runs() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("scenario", DataType::Utf8, false),
        Field::new("objective", DataType::Utf8, false),
        Field::new("base_model", DataType::Utf8, false),
        Field::new("teacher", DataType::Utf8, true),
        Field::new("alpha", DataType::Float64, true),
        Field::new("seed", DataType::Int64, false),
        Field::new("settings", DataType::Utf8, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("steps", DataType::Int64, false),
        Field::new("pairs", DataType::Int64, false),
        Field::new("tokens", DataType::Int64, false),
        Field::new("final_loss", DataType::Float64, false),
        Field::new("resumed_at_step", DataType::Int64, false),
        Field::new("wall_seconds", DataType::Float64, false),
        Field::new("tokens_per_second", DataType::Float64, false),
    ]))
}
