//! `POST /v1/sql`: one read-only statement, run under the caller's scope, a memory limit, a
//! timeout and a row cap; answered as JSON (default) or CSV (`Accept: text/csv`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use futures::StreamExt;
use meterline_schemas::auth::Role;
use serde::Deserialize;

use crate::{error, Shared};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One SQL query (SELECT / WITH / EXPLAIN / DESCRIBE).
    pub sql: String,
}

/// Roles that may query.
pub const ROLES: [Role; 4] = [Role::Admin, Role::Finance, Role::TeamLead, Role::Viewer];

/// Only queries: no DDL (CREATE [EXTERNAL] TABLE/VIEW, DROP), no DML (INSERT, COPY), no
/// statements (SET, transactions).
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

fn status_of(e: &DataFusionError) -> (StatusCode, String) {
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
        _ => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Decimal columns as exact decimal text (`"3.750000000000000001"`, `"1.25"`): JSON numbers
/// would be read back through f64 by most clients.
fn decimals_as_text(b: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
    use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Schema};
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
                columns.push(std::sync::Arc::new(text));
            }
            _ => {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Runs `sql`; returns the batches (at most `max_rows` rows) and whether rows were cut off.
async fn run(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
    max_rows: usize,
) -> Result<(Vec<RecordBatch>, bool), DataFusionError> {
    let df = ctx.sql_with_options(sql, read_only()).await?;
    let mut stream = df.execute_stream().await?;
    let (mut out, mut rows) = (vec![], 0usize);
    while let Some(b) = stream.next().await {
        let b = b?;
        if rows + b.num_rows() > max_rows {
            out.push(b.slice(0, max_rows - rows));
            return Ok((out, true)); // dropping the stream stops the query
        }
        rows += b.num_rows();
        out.push(b);
    }
    Ok((out, false))
}

fn text_batches(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, DataFusionError> {
    batches.iter().map(decimals_as_text).collect()
}

pub async fn post_sql(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match crate::authorize(&s, &headers, &ROLES) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"sql\": \"…\"}})"),
            )
        }
    };
    let ctx = match crate::catalog::session(&s.cfg, &who).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let limit = Duration::from_millis(s.cfg.query_timeout_ms);
    let result = match tokio::time::timeout(limit, run(&ctx, &req.sql, s.cfg.max_rows)).await {
        Err(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "query exceeded its time limit of {} ms",
                    s.cfg.query_timeout_ms
                ),
            )
        }
        Ok(Err(e)) => {
            let (status, msg) = status_of(&e);
            return error(status, msg);
        }
        Ok(Ok(r)) => r,
    };
    let (batches, truncated) = result;
    let batches = match text_batches(batches) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if csv {
        let mut buf = vec![];
        {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            for b in &batches {
                if let Err(e) = w.write(b) {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            }
        }
        let mut r = (StatusCode::OK, buf).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, "text/csv".parse().expect("mime"));
        if truncated {
            r.headers_mut()
                .insert("x-meterline-truncated", "true".parse().expect("value"));
        }
        return r;
    }
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        if let Err(e) = w.write(b) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    if let Err(e) = w.finish() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    // The rows are spliced in as written: parsing them back would turn decimals into f64.
    let mut rows_json = w.into_inner();
    if rows_json.is_empty() {
        rows_json = b"[]".to_vec();
    }
    let mut body =
        format!("{{\"row_count\":{rows},\"truncated\":{truncated},\"rows\":").into_bytes();
    body.extend_from_slice(&rows_json);
    body.push(b'}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
