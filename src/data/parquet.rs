//! Parquet preference files: string columns `chosen`, `rejected` and optionally `prompt`.

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use super::{resolve_shape, Record, Shape};
use crate::error::{At, Error, Result};
use crate::store::decode_parquet;

pub(super) fn parse(
    file: &str,
    data: Bytes,
    shape: Shape,
    limit: Option<usize>,
) -> Result<(Shape, Vec<Record>)> {
    let batches = decode_parquet(data)
        .map_err(|e| Error::data(At::file(file), format!("not a readable Parquet file: {e}")))?;
    let Some(first) = batches.first() else {
        return Ok((resolve_shape(shape, false), Vec::new()));
    };
    let shape = resolve_shape(shape, first.schema().column_with_name("prompt").is_some());
    let mut records = Vec::new();
    for batch in &batches {
        let base = records.len() as u64;
        let chosen = column(file, batch, "chosen")?;
        let rejected = column(file, batch, "rejected")?;
        let prompt = match shape {
            Shape::Explicit => Some(column(file, batch, "prompt")?),
            _ => None,
        };
        for i in 0..batch.num_rows() {
            if limit.is_some_and(|n| records.len() >= n) {
                return Ok((shape, records));
            }
            let row = base + i as u64;
            let get = |col: &Vec<Option<String>>, name: &str| {
                col[i]
                    .clone()
                    .ok_or_else(|| Error::data(At::file(file).row(row).field(name), "null value"))
            };
            records.push(Record {
                row,
                line: None,
                prompt: prompt.as_ref().map(|p| get(p, "prompt")).transpose()?,
                chosen: get(&chosen, "chosen")?,
                rejected: get(&rejected, "rejected")?,
            });
        }
    }
    Ok((shape, records))
}

/// A string column as owned optional strings (any Arrow string type is accepted).
fn column(file: &str, batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let at = || At::file(file).field(name);
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::data(at(), "missing column"))?;
    match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {}
        other => {
            return Err(Error::data(
                at(),
                format!("expected a string column, found {other}"),
            ))
        }
    }
    let col = cast(col, &DataType::Utf8).map_err(|e| Error::data(at(), e.to_string()))?;
    let s = col.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| (!s.is_null(i)).then(|| s.value(i).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_parquet;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn file(cols: Vec<(&str, Arc<dyn Array>)>) -> Bytes {
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch =
            RecordBatch::try_new(schema, cols.into_iter().map(|(_, a)| a).collect()).unwrap();
        encode_parquet(&batch).unwrap()
    }

    #[test]
    fn reads_explicit_columns() {
        let b = file(vec![
            ("prompt", Arc::new(StringArray::from(vec!["p1", "p2"]))),
            ("chosen", Arc::new(StringArray::from(vec!["c1", "c2"]))),
            ("rejected", Arc::new(StringArray::from(vec!["r1", "r2"]))),
        ]);
        let (shape, r) = parse("x.parquet", b, Shape::Auto, None).unwrap();
        assert_eq!(shape, Shape::Explicit);
        assert_eq!(r[1].prompt.as_deref(), Some("p2"));
        assert_eq!(r[1].rejected, "r2");
    }

    #[test]
    fn errors_name_row_and_field() {
        let b = file(vec![
            (
                "chosen",
                Arc::new(StringArray::from(vec![Some("c1"), None])),
            ),
            ("rejected", Arc::new(StringArray::from(vec!["r1", "r2"]))),
        ]);
        let e = parse("x.parquet", b, Shape::Auto, None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "x.parquet, row 1, field `chosen`: null value");
        let b = file(vec![
            ("chosen", Arc::new(StringArray::from(vec!["c"]))),
            ("rejected", Arc::new(Int32Array::from(vec![1]))),
        ]);
        let e = parse("x.parquet", b, Shape::Auto, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.parquet, field `rejected`: expected a string column, found Int32"
        );
        let e = parse(
            "x.parquet",
            Bytes::from_static(b"PAR1 nope"),
            Shape::Auto,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("x.parquet: not a readable Parquet file"),
            "{e}"
        );
    }
}
