//! Reports: stable HTTP endpoints with SQL inside.
//! - `chargeback`: a month's cost per cost center / team / project and model (the SQL, which
//!   rows a month holds, the route); closed months from their snapshot (`crate::closes`);
//! - `statement`: what a chargeback is (lines, totals) and its cents, allocated so they sum
//!   exactly (`cents`); `render`: as JSON, CSV or FOCUS 1.2 (`focus`). Neither knows how a
//!   statement is computed, so nothing here depends back on `chargeback`;
//! - `showback`: spend over any range by any dimensions and time bucket;
//! - `status`: anomalies and budget status.

pub mod cents;
pub mod chargeback;
pub mod focus;
mod render;
pub mod showback;
mod statement;
pub mod status;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};

use crate::Error;

fn column(b: &RecordBatch, name: &str) -> Result<ArrayRef, Error> {
    b.column_by_name(name)
        .cloned()
        .ok_or_else(|| Error::Query(format!("report query has no column {name}")))
}

/// A text column (any string or dictionary type), NULL as `None`.
pub(crate) fn strings(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, Error> {
    let a = cast(&column(b, name)?, &DataType::Utf8).map_err(Error::query)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
        .collect())
}

pub(crate) fn ints(b: &RecordBatch, name: &str) -> Result<Vec<i64>, Error> {
    let a = cast(&column(b, name)?, &DataType::Int64).map_err(Error::query)?;
    let a = a.as_primitive::<Int64Type>();
    Ok((0..a.len())
        .map(|i| if a.is_valid(i) { a.value(i) } else { 0 })
        .collect())
}

/// A `Decimal128(38, 18)` money column unscaled (NULL as zero: sums of no rows): summed
/// exactly as integers (checked), made a decimal once (`Money::from_unscaled`).
pub(crate) fn unscaled_money(b: &RecordBatch, name: &str) -> Result<Vec<i128>, Error> {
    let a = column(b, name)?;
    let money = DataType::Decimal128(38, meterline_schemas::money::MONEY_SCALE as i8);
    if a.data_type() != &money {
        return Err(Error::Query(format!(
            "{name}: {} is not money ({money})",
            a.data_type()
        )));
    }
    let a = a.as_primitive::<Decimal128Type>();
    Ok((0..a.len())
        .map(|i| if a.is_null(i) { 0 } else { a.value(i) })
        .collect())
}

/// Every row of `sql` (a report query built from validated parameters only).
pub(crate) async fn collect(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> Result<Vec<RecordBatch>, Error> {
    ctx.sql_with_options(sql, crate::answer::read_only())
        .await
        .map_err(Error::query)?
        .collect()
        .await
        .map_err(Error::query)
}

pub(crate) type Shared = Arc<crate::Shared>;

/// A report's query string, or the 400 naming what is wrong with it.
pub(crate) fn params<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, axum::response::Response> {
    q.map(|axum::extract::Query(q)| q)
        .map_err(|e| crate::error(axum::http::StatusCode::BAD_REQUEST, e.body_text()))
}

/// The start every scoped report shares (its caller already authenticated): its query
/// string (400 naming what is wrong), and the answer format (`format=` or `Accept`).
pub(crate) fn begin<T>(
    headers: &axum::http::HeaderMap,
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
    format: impl FnOnce(&T) -> Option<&str>,
) -> Result<(T, crate::answer::Format), axum::response::Response> {
    let q = params(q)?;
    let f = crate::answer::Format::negotiate(format(&q), headers)?;
    Ok((q, f))
}

/// A timestamp as a SQL `TIMESTAMP '…'` literal body (µs, UTC).
pub(crate) fn sql_timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A CSV document: `header`, then `rows` (empty cell = null).
pub(crate) fn csv_bytes<H: AsRef<[u8]>>(
    header: impl IntoIterator<Item = H>,
    rows: impl IntoIterator<Item = Result<Vec<String>, Error>>,
) -> Result<Vec<u8>, Error> {
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record(header)?;
    for r in rows {
        w.write_record(r?)?;
    }
    w.into_inner()
        .map_err(|e| Error::Csv(csv::Error::from(e.into_error())))
}
