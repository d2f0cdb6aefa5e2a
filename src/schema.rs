//! Arrow schemas of the artifact tables. docs/artifacts.md documents every column; keep the two
//! in step.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Split names, in the order rows are written.
pub const SPLITS: [&str; 4] = ["gt", "w2s", "test", "helpful"];

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
