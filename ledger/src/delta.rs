//! The ledger's Delta Lake log (`<data_dir>/usage/_delta_log`, written with delta-rs): what
//! any engine that reads Delta (DuckDB, Spark, Trino, the `deltalake` Python package) sees
//! of the ledger, transactionally.
//!
//! The files and their footers stay the ledger's own record of progress (`files.rs`); the log
//! publishes exactly their complete view:
//!
//! 1. a flush is one commit: an `add` per file it wrote (partition `date`) and a `txn` action
//!    `meterline-usage-p<partition>` with the flush's last offset — the kafka-delta-ingest
//!    shape, so a reader knows how far each partition is in;
//! 2. a compaction is one commit that adds the merged file and removes the originals
//!    (`dataChange = false`), written *before* the originals are deleted, so no reader of the
//!    log ever sees a row twice or misses one;
//! 3. after a crash, [`DeltaLog::reconcile`] (run by the writer on start) commits whatever
//!    the files say and the log does not: complete flushes written but not yet committed are
//!    added, files deleted by recovery (incomplete flushes, compacted originals) are removed.
//!
//! A half-written flush is never in the log: readers of the log never see one. Every 100th
//! commit writes a checkpoint, so opening the table does not replay its whole history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;
use meterline_schemas::arrow_schema::usage_ledger_schema;

use crate::files::FoundFile;
use crate::Error;

/// `appId` of a priced partition's `txn` action; its `version` is the partition's last
/// offset in the log.
pub const TXN_APP_PREFIX: &str = "meterline-usage-p";

/// The Delta partition column: the event date of the file's directory (`date=YYYY-MM-DD`).
pub const DATE_COLUMN: &str = "date";

/// The `txn` app id of a partition.
pub fn txn_app_id(partition: i32) -> String {
    format!("{TXN_APP_PREFIX}{partition}")
}

/// An open Delta log of the ledger, with the runtime its I/O runs on (the sink is a blocking
/// thread).
pub struct DeltaLog {
    table: DeltaTable,
    usage_dir: PathBuf,
}

fn delta(e: deltalake::DeltaTableError) -> Error {
    Error::Delta(Box::new(e))
}

/// The table's schema: the ledger's columns (dictionary strings as strings) plus `date`.
fn table_schema() -> Result<StructType, Error> {
    let arrow = usage_ledger_schema();
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

/// Relative path of a file in the table (`date=…/part-….parquet`).
fn relative(usage_dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(usage_dir).ok()?;
    Some(
        rel.to_string_lossy()
            .replace(std::path::MAIN_SEPARATOR, "/"),
    )
}

fn date_of(rel: &str) -> Option<String> {
    rel.split('/')
        .next()?
        .strip_prefix(&format!("{DATE_COLUMN}="))
        .map(str::to_string)
}

/// The runtime delta-rs's I/O runs on: one for the process, never dropped (a runtime may not
/// be dropped inside another one, and the ledger's callers may be in one).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delta-log")
            .enable_all()
            .build()
            .expect("a tokio runtime for the Delta log")
    })
}

/// Runs `f` to completion from a thread of its own: callers may be inside another runtime
/// (an async test, a handler), where blocking their thread on a runtime would panic.
fn run<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(f))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl DeltaLog {
    /// Opens the log of the ledger in `usage_dir`, creating the table if there is none.
    pub fn open(usage_dir: &Path) -> Result<DeltaLog, Error> {
        let url = url::Url::from_directory_path(usage_dir).map_err(|()| {
            Error::Fatal(format!(
                "{} is not an absolute directory path",
                usage_dir.display()
            ))
        })?;
        let table = run(async {
            let table = DeltaTable::try_from_url(url).await.map_err(delta)?;
            if table.version().is_some() {
                return Ok(table);
            }
            table
                .create()
                .with_table_name("usage")
                .with_comment("meterline usage ledger: one row per priced model call")
                .with_columns(table_schema()?.fields().cloned())
                .with_partition_columns([DATE_COLUMN])
                .await
                .map_err(delta)
        })?;
        Ok(DeltaLog {
            table,
            usage_dir: usage_dir.to_path_buf(),
        })
    }

    /// Relative paths of the files in the current version.
    pub fn active_files(&self) -> Result<BTreeSet<String>, Error> {
        let state = self.table.snapshot().map_err(delta)?;
        Ok(state
            .log_data()
            .into_iter()
            .map(|add| add.object_store_path().to_string())
            .collect())
    }

    /// The last offset of `partition` in the log.
    pub fn txn_version(&self, partition: i32) -> Result<Option<i64>, Error> {
        let state = self.table.snapshot().map_err(delta)?;
        let log_store = self.table.log_store();
        run(state.transaction_version(log_store.as_ref(), txn_app_id(partition))).map_err(delta)
    }

    fn add(&self, file: &Path, data_change: bool) -> Result<Action, Error> {
        let rel = relative(&self.usage_dir, file)
            .ok_or_else(|| Error::Fatal(format!("{} is outside the ledger", file.display())))?;
        let meta = std::fs::metadata(file).map_err(crate::io(file))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Action::Add(Add {
            partition_values: HashMap::from([(DATE_COLUMN.to_string(), date_of(&rel))]),
            path: rel,
            size: meta.len() as i64,
            modification_time: modified,
            data_change,
            ..Default::default()
        }))
    }

    fn remove(rel: &str, data_change: bool) -> Action {
        Action::Remove(Remove {
            path: rel.to_string(),
            data_change,
            deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
            partition_values: Some(HashMap::from([(DATE_COLUMN.to_string(), date_of(rel))])),
            ..Default::default()
        })
    }

    /// One commit: `added` files (on disk), `removed` files (relative paths), and the
    /// partitions' last offsets.
    fn commit(
        &mut self,
        actions: Vec<Action>,
        txns: &BTreeMap<i32, i64>,
        operation: DeltaOperation,
    ) -> Result<(), Error> {
        let mut actions = actions;
        let now = chrono::Utc::now().timestamp_millis();
        actions.extend(txns.iter().map(|(p, last)| {
            Action::Txn(Transaction::new_with_last_update(
                txn_app_id(*p),
                *last,
                Some(now),
            ))
        }));
        if actions.is_empty() {
            return Ok(());
        }
        let log_store = self.table.log_store();
        let finalized = run(async {
            let snapshot = self.table.snapshot().map_err(delta)?;
            // Checkpoints: every `delta.checkpointInterval` commits (100 by default) the
            // post-commit hook writes the state as a Parquet checkpoint, so opening the table
            // (the writer on start, any reader) reads one checkpoint plus at most 99 JSON
            // commits, not every commit since the table began; txn versions are in it too.
            // Expired JSON commits (older than `delta.logRetentionDuration`, 30 days) are
            // removed behind a checkpoint, as Delta's own writers do.
            CommitBuilder::from(CommitProperties::default().with_create_checkpoint(true))
                .with_actions(actions)
                .build(Some(snapshot), log_store, operation)
                .await
                .map_err(delta)
        })?;
        self.table.state = Some(finalized.snapshot());
        Ok(())
    }

    /// Publishes one flush of `partition` ending at offset `last`: its files, one commit.
    pub fn commit_flush(
        &mut self,
        partition: i32,
        last: i64,
        files: &[PathBuf],
    ) -> Result<(), Error> {
        let adds = files
            .iter()
            .map(|f| self.add(f, true))
            .collect::<Result<Vec<_>, _>>()?;
        self.commit(
            adds,
            &BTreeMap::from([(partition, last)]),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![DATE_COLUMN.to_string()]),
                predicate: None,
            },
        )
    }

    /// Publishes a compaction: `merged` replaces `originals`, no data changed.
    pub fn commit_compaction(&mut self, merged: &Path, originals: &[PathBuf]) -> Result<(), Error> {
        let mut actions = vec![self.add(merged, false)?];
        for o in originals {
            if let Some(rel) = relative(&self.usage_dir, o) {
                actions.push(Self::remove(&rel, false));
            }
        }
        self.commit(
            actions,
            &BTreeMap::new(),
            DeltaOperation::Optimize {
                predicate: None,
                target_size: 0,
            },
        )
    }

    /// Makes the log say what the files say: `complete` is the ledger's complete view (the
    /// files that count, and each partition's last complete offset). Returns (added, removed).
    pub fn reconcile(
        &mut self,
        complete: &[&FoundFile],
        watermarks: &BTreeMap<i32, i64>,
    ) -> Result<(usize, usize), Error> {
        let logged = self.active_files()?;
        let wanted: BTreeMap<String, &FoundFile> = complete
            .iter()
            .filter_map(|f| relative(&self.usage_dir, &f.path).map(|r| (r, *f)))
            .collect();
        let mut actions = vec![];
        for (rel, f) in &wanted {
            if !logged.contains(rel) {
                actions.push(self.add(&f.path, true)?);
            }
        }
        let added = actions.len();
        for rel in &logged {
            if !wanted.contains_key(rel) {
                actions.push(Self::remove(rel, true));
            }
        }
        let removed = actions.len() - added;
        // txn versions move forward only
        let mut txns = BTreeMap::new();
        for (p, last) in watermarks {
            if self.txn_version(*p)?.is_none_or(|v| v < *last) {
                txns.insert(*p, *last);
            }
        }
        if actions.is_empty() && txns.is_empty() {
            return Ok((0, 0));
        }
        self.commit(
            actions,
            &txns,
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![DATE_COLUMN.to_string()]),
                predicate: None,
            },
        )?;
        Ok((added, removed))
    }
}
