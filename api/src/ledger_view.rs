//! What of the ledger a query reads: a snapshot of its Delta table (the files its log lists
//! at one version, and where each input partition's rows end), and one of the anomalies
//! table. A snapshot is consistent by construction — a flush is one commit, a compaction swaps files in one commit — so a query
//! never sees half a flush or a row twice, and needs no row filter for that.

use std::collections::BTreeMap;

use datafusion::execution::cache::cache_manager::{
    CacheManager, CacheManagerConfig, FileMetadataCache, FileStatisticsCache,
};
use datafusion::logical_expr::{col, lit, when, Expr};
use meterline_ledger::{AnomalySnapshot, AnomalyTable, Ledger, LedgerConfig, Snapshot};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Per input partition, the offset the rows end before (exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark(pub BTreeMap<i32, i64>);

impl Watermark {
    /// Rows before this watermark: `kafka_offset < end[kafka_partition]` (no entry: none).
    pub fn before(&self) -> Expr {
        self.case(|end| col("kafka_offset").lt(lit(end)), lit(false))
    }

    /// Rows after this watermark: `kafka_offset >= end[kafka_partition]` (no entry: all).
    pub fn at_or_after(&self) -> Expr {
        self.case(|end| col("kafka_offset").gt_eq(lit(end)), lit(true))
    }

    fn case(&self, per: impl Fn(i64) -> Expr, otherwise: Expr) -> Expr {
        let mut it = self.0.iter();
        let Some((p, e)) = it.next() else {
            return otherwise;
        };
        let mut b = when(col("kafka_partition").eq(lit(*p)), per(*e));
        for (p, e) in it {
            b = b.when(col("kafka_partition").eq(lit(*p)), per(*e));
        }
        b.otherwise(otherwise).expect("CASE with a branch")
    }

    /// Where partition `p`'s rows end (exclusive); a partition without an entry has none.
    pub fn end(&self, p: i32) -> i64 {
        self.0.get(&p).copied().unwrap_or(i64::MIN)
    }

    /// SQL text of [`Self::before`] / [`Self::at_or_after`], for report queries (integers only).
    pub fn sql(&self, after: bool) -> String {
        if self.0.is_empty() {
            return if after { "true" } else { "false" }.into();
        }
        let mut s = String::from("CASE kafka_partition");
        for (p, e) in &self.0 {
            let cmp = if after { ">=" } else { "<" };
            s.push_str(&format!(" WHEN {p} THEN kafka_offset {cmp} {e}"));
        }
        s.push_str(if after {
            " ELSE true END"
        } else {
            " ELSE false END"
        });
        s
    }
}

/// One data file of the table (see [`meterline_ledger::TableFile`]).
pub type LedgerFile = meterline_ledger::TableFile;

/// The ledger's state at one moment: a snapshot.
#[derive(Debug, Clone)]
pub struct LedgerState {
    /// The Delta version read.
    pub version: u64,
    /// Where rows end, per partition.
    pub watermark: Watermark,
    /// The files (what a reader may use), in path order.
    pub files: Vec<LedgerFile>,
    /// The snapshot itself (its store, for a query engine).
    pub snapshot: Snapshot,
    /// The anomalies table, read at the same moment.
    pub anomalies: AnomalySnapshot,
    /// What queries have read of the tables' files, shared by every query of the view.
    pub file_caches: FileCaches,
}

/// Parquet footers (with their page indexes) and per-file statistics, kept across queries.
/// Both tables' files are immutable — every write, compaction included, has a new name — so
/// what was read of one stays true, and a query reads only the footers no query read before
/// (without them, every query read every footer twice: once to plan, once to scan). Entries
/// are checked against the file's size and modification time, and are the same whoever read
/// them first: sharing them across principals shares no rows. Not the file listing: each
/// query lists its own snapshot.
#[derive(Clone)]
pub struct FileCaches {
    pub(crate) footers: std::sync::Arc<FileMetadataCache>,
    pub(crate) statistics: std::sync::Arc<FileStatisticsCache>,
    /// Statistics of the table with text as string views (see `catalog::TextColumns`).
    pub(crate) view_statistics: std::sync::Arc<FileStatisticsCache>,
}

/// Bytes of Parquet footers (with their page indexes) the API keeps. A footer with its page
/// index takes ~1 MiB per million rows (`meterline bench api`: 19.4 MiB for 20M rows in pages
/// of 4k rows): DataFusion's default of 50 MiB held a ~50M-row ledger, and past it every query
/// read footers again. 256 MiB holds ~250M rows.
pub const FOOTER_CACHE_BYTES: usize = 256 * 1024 * 1024;

impl FileCaches {
    /// Empty caches: [`FOOTER_CACHE_BYTES`] of footers, DataFusion's default 20 MiB of
    /// statistics; least recently used first out.
    pub fn new() -> Result<FileCaches, Error> {
        let config = CacheManagerConfig::default().with_metadata_cache_limit(FOOTER_CACHE_BYTES);
        let defaults = || CacheManager::try_new(&config).map_err(Error::query);
        let statistics = || {
            defaults()?
                .get_file_statistic_cache()
                .ok_or_else(|| Error::Config("DataFusion keeps no file statistics".into()))
        };
        Ok(FileCaches {
            footers: defaults()?.get_file_metadata_cache(),
            statistics: statistics()?,
            view_statistics: statistics()?,
        })
    }

    /// How many footers, and statistics entries (of both tables: text as views, text as
    /// dictionaries), are held.
    pub fn entries(&self) -> (usize, usize) {
        (
            self.footers.len(),
            self.statistics.len() + self.view_statistics.len(),
        )
    }
}

impl std::fmt::Debug for FileCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCaches")
            .field("footers", &self.footers.len())
            .field("statistics", &self.statistics.len())
            .field("view_statistics", &self.view_statistics.len())
            .finish()
    }
}

/// The usage table, as the API reads it.
pub struct LedgerView {
    ledger: std::sync::Arc<Ledger>,
    anomalies: std::sync::Arc<AnomalyTable>,
    file_caches: FileCaches,
}

impl LedgerView {
    /// Opens the table of `cfg` (under `data_dir` when its URL is empty).
    pub fn open(cfg: &LedgerConfig, data_dir: &std::path::Path) -> Result<LedgerView, Error> {
        Ok(LedgerView {
            ledger: std::sync::Arc::new(Ledger::open(cfg, data_dir)?),
            anomalies: std::sync::Arc::new(AnomalyTable::open(cfg, data_dir)?),
            file_caches: FileCaches::new()?,
        })
    }

    /// The table.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The table now (its newest version).
    pub fn state(&self) -> Result<LedgerState, Error> {
        Ok(self.state_of(self.ledger.snapshot()?, self.anomalies.snapshot()?))
    }

    /// As [`Self::state`], off the async threads (reading the log is file or network I/O).
    pub async fn settled_state(&self) -> Result<LedgerState, Error> {
        let (ledger, anomalies) = (self.ledger.clone(), self.anomalies.clone());
        let (usage, anomalies) = tokio::task::spawn_blocking(move || {
            Ok::<_, meterline_ledger::Error>((ledger.snapshot()?, anomalies.snapshot()?))
        })
        .await
        .map_err(Error::query)??;
        Ok(self.state_of(usage, anomalies))
    }

    fn state_of(&self, snapshot: Snapshot, anomalies: AnomalySnapshot) -> LedgerState {
        LedgerState {
            anomalies,
            version: snapshot.version,
            watermark: Watermark(snapshot.ends.clone()),
            files: snapshot.files.clone(),
            snapshot,
            file_caches: self.file_caches.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_sql_has_one_branch_per_partition() {
        let w = Watermark([(0, 10), (3, 7)].into_iter().collect());
        assert_eq!(
            w.sql(false),
            "CASE kafka_partition WHEN 0 THEN kafka_offset < 10 WHEN 3 THEN kafka_offset < 7 ELSE false END"
        );
        assert_eq!(Watermark::default().sql(true), "true");
        assert_eq!(Watermark::default().sql(false), "false");
    }
}
