//! The Parquet ledger on disk: `<data_dir>/usage/date=YYYY-MM-DD/part-<p>-<first>-<last>.parquet`.
//! Writing a flush and recovering from the files; the rules are in `files.rs`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::files::{self, meta, Flush, FoundFile, Recovery};
use crate::rows::{self, Row};
use crate::{io, Error};

/// Rows per Parquet row group: a compacted day of a partition is one row group up to a
/// million rows. A scan pays per row group (a reader, dictionaries, statistics, a short last
/// batch), so few large ones scan fastest; pruning inside them is by pages ([`PAGE_ROWS`],
/// page statistics and index), not by row groups.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Rows per data page (at most): the unit the page index lets a reader skip. The ledger is
/// sorted by org, cost center, team, …, so a team's rows of a file are a few consecutive
/// pages and a lead's scan (its `team IN (…)` pushed into the reader) decodes only those.
pub const PAGE_ROWS: usize = 16 * 1024;

pub struct Ledger {
    usage_dir: PathBuf,
    /// The Delta log, for a ledger opened to write ([`Ledger::open_writer`]).
    #[cfg(feature = "delta")]
    log: Option<std::sync::Mutex<crate::delta::DeltaLog>>,
}

impl Ledger {
    /// The ledger under `data_dir`, to read.
    pub fn open(data_dir: &Path) -> Result<Ledger, Error> {
        let usage_dir = data_dir.join("usage");
        fs::create_dir_all(&usage_dir).map_err(io(&usage_dir))?;
        Ok(Ledger {
            usage_dir,
            #[cfg(feature = "delta")]
            log: None,
        })
    }

    /// The ledger under `data_dir`, to write: with the `delta` feature (the sink and
    /// `meterline compact` have it) every flush and compaction is also published to the
    /// table's Delta log (created if missing; see `delta.rs`).
    pub fn open_writer(data_dir: &Path) -> Result<Ledger, Error> {
        let mut ledger = Ledger::open(data_dir)?;
        ledger.usage_dir = fs::canonicalize(&ledger.usage_dir).map_err(io(&ledger.usage_dir))?;
        #[cfg(feature = "delta")]
        {
            ledger.log = Some(std::sync::Mutex::new(crate::delta::DeltaLog::open(
                &ledger.usage_dir,
            )?));
        }
        Ok(ledger)
    }

    /// Runs `f` on the Delta log, if this ledger writes one.
    #[cfg(feature = "delta")]
    fn with_log(
        &self,
        f: impl FnOnce(&mut crate::delta::DeltaLog) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match &self.log {
            Some(l) => {
                let mut l = l
                    .lock()
                    .map_err(|_| Error::Fatal("delta log lock poisoned".into()))?;
                f(&mut l)
            }
            None => Ok(()),
        }
    }

    /// Publishes one flush (its files, and `last` as the partition's txn version).
    fn publish_flush(&self, partition: i32, last: i64, files: &[PathBuf]) -> Result<(), Error> {
        #[cfg(feature = "delta")]
        return self.with_log(|l| l.commit_flush(partition, last, files));
        #[cfg(not(feature = "delta"))]
        {
            let _ = (partition, last, files);
            Ok(())
        }
    }

    /// Makes the Delta log say what the files now say (after recovery deleted some).
    fn reconcile_log(&self) -> Result<(), Error> {
        #[cfg(feature = "delta")]
        return self.with_log(|l| {
            let found = self.scan()?;
            let (resume, complete) = files::complete_view(&found);
            let lasts: BTreeMap<i32, i64> = resume.iter().map(|(p, r)| (*p, r - 1)).collect();
            let (added, removed) = l.reconcile(&complete, &lasts)?;
            if added + removed > 0 {
                tracing::warn!(added, removed, "delta log reconciled with the ledger files");
            }
            Ok(())
        });
        #[cfg(not(feature = "delta"))]
        Ok(())
    }

    pub fn usage_dir(&self) -> &Path {
        &self.usage_dir
    }

    /// Claims the ledger for one sink: an exclusive lock on `usage/_sink.lock` (the `_`
    /// prefix keeps it out of the table for Delta readers), held until the returned guard is
    /// dropped or the process dies (kill -9 included: the kernel releases it). Two sinks on
    /// one directory would recover each other's partitions and adopt each other's uncommitted
    /// files into the Delta log, so a second one waits here, as a standby, until the first is
    /// gone, asking `stop` every 200 ms; `Ok(None)` if it was told to stop first. A writer that
    /// does not write flushes (`meterline compact`) does not need it. The lock is advisory
    /// (`flock`): a file system without it (some network mounts) does not enforce it.
    pub fn claim_sink(&self, stop: impl Fn() -> bool) -> Result<Option<SinkClaim>, Error> {
        let path = self.usage_dir.join(SINK_LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut next_note = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(SinkClaim { _file: file })),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
            if stop() {
                return Ok(None);
            }
            if std::time::Instant::now() >= next_note {
                tracing::warn!(lock = %path.display(), "another sink holds this ledger: standing by until it stops");
                next_note += std::time::Duration::from_secs(30);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn date_dirs(&self) -> Result<Vec<PathBuf>, Error> {
        let mut out = vec![];
        for e in fs::read_dir(&self.usage_dir).map_err(io(&self.usage_dir))? {
            let e = e.map_err(io(&self.usage_dir))?;
            if e.file_name().to_string_lossy().starts_with("date=") && e.path().is_dir() {
                out.push(e.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes temp files left by a crash (they were never renamed, so never counted).
    pub fn remove_temp_files(&self) -> Result<usize, Error> {
        let mut n = 0;
        for d in self.date_dirs()? {
            for e in fs::read_dir(&d).map_err(io(&d))? {
                let e = e.map_err(io(&d))?;
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(files::TEMP_PREFIX)
                {
                    fs::remove_file(e.path()).map_err(io(&e.path()))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Every ledger file with the flushes its footer lists.
    pub fn scan(&self) -> Result<Vec<FoundFile>, Error> {
        let mut out = vec![];
        for d in self.date_dirs()? {
            for e in fs::read_dir(&d).map_err(io(&d))? {
                let e = e.map_err(io(&d))?;
                let name = e.file_name().to_string_lossy().to_string();
                let Some((partition, _, _)) = files::parse_file_name(&name) else {
                    continue;
                };
                let flushes = match read_flushes(&e.path()) {
                    Ok(f) => f,
                    // deleted meanwhile by a compaction running beside the stage
                    Err(_) if !e.path().exists() => continue,
                    Err(err) => return Err(err),
                };
                out.push(FoundFile {
                    path: e.path(),
                    partition,
                    flushes,
                });
            }
        }
        Ok(out)
    }

    /// Recovery of one partition: deletes the files of a flush cut short and returns where to
    /// resume.
    pub fn recover(&self, partition: i32) -> Result<Option<i64>, Error> {
        self.remove_superseded()?;
        let found = self.scan()?;
        let Recovery { resume_at, delete } = files::recover(partition, &found);
        for p in &delete {
            tracing::warn!(file = %p.display(), "deleting a file of an incomplete flush (crash); its rows are read again");
            fs::remove_file(p).map_err(io(p))?;
        }
        // the Delta log says what the files now say (a flush written but not committed before
        // a crash is added; files deleted above or by compaction are removed)
        self.reconcile_log()?;
        Ok(resume_at)
    }

    /// Publishes a compaction to the Delta log (nothing without one).
    pub fn publish_compaction(&self, merged: &Path, originals: &[PathBuf]) -> Result<(), Error> {
        #[cfg(feature = "delta")]
        return self.with_log(|l| l.commit_compaction(merged, originals));
        #[cfg(not(feature = "delta"))]
        {
            let _ = (merged, originals);
            Ok(())
        }
    }

    /// Deletes originals a crashed compaction left next to their merged file.
    pub fn remove_superseded(&self) -> Result<usize, Error> {
        let gone = files::superseded(&self.scan()?);
        for p in &gone {
            tracing::warn!(file = %p.display(), "deleting a file already merged by compaction");
            match fs::remove_file(p) {
                Ok(()) => {}
                // a concurrent compaction or recovery got there first
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p)(e)),
            }
        }
        Ok(gone.len())
    }

    /// Writes one flush of `partition` (input offsets `first..=last`): one file per event date.
    /// Returns the files written. On an I/O error the files already renamed are removed again,
    /// so the same rows can be retried (with a longer range) without leaving an incomplete
    /// flush behind; if even that fails the error is `Fatal` and a restart's recovery cleans up.
    pub fn write_flush(
        &self,
        partition: i32,
        first: i64,
        last: i64,
        rows: &[Row],
    ) -> Result<Vec<PathBuf>, Error> {
        let mut written = vec![];
        let result = self
            .write_flush_files(partition, first, last, rows, &mut written)
            .and_then(|()| {
                // 1. the files, complete; 2. one Delta commit with their adds and the txn.
                //    A failed commit is a failed flush: its files go again (below), so the
                //    retry cannot leave the same rows in two flushes.
                self.publish_flush(partition, last, &written)
            });
        match result {
            Ok(_) => Ok(written),
            Err(e) => {
                for p in &written {
                    fs::remove_file(p).map_err(|re| {
                        Error::Fatal(format!(
                            "{e}; and removing {} of the failed flush failed too: {re}",
                            p.display()
                        ))
                    })?;
                }
                Err(e)
            }
        }
    }

    fn write_flush_files(
        &self,
        partition: i32,
        first: i64,
        last: i64,
        rows: &[Row],
        written: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        let mut by_date: BTreeMap<chrono::NaiveDate, Vec<&Row>> = BTreeMap::new();
        for r in rows {
            by_date
                .entry(r.priced.event.occurred_at.date_naive())
                .or_default()
                .push(r);
        }
        let flush = Flush {
            first,
            last,
            files: by_date.len() as u32,
        };
        for (date, mut rows) in by_date {
            let dir = self.usage_dir.join(files::date_dir(date));
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            rows::sort(&mut rows);
            let batch = rows::to_batch(&rows)?;
            let path = dir.join(files::file_name(partition, first, last));
            write_atomically(&dir, &path, &batch, partition, &[flush])?;
            written.push(path);
        }
        Ok(())
    }
}

/// The lock file of the ledger's one sink (see [`Ledger::claim_sink`]).
pub const SINK_LOCK: &str = "_sink.lock";

/// The ledger claimed by this process's sink; released when dropped.
#[derive(Debug)]
pub struct SinkClaim {
    _file: File,
}

/// Writer settings of every ledger file.
pub fn writer_properties(partition: i32, flushes: &[Flush]) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(meta::PARTITION.to_string(), partition.to_string()),
            KeyValue::new(meta::FLUSHES.to_string(), Flush::encode(flushes)),
        ]))
        .build()
}

/// Writes a ledger file: write to a temp name in the same directory, fsync the file, rename
/// over the final name, fsync the directory so the rename itself survives a power cut.
pub fn write_atomically(
    dir: &Path,
    path: &Path,
    batch: &arrow::array::RecordBatch,
    partition: i32,
    flushes: &[Flush],
) -> Result<(), Error> {
    // not `*.parquet`: readers listing the directory (the API) must never pick it up
    let tmp = dir.join(format!(
        "{}{:016x}.parquet.part",
        files::TEMP_PREFIX,
        rand::random::<u64>()
    ));
    write_parquet_atomically(&tmp, path, batch, writer_properties(partition, flushes))
}

/// Writes `batch` to `tmp`, fsyncs it, renames it to `path` and fsyncs the directory: a
/// reader sees the whole file or none of it.
pub fn write_parquet_atomically(
    tmp: &Path,
    path: &Path,
    batch: &arrow::array::RecordBatch,
    props: WriterProperties,
) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = File::create(tmp).map_err(io(tmp))?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    let file = w.into_inner()?;
    file.sync_all().map_err(io(tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The flushes listed in a ledger file's footer.
pub fn read_flushes(path: &Path) -> Result<Vec<Flush>, Error> {
    let file = File::open(path).map_err(io(path))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == meta::FLUSHES))
        .and_then(|k| k.value.as_deref())
        .and_then(Flush::decode)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("no {} metadata", meta::FLUSHES),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{CostLines, PricedUsage, TenantPath, UsageEvent};

    /// One sink per ledger: a second claim stands by while the first is held (here: until
    /// told to stop), and gets the ledger once the first is released.
    #[test]
    fn a_second_sink_stands_by_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ledger::open(dir.path()).unwrap();
        let second = Ledger::open(dir.path()).unwrap();
        let held = first.claim_sink(|| false).unwrap().expect("free");
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let gave_up = second
            .claim_sink(|| asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2)
            .unwrap();
        assert!(gave_up.is_none(), "claimed while another sink holds it");
        assert_eq!(asked.into_inner(), 3, "it waited, asking whether to stop");
        drop(held);
        assert!(second.claim_sink(|| true).unwrap().is_some());
        // the lock file is not part of the table: no reader lists it
        assert!(first.scan().unwrap().is_empty());
    }

    fn row(offset: i64, day: u32, total: &str) -> Row {
        let mut event = UsageEvent::example();
        event.event_id = format!("e-{offset}");
        event.occurred_at = format!("2026-03-{day:02}T12:00:00Z").parse().unwrap();
        let total = total.parse().unwrap();
        Row {
            priced: PricedUsage {
                event,
                tenant: TenantPath {
                    org: "acme".into(),
                    ..Default::default()
                },
                tenant_rule_id: None,
                price_id: "p".into(),
                price_version: 1,
                price_resolution: "exact".into(),
                model: String::new(),
                currency: "USD".into(),
                cost: CostLines {
                    output: total,
                    total,
                    ..Default::default()
                },
                priced_at: chrono::Utc::now(),
            },
            partition: 0,
            offset,
        }
    }

    fn read_rows(path: &Path) -> usize {
        let r = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        r.metadata().file_metadata().num_rows() as usize
    }

    #[test]
    fn a_flush_writes_one_file_per_date_and_recovery_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let rows = vec![row(10, 1, "0.5"), row(11, 2, "0.25"), row(12, 1, "1")];
        let files = l.write_flush(0, 10, 12, &rows).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("usage/date=2026-03-01/part-0-10-12.parquet"));
        assert_eq!(read_rows(&files[0]), 2);
        assert_eq!(read_rows(&files[1]), 1);
        assert_eq!(
            read_flushes(&files[0]).unwrap(),
            vec![Flush {
                first: 10,
                last: 12,
                files: 2
            }]
        );
        assert_eq!(l.recover(0).unwrap(), Some(13));
        assert_eq!(l.recover(1).unwrap(), None);
    }

    #[test]
    fn a_crash_between_the_files_of_a_flush_is_undone_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        l.write_flush(0, 0, 1, &[row(0, 1, "1"), row(1, 1, "1")])
            .unwrap();
        let second = l
            .write_flush(0, 2, 3, &[row(2, 1, "1"), row(3, 2, "1")])
            .unwrap();
        // the crash: the second file of the second flush was never renamed, a temp is left
        fs::remove_file(&second[1]).unwrap();
        let tmp = second[1].parent().unwrap().join(".tmp-dead.parquet");
        fs::write(&tmp, b"partial").unwrap();
        assert_eq!(l.remove_temp_files().unwrap(), 1);
        assert_eq!(
            l.recover(0).unwrap(),
            Some(2),
            "resume at the incomplete flush"
        );
        assert!(
            !second[0].exists(),
            "its renamed file is gone, so no row is written twice"
        );
        assert_eq!(l.scan().unwrap().len(), 1);
    }

    fn date_files(dir: &Path, day: u32) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir.join(format!("usage/date=2026-03-{day:02}")))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn compaction_merges_a_date_keeps_recovery_and_survives_a_crash_before_deleting() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        // three flushes of partition 0; the second also writes day 2
        l.write_flush(0, 0, 1, &[row(0, 1, "1"), row(1, 1, "2")])
            .unwrap();
        l.write_flush(0, 2, 4, &[row(2, 1, "3"), row(3, 2, "4"), row(4, 1, "5")])
            .unwrap();
        l.write_flush(0, 5, 5, &[row(5, 1, "6")]).unwrap();
        let before = date_files(dir.path(), 1);
        assert_eq!(before.len(), 3);
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let done = crate::compact::compact_date(dir.path(), date).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].merged_files, done[0].rows), (3, 5));
        let after = date_files(dir.path(), 1);
        assert_eq!(after, vec![done[0].into.clone()]);
        assert!(after[0].ends_with("part-0-0-5.parquet"));
        assert_eq!(read_rows(&after[0]), 5);
        let merged = SerializedFileReader::new(File::open(&after[0]).unwrap()).unwrap();
        assert_eq!(
            merged.metadata().num_row_groups(),
            1,
            "a compacted day is one large row group"
        );
        assert_eq!(read_flushes(&after[0]).unwrap().len(), 3);
        // the day-2 file of the second flush still completes it: recovery resumes after 5
        assert_eq!(l.recover(0).unwrap(), Some(6));
        assert_eq!(date_files(dir.path(), 2).len(), 1, "other dates untouched");
        // a second run has nothing to do
        assert!(crate::compact::compact_date(dir.path(), date)
            .unwrap()
            .is_empty());

        // a crash between writing the merged file and deleting the originals: put an original
        // back next to it; recovery deletes it, and nothing is counted twice meanwhile
        l.write_flush(0, 6, 6, &[row(6, 1, "7")]).unwrap();
        let orig6 = date_files(dir.path(), 1)
            .into_iter()
            .find(|p| p.ends_with("part-0-6-6.parquet"))
            .unwrap();
        let saved = fs::read(&orig6).unwrap();
        let done = crate::compact::compact_date(dir.path(), date).unwrap();
        assert_eq!(done[0].rows, 6);
        fs::write(&orig6, saved).unwrap(); // "not yet deleted"
        let found = l.scan().unwrap();
        let (resume, usable) = files::complete_view(&found);
        assert_eq!(resume.get(&0), Some(&7));
        let rows: usize = usable
            .iter()
            .filter(|f| f.path.parent() == orig6.parent())
            .map(|f| read_rows(&f.path))
            .sum();
        assert_eq!(rows, 6, "the superseded original is not read");
        assert_eq!(l.recover(0).unwrap(), Some(7));
        assert!(!orig6.exists(), "recovery deleted the merged original");
    }
}
