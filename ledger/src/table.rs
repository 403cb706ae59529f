//! [`Ledger`]: the usage table. Flushes are fenced commits; readers take snapshots.
//!
//! A flush of input partition `p`, offsets `first..=last`:
//! 1. writes one Parquet file per event date under a fresh name (locally: a temp name, fsync,
//!    rename, fsync of the directory; on a bucket: one PUT), none of them in the table yet;
//! 2. commits them in one Delta transaction with `txn(p) = last`, after checking that the
//!    table's `txn(p)` is still what this writer continued from (`after`): another writer that
//!    took the partition over (a rebalance, a zombie waking up) has moved it, and this flush
//!    is refused ([`Error::Fenced`]). The commit is one put-if-absent of the next version,
//!    without the table's file list ([`crate::append`]): a version another writer took is
//!    read (its txn actions may fence this flush) and the next one tried;
//! 3. a commit that fails leaves its files where they are: the outcome of a failed PUT of the
//!    commit file can be unknown, and a file the log may list is never deleted. The writer
//!    reads the log to see whether it landed; a later retry of the same offsets (new file
//!    names, same records) is recognised as committed, never committed twice.
//!    Files no commit lists are deleted by vacuum once older than its retention.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::PROTOCOL;
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::DeltaTable;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

use crate::append::{self, Attempt, CommitEntry, Tip};
use crate::checkpointer::Checkpointer;
use crate::files::{spans_tag, OFFSETS_TAG};
use crate::handle::{cleans_up_log, commit, writes_checkpoint, TableDefinition, TableHandle};
use crate::snapshot::{OffsetSpan, Snapshot, TableFile};
use crate::storage::run;
use crate::{delta, files, rows, txn_app_id, Error, LedgerConfig, Row, DATE_COLUMN};

/// Rows per Parquet row group: a compacted day is one row group up to a million rows. A scan pays per row group (a reader, dictionaries, statistics, a short last
/// batch), so few large ones scan fastest; pruning inside them is by pages ([`PAGE_ROWS`],
/// page statistics and index), not by row groups.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Rows per data page (at most): the unit the page index lets a reader skip. The ledger is
/// sorted by team first (`rows::sort`), so a team's rows of a file are a few consecutive
/// pages and a lead's scan (its `team IN (…)` pushed into the reader) decompresses and
/// decodes only those. 4k rather than 16k rows: a lead's chargeback took 0.32 instead of
/// 0.36–0.41 CPU s (20M rows, 124 files), finance's scan ~5 % more, files 4 % larger.
pub const PAGE_ROWS: usize = 4 * 1024;

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
    /// The writer's view of the log's newest version (see [`crate::append`]).
    tip: Mutex<Option<Tip>>,
    checkpointer: Checkpointer,
    /// `ledger.compact_max_rows`.
    pub(crate) compact_max_rows: u64,
}

/// How many commits a cached txn version is brought forward by reading them (beyond that,
/// delta-rs's own replay from the last checkpoint is cheaper).
const TXN_CATCH_UP: u64 = 200;

/// How many versions in a row a flush may lose to other writers before it gives up (each
/// loss is another writer's commit: the table moves on).
const MAX_RACES: usize = 100;

/// What a committed flush wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// The files, relative to the table root. (For a flush an earlier attempt had committed:
    /// this attempt's files, which stay outside the table until vacuum removes them.)
    pub files: Vec<String>,
    pub bytes: u64,
    /// The Delta version of its commit (`None`: nothing to commit). For a flush an earlier
    /// attempt had committed, found only in the file list: a version that contains it.
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

/// The columns written without compression: the tenant path and what a price is looked up
/// by. A file is sorted by the tenant path and few values of the others occur in it, so
/// their pages are a dictionary and runs of its indices — a few KB a file, which zstd
/// shrinks little or not at all (`meterline bench api`, a 645k-row day: `team` 4.9 KB as is,
/// 6.2 KB in zstd; short runs in a unit test: 26 KB against 16 KB for 60k rows) —
/// while every reader of a zstd column chunk pays for a codec: the Parquet crate creates a
/// zstd compression and a decompression context per column chunk it reads, each probing
/// the CPU with `cpuid` (3 times), which a virtual machine traps: 6.7 µs each on the
/// machine the benchmark ran on, 11 of a team lead's 120 ms CPU per chargeback.
/// Identities (`api_key_id`, `user_id`, `event_id`, …) and numbers stay in zstd.
const UNCOMPRESSED_COLUMNS: [&str; 18] = [
    "source",
    "org",
    "business_unit",
    "cost_center",
    "team",
    "project",
    "environment",
    "tenant_rule_id",
    "provider",
    "model",
    "operation",
    "service_tier",
    "status",
    "region",
    "price_id",
    "currency",
    "model_reported",
    "price_resolution",
];

/// Writer settings of every ledger file: zstd, but [`UNCOMPRESSED_COLUMNS`].
pub(crate) fn writer_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS);
    for c in UNCOMPRESSED_COLUMNS {
        b = b.set_column_compression(c.into(), Compression::UNCOMPRESSED);
    }
    b.build()
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
    /// The offsets of its rows, per partition (one span for a flush's file).
    pub spans: Vec<OffsetSpan>,
}

impl NewFile {
    pub(crate) fn add(&self, data_change: bool) -> Action {
        let min = |f: fn(&OffsetSpan) -> i64| self.spans.iter().map(f).min();
        let max = |f: fn(&OffsetSpan) -> i64| self.spans.iter().map(f).max();
        let partition = |s: &OffsetSpan| s.partition as i64;
        // per-file statistics, so an engine reading the log can skip files by partition and
        // offset (a close's cut) without opening them
        let stats = serde_json::json!({
            "numRecords": self.rows,
            "minValues": {"kafka_partition": min(partition), "kafka_offset": min(|s| s.first)},
            "maxValues": {"kafka_partition": max(partition), "kafka_offset": max(|s| s.last)},
            "nullCount": {"kafka_partition": 0, "kafka_offset": 0},
        });
        // the spans exactly (a compacted file's name cannot say them; a flush's says its one)
        let tags = HashMap::from([(OFFSETS_TAG.to_string(), Some(spans_tag(&self.spans)))]);
        Action::Add(Add {
            partition_values: HashMap::from([(DATE_COLUMN.to_string(), Some(self.date.clone()))]),
            path: self.rel.clone(),
            size: self.bytes as i64,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change,
            stats: Some(stats.to_string()),
            tags: Some(tags),
            ..Default::default()
        })
    }
}

/// The offset spans of a file the log lists: from its name (a flush's file), else from its
/// [`files::OFFSETS_TAG`] (a compacted file).
fn file_spans(
    f: &deltalake::kernel::LogicalFileView,
    path: &str,
) -> Result<Vec<OffsetSpan>, Error> {
    let name = path.rsplit('/').next().unwrap_or_default();
    if let Some((partition, first, last)) = files::parse_file_name(name) {
        return Ok(vec![OffsetSpan {
            partition,
            first,
            last,
        }]);
    }
    // the tags are only on the add action (delta-rs deprecates building one from the log for
    // writing it back, which this does not do)
    #[allow(deprecated)]
    let tags = f.add_action().tags.unwrap_or_default();
    let tag = tags.get(OFFSETS_TAG).cloned().flatten();
    tag.as_deref()
        .and_then(files::parse_spans_tag)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_string(),
            reason: match tag {
                None => {
                    "not a ledger data file name and no offsets tag (written by another engine?)"
                        .into()
                }
                Some(t) => format!("offsets tag {t:?} is not `<partition>:<first>-<last>,…`"),
            },
        })
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
            tip: Mutex::new(None),
            checkpointer: Checkpointer::default(),
            compact_max_rows: cfg.compact_max_rows,
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
        let t = self.handle.newest()?;
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
            let spans = file_spans(&f, &path)?;
            let date = f
                .partition_values_map()
                .get(DATE_COLUMN)
                .cloned()
                .flatten()
                .ok_or_else(|| Error::Corrupt {
                    path: path.clone(),
                    reason: "no date partition value".into(),
                })?;
            let rows = f.num_records().ok_or_else(|| Error::Corrupt {
                path: path.clone(),
                reason: "no numRecords in its statistics".into(),
            })? as u64;
            files.push(TableFile {
                path,
                date,
                spans,
                rows,
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
                    let partitions: std::collections::BTreeSet<i32> = files
                        .iter()
                        .flat_map(|f| f.spans.iter().map(|s| s.partition))
                        .collect();
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
        let mut tip = self.tip()?;
        self.catch_up(&mut t, &mut tip)?;
        Ok(self.txn_at_tip(&mut t, &mut tip, partition)?.0)
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
                spans: vec![OffsetSpan {
                    partition,
                    first: lo,
                    last: hi,
                }],
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
        let mut tip = self.tip()?;
        if tip.as_ref().is_none_or(|tip| !tip.is_trusted()) {
            self.catch_up(&mut t, &mut tip)?;
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
        let bytes = append::commit_bytes(actions.clone(), op.clone())?;
        let ours = CommitEntry::parse(&bytes)?;
        for _ in 0..MAX_RACES {
            // 0. The table's protocol allows this writer and an append: `t` is at the version
            //    the tip started at or later, and a commit that changes the protocol (or the
            //    metadata) starts the tip over from the newest version.
            PROTOCOL
                .can_commit(t.snapshot().map_err(delta)?, &actions, &op)
                .map_err(|e| delta(e.into()))?;
            // 1. The fence, against every commit this writer has seen. A commit it has not
            //    seen holds the version it tries next: that try fails, the commit is read
            //    (its txn actions included), and the fence is checked again.
            if let Some(version) = self.fence(&mut t, &mut tip, partition, after, last, new)? {
                return Ok(version); // an earlier attempt did commit
            }
            // 2. One put-if-absent of the next version.
            let version = tip.as_ref().map_or(0, |tip| tip.version) + 1;
            match append::try_commit(t.log_store().as_ref(), version, &bytes) {
                Ok(Attempt::Committed) => {
                    // the tip first: the commit is in the log whatever the fsync says
                    let tip = tip.as_mut().expect("a tip after catching up");
                    tip.advance(&ours);
                    self.handle.sync_commit(version)?;
                    self.checkpoint_if_due(&t, tip);
                    return Ok(version);
                }
                Ok(Attempt::Taken) => self.catch_up(&mut t, &mut tip)?,
                Err(e) => {
                    // 3. The outcome of a failed put can be unknown: look whether it landed
                    //    (or whether another writer has the partition now).
                    self.catch_up(&mut t, &mut tip)?;
                    return match self.fence(&mut t, &mut tip, partition, after, last, new)? {
                        Some(version) => Ok(version),
                        None => Err(e),
                    };
                }
            }
        }
        Err(Error::Contended {
            attempts: MAX_RACES,
        })
    }

    /// The fence of a flush of `partition` continuing `after` up to `last`, at the tip:
    /// `Err(Fenced)` if another writer moved the partition, `Some(version)` if this flush (an
    /// earlier attempt at it) is already committed, `None` if it may be committed next.
    fn fence(
        &self,
        t: &mut DeltaTable,
        tip: &mut Option<Tip>,
        partition: i32,
        after: Option<i64>,
        last: i64,
        new: &[NewFile],
    ) -> Result<Option<u64>, Error> {
        let (found, set_at) = self.txn_at_tip(t, tip, partition)?;
        if found == Some(last) && self.landed(t, set_at, new)? {
            // (found in the file list: at `t`'s version or before)
            return Ok(Some(set_at.or(t.version()).unwrap_or_default()));
        }
        if found != after {
            return Err(Error::Fenced {
                partition,
                expected: after,
                found,
            });
        }
        Ok(None)
    }

    fn tip(&self) -> Result<MutexGuard<'_, Option<Tip>>, Error> {
        self.tip
            .lock()
            .map_err(|_| Error::Fatal(format!("{}: tip lock poisoned", self.url())))
    }

    /// Brings the writer's tip to the newest version by reading the commits after it. It
    /// starts over at the table's newest version (delta-rs lists the log and brings the file
    /// list forward) when there is none yet, when it is not trusted any more, when it is
    /// more than [`TXN_CATCH_UP`] commits behind, and after a commit that changed the table.
    fn catch_up(&self, t: &mut DeltaTable, tip: &mut Option<Tip>) -> Result<(), Error> {
        if let Some(tip) = tip.as_mut().filter(|tip| tip.is_trusted()) {
            let log_store = t.log_store();
            for _ in 0..TXN_CATCH_UP {
                match append::read_commit(log_store.as_ref(), tip.version + 1)? {
                    None => {
                        tip.confirmed = std::time::Instant::now();
                        return Ok(());
                    }
                    Some(c) if c.changes_table => break,
                    Some(c) => tip.advance(&c),
                }
            }
        }
        run(t.update_state()).map_err(delta)?;
        let state = t.snapshot().map_err(delta)?;
        let config = state.table_config();
        *tip = Some(Tip::at(
            state.version(),
            config.checkpoint_interval().get(),
            config.log_retention_duration(),
        ));
        Ok(())
    }

    /// `partition`'s txn version at the tip, and the version of the commit that set it when
    /// the tip saw that commit.
    fn txn_at_tip(
        &self,
        t: &mut DeltaTable,
        tip: &mut Option<Tip>,
        partition: i32,
    ) -> Result<(Option<i64>, Option<u64>), Error> {
        // A partition the tip has not seen set has the txn version it had at the tip's base,
        // which is its version at any table version up to the tip: `t`'s must not be newer.
        if tip
            .as_ref()
            .is_none_or(|tip| t.version().unwrap_or_default() > tip.version)
        {
            self.catch_up(t, tip)?;
        }
        let tip = tip.as_ref().expect("a tip after catching up");
        match tip.txns.get(&partition) {
            Some((txn, set_at)) => Ok((Some(*txn), Some(*set_at))),
            None => Ok((self.txn_of(t, partition)?, None)),
        }
    }

    /// Whether `new`'s flush is in the table: its files (or those of an earlier attempt at the
    /// same records: same date, partition and offsets, another random id) are in the commit
    /// that set the partition's txn (`set_at`), or, when the tip did not see that commit, among
    /// the newest table's files.
    fn landed(
        &self,
        t: &mut DeltaTable,
        set_at: Option<u64>,
        new: &[NewFile],
    ) -> Result<bool, Error> {
        if new.is_empty() {
            return Ok(true);
        }
        let live: Vec<String> = match set_at {
            Some(version) => append::read_commit(t.log_store().as_ref(), version)?
                .map(|c| c.adds)
                .unwrap_or_default(),
            None => {
                run(t.update_state()).map_err(delta)?;
                let state = t.snapshot().map_err(delta)?;
                state
                    .log_data()
                    .iter()
                    .map(|f| f.path().to_string())
                    .collect()
            }
        };
        Ok(new
            .iter()
            .all(|f| live.iter().any(|l| files::same_flush(l, &f.rel))))
    }

    /// After the commit of every `delta.checkpointInterval`-th version: a checkpoint, and at
    /// every tenth one the expired commits behind it removed (the why is at
    /// [`crate::handle::commit`]), written in the background ([`Checkpointer`]).
    fn checkpoint_if_due(&self, t: &DeltaTable, tip: &Tip) {
        if writes_checkpoint(tip.version, tip.checkpoint_interval) {
            let clean_up = cleans_up_log(tip.version, tip.checkpoint_interval);
            self.checkpointer.start(tip.version, clean_up, t);
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
        let version = commit(&mut t, actions, op)?;
        self.handle.sync_commit(version)?;
        Ok(version)
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
    let log_store = t.log_store();
    for version in from + 1..=to {
        let Some(commit) = append::read_commit(log_store.as_ref(), version)? else {
            return Ok(None);
        };
        if let Some((_, v)) = commit.txns.iter().rev().find(|(p, _)| *p == partition) {
            txn = Some(*v);
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

    /// A merged file's spans come only from its tag: one without it, or with one that is not
    /// `<p>:<first>-<last>,…`, makes the snapshot an error naming the file, never a file
    /// of no offsets (which a close's cut would skip).
    #[test]
    fn a_merged_file_without_a_readable_offsets_tag_is_an_error() {
        for tag in [None, Some("0:9-1"), Some("")] {
            let dir = tempfile::tempdir().unwrap();
            let l = ledger(dir.path());
            let f = NewFile {
                rel: format!("date=2026-03-01/{}", files::merged_file_name()),
                date: "2026-03-01".into(),
                bytes: 1,
                rows: 1,
                spans: vec![OffsetSpan {
                    partition: 0,
                    first: 0,
                    last: 0,
                }],
            };
            let Action::Add(mut add) = f.add(true) else {
                unreachable!()
            };
            add.tags = tag.map(|t| HashMap::from([(OFFSETS_TAG.to_string(), Some(t.into()))]));
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![DATE_COLUMN.to_string()]),
                predicate: None,
            };
            l.commit_actions(vec![Action::Add(add)], op).unwrap();
            match l.snapshot() {
                Err(Error::Corrupt { path, reason }) => {
                    assert_eq!(path, f.rel);
                    assert!(reason.contains("offsets tag"), "{tag:?}: {reason}");
                }
                other => panic!("{tag:?}: {other:?}"),
            }
        }
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
        l.checkpointer.wait();
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

    /// A flush whose commit landed although the put (or the fsync after it) reported a
    /// failure is found in the table (`landed`: in the commit that set the txn, or, by a new
    /// process that did not see it, in the file list), also when retried with new file names;
    /// it is never committed twice, and a different flush ending at the same offset is fenced.
    #[test]
    fn a_committed_flush_is_recognised_and_never_committed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let rows = [row(5, 0, 1, "0.5", "USD"), row(5, 1, 1, "0.25", "USD")];
        let first = l.write_flush(5, None, 0, 1, &rows).unwrap();
        let version = first.version.unwrap();
        let new: Vec<NewFile> = first
            .files
            .iter()
            .map(|rel| NewFile {
                rel: rel.clone(),
                date: "2026-03-01".into(),
                bytes: 0,
                rows: 0,
                spans: vec![OffsetSpan {
                    partition: 5,
                    first: 0,
                    last: 1,
                }],
            })
            .collect();
        let other = ledger(dir.path());
        let mut t = other.table().unwrap();
        assert!(l
            .landed(&mut l.table().unwrap(), Some(version), &new)
            .unwrap());
        assert!(other.landed(&mut t, None, &new).unwrap());
        assert!(!other.landed(&mut t, Some(version - 1), &new).unwrap());
        let mut elsewhere = new;
        elsewhere[0].rel = elsewhere[0].rel.replace("part-5", "part-6");
        assert!(!other.landed(&mut t, None, &elsewhere).unwrap());
        drop(t);
        // retried (new random names): by the writer that made it and by a new process
        for writer in [&l, &other] {
            let again = writer.write_flush(5, None, 0, 1, &rows).unwrap();
            assert_eq!(again.version, Some(version));
        }
        let s = l.snapshot().unwrap();
        assert_eq!((s.version, rows_in(&s)), (version, 2));
        let different = ledger(dir.path()).write_flush(5, Some(0), 1, 1, &rows[1..]);
        assert!(
            matches!(different, Err(Error::Fenced { found: Some(1), .. })),
            "{different:?}"
        );
    }

    /// The sink's flushes do not bring its loaded table (the file list) forward: that made a
    /// commit cost what the table had files. Checkpoints bring a copy of their own forward,
    /// off the flush's path.
    #[test]
    fn flushes_leave_the_file_list_alone_and_checkpoints_use_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let loaded = || l.table().unwrap().version();
        for o in 0..120i64 {
            l.write_flush(
                0,
                (o > 0).then(|| o - 1),
                o,
                o,
                &[row(0, o, 1, "0.1", "USD")],
            )
            .unwrap();
            assert_eq!(loaded(), Some(0), "after flush {o} (version {})", o + 1);
        }
        l.checkpointer.wait();
        let checkpoint = dir
            .path()
            .join("usage/_delta_log/00000000000000000099.checkpoint.parquet");
        assert!(checkpoint.exists());
        assert_eq!(loaded(), Some(0));
    }

    /// A writer whose view of the log is far behind (another writer committed 250 versions
    /// since) reads forward, starts over at the newest version, and commits after it.
    #[test]
    fn a_writer_far_behind_catches_up_and_commits_after_the_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ledger(dir.path()), ledger(dir.path()));
        a.write_flush(0, None, 0, 0, &[row(0, 0, 1, "1", "USD")])
            .unwrap();
        for o in 0..250i64 {
            b.write_flush(1, (o > 0).then(|| o - 1), o, o, &[]).unwrap();
        }
        let f = a
            .write_flush(0, Some(0), 1, 1, &[row(0, 1, 1, "1", "USD")])
            .unwrap();
        assert_eq!(f.version, Some(252));
        let s = b.snapshot().unwrap();
        assert_eq!((s.version, rows_in(&s)), (252, 2));
        assert_eq!(s.ends, BTreeMap::from([(0, 2)]));
        assert_eq!(
            (a.resume_at(1).unwrap(), b.resume_at(0).unwrap()),
            (Some(250), Some(2))
        );
    }

    /// The tenant path and the price's keys are written as they are, at most a bit per row
    /// each, a few KB more than zstd would make of them (a day of many teams, projects and
    /// models in short runs, sorted as the ledger is). Everything else is zstd.
    #[test]
    fn the_tenant_path_and_price_keys_are_written_uncompressed() {
        let rows: Vec<Row> = (0..60_000i64)
            .map(|i| {
                let mut event = meterline_schemas::UsageEvent::example();
                event.event_id = format!("e-{i}");
                event.model = format!("model-{}", i % 7);
                event.occurred_at += chrono::Duration::seconds(i);
                let total = format!("0.{:06}", (i * 7919) % 1_000_000).parse().unwrap();
                let mut priced = meterline_schemas::PricedUsage::example(
                    event,
                    &format!("team-{}", i % 13),
                    total,
                );
                priced.tenant.project = Some(format!("project-{}", i % 29));
                priced.price_id = format!("price-{}", i % 7);
                Row {
                    priced,
                    partition: (i % 4) as i32,
                    offset: i,
                }
            })
            .collect();
        let mut sorted: Vec<&Row> = rows.iter().collect();
        rows::sort(&mut sorted);
        let batch = rows::to_batch(&sorted).unwrap();
        let ours = encode(&batch).unwrap();
        let all_zstd = {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
                .set_dictionary_enabled(true)
                .set_statistics_enabled(EnabledStatistics::Page)
                .set_data_page_row_count_limit(PAGE_ROWS)
                .build();
            let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.into_inner().unwrap()
        };
        let chunks = |bytes: Vec<u8>| {
            use parquet::file::reader::FileReader;
            let r = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
                .unwrap();
            let rg = r.metadata().row_group(0).clone();
            rg.columns()
                .iter()
                .map(|c| {
                    let name = c.column_path().string();
                    (name, (c.compression(), c.compressed_size()))
                })
                .collect::<HashMap<_, _>>()
        };
        let (ours, zstd) = (chunks(ours), chunks(all_zstd));
        assert_eq!(ours.len(), batch.num_columns());
        let (mut listed, mut in_zstd) = (0, 0);
        for (name, (codec, size)) in &ours {
            if UNCOMPRESSED_COLUMNS.contains(&name.as_str()) {
                assert_eq!(*codec, Compression::UNCOMPRESSED, "{name}");
                // at most a bit per row (an identity or a number would take bytes)
                assert!(
                    *size as usize <= rows.len() / 8,
                    "{name}: {size} bytes, {} in zstd",
                    zstd[name].1
                );
                listed += *size;
                in_zstd += zstd[name].1;
            } else {
                assert!(matches!(codec, Compression::ZSTD(_)), "{name}: {codec:?}");
            }
        }
        // 2,639 runs of (team, project, model) in 60k rows: 26 KB as they are, 16 KB in zstd
        assert!(
            listed < in_zstd + 16 * 1024,
            "{listed} bytes, {in_zstd} in zstd"
        );
    }

    /// A reader's snapshot is the newest version whoever committed it: the check for the
    /// commit after its loaded version (instead of delta-rs listing the log each time) sees
    /// another writer's flush at once, its own writer's commits, and nothing when nothing
    /// changed.
    #[test]
    fn a_snapshot_sees_every_commit_at_once_whoever_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = (ledger(dir.path()), ledger(dir.path()));
        let first = reader.snapshot().unwrap();
        assert_eq!(first.version, 0);
        for o in 0..3i64 {
            writer
                .write_flush(0, (o > 0).then(|| o - 1), o, o, &[row(0, o, 1, "1", "USD")])
                .unwrap();
            let s = reader.snapshot().unwrap();
            assert_eq!((s.version, rows_in(&s)), (o as u64 + 1, o as usize + 1));
            assert_eq!(s.ends, BTreeMap::from([(0, o + 1)]));
            // nothing new: the same version and files
            let again = reader.snapshot().unwrap();
            assert_eq!((again.version, again.files), (s.version, s.files));
        }
        // the reader's own commit, then the other's on top of it
        reader
            .write_flush(1, None, 0, 0, &[row(1, 0, 1, "1", "USD")])
            .unwrap();
        assert_eq!(reader.snapshot().unwrap().version, 4);
        writer
            .write_flush(0, Some(2), 3, 3, &[row(0, 3, 1, "1", "USD")])
            .unwrap();
        let s = reader.snapshot().unwrap();
        assert_eq!((s.version, rows_in(&s)), (5, 5));
        assert_eq!(s.ends, BTreeMap::from([(0, 4), (1, 1)]));
    }

    /// Writers race on different partitions: a writer that loses a version reads the
    /// winner's commit and takes the next one (appends do not conflict), every flush lands.
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
