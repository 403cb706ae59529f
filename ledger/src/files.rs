//! Names of the ledger's data files, and the input offsets each holds.
//!
//! - A flush's file, `date=YYYY-MM-DD/part-<p>-<first>-<last>-<id>.parquet`, holds rows of one
//!   input partition `p`, offsets within `first..=last`, of one event date.
//! - A compacted file, `date=YYYY-MM-DD/merged-<id>.parquet`, holds a date's rows of one or
//!   more partitions (one sorted file per day up to `ledger.compact_max_rows`, whatever the topic's
//!   partition count). Its offset spans, one per partition, are in its `add` action's tag
//!   [`OFFSETS_TAG`] (`<p>:<first>-<last>,…`, the offsets of its rows): a name cannot carry a
//!   list as long as a topic's partitions. Every file's `add` carries the tag; a flush's file
//!   is read by its name.
//!
//! Readers use the spans to skip a file (a close's cut, a rollup). They are not the record of
//! progress — the Delta log's txn actions are: a file the log does not list is not part of
//! the table, whatever its name. `<id>` is random, so a flush written again after a crash (or
//! by another writer) never overwrites a file someone may have committed.

use crate::snapshot::OffsetSpan;
use crate::DATE_COLUMN;

/// The `add` action tag holding a file's offset spans (read for compacted files).
pub(crate) const OFFSETS_TAG: &str = "meterline.offsets";

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

/// A compacted file's name: `merged-<16 hex>.parquet`.
pub(crate) fn merged_file_name() -> String {
    format!("merged-{:016x}.parquet", rand::random::<u64>())
}

/// `spans` as [`OFFSETS_TAG`]'s value: `<p>:<first>-<last>` joined by commas.
pub(crate) fn spans_tag(spans: &[OffsetSpan]) -> String {
    spans
        .iter()
        .map(|s| format!("{}:{}-{}", s.partition, s.first, s.last))
        .collect::<Vec<_>>()
        .join(",")
}

/// The spans an [`OFFSETS_TAG`] value says, in partition order; `None` unless every item is
/// `<p>:<first>-<last>` with `first <= last`, partitions distinct and at least one.
pub(crate) fn parse_spans_tag(tag: &str) -> Option<Vec<OffsetSpan>> {
    let mut spans = tag
        .split(',')
        .map(|item| {
            let (p, range) = item.split_once(':')?;
            let (first, last) = range.split_once('-')?;
            let span = OffsetSpan {
                partition: p.parse().ok()?,
                first: first.parse().ok()?,
                last: last.parse().ok()?,
            };
            (span.partition >= 0 && 0 <= span.first && span.first <= span.last).then_some(span)
        })
        .collect::<Option<Vec<_>>>()?;
    spans.sort();
    let distinct = spans.windows(2).all(|w| w[0].partition != w[1].partition);
    distinct.then_some(spans)
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
        let merged = merged_file_name();
        assert_eq!(
            parse_file_name(&merged),
            None,
            "spans of a merged file are in its tag"
        );
        assert_ne!(merged, merged_file_name());
    }

    #[test]
    fn offset_spans_round_trip_through_the_tag_and_bad_tags_are_refused() {
        let span = |partition, first, last| OffsetSpan {
            partition,
            first,
            last,
        };
        let spans = vec![span(0, 0, 99), span(1, 5, 80), span(12, 7, 7)];
        assert_eq!(spans_tag(&spans), "0:0-99,1:5-80,12:7-7");
        assert_eq!(parse_spans_tag(&spans_tag(&spans)), Some(spans));
        assert_eq!(
            parse_spans_tag("1:5-80,0:0-99"),
            Some(vec![span(0, 0, 99), span(1, 5, 80)]),
            "read in partition order"
        );
        for bad in [
            "",
            "0:0-99,",
            "0:99-0",
            "0:0-99,0:100-200",
            "x:0-1",
            "0:0",
            "0-1",
            "-1:0-1",
            "0:-2-1",
        ] {
            assert_eq!(parse_spans_tag(bad), None, "{bad:?}");
        }
    }
}
