//! JSON Lines: one JSON object per line; blank lines are skipped.

use serde_json::Value;

use super::{resolve_shape, Record, Shape};
use crate::error::{At, Error, Result};
use crate::progress;

pub(super) fn parse(
    file: &str,
    data: &[u8],
    shape: Shape,
    limit: Option<usize>,
) -> Result<(Shape, Vec<Record>)> {
    let mut shape = shape;
    let mut records = Vec::new();
    let bar = progress::bytes(data.len() as u64, "reading");
    let mut offset = 0usize;
    for (i, raw_line) in data.split(|&b| b == b'\n').enumerate() {
        if limit.is_some_and(|n| records.len() >= n) {
            break;
        }
        offset += raw_line.len() + 1;
        if i % 256 == 0 {
            bar.set_position(offset.min(data.len()) as u64);
        }
        let line_no = i as u64 + 1;
        let at = || At::file(file).line(line_no).row(records.len() as u64);
        let raw_line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        let text = std::str::from_utf8(raw_line).map_err(|e| {
            Error::data(
                at(),
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
            )
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::data(at(), format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Error::data(
                at(),
                format!("expected a JSON object, found {}", kind(&value)),
            ));
        };
        if records.is_empty() {
            shape = resolve_shape(shape, obj.contains_key("prompt"));
        }
        let field = |name: &str| -> Result<String> {
            match obj.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::data(
                    at().field(name),
                    format!("expected a string, found {}", kind(other)),
                )),
                None => Err(Error::data(at().field(name), "missing field")),
            }
        };
        let prompt = match shape {
            Shape::Explicit => Some(field("prompt")?),
            _ => None,
        };
        records.push(Record {
            row: records.len() as u64,
            line: Some(line_no),
            prompt,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
        });
    }
    bar.finish_and_clear();
    Ok((shape, records))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &str) -> String {
        parse("f.jsonl", data.as_bytes(), Shape::Auto, None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_hh_and_explicit_records() {
        let (s, r) = parse(
            "f.jsonl",
            b"{\"chosen\":\"a\",\"rejected\":\"b\"}\n\n{\"chosen\":\"c\",\"rejected\":\"d\"}",
            Shape::Auto,
            None,
        )
        .unwrap();
        assert_eq!(s, Shape::Hh);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].line, Some(3));
        assert_eq!(r[1].row, 1);
        let (s, r) = parse(
            "f.jsonl",
            b"{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\r\n",
            Shape::Auto,
            None,
        )
        .unwrap();
        assert_eq!(s, Shape::Explicit);
        assert_eq!(r[0].prompt.as_deref(), Some("p"));
    }

    #[test]
    fn limit_stops_early() {
        let data = "{\"chosen\":\"a\",\"rejected\":\"b\"}\n".repeat(5) + "not json";
        let (_, r) = parse("f.jsonl", data.as_bytes(), Shape::Hh, Some(5)).unwrap();
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn errors_name_line_and_field() {
        let ok = "{\"chosen\":\"a\",\"rejected\":\"b\"}\n";
        assert!(err(&format!("{ok}{{\"chosen\": \"a\","))
            .starts_with("f.jsonl, line 2, row 1: invalid JSON"));
        assert_eq!(
            err(&format!("{ok}{{\"chosen\":\"a\"}}")),
            "f.jsonl, line 2, row 1, field `rejected`: missing field"
        );
        assert_eq!(
            err("{\"chosen\":\"a\",\"rejected\":7}"),
            "f.jsonl, line 1, row 0, field `rejected`: expected a string, found a number"
        );
        assert_eq!(
            err("[1,2]"),
            "f.jsonl, line 1, row 0: expected a JSON object, found an array"
        );
        let bad = parse(
            "f.jsonl",
            b"{\"chosen\":\"a\xff\",\"rejected\":\"b\"}",
            Shape::Auto,
            None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            bad,
            "f.jsonl, line 1, row 0: invalid UTF-8 at byte 12 of the line"
        );
    }
}
