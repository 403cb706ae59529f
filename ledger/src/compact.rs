//! `meterline compact` and `meterline vacuum`.
//!
//! Compaction (Delta's optimize): each partition's files of one date are merged into one file,
//! sorted in the ledger's order and written as one large row group (up to
//! [`crate::ROW_GROUP_ROWS`], pages of [`crate::PAGE_ROWS`] with their index): a scan then
//! pays one reader, one set of dictionaries and one footer per partition and day instead of
//! one per flush, and a lead's `team IN (…)` reads only its teams' pages. Safe beside
//! writers:
//! 1. the merged file is written first, outside the table;
//! 2. one commit removes the originals and adds it, `dataChange = false` (the same rows): a
//!    reader of any version sees each row exactly once. Sinks' appends do not conflict with
//!    it; a second compaction of the same files does, and loses;
//! 3. the originals stay on storage for readers of older snapshots until vacuum deletes them.
//!
//! Vacuum deletes files no version newer than the retention needs: the originals of
//! compactions, and files of flushes that never committed (a crash, a fenced writer).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use deltalake::protocol::DeltaOperation;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::snapshot::{Snapshot, TableFile};
use crate::table::{encode, remove, NewFile};
use crate::{files, Error, Ledger};

/// What one partition's compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub partition: i32,
    pub merged_files: usize,
    pub rows: usize,
    /// The merged file, relative to the table root.
    pub into: String,
    /// The version that committed it.
    pub version: u64,
}

/// What a vacuum deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    pub dry_run: bool,
    /// Relative paths.
    pub files: Vec<String>,
}

/// The ledger's sort order (see `rows::sort`), applied to a merged batch.
const SORT: [&str; 6] = [
    "team",
    "org",
    "cost_center",
    "project",
    "model",
    "occurred_at",
];

impl Ledger {
    fn read_batches(snapshot: &Snapshot, f: &TableFile) -> Result<Vec<RecordBatch>, Error> {
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt {
            path: f.path.clone(),
            reason: e.to_string(),
        };
        ParquetRecordBatchReaderBuilder::try_new(snapshot.read(f)?)
            .map_err(|e| corrupt(&e))?
            .build()
            .map_err(|e| corrupt(&e))?
            .map(|b| b.map_err(|e| corrupt(&e)))
            .collect()
    }

    /// Compacts `date`; partitions with fewer than two files that day are left alone.
    /// `progress(files_read, files_to_merge)`: once before anything is read, then after each
    /// file read.
    pub fn compact_date(
        &self,
        date: chrono::NaiveDate,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Compacted>, Error> {
        let snapshot = self.snapshot()?;
        let day = date.format("%Y-%m-%d").to_string();
        let mut by_partition: BTreeMap<i32, Vec<&TableFile>> = BTreeMap::new();
        for f in snapshot.files.iter().filter(|f| f.date == day) {
            by_partition.entry(f.partition).or_default().push(f);
        }
        by_partition.retain(|_, group| group.len() >= 2);
        let to_merge: usize = by_partition.values().map(Vec::len).sum();
        let mut read = 0;
        progress(0, to_merge);
        let mut out = vec![];
        for (partition, group) in by_partition {
            let mut batches = vec![];
            for f in &group {
                batches.extend(Self::read_batches(&snapshot, f)?);
                read += 1;
                progress(read, to_merge);
            }
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
            let first = group.iter().map(|f| f.first).min().unwrap_or_default();
            let last = group.iter().map(|f| f.last).max().unwrap_or_default();
            // 1. the merged file, outside the table
            let rel = format!(
                "{}/{}",
                files::date_dir(date),
                files::file_name(partition, first, last)
            );
            let bytes = self.handle.put(&rel, encode(&merged)?)?;
            let new = NewFile {
                rel: rel.clone(),
                date: day.clone(),
                bytes,
                rows: merged.num_rows(),
                offsets: (partition, first, last),
            };
            // 2. swapped in for the originals in one commit, no data changed
            let mut actions = vec![new.add(false)];
            actions.extend(group.iter().map(|f| remove(f, false)));
            let version = self.commit_actions(
                actions,
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: crate::ROW_GROUP_ROWS as i64,
                },
            )?;
            out.push(Compacted {
                partition,
                merged_files: group.len(),
                rows: merged.num_rows(),
                into: rel,
                version,
            });
        }
        Ok(out)
    }

    /// Deletes the files no version of the last `retention` needs: originals a compaction
    /// replaced and files no commit lists, once older than `retention`. `dry_run`: only lists
    /// them.
    pub fn vacuum(&self, retention: Duration, dry_run: bool) -> Result<Vacuumed, Error> {
        self.handle.vacuum(retention, dry_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::example_row as row;
    use crate::LedgerConfig;

    fn rows_of(s: &Snapshot) -> Vec<i64> {
        let mut offsets = vec![];
        for f in &s.files {
            for b in Ledger::read_batches(s, f).unwrap() {
                let o = b.column_by_name("kafka_offset").unwrap();
                let o = o
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                offsets.extend(o.values().iter().copied());
            }
        }
        offsets.sort();
        offsets
    }

    /// Each page's (min, max) of `team` in a file, from its page index.
    fn team_pages(s: &Snapshot, f: &TableFile) -> Vec<(String, String)> {
        use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
        use parquet::file::page_index::column_index::ColumnIndexMetaData;
        let meta = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&s.read(f).unwrap())
            .unwrap();
        let team = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == "team")
            .unwrap();
        let ColumnIndexMetaData::BYTE_ARRAY(ix) = &meta.column_index().unwrap()[0][team] else {
            panic!("team has a byte array index")
        };
        let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
        (0..ix.num_pages() as usize)
            .map(|i| (text(ix.min_value(i)), text(ix.max_value(i))))
            .collect()
    }

    /// A lead's scan keeps the pages whose (min, max) of `team` admit its team. Rows in team
    /// order make those exactly the pages holding it, in flushes and in compacted files, even
    /// where the org or cost center order disagrees with the team order.
    #[test]
    fn files_are_in_team_order_so_a_team_is_a_run_of_pages() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
        // org and cost center in the reverse of the team order
        let teams = ["t-a", "t-b", "t-c", "t-d", "t-e", "t-f"];
        let per_team = crate::PAGE_ROWS + crate::PAGE_ROWS / 2;
        let mut offset = 0;
        for flush in 0..2 {
            let mut rows = vec![];
            for (i, team) in teams.iter().enumerate() {
                for _ in 0..per_team / 2 {
                    let mut r = row(0, offset, 1, "0.01", "USD");
                    let t = &mut r.priced.tenant;
                    t.team = Some(team.to_string());
                    t.org = format!("org-{}", teams.len() - i);
                    t.cost_center = Some(format!("cc-{}", teams.len() - i));
                    rows.push(r);
                    offset += 1;
                }
            }
            let first = rows[0].offset;
            let after = (flush > 0).then_some(first - 1);
            l.write_flush(0, after, first, offset - 1, &rows).unwrap();
        }
        // a page holds at most PAGE_ROWS rows: a team's `rows` are on at most this many
        let holding = |rows: usize| rows.div_ceil(crate::PAGE_ROWS) + 1;
        let check = |s: &Snapshot, rows_per_team: usize| {
            for f in &s.files {
                let pages = team_pages(s, f);
                assert!(pages.len() >= 4, "{} pages", pages.len());
                for w in pages.windows(2) {
                    assert!(w[0].1 <= w[1].0, "pages out of team order: {pages:?}");
                }
                for team in teams {
                    let kept = pages
                        .iter()
                        .filter(|(lo, hi)| lo.as_str() <= team && team <= hi.as_str())
                        .count();
                    assert!(
                        kept <= holding(rows_per_team),
                        "{team}: {kept} pages of {pages:?}"
                    );
                }
            }
        };
        check(&l.snapshot().unwrap(), per_team / 2);
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        assert_eq!(l.compact_date(date, |_, _| {}).unwrap().len(), 1);
        let compacted = l.snapshot().unwrap();
        assert_eq!(compacted.files.len(), 1);
        check(&compacted, per_team);
    }

    #[test]
    fn compaction_swaps_a_day_for_one_file_in_one_commit_and_vacuum_removes_the_originals() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
        l.write_flush(
            0,
            None,
            0,
            1,
            &[row(0, 0, 1, "1", "USD"), row(0, 1, 1, "2", "USD")],
        )
        .unwrap();
        l.write_flush(
            0,
            Some(1),
            2,
            4,
            &[
                row(0, 2, 1, "3", "USD"),
                row(0, 3, 2, "4", "USD"),
                row(0, 4, 1, "5", "USD"),
            ],
        )
        .unwrap();
        l.write_flush(0, Some(4), 5, 5, &[row(0, 5, 1, "6", "USD")])
            .unwrap();
        let before = l.snapshot().unwrap();
        assert_eq!(before.files.len(), 4);
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let mut seen = vec![];
        let done = l.compact_date(date, |a, b| seen.push((a, b))).unwrap();
        assert_eq!(seen, [(0, 3), (1, 3), (2, 3), (3, 3)]);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].merged_files, done[0].rows), (3, 5));
        let after = l.snapshot().unwrap();
        assert_eq!(after.version, done[0].version);
        let day1: Vec<_> = after
            .files
            .iter()
            .filter(|f| f.date == "2026-03-01")
            .cloned()
            .collect();
        assert_eq!(day1.len(), 1);
        assert_eq!((day1[0].first, day1[0].last), (0, 5));
        let mut only_day1 = after.clone();
        only_day1.files = day1.clone();
        assert_eq!(rows_of(&only_day1), [0, 1, 2, 4, 5]);
        assert_eq!(rows_of(&after), [0, 1, 2, 3, 4, 5], "each row once");
        assert_eq!(after.ends, before.ends, "a compaction moves no partition");
        let merged =
            parquet::file::reader::SerializedFileReader::new(after.read(&day1[0]).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!(
            merged.metadata().num_row_groups(),
            1,
            "a compacted day is one row group"
        );
        // the version before still reads (a query that started before the compaction)
        assert_eq!(
            rows_of(&l.snapshot_at(before.version).unwrap()),
            [0, 1, 2, 3, 4, 5]
        );
        // nothing to do twice
        assert!(l.compact_date(date, |_, _| {}).unwrap().is_empty());
        // vacuum within the retention keeps the originals; past it, deletes exactly them
        assert!(l
            .vacuum(Duration::from_secs(3600), false)
            .unwrap()
            .files
            .is_empty());
        let v = l.vacuum(Duration::ZERO, false).unwrap();
        assert_eq!(v.files.len(), 3, "{v:?}");
        assert_eq!(rows_of(&l.snapshot().unwrap()), [0, 1, 2, 3, 4, 5]);
    }
}
