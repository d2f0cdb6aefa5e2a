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
