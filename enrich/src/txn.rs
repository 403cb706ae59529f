//! The exactly-once bookkeeping of one input partition, kept apart from Kafka I/O so it can be
//! unit-tested.
//!
//! Each input partition `p` of `meterline.usage.raw` has its own transactional producer with
//! `transactional.id = <prefix>-p<p>`, writing only to partition `p` of the output topics. So:
//! 1. taking over `p` (`init_transactions` with that id) fences any previous owner of `p` and
//!    aborts its open transaction, whatever the group protocol or broker version;
//! 2. the consumed offsets of `p` are committed in the same transaction as the output they
//!    produced (`send_offsets_to_transaction`), so output and progress move together;
//! 3. after an abort, the partition is rewound to the batch's first offset and the dedup ids the
//!    batch staged are forgotten (`DedupWindow::rollback`).
//!
//! A batch (one transaction) closes at `max_records` records or `max_age`, whichever is first.

use std::time::{Duration, Instant};

/// When to commit.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_records: usize,
    pub max_age: Duration,
}

/// The open transaction of one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// First input offset in the transaction: where to rewind if it aborts.
    pub first_offset: i64,
    /// Input offset after the last record in the transaction: the offset to commit.
    pub next_offset: i64,
    pub records: usize,
    opened: Instant,
}

impl Batch {
    pub fn open(offset: i64, now: Instant) -> Batch {
        Batch {
            first_offset: offset,
            next_offset: offset,
            records: 0,
            opened: now,
        }
    }

    /// One input record (at `offset`) has been handled inside the transaction.
    pub fn record(&mut self, offset: i64) {
        debug_assert!(
            offset >= self.next_offset,
            "offsets go forward within a batch"
        );
        self.next_offset = offset + 1;
        self.records += 1;
    }

    pub fn due(&self, policy: &BatchPolicy, now: Instant) -> bool {
        self.records >= policy.max_records
            || (self.records > 0 && now.duration_since(self.opened) >= policy.max_age)
    }
}

/// What a failed transactional call asks for (librdkafka's error attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// Try the same call again.
    Retry,
    /// Abort the transaction, rewind, and process the batch again.
    Abort,
    /// The producer is fenced or broken: give the partition up.
    Fatal,
}

pub fn classify(fatal: bool, requires_abort: bool, retriable: bool) -> TxnFailure {
    if fatal {
        TxnFailure::Fatal
    } else if requires_abort {
        TxnFailure::Abort
    } else if retriable {
        TxnFailure::Retry
    } else {
        // Not retriable and not abortable: the transaction state is unknown; aborting is the
        // safe way back to a known state.
        TxnFailure::Abort
    }
}

/// The transactional id of the producer owning input partition `partition`.
pub fn transactional_id(prefix: &str, partition: i32) -> String {
    format!("{prefix}-p{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tracks_rewind_and_commit_offsets() {
        let t0 = Instant::now();
        let mut b = Batch::open(40, t0);
        b.record(40);
        b.record(41);
        b.record(45); // gaps: control records and compaction
        assert_eq!((b.first_offset, b.next_offset, b.records), (40, 46, 3));
    }

    #[test]
    fn batch_is_due_by_count_or_age_but_never_empty() {
        let policy = BatchPolicy {
            max_records: 3,
            max_age: Duration::from_millis(100),
        };
        let t0 = Instant::now();
        let mut b = Batch::open(0, t0);
        assert!(!b.due(&policy, t0 + Duration::from_secs(5)), "empty batch");
        b.record(0);
        assert!(!b.due(&policy, t0 + Duration::from_millis(99)));
        assert!(b.due(&policy, t0 + Duration::from_millis(100)));
        b.record(1);
        b.record(2);
        assert!(b.due(&policy, t0));
    }

    #[test]
    fn failures_classify_fatal_first() {
        assert_eq!(classify(true, true, true), TxnFailure::Fatal);
        assert_eq!(classify(false, true, true), TxnFailure::Abort);
        assert_eq!(classify(false, false, true), TxnFailure::Retry);
        assert_eq!(classify(false, false, false), TxnFailure::Abort);
    }

    #[test]
    fn one_transactional_id_per_input_partition() {
        assert_eq!(
            transactional_id("meterline-enrich", 3),
            "meterline-enrich-p3"
        );
        assert_ne!(transactional_id("x", 1), transactional_id("x", 11));
    }
}
