//! Running one query under the limits and answering it as JSON (default), CSV
//! (`Accept: text/csv`) or Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`).
//! `/v1/sql` and the SQL-backed reports share this.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Schema};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    /// From `?format=` if given, else from `Accept`.
    pub fn negotiate(param: Option<&str>, headers: &HeaderMap) -> Result<Format, Response> {
        match param {
            Some("json") => return Ok(Format::Json),
            Some("csv") => return Ok(Format::Csv),
            Some("arrow") => return Ok(Format::Arrow),
            Some(other) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("format: {other:?} is not one of json, csv, arrow"),
                ))
            }
            None => {}
        }
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(if accept.contains(ARROW_STREAM) {
            Format::Arrow
        } else if accept.contains("text/csv") {
            Format::Csv
        } else {
            Format::Json
        })
    }
}

/// Only queries: no DDL (CREATE [EXTERNAL] TABLE/VIEW, DROP), no DML (INSERT, COPY), no
/// statements (SET, transactions).
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

pub fn status_of(e: &DataFusionError) -> (StatusCode, String) {
    match e {
        DataFusionError::ResourcesExhausted(m) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("query exceeded its memory limit: {m}"),
        ),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => (StatusCode::BAD_REQUEST, e.to_string()),
        DataFusionError::Context(_, inner) => status_of(inner),
        DataFusionError::Shared(inner) => status_of(inner),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Rows of one query, at most `max_rows`, and whether more were cut off.
pub struct Rows {
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
}

async fn collect(
    ctx: &SessionContext,
    sql: &str,
    max_rows: usize,
) -> Result<Rows, DataFusionError> {
    let df = ctx.sql_with_options(sql, read_only()).await?;
    let mut stream = df.execute_stream().await?;
    let (mut batches, mut rows) = (vec![], 0usize);
    while let Some(b) = stream.next().await {
        let b = b?;
        if rows + b.num_rows() > max_rows {
            batches.push(b.slice(0, max_rows - rows));
            // dropping the stream stops the query
            return Ok(Rows {
                batches,
                truncated: true,
            });
        }
        rows += b.num_rows();
        batches.push(b);
    }
    Ok(Rows {
        batches,
        truncated: false,
    })
}

/// Runs `sql` under the time limit; a failure is the error response to send.
pub async fn run(
    ctx: &SessionContext,
    sql: &str,
    max_rows: usize,
    timeout_ms: u64,
) -> Result<Rows, Response> {
    match tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        collect(ctx, sql, max_rows),
    )
    .await
    {
        Err(_) => Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("query exceeded its time limit of {timeout_ms} ms"),
        )),
        Ok(Err(e)) => {
            let (status, msg) = status_of(&e);
            Err(error(status, msg))
        }
        Ok(Ok(r)) => Ok(r),
    }
}

/// Decimal columns as exact decimal text (`"3.750000000000000001"`, `"1.25"`): JSON numbers
/// would be read back through f64 by most clients, and CSV readers guess.
pub fn decimals_as_text(b: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
    let schema = b.schema();
    let mut fields = vec![];
    let mut columns: Vec<ArrayRef> = vec![];
    for (f, c) in schema.fields().iter().zip(b.columns()) {
        match f.data_type() {
            DataType::Decimal128(_, scale) => {
                let d = c.as_primitive::<Decimal128Type>();
                let text: StringArray = (0..d.len())
                    .map(|i| {
                        d.is_valid(i).then(|| {
                            let v = d.value(i);
                            if *scale == meterline_schemas::money::MONEY_SCALE as i8 {
                                meterline_schemas::Money::from_unscaled(v)
                                    .map(|m| m.to_string())
                                    .unwrap_or_else(|_| d.value_as_string(i))
                            } else {
                                d.value_as_string(i)
                            }
                        })
                    })
                    .collect();
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                columns.push(Arc::new(text));
            }
            _ => {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The answer in `format`. Arrow keeps the columns' types (decimals stay Decimal128).
pub fn render(rows: Rows, format: Format) -> Response {
    let truncated = rows.truncated;
    let mut r = match format {
        Format::Arrow => {
            let schema = rows
                .batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            let mut buf = vec![];
            let written = (|| {
                let mut w =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
                for b in &rows.batches {
                    w.write(b)?;
                }
                w.finish()
            })();
            if let Err(e) = written {
                return internal(e);
            }
            let mut r = (StatusCode::OK, buf).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM));
            r
        }
        Format::Csv => {
            let batches: Result<Vec<_>, _> = rows.batches.iter().map(decimals_as_text).collect();
            let batches = match batches {
                Ok(b) => b,
                Err(e) => return internal(e),
            };
            let mut buf = vec![];
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                for b in &batches {
                    if let Err(e) = w.write(b) {
                        return internal(e);
                    }
                }
            }
            let mut r = (StatusCode::OK, buf).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
            r
        }
        Format::Json => {
            let batches: Result<Vec<_>, _> = rows.batches.iter().map(decimals_as_text).collect();
            let batches = match batches {
                Ok(b) => b,
                Err(e) => return internal(e),
            };
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
            for b in &batches {
                if let Err(e) = w.write(b) {
                    return internal(e);
                }
            }
            if let Err(e) = w.finish() {
                return internal(e);
            }
            // The rows are spliced in as written: parsing them back would turn decimals into
            // f64.
            let mut rows_json = w.into_inner();
            if rows_json.is_empty() {
                rows_json = b"[]".to_vec();
            }
            let mut body =
                format!("{{\"row_count\":{n},\"truncated\":{truncated},\"rows\":").into_bytes();
            body.extend_from_slice(&rows_json);
            body.push(b'}');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    };
    if truncated {
        r.headers_mut()
            .insert("x-meterline-truncated", HeaderValue::from_static("true"));
    }
    r
}

/// Runs `sql` in `who`'s scope under the query limits and answers it in `format`.
pub async fn scoped(
    s: &crate::Shared,
    who: &meterline_schemas::auth::Principal,
    sql: &str,
    format: Format,
) -> axum::response::Response {
    let ctx = match s.session(&crate::catalog::Scope::of(who)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match run(&ctx, sql, s.cfg.max_rows, s.cfg.query_timeout_ms).await {
        Ok(rows) => render(rows, format),
        Err(r) => r,
    }
}
