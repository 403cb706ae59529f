//! The ledger: the priced usage as Parquet files, written exactly once per Kafka offset range,
//! and the anomalies table. No Kafka here: the sink (aggregate) hands it rows with their
//! offsets, the budget tracker and the API read it.
//!
//! - `files`: the exactly-once rules (names, flush metadata, recovery, which files count), pure;
//! - `rows`: priced events → Arrow batches in the ledger schema;
//! - `table`: the files on disk (atomic writes, scan, recovery);
//! - `compact`: merging a date's files into one sorted file;
//! - `totals`: rows per partition and exact cost sums per currency, as readers see them;
//! - `delta`: the table's Delta Lake log, what other engines read;
//! - `anomalies`: the anomalies table.

pub mod anomalies;
pub mod compact;
#[cfg(feature = "delta")]
mod delta;
pub mod files;
pub mod rows;
pub mod table;
pub mod totals;

use std::path::{Path, PathBuf};

#[cfg(feature = "delta")]
pub use delta::{txn_app_id, DATE_COLUMN, TXN_APP_PREFIX};
pub use table::Ledger;

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
    Corrupt { path: PathBuf, reason: String },
    /// The Delta log could not be read or committed to (delta-rs).
    #[cfg(feature = "delta")]
    #[error("delta log: {0}")]
    Delta(#[source] Box<deltalake::DeltaTableError>),
    /// A state the exactly-once rules say cannot happen (two writers, a lost file).
    #[error("{0}")]
    Fatal(String),
}

impl Error {
    /// Whether trying again can help: a failing disk or a full one may recover; a corrupt
    /// file or a broken invariant cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Parquet(_) => true,
            #[cfg(feature = "delta")]
            Error::Delta(_) => true,
            _ => false,
        }
    }
}

/// `map_err` for a file system call on `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
