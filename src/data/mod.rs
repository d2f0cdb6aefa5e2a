//! Reading preference data: JSONL, JSONL.gz or Parquet, from a local path or a URL, in one of
//! two shapes (HH transcripts or explicit prompt/chosen/rejected columns), into validated
//! [`Pair`]s. Every error names the file, the line or row, and the field.

pub mod hh;
mod jsonl;
mod pair;
mod parquet;
pub mod sample;
pub mod world;

pub use pair::{pair_id, Pair, PairRules, PromptMismatch, Template};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{At, Error, Result};
use crate::store::{fetch, sha256_hex, InputFile};

/// How the records of a file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `explicit` if the first record has a `prompt` field, else `hh`.
    Auto,
    /// `chosen` and `rejected` are whole HH transcripts.
    Hh,
    /// `prompt`, `chosen` and `rejected` columns; responses without the prompt.
    Explicit,
}

/// One raw record, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 0-based record index in the file.
    pub row: u64,
    /// 1-based line number (JSONL only).
    pub line: Option<u64>,
    pub prompt: Option<String>,
    pub chosen: String,
    pub rejected: String,
}

impl Record {
    /// A built-in pair (no file behind it): one HH turn `prompt` answered by `chosen` and by
    /// `rejected`, as whole transcripts.
    pub fn single_turn(row: u64, prompt: &str, chosen: &str, rejected: &str) -> Record {
        let turn = |response: &str| {
            let (p, r) = hh::wrap(prompt, response);
            p + &r
        };
        Record {
            row,
            line: None,
            prompt: None,
            chosen: turn(chosen),
            rejected: turn(rejected),
        }
    }

    /// The location of a field of this record in `file`, for error messages.
    pub fn at(&self, file: &str, field: &str) -> At {
        let mut at = At::file(file).row(self.row).field(field);
        at.line = self.line;
        at
    }
}

/// The file formats `w2s` reads preference data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Parquet,
}

/// Picks the format from the file name (a URL's query string is ignored). A `.gz` suffix means
/// gzip-compressed; gzip data is also recognised by its magic bytes.
pub fn detect_format(location: &str) -> Result<Format> {
    let name = location.split(['?', '#']).next().unwrap_or(location);
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Ok(Format::Jsonl)
    } else if name.ends_with(".parquet") {
        Ok(Format::Parquet)
    } else {
        Err(Error::data(
            At::file(location),
            "unknown file type: expected .jsonl, .jsonl.gz, .ndjson, .ndjson.gz or .parquet",
        ))
    }
}

/// A loaded input file: its provenance and its records.
#[derive(Debug, Clone)]
pub struct Source {
    pub input: InputFile,
    pub shape: Shape,
    pub records: Vec<Record>,
}

/// Reads and parses `location`. With `limit`, stops after that many records (the reference
/// reads the first N rows of each pre-split file).
pub async fn load(location: &str, shape: Shape, limit: Option<usize>) -> Result<Source> {
    let format = detect_format(location)?;
    let raw = fetch(location).await?;
    let input = InputFile {
        uri: location.to_string(),
        bytes: raw.len() as u64,
        sha256: sha256_hex(&raw),
    };
    let data = gunzip_if_needed(location, raw)?;
    let (shape, records) = match format {
        Format::Jsonl => jsonl::parse(location, &data, shape, limit)?,
        Format::Parquet => parquet::parse(location, data, shape, limit)?,
    };
    Ok(Source {
        input,
        shape,
        records,
    })
}

fn gunzip_if_needed(location: &str, raw: Bytes) -> Result<Bytes> {
    use std::io::Read;
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        if location.ends_with(".gz") {
            return Err(Error::data(
                At::file(location),
                "named .gz but not gzip data (bad magic bytes)",
            ));
        }
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::data(
                At::file(location),
                format!("truncated or corrupt gzip data: {e}"),
            )
        })?;
    Ok(Bytes::from(out))
}

/// Resolves [`Shape::Auto`] from whether the first record has a prompt.
fn resolve_shape(shape: Shape, has_prompt: bool) -> Shape {
    match shape {
        Shape::Auto if has_prompt => Shape::Explicit,
        Shape::Auto => Shape::Hh,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!(detect_format("a/b.jsonl").unwrap(), Format::Jsonl);
        assert_eq!(detect_format("b.JSONL.gz").unwrap(), Format::Jsonl);
        assert_eq!(
            detect_format("https://x/y.parquet?download=1").unwrap(),
            Format::Parquet
        );
        let e = detect_format("data.csv").unwrap_err().to_string();
        assert!(e.starts_with("data.csv: unknown file type"), "{e}");
    }

    #[test]
    fn truncated_gzip_is_an_error_naming_the_file() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&b"{\"chosen\": \"a\"}\n".repeat(100))
            .unwrap();
        let mut gz = enc.finish().unwrap();
        gz.truncate(gz.len() - 10);
        let e = gunzip_if_needed("x.jsonl.gz", Bytes::from(gz))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.jsonl.gz: truncated or corrupt gzip"),
            "{e}"
        );
    }
}
