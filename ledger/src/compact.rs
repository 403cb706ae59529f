//! `meterline compact` and `meterline vacuum`.
//!
//! Compaction (Delta's optimize): a date's files, of every input partition, are merged into
//! one file (up to `ledger.compact_max_rows` rows each), sorted in the ledger's order and written as
//! large row groups (up to [`crate::ROW_GROUP_ROWS`], pages of [`crate::PAGE_ROWS`]
//! with their index): a scan then pays one reader, one set of dictionaries and one footer per
//! day instead of one per flush and partition, and a lead's `team IN (…)` reads only its
//! teams' pages. The merged file's offset spans, one per partition, go in its `add` action's
//! tag (see `files`). Safe beside writers:
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

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{concat, interleave, lexsort_to_indices, SortColumn};
use arrow::datatypes::{Int32Type, Int64Type};
use deltalake::protocol::DeltaOperation;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::snapshot::{OffsetSpan, Snapshot, TableFile};
use crate::table::{remove, writer_properties, NewFile};
use crate::{files, Error, Ledger, ROW_GROUP_ROWS};

/// The default of `ledger.compact_max_rows`: at most this many rows of a date's files are
/// merged into one; the merge holds them decoded in memory (~850 bytes a row at its peak) while
/// it writes the sorted file one row group at a time. A month of 100M events is ~3.2M rows a
/// day, one file; a larger day becomes several files.
pub const COMPACT_ROWS: u64 = 4 * ROW_GROUP_ROWS as u64;

/// What one merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The input partitions of its rows.
    pub partitions: Vec<i32>,
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

/// `files` (one date's) in groups of at most `limit` rows (a larger file alone), in path
/// order; only groups of two or more files are worth merging. Pure.
fn merge_groups(files: &[TableFile], limit: u64) -> Vec<Vec<&TableFile>> {
    let mut groups: Vec<Vec<&TableFile>> = vec![];
    let mut rows = 0;
    for f in files {
        match groups.last_mut() {
            Some(g) if rows + f.rows <= limit => {
                g.push(f);
                rows += f.rows;
            }
            _ => {
                groups.push(vec![f]);
                rows = f.rows;
            }
        }
    }
    groups.retain(|g| g.len() >= 2);
    groups
}

/// Widens `spans` (by partition) to the offsets of `batch`'s rows: a merged file's spans are
/// those of its rows, not of the flushes they came in (tighter: fewer files straddle a close).
fn add_row_spans(spans: &mut BTreeMap<i32, OffsetSpan>, batch: &RecordBatch) -> Option<()> {
    let partitions = batch.column_by_name("kafka_partition")?;
    let offsets = batch.column_by_name("kafka_offset")?;
    let (partitions, offsets) = (
        partitions.as_primitive_opt::<Int32Type>()?,
        offsets.as_primitive_opt::<Int64Type>()?,
    );
    if partitions.null_count() + offsets.null_count() > 0 {
        return None;
    }
    for (&partition, &o) in partitions.values().iter().zip(offsets.values()) {
        spans
            .entry(partition)
            .and_modify(|s| {
                s.first = s.first.min(o);
                s.last = s.last.max(o);
            })
            .or_insert(OffsetSpan {
                partition,
                first: o,
                last: o,
            });
    }
    Some(())
}

/// `batches` as one Parquet file's bytes, rows in the ledger's order ([`SORT`]), in row
/// groups of up to [`ROW_GROUP_ROWS`]. Only the sort keys are concatenated and sorted; each
/// row group is then gathered from the batches, so the rows are held once (plus the row group
/// being written), not three times (batches, their concatenation, its sorted copy).
fn merge_sorted(batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let schema = meterline_schemas::arrow_schema::usage_ledger_schema();
    let column = |b: &RecordBatch, name: &str| -> Result<arrow::array::ArrayRef, Error> {
        b.column_by_name(name).cloned().ok_or_else(|| {
            Error::Arrow(arrow::error::ArrowError::SchemaError(format!(
                "a ledger file without {name}"
            )))
        })
    };
    let columns: Vec<Vec<arrow::array::ArrayRef>> = schema
        .fields()
        .iter()
        .map(|f| batches.iter().map(|b| column(b, f.name())).collect())
        .collect::<Result<_, _>>()?;
    let keys: Vec<SortColumn> = SORT
        .iter()
        .map(|name| {
            let i = schema.index_of(name)?;
            let parts: Vec<&dyn Array> = columns[i].iter().map(|a| a.as_ref()).collect();
            Ok(SortColumn {
                values: concat(&parts)?,
                options: None,
            })
        })
        .collect::<Result<_, Error>>()?;
    let order = lexsort_to_indices(&keys, None)?;
    drop(keys);
    // row i of the whole is row i - starts[b] of batch b
    let starts: Vec<usize> = batches
        .iter()
        .scan(0, |next, b| {
            let start = *next;
            *next += b.num_rows();
            Some(start)
        })
        .collect();
    let at = |i: u32| {
        let i = i as usize;
        let b = starts.partition_point(|s| *s <= i) - 1;
        (b, i - starts[b])
    };
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))?;
    for chunk in order.values().chunks(ROW_GROUP_ROWS) {
        let rows: Vec<(usize, usize)> = chunk.iter().map(|i| at(*i)).collect();
        let gathered = columns
            .iter()
            .map(|parts| {
                let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                interleave(&parts, &rows)
            })
            .collect::<Result<Vec<_>, _>>()?;
        w.write(&RecordBatch::try_new(schema.clone(), gathered)?)?;
    }
    Ok(w.into_inner()?)
}

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

    /// Compacts `date`: its files, of every partition, merged into one (or, past
    /// `ledger.compact_max_rows`, a few); a date of one file is left alone.
    /// `progress(files_read, files_to_merge)`: once before anything is read, then after each
    /// file read.
    pub fn compact_date(
        &self,
        date: chrono::NaiveDate,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Compacted>, Error> {
        let snapshot = self.snapshot()?;
        let day = date.format("%Y-%m-%d").to_string();
        let of_day: Vec<TableFile> = snapshot
            .files
            .iter()
            .filter(|f| f.date == day)
            .cloned()
            .collect();
        let groups = merge_groups(&of_day, self.compact_max_rows);
        let to_merge: usize = groups.iter().map(Vec::len).sum();
        let mut read = 0;
        progress(0, to_merge);
        let mut out = vec![];
        for group in groups {
            let (mut batches, mut spans) = (vec![], BTreeMap::new());
            for f in &group {
                for b in Self::read_batches(&snapshot, f)? {
                    add_row_spans(&mut spans, &b).ok_or_else(|| Error::Corrupt {
                        path: f.path.clone(),
                        reason: "kafka_partition or kafka_offset missing, mistyped or null".into(),
                    })?;
                    batches.push(b);
                }
                read += 1;
                progress(read, to_merge);
            }
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let spans: Vec<OffsetSpan> = spans.into_values().collect();
            if rows == 0 {
                continue; // no ledger file is empty; nothing to merge if one were
            }
            // 1. the merged file, outside the table
            let rel = format!("{}/{}", files::date_dir(date), files::merged_file_name());
            let bytes = self.handle.put(&rel, merge_sorted(&batches)?)?;
            drop(batches);
            let new = NewFile {
                rel: rel.clone(),
                date: day.clone(),
                bytes,
                rows,
                spans: spans.clone(),
            };
            // 2. swapped in for the originals in one commit, no data changed
            let mut actions = vec![new.add(false)];
            actions.extend(group.iter().map(|f| remove(f, false)));
            let version = self.commit_actions(
                actions,
                // Delta's `targetSize` is in bytes; ours is a row limit
                // (`ledger.compact_max_rows`): the size of the file written is recorded
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: bytes as i64,
                },
            )?;
            out.push(Compacted {
                date: day.clone(),
                partitions: spans.iter().map(|s| s.partition).collect(),
                merged_files: group.len(),
                rows,
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

    /// `ledger.compact_max_rows` bounds what one merge holds: a day past it becomes several
    /// sorted files, each within it, every row once; the default merges the day into one.
    #[test]
    fn a_day_past_compact_max_rows_becomes_several_files_within_it() {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let (flushes, per_flush) = (5i64, 4_000i64);
        let compact = |cfg: LedgerConfig| {
            let dir = tempfile::tempdir().unwrap();
            let l = Ledger::open(&cfg, dir.path()).unwrap();
            for f in 0..flushes {
                let first = f * per_flush;
                let rows: Vec<_> = (first..first + per_flush)
                    .map(|o| row(0, o, 1, "0.01", "USD"))
                    .collect();
                let after = (f > 0).then_some(first - 1);
                l.write_flush(0, after, first, first + per_flush - 1, &rows)
                    .unwrap();
            }
            let done = l.compact_date(date, |_, _| {}).unwrap();
            let s = l.snapshot().unwrap();
            assert_eq!(rows_of(&s), (0..flushes * per_flush).collect::<Vec<_>>());
            // each commit's `targetSize` is its merged file's bytes (Delta's unit), not rows
            for c in &done {
                let log = dir
                    .path()
                    .join(format!("usage/_delta_log/{:020}.json", c.version));
                let text = std::fs::read_to_string(log).unwrap();
                let info: serde_json::Value = text
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .find_map(|a| a.get("commitInfo").cloned())
                    .unwrap();
                let target = &info["operationParameters"]["targetSize"];
                let added = s.files.iter().find(|f| text.contains(&f.path)).unwrap();
                assert_eq!(
                    target.as_str(),
                    Some(added.bytes.to_string().as_str()),
                    "{info}"
                );
            }
            let mut sizes: Vec<u64> = s.files.iter().map(|f| f.rows).collect();
            sizes.sort();
            sizes
        };
        let small = LedgerConfig {
            compact_max_rows: 10_000,
            ..Default::default()
        };
        small.validate().unwrap();
        // 4k + 4k, 4k + 4k, and the last flush alone
        assert_eq!(compact(small), [4_000, 8_000, 8_000]);
        assert_eq!(compact(LedgerConfig::default()), [20_000]);
        let tiny = LedgerConfig {
            compact_max_rows: 10,
            ..Default::default()
        };
        let refused = tiny.validate().unwrap_err().to_string();
        assert!(refused.contains("ledger.compact_max_rows"), "{refused}");
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
        assert_eq!(
            day1[0].spans,
            [OffsetSpan {
                partition: 0,
                first: 0,
                last: 5
            }]
        );
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

    fn file(path: &str, rows: u64) -> TableFile {
        TableFile {
            path: path.into(),
            date: "2026-03-01".into(),
            spans: vec![],
            rows,
            bytes: 1,
            modified_ms: 0,
        }
    }

    #[test]
    fn a_day_is_merged_in_groups_of_at_most_the_row_limit() {
        let files: Vec<TableFile> = [40, 50, 20, 150, 10, 5, 90]
            .iter()
            .enumerate()
            .map(|(i, b)| file(&format!("f{i}"), *b))
            .collect();
        let names = |groups: Vec<Vec<&TableFile>>| -> Vec<Vec<String>> {
            groups
                .into_iter()
                .map(|g| g.iter().map(|f| f.path.clone()).collect())
                .collect()
        };
        // 40+50 (+20 > 100), 20 alone before the 150 (alone, over the limit), 10+5+90 > 100
        assert_eq!(
            names(merge_groups(&files, 100)),
            [vec!["f0", "f1"], vec!["f4", "f5"]]
        );
        assert_eq!(
            names(merge_groups(&files, u64::MAX)),
            [vec!["f0", "f1", "f2", "f3", "f4", "f5", "f6"]]
        );
        assert!(merge_groups(&files[..1], 100).is_empty(), "one file stays");
    }

    /// One file per day whatever the partition count: its spans (one per partition) are in its
    /// `add` action's tag, read back by a new process, also from a checkpoint.
    #[test]
    fn compaction_merges_every_partition_of_a_day_and_its_spans_survive_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
        for p in 0..3 {
            let base = 100 * p as i64;
            let day1 = |o: i64| row(p, base + o, 1, "0.25", "USD");
            let day2 = row(p, base, 2, "1", "USD");
            l.write_flush(p, None, base, base + 2, &[day2, day1(1), day1(2)])
                .unwrap();
            // offsets 3..=12 in the flush, 5 and 9 on day 1
            l.write_flush(p, Some(base + 2), base + 3, base + 12, &[day1(5), day1(9)])
                .unwrap();
        }
        let before = l.snapshot().unwrap();
        assert_eq!(before.files.len(), 9);
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let done = l.compact_date(date, |_, _| {}).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            (
                done[0].partitions.clone(),
                done[0].merged_files,
                done[0].rows
            ),
            (vec![0, 1, 2], 6, 12)
        );
        assert!(
            done[0].into.starts_with("date=2026-03-01/merged-"),
            "{}",
            done[0].into
        );
        let spans: Vec<OffsetSpan> = (0..3)
            .map(|p| OffsetSpan {
                partition: p,
                first: 100 * p as i64 + 1,
                last: 100 * p as i64 + 9,
            })
            .collect();
        let after = l.snapshot().unwrap();
        let day1: Vec<&TableFile> = after
            .files
            .iter()
            .filter(|f| f.date == "2026-03-01")
            .collect();
        assert_eq!(day1.len(), 1);
        assert_eq!(day1[0].spans, spans);
        assert_eq!(after.ends, before.ends, "a compaction moves no partition");
        let want = rows_of(&before);
        assert_eq!(want.len(), 15);
        assert_eq!(rows_of(&after), want, "each row once");
        // in the add action's tag: the spans of the day's rows (1..=9), not of the flushes they
        // came in (0..=12)
        let log = std::fs::read_to_string(
            dir.path()
                .join(format!("usage/_delta_log/{:020}.json", done[0].version)),
        )
        .unwrap();
        assert!(
            log.contains(r#""meterline.offsets":"0:1-9,1:101-109,2:201-209""#),
            "{log}"
        );
        // a hundred versions on: a checkpoint; a new process reads the spans from it
        for o in 0..100 {
            l.write_flush(7, (o > 0).then_some(o - 1), o, o, &[])
                .unwrap();
        }
        drop(l); // waits for the checkpoint it started
        assert!(dir
            .path()
            .join("usage/_delta_log/00000000000000000099.checkpoint.parquet")
            .exists());
        let log_dir = dir.path().join("usage/_delta_log");
        for e in std::fs::read_dir(&log_dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let v: Option<u64> = name.strip_suffix(".json").and_then(|v| v.parse().ok());
            if v.is_some_and(|v| v <= 99) {
                std::fs::remove_file(log_dir.join(name)).unwrap();
            }
        }
        let again = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
        let reopened = again.snapshot().unwrap();
        let merged: Vec<&TableFile> = reopened
            .files
            .iter()
            .filter(|f| f.date == "2026-03-01")
            .collect();
        assert_eq!(merged[0].spans, spans, "from the checkpoint");
        assert_eq!(rows_of(&reopened), want);
    }
}
