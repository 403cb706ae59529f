//! What of the ledger a query may read while `meterline aggregate` writes it: only rows of
//! complete flushes. A flush renames its files one by one (one per event date), so for a
//! moment a reader can see part of it; and a compaction renames its merged file before it
//! deletes the originals. The rules are `meterline_ledger::files::complete_view`; this
//! module applies them with a footer cache (ledger files are immutable, so a path's footer is
//! read once) and turns the result into a row predicate.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use datafusion::logical_expr::{col, lit, when, Expr};
use meterline_ledger::files::{self, Flush, FoundFile};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Per input partition, the offset the complete rows end before (exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark(pub BTreeMap<i32, i64>);

impl Watermark {
    /// Rows of complete flushes: `kafka_offset < end[kafka_partition]` (no entry: none).
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

/// The ledger's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerState {
    /// Where complete rows end, per partition.
    pub watermark: Watermark,
    /// Whether every file on disk is of a complete flush (then no row filter is needed).
    pub all_complete: bool,
    /// Compaction originals not yet deleted (their rows are also in the merged file).
    pub superseded: usize,
    /// The files of complete flushes (what a reader may use), in path order.
    pub files: Vec<LedgerFile>,
}

/// One ledger file a reader may use: all its rows are of one date, one input partition, and
/// offsets `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerFile {
    pub path: PathBuf,
    /// `YYYY-MM-DD`, from the `date=` directory.
    pub date: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Size in bytes: with the path, identifies the content (ledger files are never rewritten
    /// in place; this guards against a path reused by a recovery).
    pub bytes: u64,
}

/// Footers read so far, by path.
#[derive(Default)]
pub struct LedgerView {
    footers: Mutex<HashMap<PathBuf, Vec<Flush>>>,
}

impl LedgerView {
    /// The ledger under `data_dir` now.
    pub fn state(&self, data_dir: &std::path::Path) -> Result<LedgerState, Error> {
        let dir = data_dir.join("usage");
        let mut found = vec![];
        let mut cache = self.footers.lock().expect("footer cache");
        let mut seen = std::collections::HashSet::new();
        let dates = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LedgerState {
                    watermark: Watermark::default(),
                    all_complete: true,
                    superseded: 0,
                    files: vec![],
                })
            }
            Err(source) => return Err(Error::LedgerDir { path: dir, source }),
        };
        let listing = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::LedgerDir { path, source }
        };
        for d in dates {
            let d = d.map_err(listing(&dir))?;
            if !d.file_name().to_string_lossy().starts_with("date=") {
                continue;
            }
            let date_dir = d.path();
            for f in std::fs::read_dir(&date_dir).map_err(listing(&date_dir))? {
                let f = f.map_err(listing(&date_dir))?;
                let name = f.file_name().to_string_lossy().to_string();
                let Some((partition, _, _)) = files::parse_file_name(&name) else {
                    continue;
                };
                let path = f.path();
                let flushes = match cache.get(&path) {
                    Some(fl) => fl.clone(),
                    None => match meterline_ledger::table::read_flushes(&path) {
                        Ok(fl) => {
                            cache.insert(path.clone(), fl.clone());
                            fl
                        }
                        // deleted meanwhile (compaction, recovery)
                        Err(_) if !path.exists() => continue,
                        Err(e) => return Err(Error::Ledger(e)),
                    },
                };
                seen.insert(path.clone());
                found.push(FoundFile {
                    path,
                    partition,
                    flushes,
                });
            }
        }
        cache.retain(|p, _| seen.contains(p));
        drop(cache);
        let superseded = files::superseded(&found).len();
        let (resume, usable) = files::complete_view(&found);
        let mut usable_files = vec![];
        for f in &usable {
            if let Some(lf) = ledger_file(&f.path) {
                usable_files.push(lf);
            }
        }
        usable_files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(LedgerState {
            all_complete: usable.len() + superseded == found.len(),
            watermark: Watermark(resume),
            superseded,
            files: usable_files,
        })
    }

    /// As [`Self::state`], but waits (up to 5 s) for a running compaction to delete the files
    /// it merged: their rows would otherwise be counted twice.
    pub async fn settled_state(&self, data_dir: &std::path::Path) -> Result<LedgerState, Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.state(data_dir)?;
            if s.superseded == 0 {
                return Ok(s);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Busy(format!(
                    "{} ledger files are being replaced by a compaction; try again",
                    s.superseded
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A usable file's facts from its path (`…/date=YYYY-MM-DD/part-P-FIRST-LAST.parquet`) and
/// size; `None` if it vanished meanwhile.
fn ledger_file(path: &std::path::Path) -> Option<LedgerFile> {
    let name = path.file_name()?.to_str()?;
    let (partition, first, last) = files::parse_file_name(name)?;
    let dir = path.parent()?.file_name()?.to_str()?;
    let date = dir.strip_prefix("date=")?.to_string();
    let bytes = std::fs::metadata(path).ok()?.len();
    Some(LedgerFile {
        path: path.to_path_buf(),
        date,
        partition,
        first,
        last,
        bytes,
    })
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
