//! Names of the ledger's data files: `date=YYYY-MM-DD/part-<p>-<first>-<last>-<id>.parquet`.
//!
//! A file holds rows of one input partition `p`, offsets within `first..=last`, of one event
//! date. The name says so for readers that want to skip a file (a close's cut, a rollup); it
//! is not the record of progress — the Delta log is: a file the log does not list is not
//! part of the table, whatever its name. `<id>` is random, so a flush written again after a
//! crash (or by another writer) never overwrites a file someone may have committed.

use crate::DATE_COLUMN;

/// `part-<p>-<first>-<last>-<16 hex>.parquet`
pub(crate) fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!(
        "part-{partition}-{first}-{last}-{:016x}.parquet",
        rand::random::<u64>()
    )
}

/// The partition and offset range a data file's name says; `None` for any other name.
pub(crate) fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut it = rest.splitn(4, '-');
    let p = it.next()?.parse().ok()?;
    let first = it.next()?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    let id = it.next()?;
    (first <= last && !id.is_empty()).then_some((p, first, last))
}

/// Whether two data files (paths relative to the table) hold the same flush: the same date
/// directory and the same partition and offset range (the same input records, so the same
/// rows), whatever their random ids.
pub(crate) fn same_flush(a: &str, b: &str) -> bool {
    let split = |rel: &str| -> Option<(String, (i32, i64, i64))> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Some((dir.to_string(), parse_file_name(name)?))
    };
    matches!((split(a), split(b)), (Some(x), Some(y)) if x == y)
}

/// `date=YYYY-MM-DD`
pub(crate) fn date_dir(date: chrono::NaiveDate) -> String {
    format!("{DATE_COLUMN}={}", date.format("%Y-%m-%d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_are_unique_and_others_are_ignored() {
        let a = file_name(3, 10, 99);
        assert_eq!(parse_file_name(&a), Some((3, 10, 99)));
        assert_ne!(a, file_name(3, 10, 99), "a rewrite never reuses a name");
        assert_eq!(parse_file_name("part-3-10-99.parquet"), None);
        assert_eq!(parse_file_name("part-3-99-10-ab.parquet"), None);
        assert_eq!(parse_file_name(".tmp-abc.parquet"), None);
        let (b, c) = (
            format!("date=2026-03-01/{}", file_name(3, 10, 99)),
            format!("date=2026-03-01/{}", file_name(3, 10, 99)),
        );
        assert!(same_flush(&b, &c), "a rewrite of the same records");
        assert!(!same_flush(&b, &c.replace("2026-03-01", "2026-03-02")));
        assert!(!same_flush(
            &b,
            &format!("date=2026-03-01/{}", file_name(3, 11, 99))
        ));
        assert!(!same_flush(
            "date=2026-03-01/x.parquet",
            "date=2026-03-01/x.parquet"
        ));
        assert_eq!(
            date_dir(chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()),
            "date=2026-03-01"
        );
    }
}
