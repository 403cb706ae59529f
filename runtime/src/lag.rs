//! Consumer lag per partition and the backlog drain time it implies, computed from librdkafka's
//! periodic statistics (delivered on the poll thread, so reporting never blocks a stage's loop
//! with broker round trips).
//!
//! lag(p) = last stable offset (what a `read_committed` consumer can reach) − the position the
//! application has consumed to; drain time = Σ lag ÷ the consume rate since the previous report.

use std::collections::BTreeMap;

/// One partition's offsets from a statistics report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// Offset of the last message handed to the application, plus one (−1 if none yet).
    pub app_offset: i64,
    /// Last stable offset, else the high watermark (−1 if unknown).
    pub end_offset: i64,
    /// Messages consumed so far (monotonic while the partition is assigned).
    pub consumed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LagReport {
    pub per_partition: BTreeMap<i32, i64>,
    pub total: i64,
    /// Seconds to drain the total lag at the recent rate; `None` before a rate is known or
    /// while nothing is being consumed with lag present (an infinite drain).
    pub drain_seconds: Option<f64>,
}

/// Remembers the previous report to turn consumed counts into a rate.
#[derive(Debug, Default)]
pub struct LagTracker {
    previous: Option<(i64, u64)>,
}

impl LagTracker {
    /// `now_micros` is the report's monotonic timestamp (librdkafka `ts`).
    pub fn report(&mut self, now_micros: i64, partitions: &[PartitionOffsets]) -> LagReport {
        let mut per_partition = BTreeMap::new();
        let mut consumed = 0u64;
        for p in partitions.iter().filter(|p| p.partition >= 0) {
            consumed += p.consumed;
            // Unknown offsets say nothing about lag: skip rather than report a bogus figure.
            if p.end_offset >= 0 && p.app_offset >= 0 {
                per_partition.insert(p.partition, (p.end_offset - p.app_offset).max(0));
            }
        }
        let total: i64 = per_partition.values().sum();
        let rate = self.previous.and_then(|(t0, c0)| {
            let secs = (now_micros - t0) as f64 / 1e6;
            (secs > 0.0 && consumed >= c0).then(|| (consumed - c0) as f64 / secs)
        });
        self.previous = Some((now_micros, consumed));
        let drain_seconds = match rate {
            _ if total == 0 => Some(0.0),
            Some(r) if r > 0.0 => Some(total as f64 / r),
            _ => None,
        };
        LagReport {
            per_partition,
            total,
            drain_seconds,
        }
    }
}

/// The offsets of `topic`'s partitions in a librdkafka statistics report.
pub fn offsets_of(stats: &rdkafka::Statistics, topic: &str) -> Vec<PartitionOffsets> {
    stats
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .values()
                .map(|p| PartitionOffsets {
                    partition: p.partition,
                    app_offset: p.app_offset,
                    end_offset: if p.ls_offset >= 0 {
                        p.ls_offset
                    } else {
                        p.hi_offset
                    },
                    consumed: p.rxmsgs,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Publishes a report under the given gauge names (`lag` labelled by partition).
pub fn publish(report: &LagReport, lag_gauge: &'static str, drain_gauge: &'static str) {
    for (p, lag) in &report.per_partition {
        metrics::gauge!(lag_gauge, meterline_schemas::metric_names::LABEL_PARTITION => p.to_string())
            .set(*lag as f64);
    }
    metrics::gauge!(drain_gauge).set(report.drain_seconds.unwrap_or(f64::INFINITY));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn po(partition: i32, app: i64, end: i64, consumed: u64) -> PartitionOffsets {
        PartitionOffsets {
            partition,
            app_offset: app,
            end_offset: end,
            consumed,
        }
    }

    #[test]
    fn lag_per_partition_and_drain_time_from_the_recent_rate() {
        let mut t = LagTracker::default();
        let first = t.report(0, &[po(0, 100, 1100, 100), po(1, 50, 50, 50)]);
        assert_eq!(first.per_partition[&0], 1000);
        assert_eq!(first.per_partition[&1], 0);
        assert_eq!(first.total, 1000);
        assert_eq!(first.drain_seconds, None, "no rate yet");
        // 5 s later: 500 more consumed → 100/s; lag now 600 → 6 s to drain
        let second = t.report(5_000_000, &[po(0, 600, 1200, 600), po(1, 50, 50, 50)]);
        assert_eq!(second.total, 600);
        assert_eq!(second.drain_seconds, Some(6.0));
    }

    #[test]
    fn stalled_consumer_with_lag_has_no_finite_drain_time_and_idle_one_drains_in_zero() {
        let mut t = LagTracker::default();
        t.report(0, &[po(0, 10, 20, 10)]);
        assert_eq!(
            t.report(1_000_000, &[po(0, 10, 20, 10)]).drain_seconds,
            None
        );
        let mut idle = LagTracker::default();
        assert_eq!(idle.report(0, &[po(0, 7, 7, 7)]).drain_seconds, Some(0.0));
    }

    #[test]
    fn unknown_offsets_and_the_internal_partition_are_skipped() {
        let mut t = LagTracker::default();
        let r = t.report(0, &[po(-1, -1, -1, 0), po(3, -1001, 40, 0), po(4, 5, 9, 5)]);
        assert_eq!(r.per_partition.len(), 1);
        assert_eq!(r.total, 4);
    }
}
