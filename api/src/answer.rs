//! Running one query under the limits and answering it as JSON (default), CSV
//! (`Accept: text/csv`) or Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`).
//! `/v1/sql` and the SQL-backed reports share this.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::catalog::Scope;
use crate::queries::AbortOnDrop;
use crate::{error, functions, statement, Shared};

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
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            status_of(inner)
        }
        DataFusionError::Shared(inner) => status_of(inner),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Rows gathered before the response starts: errors until then (bad SQL, an early runtime
/// failure) get a 4xx, and a row cap reached within them is announced in a header.
const PREFETCH_ROWS: usize = 8192;

/// What a query task tells the HTTP side, in this order: its schema, batches, then how it
/// ended. A task that stops without saying how it ended panicked.
enum Msg {
    Schema(SchemaRef),
    Batch(RecordBatch),
    /// All rows sent; `true`: cut at `max_rows`.
    End(bool),
    Failed(StatusCode, String),
}

/// A query's first rows, and how to get the rest.
struct Started {
    schema: SchemaRef,
    head: Vec<RecordBatch>,
    rows: usize,
    /// `Some(truncated)` once the query has ended.
    ended: Option<bool>,
}

/// Takes `b` into `out` within `max_rows`; `false` once the cap cut it.
fn take(out: &mut Vec<RecordBatch>, rows: &mut usize, b: RecordBatch, max_rows: usize) -> bool {
    if *rows + b.num_rows() > max_rows {
        out.push(b.slice(0, max_rows - *rows));
        *rows = max_rows;
        return false;
    }
    *rows += b.num_rows();
    out.push(b);
    true
}

/// The stream of `sql` in `scope`: checked (`statement`), planned read-only, executing.
async fn open(
    s: &Shared,
    scope: &Scope,
    sql: &str,
) -> Result<SendableRecordBatchStream, (StatusCode, String)> {
    let failed = |e: DataFusionError| status_of(&e);
    let ctx = s.session(scope).await.map_err(|e| e.reply())?;
    let statement = statement::check(sql, matches!(scope, Scope::Teams(_))).map_err(failed)?;
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(failed)?;
    read_only().verify_plan(&plan).map_err(failed)?;
    functions::vet(&plan).map_err(failed)?;
    let df = ctx.execute_logical_plan(plan).await.map_err(failed)?;
    let physical = df.create_physical_plan().await.map_err(failed)?;
    let batch_rows = ctx.state().config().batch_size();
    functions::vet_physical(&physical, s.cfg.query_memory_bytes, batch_rows).map_err(failed)?;
    let physical = crate::queries::charge_held_batches(physical).map_err(failed)?;
    let physical = crate::queries::yielding(physical).map_err(failed)?;
    execute_stream(physical, ctx.task_ctx()).map_err(failed)
}

/// A query task: runs `sql` and sends its rows (at most `max_rows`) to `tx`. Runs on the
/// query runtime; dropping it (abort) drops the stream and stops the query.
async fn produce(
    s: Arc<Shared>,
    scope: Scope,
    sql: String,
    max_rows: usize,
    tx: mpsc::Sender<Msg>,
) {
    let mut stream = match open(&s, &scope, &sql).await {
        Ok(stream) => stream,
        Err((status, msg)) => {
            let _ = tx.send(Msg::Failed(status, msg)).await;
            return;
        }
    };
    drop(sql);
    if tx.send(Msg::Schema(stream.schema())).await.is_err() {
        return; // nobody waits for the answer any more
    }
    let mut rows = 0usize;
    let mut out = vec![];
    let last = loop {
        match stream.next().await {
            None => break Msg::End(false),
            Some(Err(e)) => {
                let (status, msg) = status_of(&e);
                break Msg::Failed(status, msg);
            }
            Some(Ok(b)) => {
                let open = take(&mut out, &mut rows, b, max_rows);
                for b in out.drain(..) {
                    if tx.send(Msg::Batch(b)).await.is_err() {
                        return;
                    }
                }
                if !open {
                    break Msg::End(true); // dropping the stream stops the query
                }
            }
        }
    };
    drop(stream);
    let _ = tx.send(last).await;
}

/// The task stopped without saying how it ended: it panicked (logged by the runtime side).
fn vanished() -> (StatusCode, String) {
    tracing::error!("a query task ended without an answer (panic)");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the query failed unexpectedly (the server log has the details)".into(),
    )
}

/// The schema and the first rows (up to [`PREFETCH_ROWS`]), or why the query failed.
async fn gather(rx: &mut mpsc::Receiver<Msg>) -> Result<Started, (StatusCode, String)> {
    let schema = match rx.recv().await {
        Some(Msg::Schema(s)) => s,
        Some(Msg::Failed(status, msg)) => return Err((status, msg)),
        Some(_) => return Err((StatusCode::INTERNAL_SERVER_ERROR, "no schema".into())),
        None => return Err(vanished()),
    };
    let mut started = Started {
        schema,
        head: vec![],
        rows: 0,
        ended: None,
    };
    while started.rows < PREFETCH_ROWS {
        match rx.recv().await {
            Some(Msg::Batch(b)) => {
                started.rows += b.num_rows();
                started.head.push(b);
            }
            Some(Msg::End(truncated)) => {
                started.ended = Some(truncated);
                break;
            }
            Some(Msg::Failed(status, msg)) => return Err((status, msg)),
            Some(Msg::Schema(_)) => {}
            None => return Err(vanished()),
        }
    }
    Ok(started)
}

fn too_slow(timeout_ms: u64) -> String {
    format!("query exceeded its time limit of {timeout_ms} ms")
}

/// Runs `sql` in `scope` on the query runtime under the limits and answers it in `format`,
/// streamed: the first rows are gathered before the status is sent (so most failures are a
/// 4xx), the rest are written as the query makes them. The time limit covers the whole
/// answer and is kept here, on the HTTP side, which only ever waits on a channel: at the
/// limit the answer ends at once and the query task is aborted, whatever it is doing. A query
/// failing after the answer started ends a JSON answer with an `error` member and aborts a
/// CSV or Arrow one (the client sees a broken transfer, never a short answer that looks whole).
pub async fn run(s: &Arc<Shared>, scope: Scope, sql: String, format: Format) -> Response {
    let (max_rows, timeout_ms) = (s.cfg.max_rows, s.cfg.query_timeout_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let (tx, mut rx) = mpsc::channel(2);
    let task = AbortOnDrop(
        s.queries
            .spawn(produce(s.clone(), scope, sql, max_rows, tx)),
    );
    let started = match tokio::time::timeout_at(deadline, gather(&mut rx)).await {
        Err(_) => return error(StatusCode::UNPROCESSABLE_ENTITY, too_slow(timeout_ms)),
        Ok(Err((status, msg))) => return error(status, msg),
        Ok(Ok(s)) => s,
    };
    let mut encoder = match Encoder::new(format, &started.schema) {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    let Started {
        head,
        mut rows,
        ended,
        ..
    } = started;
    let cut_early = ended == Some(true);
    let chunks = async_stream(move |tx| async move {
        let _task = task; // aborted when this ends, however it ends
        let send = |bytes: Vec<u8>| tx.send(Ok(axum::body::Bytes::from(bytes)));
        let fail = |msg: String| tx.send(Err(std::io::Error::other(msg)));
        let mut out = encoder.begin();
        for b in &head {
            match encoder.batch(b) {
                Ok(bytes) => out.extend(bytes),
                Err(e) => {
                    let _ = fail(e.to_string()).await;
                    return;
                }
            }
        }
        drop(head);
        if send(out).await.is_err() {
            return; // the client went away
        }
        let mut failure = None;
        let mut truncated = ended.unwrap_or(false);
        if ended.is_none() {
            loop {
                // Checked on every batch, not only while waiting: `timeout_at` polls the
                // channel first, so a query that always has its next batch ready would never
                // let it see the deadline (an endless answer ran 30-70 s past a 1.5 s limit
                // and the client buffered 16-24 GB of it).
                if tokio::time::Instant::now() >= deadline {
                    failure = Some(too_slow(timeout_ms));
                    break;
                }
                let next = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => {
                        failure = Some(too_slow(timeout_ms));
                        break;
                    }
                    Ok(Some(Msg::Batch(b))) => b,
                    Ok(Some(Msg::End(cut))) => {
                        truncated = cut;
                        break;
                    }
                    Ok(Some(Msg::Failed(_, msg))) => {
                        failure = Some(msg);
                        break;
                    }
                    Ok(Some(Msg::Schema(_))) => continue,
                    Ok(None) => {
                        failure = Some(vanished().1);
                        break;
                    }
                };
                rows += next.num_rows();
                match encoder.batch(&next) {
                    Ok(bytes) => {
                        if send(bytes).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = fail(e.to_string()).await;
                        return;
                    }
                }
            }
        }
        if let Some(msg) = &failure {
            tracing::warn!(error = %msg, "query failed after its answer started");
            if format != Format::Json {
                let _ = fail(msg.clone()).await;
                return;
            }
        }
        match encoder.finish(rows, truncated, failure.as_deref()) {
            Ok(bytes) => {
                let _ = send(bytes).await;
            }
            Err(e) => {
                let _ = fail(e.to_string()).await;
            }
        }
    });
    let mut r = Response::new(axum::body::Body::from_stream(chunks));
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv",
        Format::Arrow => ARROW_STREAM,
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if cut_early {
        r.headers_mut()
            .insert("x-meterline-truncated", HeaderValue::from_static("true"));
    }
    r
}

/// A stream fed by `produce` through a small channel (back-pressure: a slow client slows the
/// query down instead of piling up its answer in memory).
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(produce(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Writes batches of one answer in its format, chunk by chunk.
enum Encoder {
    /// `{"rows":[…],"row_count":n,"truncated":b}`; decimals as text.
    Json {
        wrote_row: bool,
    },
    Csv {
        wrote_header: bool,
        /// With decimals as text, for the header of an empty answer.
        schema: SchemaRef,
    },
    Arrow(Box<datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Encoder, DataFusionError> {
        Ok(match format {
            Format::Json => Encoder::Json { wrote_row: false },
            Format::Csv => Encoder::Csv {
                wrote_header: false,
                schema: decimals_as_text(&RecordBatch::new_empty(schema.clone()))?.schema(),
            },
            Format::Arrow => Encoder::Arrow(Box::new(
                datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?,
            )),
        })
    }

    fn begin(&mut self) -> Vec<u8> {
        match self {
            Encoder::Json { .. } => b"{\"rows\":[".to_vec(),
            Encoder::Csv { .. } => vec![],
            // the schema message, written by try_new
            Encoder::Arrow(w) => std::mem::take(w.get_mut()),
        }
    }

    fn batch(&mut self, b: &RecordBatch) -> Result<Vec<u8>, DataFusionError> {
        match self {
            Encoder::Json { wrote_row } => {
                // Every column in every row, null included: clients expect a fixed shape.
                let mut w = datafusion::arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, datafusion::arrow::json::writer::LineDelimited>(Vec::new());
                w.write(&decimals_as_text(b)?)?;
                w.finish()?;
                let lines = w.into_inner();
                // one object per line (newlines inside strings are escaped): join with commas
                let mut out = Vec::with_capacity(lines.len());
                for line in lines.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                    if *wrote_row {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    *wrote_row = true;
                }
                Ok(out)
            }
            Encoder::Csv { wrote_header, .. } => {
                let mut out = vec![];
                {
                    let mut w = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(!*wrote_header)
                        .build(&mut out);
                    w.write(&decimals_as_text(b)?)?;
                }
                *wrote_header = true;
                Ok(out)
            }
            Encoder::Arrow(w) => {
                w.write(b)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    fn finish(
        &mut self,
        rows: usize,
        truncated: bool,
        failure: Option<&str>,
    ) -> Result<Vec<u8>, DataFusionError> {
        match self {
            Encoder::Json { .. } => {
                let mut tail = format!("],\"row_count\":{rows},\"truncated\":{truncated}");
                if let Some(msg) = failure {
                    let msg = serde_json::to_string(msg)
                        .map_err(|e| DataFusionError::External(e.into()))?;
                    tail.push_str(&format!(",\"error\":{msg}"));
                }
                tail.push('}');
                Ok(tail.into_bytes())
            }
            Encoder::Csv {
                wrote_header: false,
                schema,
            } => {
                // no rows: the header alone
                let empty = RecordBatch::new_empty(schema.clone());
                self.batch(&empty)
            }
            Encoder::Csv { .. } => Ok(vec![]),
            Encoder::Arrow(w) => {
                w.finish()?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
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

/// Runs `sql` in `who`'s scope under the query limits and answers it in `format`.
pub async fn scoped(
    s: &Arc<Shared>,
    who: &meterline_runtime::auth::Principal,
    sql: &str,
    format: Format,
) -> Response {
    run(s, Scope::of(who), sql.to_string(), format).await
}
