//! [`Ledger`]: the usage table. Flushes are fenced commits; readers take snapshots.
//!
//! A flush of input partition `p`, offsets `first..=last`:
//! 1. writes one Parquet file per event date under a fresh name (locally: a temp name, fsync,
//!    rename, fsync of the directory; on a bucket: one PUT), none of them in the table yet;
//! 2. commits them in one Delta transaction with `txn(p) = last`, after checking that the
//!    table's `txn(p)` is still what this writer continued from (`after`): another writer that
//!    took the partition over (a rebalance, a zombie waking up) has moved it, and this flush
//!    is refused ([`Error::Fenced`]). delta-rs's conflict check refuses the same race inside
//!    the commit (two commits setting one `appId`);
//! 3. a commit that fails leaves its files where they are: the outcome of a failed PUT of the
//!    commit file can be unknown, and a file the log may list is never deleted. The next
//!    attempt looks at the table first (was it committed after all?); files no commit lists are
//!    deleted by vacuum once older than its retention.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

use crate::handle::{commit, TableDefinition, TableHandle};
use crate::snapshot::{Snapshot, TableFile};
use crate::storage::run;
use crate::{delta, files, rows, txn_app_id, Error, LedgerConfig, Row, DATE_COLUMN};

/// Rows per Parquet row group: a compacted day of a partition is one row group up to a
/// million rows. A scan pays per row group (a reader, dictionaries, statistics, a short last
/// batch), so few large ones scan fastest; pruning inside them is by pages ([`PAGE_ROWS`],
/// page statistics and index), not by row groups.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Rows per data page (at most): the unit the page index lets a reader skip. The ledger is
/// sorted by org, cost center, team, …, so a team's rows of a file are a few consecutive
/// pages and a lead's scan (its `team IN (…)` pushed into the reader) decodes only those.
pub const PAGE_ROWS: usize = 16 * 1024;

/// The usage table.
pub struct Ledger {
    pub(crate) handle: TableHandle,
    /// The ends of the last snapshot taken, by version (asking the log for a partition's txn
    /// version replays its txn actions; a version's ends never change).
    ends: Mutex<Option<(u64, BTreeMap<i32, i64>)>>,
    /// Per partition: its txn version as of a table version. Asking delta-rs replays the
    /// txn actions of the log segment (the last checkpoint and up to 99 JSON commits) each
    /// time; from a known version on, reading the few commits since is enough.
    txns: Mutex<HashMap<i32, (u64, Option<i64>)>>,
}

/// How many commits a cached txn version is brought forward by reading them (beyond that,
/// delta-rs's own replay from the last checkpoint is cheaper).
const TXN_CATCH_UP: u64 = 200;

/// What a committed flush wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// The files, relative to the table root.
    pub files: Vec<String>,
    pub bytes: u64,
    /// The Delta version of its commit (`None`: nothing to commit).
    pub version: Option<u64>,
}

/// The table's schema: the ledger's columns (dictionary strings as strings) plus `date`.
fn table_schema() -> Result<StructType, Error> {
    let arrow = meterline_schemas::arrow_schema::usage_ledger_schema();
    let mut fields: Vec<arrow::datatypes::Field> = arrow
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            arrow::datatypes::DataType::Dictionary(_, v) => {
                f.as_ref().clone().with_data_type(v.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    fields.push(arrow::datatypes::Field::new(
        DATE_COLUMN,
        arrow::datatypes::DataType::Utf8,
        false,
    ));
    let schema = arrow::datatypes::Schema::new(fields);
    (&schema)
        .try_into_kernel()
        .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))
}

/// Writer settings of every ledger file.
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .build()
}

/// `batch` as a Parquet file's bytes.
pub(crate) fn encode(batch: &arrow::array::RecordBatch) -> Result<Vec<u8>, Error> {
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(writer_properties()))?;
    w.write(batch)?;
    Ok(w.into_inner()?)
}

/// A data file about to be committed.
pub(crate) struct NewFile {
    pub rel: String,
    pub date: String,
    pub bytes: u64,
    pub rows: usize,
    pub offsets: (i32, i64, i64),
}

impl NewFile {
    pub(crate) fn add(&self, data_change: bool) -> Action {
        let (p, lo, hi) = self.offsets;
        // per-file statistics, so an engine reading the log can skip files by partition and
        // offset (a close's cut) without opening them
        let stats = serde_json::json!({
            "numRecords": self.rows,
            "minValues": {"kafka_partition": p, "kafka_offset": lo},
            "maxValues": {"kafka_partition": p, "kafka_offset": hi},
            "nullCount": {"kafka_partition": 0, "kafka_offset": 0},
        });
        Action::Add(Add {
            partition_values: HashMap::from([(DATE_COLUMN.to_string(), Some(self.date.clone()))]),
            path: self.rel.clone(),
            size: self.bytes as i64,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change,
            stats: Some(stats.to_string()),
            ..Default::default()
        })
    }
}

pub(crate) fn remove(file: &TableFile, data_change: bool) -> Action {
    Action::Remove(Remove {
        path: file.path.clone(),
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        partition_values: Some(HashMap::from([(
            DATE_COLUMN.to_string(),
            Some(file.date.clone()),
        )])),
        size: Some(file.bytes as i64),
        extended_file_metadata: Some(true),
        ..Default::default()
    })
}

impl Ledger {
    /// The usage table of `cfg` (under `data_dir` when `cfg.url` is empty), created if there
    /// is none yet.
    pub fn open(cfg: &LedgerConfig, data_dir: &Path) -> Result<Ledger, Error> {
        let handle = TableHandle::open(
            cfg,
            data_dir,
            TableDefinition {
                name: "usage",
                comment: "meterline usage ledger: one row per priced model call",
                schema: table_schema()?,
            },
        )?;
        Ok(Ledger {
            handle,
            ends: Mutex::new(None),
            txns: Mutex::new(HashMap::new()),
        })
    }

    /// The table's URL.
    pub fn url(&self) -> &Url {
        self.handle.url()
    }

    fn table(&self) -> Result<std::sync::MutexGuard<'_, DeltaTable>, Error> {
        self.handle.lock()
    }

    /// The table now (its newest version).
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let mut t = self.table()?;
        run(t.update_state()).map_err(delta)?;
        self.snapshot_of(&t)
    }

    /// The table as it was at `version` (files a compaction replaced since are still there
    /// until vacuum removes them).
    pub fn snapshot_at(&self, version: u64) -> Result<Snapshot, Error> {
        let mut t = self.table()?.clone();
        run(t.load_version(version)).map_err(delta)?;
        self.snapshot_of(&t)
    }

    fn snapshot_of(&self, t: &DeltaTable) -> Result<Snapshot, Error> {
        let state = t.snapshot().map_err(delta)?;
        let version = state.version();
        let mut files = vec![];
        for f in state.log_data().iter() {
            let path = f.path().to_string();
            let name = path.rsplit('/').next().unwrap_or_default();
            let (partition, first, last) =
                files::parse_file_name(name).ok_or_else(|| Error::Corrupt {
                    path: path.clone(),
                    reason: "not a ledger data file name (written by another engine?)".into(),
                })?;
            let date = f
                .partition_values_map()
                .get(DATE_COLUMN)
                .cloned()
                .flatten()
                .ok_or_else(|| Error::Corrupt {
                    path: path.clone(),
                    reason: "no date partition value".into(),
                })?;
            files.push(TableFile {
                path,
                date,
                partition,
                first,
                last,
                bytes: f.size().max(0) as u64,
                modified_ms: f.modification_time(),
            });
        }
        files.sort();
        let ends = {
            let cached = self.ends.lock().expect("ends").clone();
            match cached {
                Some((v, ends)) if v == version => ends,
                _ => {
                    let mut ends = BTreeMap::new();
                    let partitions: std::collections::BTreeSet<i32> =
                        files.iter().map(|f| f.partition).collect();
                    for p in partitions {
                        if let Some(last) = self.txn_of(t, p)? {
                            ends.insert(p, last + 1);
                        }
                    }
                    *self.ends.lock().expect("ends") = Some((version, ends.clone()));
                    ends
                }
            }
        };
        let log_store = t.log_store();
        Ok(Snapshot {
            version,
            files,
            ends,
            table_url: self.url().clone(),
            prefix: object_store::path::Path::from_url_path(self.url().path())
                .map_err(|e| Error::Config(format!("{}: {e}", self.url())))?,
            root: log_store.root_object_store(None),
        })
    }

    /// Where a sink continues `partition`: 1 + its txn version in the newest table (`None`:
    /// the table has nothing of it).
    pub fn resume_at(&self, partition: i32) -> Result<Option<i64>, Error> {
        Ok(self.txn_version(partition)?.map(|v| v + 1))
    }

    /// `partition`'s txn version (its last offset) in the newest table.
    pub fn txn_version(&self, partition: i32) -> Result<Option<i64>, Error> {
        let mut t = self.table()?;
        run(t.update_state()).map_err(delta)?;
        self.txn_of(&t, partition)
    }

    /// `partition`'s txn version in `t`'s loaded version: brought forward from the cache by
    /// reading the commits since (a txn action is in the commit that set it), else asked of
    /// delta-rs.
    fn txn_of(&self, t: &DeltaTable, partition: i32) -> Result<Option<i64>, Error> {
        let version = t.version().unwrap_or_default();
        let cached = self.txns.lock().expect("txns").get(&partition).copied();
        let found = match cached {
            Some((v, txn)) if v == version => txn,
            Some((v, txn)) if v < version && version - v <= TXN_CATCH_UP => {
                match txn_since(t, partition, v, version, txn)? {
                    Some(txn) => txn,
                    None => txn_version(t, partition)?,
                }
            }
            _ => txn_version(t, partition)?,
        };
        let mut cache = self.txns.lock().expect("txns");
        if cache.get(&partition).is_none_or(|(v, _)| *v <= version) {
            cache.insert(partition, (version, found));
        }
        Ok(found)
    }

    /// Writes one flush of `partition` (input offsets `first..=last`, of which `rows` are the
    /// decodable ones) and commits it with `txn(partition) = last`, fenced: the table's txn
    /// version must still be `after` (what this writer continued from: `first - 1`, or `None`
    /// for a partition the table had nothing of). With no rows only the txn is committed, so
    /// the offsets (all poison) are not read again.
    pub fn write_flush(
        &self,
        partition: i32,
        after: Option<i64>,
        first: i64,
        last: i64,
        rows: &[Row],
    ) -> Result<Flushed, Error> {
        let mut by_date: BTreeMap<chrono::NaiveDate, Vec<&Row>> = BTreeMap::new();
        for r in rows {
            by_date
                .entry(r.priced.event.occurred_at.date_naive())
                .or_default()
                .push(r);
        }
        // 1. the files, none of them in the table yet
        let mut new = vec![];
        for (date, mut rows) in by_date {
            rows::sort(&mut rows);
            let batch = rows::to_batch(&rows)?;
            let (lo, hi) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
                (lo.min(r.offset), hi.max(r.offset))
            });
            let rel = format!(
                "{}/{}",
                files::date_dir(date),
                files::file_name(partition, first, last)
            );
            let bytes = self.handle.put(&rel, encode(&batch)?)?;
            new.push(NewFile {
                rel,
                date: date.format("%Y-%m-%d").to_string(),
                bytes,
                rows: batch.num_rows(),
                offsets: (partition, lo, hi),
            });
        }
        // 2. one commit: the files and txn(partition) = last, if the partition is still where
        //    this writer left it
        let version = self.commit_fenced(partition, after, last, &new)?;
        Ok(Flushed {
            bytes: new.iter().map(|f| f.bytes).sum(),
            files: new.into_iter().map(|f| f.rel).collect(),
            version: Some(version),
        })
    }

    /// [`Self::write_flush`] continuing wherever the table has `partition` now: for a writer
    /// that is alone by construction (`meterline rebuild` into a new directory, benchmarks,
    /// tests). A sink in a consumer group must fence with what it took over from instead.
    pub fn append(
        &self,
        partition: i32,
        first: i64,
        last: i64,
        rows: &[Row],
    ) -> Result<Flushed, Error> {
        let after = self.txn_version(partition)?;
        self.write_flush(partition, after, first, last, rows)
    }

    fn commit_fenced(
        &self,
        partition: i32,
        after: Option<i64>,
        last: i64,
        new: &[NewFile],
    ) -> Result<u64, Error> {
        let mut t = self.table()?;
        run(t.update_state()).map_err(delta)?;
        let found = self.txn_of(&t, partition)?;
        if found == Some(last) && committed(&t, new)? {
            return Ok(t.version().unwrap_or_default()); // an earlier attempt did commit
        }
        if found != after {
            return Err(Error::Fenced {
                partition,
                expected: after,
                found,
            });
        }
        let mut actions: Vec<Action> = new.iter().map(|f| f.add(true)).collect();
        actions.push(Action::Txn(Transaction::new_with_last_update(
            txn_app_id(partition),
            last,
            Some(chrono::Utc::now().timestamp_millis()),
        )));
        let op = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![DATE_COLUMN.to_string()]),
            predicate: None,
        };
        match commit(&mut t, actions, op) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Who won? A conflict on the txn (another writer committed the partition) is a
                // fence; a commit that landed although its call failed is a success.
                drop(t);
                let found = self.txn_version(partition)?;
                let t = self.table()?;
                if found == Some(last) && committed(&t, new)? {
                    Ok(t.version().unwrap_or_default())
                } else if found != after {
                    Err(Error::Fenced {
                        partition,
                        expected: after,
                        found,
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Commits `actions` on the newest table (delta-rs retries a lost race when the winner's
    /// actions do not conflict, e.g. another writer's appends).
    pub(crate) fn commit_actions(
        &self,
        actions: Vec<Action>,
        op: DeltaOperation,
    ) -> Result<u64, Error> {
        let mut t = self.table()?;
        commit(&mut t, actions, op)
    }
}

/// `partition`'s txn version at `to`, from its version `txn` at `from` and the commits in
/// between; `None` if one of them cannot be read (removed behind a checkpoint).
fn txn_since(
    t: &DeltaTable,
    partition: i32,
    from: u64,
    to: u64,
    mut txn: Option<i64>,
) -> Result<Option<Option<i64>>, Error> {
    let app = txn_app_id(partition);
    let log_store = t.log_store();
    for version in from + 1..=to {
        let Some(commit) = run(log_store.read_commit_entry(version)).map_err(delta)? else {
            return Ok(None);
        };
        for line in commit.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)?;
            if let Some(t) = action.get("txn") {
                if t["appId"].as_str() == Some(app.as_str()) {
                    txn = t["version"].as_i64();
                }
            }
        }
    }
    Ok(Some(txn))
}

/// `partition`'s txn version in `t`'s loaded version, asked of delta-rs.
fn txn_version(t: &DeltaTable, partition: i32) -> Result<Option<i64>, Error> {
    let state = t.snapshot().map_err(delta)?;
    let log_store = t.log_store();
    run(state.transaction_version(log_store.as_ref(), txn_app_id(partition))).map_err(delta)
}

/// Whether every one of `new` is in `t`'s loaded version (an empty flush: trivially).
fn committed(t: &DeltaTable, new: &[NewFile]) -> Result<bool, Error> {
    if new.is_empty() {
        return Ok(true);
    }
    let state = t.snapshot().map_err(delta)?;
    let live: std::collections::HashSet<String> = state
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect();
    Ok(new.iter().all(|f| live.contains(&f.rel)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::example_row as row;

    fn ledger(dir: &Path) -> Ledger {
        Ledger::open(&LedgerConfig::default(), dir).unwrap()
    }

    fn rows_in(s: &Snapshot) -> usize {
        s.files
            .iter()
            .map(|f| {
                parquet::file::reader::SerializedFileReader::new(s.read(f).unwrap())
                    .map(|r| {
                        use parquet::file::reader::FileReader;
                        r.metadata().file_metadata().num_rows() as usize
                    })
                    .unwrap()
            })
            .sum()
    }

    /// Every 100th version is checkpointed, so a process opening the table reads one
    /// checkpoint and at most 99 JSON commits; a new handle resumes from it exactly.
    #[test]
    fn checkpoints_every_100_versions_and_a_new_handle_resumes_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        l.write_flush(0, None, 0, 0, &[row(0, 0, 1, "0.5", "USD")])
            .unwrap();
        for o in 1..=205 {
            l.write_flush(1 + o as i32 % 2, (o > 2).then_some(o - 2), o, o, &[])
                .unwrap();
        }
        let log = dir.path().join("usage/_delta_log");
        let mut checkpoints: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".checkpoint."))
            .collect();
        checkpoints.sort();
        assert_eq!(
            checkpoints,
            [
                "00000000000000000099.checkpoint.parquet",
                "00000000000000000199.checkpoint.parquet"
            ]
        );
        let again = ledger(dir.path());
        assert_eq!(again.snapshot().unwrap().version, 206);
        assert_eq!(again.resume_at(0).unwrap(), Some(1));
        assert_eq!(again.resume_at(1).unwrap(), Some(205));
        assert_eq!(again.resume_at(2).unwrap(), Some(206));
        assert_eq!(rows_in(&again.snapshot().unwrap()), 1);
    }

    #[test]
    fn a_flush_is_one_commit_with_its_files_and_the_partition_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        assert_eq!(l.resume_at(0).unwrap(), None);
        let rows = [
            row(0, 10, 1, "0.5", "USD"),
            row(0, 11, 2, "0.25", "USD"),
            row(0, 12, 1, "1", "USD"),
        ];
        let f = l.write_flush(0, None, 10, 12, &rows).unwrap();
        assert_eq!(f.files.len(), 2, "one file per event date");
        assert!(f.files[0].starts_with("date=2026-03-01/part-0-10-12-"));
        assert_eq!(l.resume_at(0).unwrap(), Some(13));
        assert_eq!(l.resume_at(1).unwrap(), None);
        let s = l.snapshot().unwrap();
        assert_eq!(s.version, f.version.unwrap());
        assert_eq!(s.ends, BTreeMap::from([(0, 13)]));
        assert_eq!(rows_in(&s), 3);
        // a flush of poison only: no file, but the offsets are done
        let f = l.write_flush(0, Some(12), 13, 20, &[]).unwrap();
        assert!(f.files.is_empty());
        assert_eq!(l.resume_at(0).unwrap(), Some(21));
        // a second handle (another process) sees the same table
        assert_eq!(ledger(dir.path()).resume_at(0).unwrap(), Some(21));
    }

    /// Two writers continue one partition from the same point (a rebalance, a zombie): the
    /// second commit is refused, its files are not in the table, and every row is in it once.
    #[test]
    fn the_txn_version_fences_a_second_writer_of_a_partition() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ledger(dir.path()), ledger(dir.path()));
        a.write_flush(
            3,
            None,
            0,
            1,
            &[row(3, 0, 1, "1", "USD"), row(3, 1, 1, "1", "USD")],
        )
        .unwrap();
        // both took the partition over at offset 2
        let after = a.txn_version(3).unwrap();
        assert_eq!(after, Some(1));
        b.write_flush(
            3,
            after,
            2,
            3,
            &[row(3, 2, 1, "1", "USD"), row(3, 3, 1, "1", "USD")],
        )
        .unwrap();
        let late = a.write_flush(3, after, 2, 2, &[row(3, 2, 1, "1", "USD")]);
        match late {
            Err(Error::Fenced {
                partition: 3,
                expected: Some(1),
                found: Some(3),
            }) => {}
            other => panic!("not fenced: {other:?}"),
        }
        assert!(!late.as_ref().unwrap_err().is_retryable());
        let s = a.snapshot().unwrap();
        assert_eq!(rows_in(&s), 4);
        assert_eq!(s.ends, BTreeMap::from([(3, 4)]));
        // the refused flush's file is on disk, outside the table, until vacuum
        let on_disk = std::fs::read_dir(dir.path().join("usage/date=2026-03-01"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 3);
        let v = a.vacuum(std::time::Duration::ZERO, false).unwrap();
        assert_eq!(v.files.len(), 1, "{v:?}");
        assert_eq!(rows_in(&a.snapshot().unwrap()), 4);
    }

    /// Writers race on different partitions: delta-rs retries the lost race (appends do not
    /// conflict), every flush lands.
    #[test]
    fn concurrent_writers_of_different_partitions_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        ledger(dir.path());
        std::thread::scope(|s| {
            for p in 0..4 {
                let dir = dir.path();
                s.spawn(move || {
                    let l = ledger(dir);
                    let mut after = None;
                    for i in 0..5i64 {
                        l.write_flush(p, after, i, i, &[row(p, i, 1, "0.1", "USD")])
                            .unwrap();
                        after = Some(i);
                    }
                });
            }
        });
        let l = ledger(dir.path());
        let s = l.snapshot().unwrap();
        assert_eq!(s.files.len(), 20);
        assert_eq!(s.ends, (0..4).map(|p| (p, 5)).collect());
    }
}
