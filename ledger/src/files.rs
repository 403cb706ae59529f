//! The ledger's exactly-once bookkeeping: the files are the progress. Kept apart from Parquet
//! and Kafka I/O so it can be unit-tested.
//!
//! One flush of input partition `p` covers the offsets `first..=last` and writes one file per
//! event date it holds: `date=YYYY-MM-DD/part-<p>-<first>-<last>.parquet`, every file of the
//! flush with the same range and the number of files of the flush in its metadata. So:
//! 1. each file is written under a temp name, fsynced, then renamed — a reader never sees half
//!    a file;
//! 2. the files of one flush are renamed one after another; a crash in between leaves a flush
//!    with fewer files than it declares. Only the newest flush of a partition can be like that
//!    (the next flush starts after the previous one is whole): recovery deletes its files, and
//!    the flush is written again from Kafka;
//! 3. on start and on assignment, partition `p` resumes at 1 + the last offset of its newest
//!    complete flush. Offsets committed to Kafka are informational only.
//!
//! Compaction (`compact.rs`) replaces whole flushes by one file that lists the ranges it merged,
//! so recovery reads ranges from metadata, not only from names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Key-value metadata keys in each ledger file's Parquet footer.
pub mod meta {
    /// Input partition of the rows.
    pub const PARTITION: &str = "meterline.partition";
    /// The flushes this file holds rows of, as `first-last:files` items joined by `,`
    /// (one item for a flush file; several for a compacted one).
    pub const FLUSHES: &str = "meterline.flushes";
}

/// Prefix of temp files (never read; deleted at start).
pub const TEMP_PREFIX: &str = ".tmp-";

/// One flush: an inclusive input offset range and how many files it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flush {
    pub first: i64,
    pub last: i64,
    pub files: u32,
}

impl Flush {
    pub fn encode(flushes: &[Flush]) -> String {
        flushes
            .iter()
            .map(|f| format!("{}-{}:{}", f.first, f.last, f.files))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn decode(text: &str) -> Option<Vec<Flush>> {
        text.split(',')
            .map(|item| {
                let (range, files) = item.split_once(':')?;
                let (first, last) = range.split_once('-')?;
                let f = Flush {
                    first: first.parse().ok()?,
                    last: last.parse().ok()?,
                    files: files.parse().ok()?,
                };
                (f.first <= f.last && f.files > 0).then_some(f)
            })
            .collect()
    }
}

/// `part-<p>-<first>-<last>.parquet`
pub fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!("part-{partition}-{first}-{last}.parquet")
}

/// The inverse of [`file_name`]; `None` for any other name (temp files included).
pub fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut it = rest.splitn(3, '-');
    let p = it.next()?.parse().ok()?;
    let first = it.next()?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    (first <= last).then_some((p, first, last))
}

/// `date=YYYY-MM-DD`
pub fn date_dir(date: chrono::NaiveDate) -> String {
    format!("date={}", date.format("%Y-%m-%d"))
}

/// A ledger file as found on disk, with what its footer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    pub path: PathBuf,
    pub partition: i32,
    pub flushes: Vec<Flush>,
}

/// What to do with a partition's files at start or assignment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Where to resume reading (`None`: no file yet — start from the group's committed offset,
    /// else the beginning).
    pub resume_at: Option<i64>,
    /// Files of an incomplete flush, to delete before resuming.
    pub delete: Vec<PathBuf>,
}

/// Decides resume offset and cleanup for one partition from its files.
pub fn recover(partition: i32, files: &[FoundFile]) -> Recovery {
    // How many files of each flush exist. A flush writes at most one file per date and
    // compaction merges within one date, so any file holds one file's worth of each flush it
    // lists.
    let mut seen: BTreeMap<Flush, (u32, Vec<&Path>)> = BTreeMap::new();
    for f in files.iter().filter(|f| f.partition == partition) {
        for fl in &f.flushes {
            let e = seen.entry(*fl).or_default();
            e.0 += 1;
            e.1.push(&f.path);
        }
    }
    let mut out = Recovery::default();
    for (fl, (count, paths)) in &seen {
        if *count >= fl.files {
            out.resume_at = Some(out.resume_at.unwrap_or(i64::MIN).max(fl.last + 1));
        } else {
            out.delete.extend(paths.iter().map(|p| p.to_path_buf()));
        }
    }
    // An incomplete flush below the resume point cannot come from a crash (flushes are
    // sequential); it would be a lost file. Keep it and let the caller report it rather
    // than delete data.
    if let Some(resume) = out.resume_at {
        let orphans: Vec<PathBuf> = seen
            .iter()
            .filter(|(fl, (count, _))| *count < fl.files && fl.last < resume)
            .flat_map(|(_, (_, paths))| paths.iter().map(|p| p.to_path_buf()))
            .collect();
        out.delete.retain(|p| !orphans.contains(p));
    }
    out
}

/// Originals a compaction crashed before deleting: files whose flushes are all listed by a
/// larger file of the same partition in the same date directory (the merged file, written
/// and renamed before any original is deleted). They hold the same rows again; delete them.
pub fn superseded(files: &[FoundFile]) -> Vec<PathBuf> {
    // Pairwise, cheapest tests first: readers call this on every query over hundreds of files.
    files
        .iter()
        .filter(|f| {
            files.iter().any(|g| {
                g.partition == f.partition
                    && g.flushes.len() > f.flushes.len()
                    && g.path.parent() == f.path.parent()
                    && f.flushes.iter().all(|fl| g.flushes.contains(fl))
            })
        })
        .map(|f| f.path.clone())
        .collect()
}

/// The ledger as a reader may use it while the stage writes: only files all of whose flushes
/// are complete, and per partition the offset those files end before. Read-only (recovery
/// deletes; this only looks).
pub fn complete_view(files: &[FoundFile]) -> (BTreeMap<i32, i64>, Vec<&FoundFile>) {
    let gone = superseded(files);
    let files: Vec<&FoundFile> = files.iter().filter(|f| !gone.contains(&f.path)).collect();
    let mut count: BTreeMap<(i32, Flush), u32> = BTreeMap::new();
    for f in &files {
        for fl in &f.flushes {
            *count.entry((f.partition, *fl)).or_default() += 1;
        }
    }
    let done = |p: i32, fl: &Flush| count.get(&(p, *fl)).is_some_and(|c| *c >= fl.files);
    let mut resume: BTreeMap<i32, i64> = BTreeMap::new();
    let mut usable = vec![];
    for f in files {
        if f.flushes.iter().all(|fl| done(f.partition, fl)) {
            for fl in &f.flushes {
                let r = resume.entry(f.partition).or_insert(i64::MIN);
                *r = (*r).max(fl.last + 1);
            }
            usable.push(f);
        }
    }
    (resume, usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, p: i32, flushes: &[(i64, i64, u32)]) -> FoundFile {
        FoundFile {
            path: PathBuf::from(path),
            partition: p,
            flushes: flushes
                .iter()
                .map(|&(first, last, files)| Flush { first, last, files })
                .collect(),
        }
    }

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        assert_eq!(file_name(3, 10, 99), "part-3-10-99.parquet");
        assert_eq!(parse_file_name("part-3-10-99.parquet"), Some((3, 10, 99)));
        assert_eq!(parse_file_name(".tmp-abc.parquet"), None);
        assert_eq!(parse_file_name("part-3-99-10.parquet"), None);
        assert_eq!(parse_file_name("part-3-10.parquet"), None);
        let fl = vec![
            Flush {
                first: 0,
                last: 9,
                files: 2,
            },
            Flush {
                first: 10,
                last: 19,
                files: 1,
            },
        ];
        assert_eq!(Flush::decode(&Flush::encode(&fl)), Some(fl));
        assert_eq!(Flush::decode("5-1:1"), None);
        assert_eq!(Flush::decode("x"), None);
    }

    #[test]
    fn resumes_after_the_newest_complete_flush() {
        let files = [
            f("a", 0, &[(0, 99, 1)]),
            f("b", 0, &[(100, 199, 2)]),
            f("c", 0, &[(100, 199, 2)]),
            f("other", 1, &[(0, 500, 1)]),
        ];
        assert_eq!(
            recover(0, &files),
            Recovery {
                resume_at: Some(200),
                delete: vec![]
            }
        );
        assert_eq!(recover(1, &files).resume_at, Some(501));
        assert_eq!(recover(2, &files), Recovery::default());
    }

    #[test]
    fn a_flush_cut_short_by_a_crash_is_deleted_and_redone() {
        // flush 200..=299 declared 3 files; the crash came after renaming 2 of them
        let files = [
            f("a", 0, &[(0, 199, 1)]),
            f("b", 0, &[(200, 299, 3)]),
            f("c", 0, &[(200, 299, 3)]),
        ];
        let r = recover(0, &files);
        assert_eq!(r.resume_at, Some(200));
        assert_eq!(r.delete, vec![PathBuf::from("b"), PathBuf::from("c")]);
        // the very first flush cut short: start from the beginning (or the group's offset)
        let r = recover(0, &[f("x", 0, &[(0, 9, 2)])]);
        assert_eq!(r.resume_at, None);
        assert_eq!(r.delete, vec![PathBuf::from("x")]);
    }

    #[test]
    fn compacted_files_count_for_every_flush_they_merged() {
        // two flushes each wrote 2 files (2 dates); compaction merged the first date's two
        // files, the other date's files are still separate
        let files = [
            f("merged", 0, &[(0, 99, 2), (100, 199, 2)]),
            f("d2a", 0, &[(0, 99, 2)]),
            f("d2b", 0, &[(100, 199, 2)]),
        ];
        let r = recover(0, &files);
        assert_eq!(r.resume_at, Some(200));
        assert!(r.delete.is_empty());
    }

    #[test]
    fn an_old_incomplete_flush_is_reported_not_deleted() {
        let files = [f("lost", 0, &[(0, 99, 2)]), f("b", 0, &[(100, 199, 1)])];
        let r = recover(0, &files);
        assert_eq!(r.resume_at, Some(200));
        assert!(r.delete.is_empty(), "never delete below the resume point");
    }
}
