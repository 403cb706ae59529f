//! `meterline compact --date D`: merges each partition's files of one date into one file,
//! sorted in the ledger's order and written as one large row group (up to
//! `table::ROW_GROUP_ROWS`, pages of `table::PAGE_ROWS` with their index): a scan then pays
//! one reader, one set of dictionaries and one footer per partition and day instead of one
//! per flush, and a lead's `team IN (…)` reads only its teams' pages.
//!
//! Safe beside a running stage: only files whose flushes are all complete are merged, the
//! merged file lists every flush it took in (so recovery counts them as before), and:
//!
//! 1. the merged file is written to a temp name, fsynced and renamed,
//! 2. only then are the originals deleted.
//!
//! A crash between 1 and 2 leaves originals that the merged file supersedes; recovery (and
//! the next compaction) deletes them (`files::superseded`), and readers of the ledger skip
//! them meanwhile.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::files::{self, Flush};
use crate::table::{self, Ledger};
use crate::{io, Error};

/// What one partition's compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub partition: i32,
    pub merged_files: usize,
    pub rows: usize,
    pub into: PathBuf,
}

/// The ledger's sort order (see `rows::sort`), applied to a merged batch.
const SORT: [&str; 6] = [
    "org",
    "cost_center",
    "team",
    "project",
    "model",
    "occurred_at",
];

fn read_all(path: &std::path::Path) -> Result<Vec<RecordBatch>, Error> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).map_err(io(path))?)
        .map_err(|e| corrupt(&e))?
        .build()
        .map_err(|e| corrupt(&e))?
        .map(|b| b.map_err(|e| corrupt(&e)))
        .collect()
}

/// Compacts `date` of the ledger under `data_dir`; partitions with fewer than two files are
/// left alone.
pub fn compact_date(
    data_dir: &std::path::Path,
    date: chrono::NaiveDate,
) -> Result<Vec<Compacted>, Error> {
    compact_date_with_progress(data_dir, date, |_, _| {})
}

/// As [`compact_date`], calling `progress(files_read, files_to_merge)`: once before anything
/// is read, then after each file to merge is read.
pub fn compact_date_with_progress(
    data_dir: &std::path::Path,
    date: chrono::NaiveDate,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Compacted>, Error> {
    let ledger = Ledger::open_writer(data_dir)?;
    ledger.remove_superseded()?;
    let dir = ledger.usage_dir().join(files::date_dir(date));
    let found = ledger.scan()?;
    let (_, usable) = files::complete_view(&found);
    let mut by_partition: std::collections::BTreeMap<i32, Vec<&files::FoundFile>> =
        Default::default();
    for f in usable {
        if f.path.parent() == Some(dir.as_path()) {
            by_partition.entry(f.partition).or_default().push(f);
        }
    }
    by_partition.retain(|_, group| group.len() >= 2);
    let to_merge: usize = by_partition.values().map(Vec::len).sum();
    let mut merged_so_far = 0;
    progress(0, to_merge);
    let mut out = vec![];
    for (partition, group) in by_partition {
        let mut batches = vec![];
        let mut flushes: Vec<Flush> = vec![];
        for f in &group {
            batches.extend(read_all(&f.path)?);
            flushes.extend(f.flushes.iter().copied());
            merged_so_far += 1;
            progress(merged_so_far, to_merge);
        }
        flushes.sort();
        flushes.dedup();
        let schema = meterline_schemas::arrow_schema::usage_ledger_schema();
        let merged = concat_batches(&schema, &batches)?;
        let columns: Vec<SortColumn> = SORT
            .iter()
            .map(|c| SortColumn {
                values: merged.column_by_name(c).expect("ledger column").clone(),
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&columns, None)?;
        let merged = take_record_batch(&merged, &order)?;
        let (first, last) = (
            flushes.iter().map(|f| f.first).min().unwrap_or(0),
            flushes.iter().map(|f| f.last).max().unwrap_or(0),
        );
        let into = dir.join(files::file_name(partition, first, last));
        // 1. the merged file, atomically (its name may equal an original's only if that
        //    original already covered the whole range, i.e. there is nothing to merge)
        if group.iter().any(|f| f.path == into) {
            continue;
        }
        table::write_atomically(&dir, &into, &merged, partition, &flushes)?;
        // 2. published: one Delta commit swaps the originals for the merged file, before any
        //    original is deleted (a reader of the log never sees both, nor neither)
        let originals: Vec<PathBuf> = group.iter().map(|f| f.path.clone()).collect();
        ledger.publish_compaction(&into, &originals)?;
        // 3. the originals
        for f in &group {
            match std::fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&f.path)(e)),
            }
        }
        out.push(Compacted {
            partition,
            merged_files: group.len(),
            rows: merged.num_rows(),
            into,
        });
    }
    Ok(out)
}
