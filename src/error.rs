//! The library's error type. Every error that comes from user input says where: the file (or
//! URL), the line or row, and the field, so a researcher can fix the input without a debugger.

use std::fmt;

/// Where in the user's input something went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct At {
    /// File path or URL, as the user gave it.
    pub file: String,
    /// 1-based line number (line-oriented formats such as JSONL).
    pub line: Option<u64>,
    /// 0-based record index within the file.
    pub row: Option<u64>,
    /// Field (column, key or setting) name.
    pub field: Option<String>,
}

impl At {
    pub fn file(file: impl Into<String>) -> Self {
        At {
            file: file.into(),
            ..Default::default()
        }
    }
    pub fn line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }
    pub fn row(mut self, row: u64) -> Self {
        self.row = Some(row);
        self
    }
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or unusable input data.
    #[error("{at}: {msg}")]
    Data { at: At, msg: String },

    /// Settings or arguments that cannot work together.
    #[error("{0}")]
    Config(String),

    /// The artifact store (or a remote input) failed.
    #[error("{uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A Parquet or Arrow encode/decode failure on a named file.
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },

    /// A model checkpoint that does not fit its config (missing tensor, wrong shape, ...).
    #[error("{file}: {msg}")]
    Model { file: String, msg: String },

    /// A tensor computation failed (shapes, dtypes, devices).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),

    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] datafusion::error::DataFusionError),

    /// Another process holds what this one needs (the artifact root of a `w2s run`).
    #[error("{0}")]
    Busy(String),

    /// A pipeline step (a child `w2s` process) failed; `code` is its exit code.
    #[error("{msg}")]
    Step { msg: String, code: i32 },

    /// An artifact an earlier stage publishes is missing (the message names the stage to run).
    #[error("{0}")]
    NoInput(String),
}

impl Error {
    pub fn data(at: At, msg: impl Into<String>) -> Self {
        Error::Data {
            at,
            msg: msg.into(),
        }
    }

    /// Process exit code for this error, following BSD sysexits where one fits.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Data { .. } | Error::Format { .. } | Error::Model { .. } => 65, // EX_DATAERR
            Error::Config(_) => 64,                                                // EX_USAGE
            Error::NoInput(_) => 66,                                               // EX_NOINPUT
            Error::Store { .. } | Error::Io { .. } => 74,                          // EX_IOERR
            Error::Busy(_) => 75,                                                  // EX_TEMPFAIL
            Error::Step { code, .. } => *code,
            Error::Query(_) | Error::Tensor(_) => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_names_file_line_row_and_field() {
        let at = At::file("a.jsonl").line(3).row(2).field("chosen");
        assert_eq!(at.to_string(), "a.jsonl, line 3, row 2, field `chosen`");
        let e = Error::data(at, "expected a string");
        assert_eq!(
            e.to_string(),
            "a.jsonl, line 3, row 2, field `chosen`: expected a string"
        );
        assert_eq!(e.exit_code(), 65);
    }
}
