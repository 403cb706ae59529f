//! The anomalies table: a Delta table beside the usage table (`<ledger url>/anomalies`),
//! partitioned by `date`, one file per hour with findings (`date=…/hour-HH-<id>.parquet`).
//! Recomputing an hour (watch after a restart, `meterline derive`) replaces its file in one
//! commit, so a reader sees the old findings or the new ones, never both or neither.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Timelike, Utc};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, Add, Remove, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use meterline_schemas::arrow_schema::money_type;
use meterline_schemas::{Anomaly, Money};

use crate::handle::{commit, TableDefinition, TableHandle};
use crate::snapshot::Listing;
use crate::storage::run;
use crate::{delta, Error, LedgerConfig, DATE_COLUMN};

/// The anomalies table, as watch writes it and the API reads it.
pub struct AnomalyTable {
    handle: TableHandle,
}

/// The anomalies table at one version.
#[derive(Clone)]
pub struct AnomalySnapshot {
    /// The Delta version.
    pub version: u64,
    /// Its data files (relative to the table), in path order.
    pub files: Vec<String>,
    listing: Listing,
    table_url: url::Url,
    store: Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
}

impl AnomalyTable {
    /// The anomalies table of `cfg` (under `data_dir` when `cfg.url` is empty), created if
    /// there is none yet.
    pub fn open(cfg: &LedgerConfig, data_dir: &Path) -> Result<AnomalyTable, Error> {
        let mut fields: Vec<Field> = anomalies_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(DATE_COLUMN, DataType::Utf8, false));
        let schema: StructType = (&Schema::new(fields))
            .try_into_kernel()
            .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))?;
        let handle = TableHandle::open(
            cfg,
            data_dir,
            TableDefinition {
                name: "anomalies",
                comment: "meterline spend anomalies: the findings of each evaluated hour",
                schema,
            },
        )?;
        Ok(AnomalyTable { handle })
    }

    /// Replaces the findings of `hour` with `records` (none: the hour has no findings): the
    /// new file first, then one commit removing the hour's files and adding it.
    pub fn replace_hour(&self, hour: DateTime<Utc>, records: &[Anomaly]) -> Result<(), Error> {
        let date = hour.format("%Y-%m-%d").to_string();
        let stem = format!("{DATE_COLUMN}={date}/hour-{:02}-", hour.hour());
        let partition_values =
            || std::collections::HashMap::from([(DATE_COLUMN.to_string(), Some(date.clone()))]);
        // 1. the new file, not in the table yet
        let mut actions = vec![];
        if !records.is_empty() {
            let rel = format!("{stem}{:016x}.parquet", rand::random::<u64>());
            let bytes = crate::table::encode(&to_batch(records)?)?;
            let size = self.handle.put(&rel, bytes)?;
            actions.push(Action::Add(Add {
                partition_values: partition_values(),
                path: rel,
                size: size as i64,
                modification_time: Utc::now().timestamp_millis(),
                data_change: true,
                stats: Some(serde_json::json!({ "numRecords": records.len() }).to_string()),
                ..Default::default()
            }));
        }
        // 2. one commit: the hour's earlier files out, the new one in
        let mut t = self.handle.newest()?;
        let state = t.snapshot().map_err(delta)?;
        for f in state.log_data().iter() {
            let path = f.path().to_string();
            if path.starts_with(&stem) {
                actions.push(Action::Remove(Remove {
                    path,
                    data_change: true,
                    deletion_timestamp: Some(Utc::now().timestamp_millis()),
                    partition_values: Some(partition_values()),
                    size: Some(f.size()),
                    extended_file_metadata: Some(true),
                    ..Default::default()
                }));
            }
        }
        if actions.is_empty() {
            return Ok(());
        }
        let op = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: Some(vec![DATE_COLUMN.to_string()]),
            predicate: Some(format!(
                "{DATE_COLUMN} = '{date}' AND hour(window_start) = {}",
                hour.hour()
            )),
        };
        let version = commit(&mut t, actions, op)?;
        self.handle.sync_commit(version)?;
        Ok(())
    }

    /// The table now (its newest version).
    pub fn snapshot(&self) -> Result<AnomalySnapshot, Error> {
        let t = self.handle.newest()?;
        let state = t.snapshot().map_err(delta)?;
        let mut files: Vec<(String, u64, i64)> = state
            .log_data()
            .iter()
            .map(|f| {
                (
                    f.path().to_string(),
                    f.size().max(0) as u64,
                    f.modification_time(),
                )
            })
            .collect();
        files.sort();
        let url = self.handle.url();
        let prefix = object_store::path::Path::from_url_path(url.path())
            .map_err(|e| Error::Config(format!("{url}: {e}")))?;
        let store = t.log_store().root_object_store(None);
        Ok(AnomalySnapshot {
            version: state.version(),
            listing: Listing::new(
                url,
                prefix.clone(),
                store.clone(),
                files.iter().map(|(p, b, m)| (p.as_str(), *b, *m)),
            ),
            files: files.into_iter().map(|f| f.0).collect(),
            table_url: url.clone(),
            store,
            prefix,
        })
    }

    /// Deletes files replaced longer ago than `retention` (see [`crate::Ledger::vacuum`]).
    pub fn vacuum(
        &self,
        retention: std::time::Duration,
        dry_run: bool,
    ) -> Result<crate::Vacuumed, Error> {
        self.handle.vacuum(retention, dry_run)
    }
}

impl std::fmt::Debug for AnomalySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalySnapshot")
            .field("version", &self.version)
            .field("files", &self.files.len())
            .field("table_url", &self.table_url.as_str())
            .finish()
    }
}

impl AnomalySnapshot {
    /// The table's URL (`file:///…/anomalies/`, `s3://bucket/prefix/anomalies/`).
    pub fn table_url(&self) -> &url::Url {
        &self.table_url
    }

    /// Its files as a store lists them (see [`crate::listing_store`]).
    pub fn listing(&self) -> Listing {
        self.listing.clone()
    }

    /// Every finding of this version, as Arrow batches in [`anomalies_schema`] (without
    /// `date`, which is in the files' paths).
    pub fn read_all(&self) -> Result<Vec<RecordBatch>, Error> {
        let mut out = vec![];
        for rel in &self.files {
            let location: object_store::path::Path = self
                .prefix
                .parts()
                .chain(object_store::path::Path::from(rel.as_str()).parts())
                .collect();
            let store = self.store.clone();
            let bytes = run(async move {
                use object_store::ObjectStoreExt;
                store.get(&location).await?.bytes().await
            })?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
                    .build()?;
            for batch in reader {
                out.push(batch?);
            }
        }
        Ok(out)
    }
}

/// Arrow schema of the anomalies table's files (the API's `anomalies` table adds `date`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use meterline_schemas::{Scope, ScopeKind};

    fn finding(team: &str, hour: DateTime<Utc>, observed: &str) -> Anomaly {
        Anomaly {
            anomaly_id: format!("spend_spike/team:{team}/*/{hour}"),
            scope: Scope {
                kind: ScopeKind::Team,
                value: team.into(),
            },
            model: None,
            kind: "spend_spike".into(),
            window_start: hour,
            window_end: hour + chrono::Duration::hours(1),
            observed: observed.parse().unwrap(),
            expected: "1".parse().unwrap(),
            score: 9.0,
            method: "median".into(),
            top_contributors: vec![],
            at: hour + chrono::Duration::hours(2),
        }
    }

    fn teams(s: &AnomalySnapshot) -> Vec<(String, String)> {
        let mut out = vec![];
        for b in s.read_all().unwrap() {
            let team = b.column_by_name("scope_value").unwrap().as_string::<i32>();
            let observed = b
                .column_by_name("observed")
                .unwrap()
                .as_primitive::<arrow::datatypes::Decimal128Type>();
            for i in 0..b.num_rows() {
                let m = Money::from_unscaled(observed.value(i)).unwrap();
                out.push((team.value(i).to_string(), m.to_string()));
            }
        }
        out.sort();
        out
    }

    /// An hour recomputed replaces its findings in one commit; other hours stay; an hour
    /// recomputed without findings has none; vacuum then deletes exactly the replaced files.
    #[test]
    fn an_hour_is_replaced_whole_and_vacuum_removes_what_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let table = AnomalyTable::open(&LedgerConfig::default(), dir.path()).unwrap();
        let h5: DateTime<Utc> = "2026-11-02T05:00:00Z".parse().unwrap();
        let h6 = h5 + chrono::Duration::hours(1);
        table
            .replace_hour(h5, &[finding("a", h5, "30.5"), finding("b", h5, "7")])
            .unwrap();
        table.replace_hour(h6, &[finding("c", h6, "2")]).unwrap();
        let first = table.snapshot().unwrap();
        assert_eq!(first.files.len(), 2);
        assert_eq!(teams(&first).len(), 3);

        table.replace_hour(h5, &[finding("a", h5, "31")]).unwrap();
        let second = table.snapshot().unwrap();
        assert_eq!(second.version, first.version + 1, "one commit");
        assert_eq!(
            teams(&second),
            [("a".into(), "31".into()), ("c".into(), "2".into())]
        );
        assert!(second
            .files
            .iter()
            .all(|f| f.starts_with("date=2026-11-02/hour-0")));

        table.replace_hour(h6, &[]).unwrap();
        assert_eq!(
            teams(&table.snapshot().unwrap()),
            [("a".into(), "31".into())]
        );
        table.replace_hour(h6, &[]).unwrap();
        assert_eq!(
            table.snapshot().unwrap().version,
            second.version + 1,
            "nothing to replace: no commit"
        );

        let vacuumed = table.vacuum(std::time::Duration::ZERO, false).unwrap();
        let mut replaced: Vec<String> = first.files.clone();
        replaced.sort();
        assert_eq!(vacuumed.files, replaced, "the two replaced hours' files");
        assert_eq!(
            teams(&table.snapshot().unwrap()),
            [("a".into(), "31".into())]
        );
    }
}
