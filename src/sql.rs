//! DataFusion over an artifact root: every committed table is registered under its name, so
//! `select split, count(*) from pairs group by split` works against a local folder or S3 alike.
//! Parameters are bound (`$T` in SQL, `--param T=0.75` on the command line), never pasted into
//! the SQL text.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use crate::error::{Error, Result};
use crate::store::{encode_parquet, ArtifactStore};

/// Column `name` of a result batch as type `t` (DataFusion reads Parquet strings as
/// `Utf8View`, and aggregates may widen numbers); `table` names the result in errors.
pub fn column(b: &RecordBatch, table: &str, name: &str, t: &DataType) -> Result<ArrayRef> {
    let col = b.column_by_name(name).ok_or_else(|| Error::Format {
        file: table.to_string(),
        msg: format!("column {name} missing"),
    })?;
    datafusion::arrow::compute::cast(col, t).map_err(|e| Error::Format {
        file: table.to_string(),
        msg: format!("column {name}: {e}"),
    })
}

/// A session with every committed table of `store` registered.
pub async fn context(store: &ArtifactStore) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let (url, os) = store.registration();
    ctx.register_object_store(&url, os);
    for (name, files) in store.table_files().await? {
        let urls = files
            .iter()
            .map(|u| ListingTableUrl::parse(u.as_str()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        ctx.register_table(name.as_str(), Arc::new(ListingTable::try_new(config)?))?;
    }
    if ctx.table_exist("runs")? && ctx.table_exist("scores")? {
        for statement in statements(VIEWS) {
            ctx.sql(&statement).await?;
        }
    }
    Ok(ctx)
}

/// The analyses' shared views (`sql/views.sql`): `confidences`, `experiments`,
/// `experiment_pairs`.
pub const VIEWS: &str = include_str!("../sql/views.sql");

/// The statements of a SQL file: comment lines dropped, split at semicolons.
pub fn statements(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `name=value` into a bound parameter: integers, floats and booleans get their type,
/// anything else is a string.
pub fn parse_param(s: &str) -> Result<(String, ScalarValue)> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--param `{s}`: expected NAME=VALUE")))?;
    let name = name.trim().trim_start_matches('$').to_string();
    if name.is_empty() {
        return Err(Error::Config(format!("--param `{s}`: empty name")));
    }
    let v = if let Ok(i) = value.parse::<i64>() {
        ScalarValue::Int64(Some(i))
    } else if let Ok(f) = value.parse::<f64>() {
        ScalarValue::Float64(Some(f))
    } else if let Ok(b) = value.parse::<bool>() {
        ScalarValue::Boolean(Some(b))
    } else {
        ScalarValue::Utf8(Some(value.to_string()))
    };
    Ok((name, v))
}

/// Runs one SQL statement with bound parameters and collects the result.
pub async fn query(
    ctx: &SessionContext,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(|e| with_table_hint(ctx, e))?;
    let df = if params.is_empty() {
        df
    } else {
        df.with_param_values(params.to_vec())?
    };
    Ok(df.collect().await?)
}

fn with_table_hint(ctx: &SessionContext, e: datafusion::error::DataFusionError) -> Error {
    let msg = e.to_string();
    if msg.contains("not found") && msg.contains("table") {
        let mut names: Vec<String> = ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .map(|s| s.table_names())
            .unwrap_or_default();
        names.sort();
        let have = if names.is_empty() {
            "none (run `w2s split` first)".to_string()
        } else {
            names.join(", ")
        };
        return Error::Config(format!("{msg}; tables in this artifact root: {have}"));
    }
    Error::Query(e)
}

/// What `w2s sql` is asked: a query (inline or a `.sql` file), bound parameters, where the
/// result goes and in which format.
#[derive(clap::Args, Debug, Clone, PartialEq, serde::Serialize)]
pub struct Request {
    /// The query, or a path to a .sql file.
    pub query: Option<String>,
    /// Read the query from this file.
    #[arg(long, conflicts_with = "query")]
    pub file: Option<String>,
    /// A bound parameter, NAME=VALUE, used as $NAME in the query. Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Write the result here (local path or URL) instead of printing it.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Output format (default: from --output's extension, else a printed table).
    #[arg(long, value_enum)]
    pub format: Option<OutFormat>,
}

impl Request {
    /// The SQL text: `--file`, a `.sql` path given as the query, or the query itself.
    pub fn text(&self) -> Result<String> {
        match (&self.file, &self.query) {
            (Some(f), _) => read_file(f),
            (None, Some(q))
                if q.trim_end().ends_with(".sql") && std::path::Path::new(q).is_file() =>
            {
                read_file(q)
            }
            (None, Some(q)) => Ok(q.clone()),
            (None, None) => Err(Error::Config("give a query or --file".into())),
        }
    }

    /// The output format: `--format`, else from `--output`'s extension, else a table.
    pub fn out_format(&self) -> OutFormat {
        self.format
            .or_else(|| self.output.as_deref().and_then(OutFormat::from_path))
            .unwrap_or(OutFormat::Table)
    }
}

/// Runs a request over the tables of `store`: the rendered result is written to `--output`
/// (then `None` is returned) or returned for printing.
pub async fn run(store: &ArtifactStore, r: &Request) -> Result<Option<Vec<u8>>> {
    let text = r.text()?;
    let params = (r.params.iter())
        .map(|p| parse_param(p))
        .collect::<Result<Vec<_>>>()?;
    let format = r.out_format();
    if r.output.is_none() && format == OutFormat::Parquet {
        return Err(Error::Config("--format parquet needs --output FILE".into()));
    }
    let ctx = context(store).await?;
    let batches = query(&ctx, &text, &params).await?;
    let mut bytes = render(&batches, format)?;
    let Some(out) = &r.output else {
        if format == OutFormat::Table {
            bytes.push(b'\n');
        }
        return Ok(Some(bytes));
    };
    let dest = crate::store::resolve(out)?;
    use object_store::ObjectStoreExt;
    dest.store
        .put(&dest.path, bytes.into())
        .await
        .map_err(|source| Error::Store {
            uri: out.clone(),
            source,
        })?;
    Ok(None)
}

/// The text of a `.sql` file.
pub fn read_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_string(),
        source,
    })
}

/// Output formats of `w2s sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

impl OutFormat {
    /// The format implied by a file name, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let p = path.to_ascii_lowercase();
        if p.ends_with(".csv") {
            Some(OutFormat::Csv)
        } else if p.ends_with(".json") || p.ends_with(".jsonl") {
            Some(OutFormat::Json)
        } else if p.ends_with(".parquet") {
            Some(OutFormat::Parquet)
        } else {
            None
        }
    }
}

/// Renders batches in a format. JSON is one object per line.
pub fn render(batches: &[RecordBatch], format: OutFormat) -> Result<Vec<u8>> {
    let err = |e: String| Error::Format {
        file: "query result".into(),
        msg: e,
    };
    match format {
        OutFormat::Table => Ok(pretty_format_batches(batches)
            .map_err(|e| err(e.to_string()))?
            .to_string()
            .into_bytes()),
        OutFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::csv::Writer::new(&mut buf);
                for b in batches {
                    w.write(b).map_err(|e| err(e.to_string()))?;
                }
            }
            Ok(buf)
        }
        OutFormat::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
            for b in batches {
                w.write(b).map_err(|e| err(e.to_string()))?;
            }
            w.finish().map_err(|e| err(e.to_string()))?;
            Ok(w.into_inner())
        }
        OutFormat::Parquet => {
            let Some(first) = batches.first() else {
                return Err(err("the query returned no batches".into()));
            };
            let all = concat_batches(&first.schema(), batches).map_err(|e| err(e.to_string()))?;
            Ok(encode_parquet(&all).map_err(err)?.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_get_types() {
        assert_eq!(
            parse_param("T=0.75").unwrap().1,
            ScalarValue::Float64(Some(0.75))
        );
        assert_eq!(
            parse_param("$n=3").unwrap(),
            ("n".into(), ScalarValue::Int64(Some(3)))
        );
        assert_eq!(
            parse_param("split=test").unwrap().1,
            ScalarValue::Utf8(Some("test".into()))
        );
        assert!(parse_param("novalue").is_err());
    }

    #[tokio::test]
    async fn bound_parameters_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let ctx = context(&store).await.unwrap();
        let out = query(
            &ctx,
            "select $a + 1 as x, $s as s",
            &[parse_param("a=41").unwrap(), parse_param("s=it's").unwrap()],
        )
        .await
        .unwrap();
        let csv = String::from_utf8(render(&out, OutFormat::Csv).unwrap()).unwrap();
        assert_eq!(csv, "x,s\n42,it's\n");
        let json = String::from_utf8(render(&out, OutFormat::Json).unwrap()).unwrap();
        assert_eq!(json, "{\"x\":42,\"s\":\"it's\"}\n");
        let e = query(&ctx, "select * from pairs", &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("tables in this artifact root: none"), "{e}");
    }
}
