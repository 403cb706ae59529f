//! The anomalies table: one Parquet file per hour, `<data_dir>/anomalies/date=…/hour-HH.parquet`
//! (the API's `anomalies` view), replaced whole when an hour's findings are recomputed.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Timelike, Utc};
use meterline_schemas::arrow_schema::money_type;
use meterline_schemas::{Anomaly, Money};
use parquet::file::properties::WriterProperties;

use crate::Error;

/// Writes (replaces) `<data_dir>/anomalies/date=…/hour-HH.parquet` with `records`.
pub fn write_hour_file(
    data_dir: &std::path::Path,
    hour: DateTime<Utc>,
    records: &[Anomaly],
) -> Result<(), Error> {
    let dir = data_dir
        .join("anomalies")
        .join(format!("date={}", hour.format("%Y-%m-%d")));
    std::fs::create_dir_all(&dir).map_err(crate::io(&dir))?;
    let path = dir.join(format!("hour-{:02}.parquet", hour.hour()));
    let batch = to_batch(records)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(
        Vec::new(),
        batch.schema(),
        Some(WriterProperties::default()),
    )?;
    w.write(&batch)?;
    crate::table::write_durably(&path, &w.into_inner()?)
}

/// Arrow schema of `data/anomalies` (the API's `anomalies` view).
pub fn anomalies_schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("anomaly_id", DataType::Utf8, false),
        Field::new("scope_kind", DataType::Utf8, false),
        Field::new("scope_value", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts.clone(), false),
        Field::new("observed", money_type(), false),
        Field::new("expected", money_type(), false),
        Field::new("score", DataType::Float64, false),
        Field::new("method", DataType::Utf8, false),
        // JSON array of {kind, value, spend}
        Field::new("top_contributors", DataType::Utf8, false),
        Field::new("detected_at", ts, false),
    ]))
}

fn to_batch(rs: &[Anomaly]) -> Result<RecordBatch, Error> {
    let s = |f: &dyn Fn(&Anomaly) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rs.iter().map(f).collect::<Vec<_>>()))
    };
    let ts = |f: &dyn Fn(&Anomaly) -> DateTime<Utc>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(
                rs.iter()
                    .map(|r| f(r).timestamp_micros())
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let m = |f: &dyn Fn(&Anomaly) -> Money| -> Result<ArrayRef, Error> {
        Ok(Arc::new(
            Decimal128Array::from(rs.iter().map(|r| f(r).to_unscaled()).collect::<Vec<_>>())
                .with_data_type(money_type()),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        s(&|r| r.anomaly_id.clone()),
        s(&|r| {
            r.scope
                .label()
                .split_once(':')
                .map(|x| x.0.to_string())
                .unwrap_or_default()
        }),
        s(&|r| r.scope.value.clone()),
        Arc::new(StringArray::from(
            rs.iter().map(|r| r.model.clone()).collect::<Vec<_>>(),
        )),
        s(&|r| r.kind.clone()),
        ts(&|r| r.window_start),
        ts(&|r| r.window_end),
        m(&|r| r.observed)?,
        m(&|r| r.expected)?,
        Arc::new(Float64Array::from(
            rs.iter().map(|r| r.score).collect::<Vec<_>>(),
        )),
        s(&|r| r.method.clone()),
        s(&|r| serde_json::to_string(&r.top_contributors).unwrap_or_default()),
        ts(&|r| r.at),
    ];
    Ok(RecordBatch::try_new(anomalies_schema(), columns)?)
}
