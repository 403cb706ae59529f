//! The ledger: the priced usage as a Delta Lake table (`<url>/usage`, local or on object
//! storage), and the anomalies table. No Kafka here: the sink (aggregate) hands it rows with
//! their offsets; the budget tracker, the API and `meterline rebuild` read snapshots.
//!
//! The Delta log is the only record of progress, the kafka-delta-ingest way: a flush is one
//! commit holding its files and one `txn` action per input partition (`appId` =
//! `meterline-usage-p<partition>`, `version` = the flush's last offset). A partition resumes
//! at its txn version + 1; a file not in the log does not exist for anyone.
//!
//! - `config`: `[ledger]` (where the tables live, object store options, vacuum retention);
//! - `storage`: URLs to delta-rs tables and object stores (local, s3, gs, az);
//! - `table`: [`Ledger`], the usage table: open, snapshots, resume points, fenced flushes;
//! - `snapshot`: [`Snapshot`] and [`TableFile`], the table at one version as readers use it,
//!   and the object store view that lists exactly its files (for DataFusion);
//! - `compact`: optimize (a date's files, of every partition, merged into one sorted file) and
//!   vacuum;
//! - `files`: names of the ledger's data files and the offset spans they hold;
//! - `rows`: priced events → Arrow batches in the ledger schema;
//! - `totals`: rows per partition and exact cost sums per currency, as readers see them;
//! - `append`: the sink's commits, without the table's file list (the writer's tip of the log);
//! - `checkpointer`: the sink's checkpoints, on a thread of their own;
//! - `handle`: one Delta table as its writer holds it (create, durable files, commit, vacuum);
//! - `anomalies`: [`AnomalyTable`], the anomalies table (one file per hour with findings).

mod anomalies;
mod append;
mod checkpointer;
mod compact;
mod config;
mod files;
mod handle;
mod rows;
mod snapshot;
mod storage;
mod table;
pub mod totals;

use std::path::{Path, PathBuf};

pub use anomalies::{anomalies_schema, AnomalySnapshot, AnomalyTable};
pub use compact::{Compacted, Vacuumed};
pub use config::LedgerConfig;
pub use rows::{sort as sort_rows, to_batch, Row};
pub use snapshot::{listing_store, Listing, OffsetSpan, Snapshot, TableFile};
pub use table::{Flushed, Ledger, PAGE_ROWS, ROW_GROUP_ROWS};

/// `appId` prefix of a priced partition's `txn` action; its `version` is the partition's last
/// offset in the table.
pub const TXN_APP_PREFIX: &str = "meterline-usage-p";

/// The Delta partition column: the event date (`date=YYYY-MM-DD` directories).
pub const DATE_COLUMN: &str = "date";

/// The `txn` app id of a partition.
pub fn txn_app_id(partition: i32) -> String {
    format!("{TXN_APP_PREFIX}{partition}")
}

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system call failed on `path` (disk full, permissions): worth retrying.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The object store refused or failed a call (network, throttling, permissions).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An amount that does not fit the ledger's money type.
    #[error(transparent)]
    Money(#[from] meterline_schemas::Error),
    /// A ledger file that cannot be read: stop rather than guess.
    #[error("ledger file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The Delta log could not be read or committed to (delta-rs), a conflict included.
    #[error("delta log: {0}")]
    Delta(#[source] Box<deltalake::DeltaTableError>),
    /// Another writer moved `partition` on: its txn version is not where this writer's flush
    /// starts. The flush is not committed (its rows are in the table once, by the other
    /// writer); the partition is no longer this writer's to continue.
    #[error("partition {partition}: the table is at offset {found:?}, this flush continues {expected:?}: another writer owns it now")]
    Fenced {
        partition: i32,
        expected: Option<i64>,
        found: Option<i64>,
    },
    /// Other writers took the next version of the log `attempts` times in a row.
    #[error("lost the race for the next table version {attempts} times in a row")]
    Contended { attempts: usize },
    /// `[ledger]` is not usable (a bad URL, an option the store does not know).
    #[error("ledger config: {0}")]
    Config(String),
    /// A state the exactly-once rules say cannot happen.
    #[error("{0}")]
    Fatal(String),
}

impl Error {
    /// Whether trying again can help: a failing disk, a store that times out, a commit that
    /// lost a race may succeed next time; a corrupt file or a broken invariant cannot, and a
    /// fenced partition must be given up (see [`Error::Fenced`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Store(_)
                | Error::Parquet(_)
                | Error::Delta(_)
                | Error::Contended { .. }
        )
    }
}

pub(crate) fn delta(e: deltalake::DeltaTableError) -> Error {
    Error::Delta(Box::new(e))
}

/// `map_err` for a file system call on `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
