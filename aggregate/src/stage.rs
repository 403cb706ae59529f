//! The consume → Delta loop. One blocking thread: a `read_committed` group consumer on
//! `meterline.usage.priced` and, per owned partition, the rows buffered since the last flush.
//! Exactly-once comes from the table's `txn` versions: on taking over a partition it is sought
//! to its txn version + 1, and each flush commits only if the partition is still there (the
//! fence: another instance of the group may have taken it over meanwhile); offsets committed
//! to Kafka afterwards only inform lag tooling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterline_runtime::kafka::KafkaConfig;
use meterline_runtime::lag::{self, LagTracker};
use meterline_schemas::metric_names as m;
use meterline_schemas::{topics, AvroRecord, PricedUsage};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::AggregateConfig;
use crate::Error;
use meterline_ledger::{Ledger, Row};

/// Rebalance callbacks record what happened; the loop acts after `poll` returns. Statistics
/// (lag) are published from here, on the poll thread, without broker round trips.
#[derive(Default)]
pub struct Callbacks {
    revoked: Mutex<Vec<i32>>,
    lag: Mutex<LagTracker>,
}

impl ClientContext for Callbacks {
    fn stats(&self, stats: rdkafka::Statistics) {
        let offsets = lag::offsets_of(&stats, topics::USAGE_PRICED);
        let report = self.lag.lock().expect("lag").report(stats.ts, &offsets);
        lag::publish(
            &report,
            m::AGGREGATE_CONSUMER_LAG,
            m::AGGREGATE_BACKLOG_DRAIN_SECONDS,
        );
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            self.revoked.lock().expect("revoked").extend(
                tpl.elements_for_topic(topics::USAGE_PRICED)
                    .iter()
                    .map(|e| e.partition()),
            );
        }
    }
}

/// While writes fail, a partition buffers up to this many flushes' worth, then is paused.
const PAUSE_AT_FLUSHES: usize = 4;

/// Rows of one owned partition not yet in a file.
struct Buffer {
    rows: Vec<Row>,
    /// First input offset of the buffer (the flush range starts here).
    first: Option<i64>,
    /// The partition's txn version in the table this buffer continues (`first - 1` once
    /// something is buffered; `None`: the table had nothing of the partition).
    after: Option<i64>,
    /// The next offset expected: the flush range ends just before it.
    next: i64,
    bytes: usize,
    opened: Instant,
    /// A failed write is retried no sooner than this.
    retry_at: Option<Instant>,
    /// Fetching paused: writes keep failing and the buffer is full.
    paused: bool,
}

impl Buffer {
    fn new(after: Option<i64>, start: i64) -> Buffer {
        Buffer {
            rows: vec![],
            first: None,
            after,
            next: start,
            bytes: 0,
            opened: Instant::now(),
            retry_at: None,
            paused: false,
        }
    }

    fn due(&self, cfg: &AggregateConfig, now: Instant, all: bool) -> bool {
        self.first.is_some()
            && self.retry_at.is_none_or(|t| now >= t)
            && (all
                || self.rows.len() >= cfg.flush_rows
                || self.bytes >= cfg.flush_bytes
                || now.duration_since(self.opened) >= Duration::from_millis(cfg.flush_ms))
    }
}

pub struct Stage {
    cfg: AggregateConfig,
    consumer: BaseConsumer<Callbacks>,
    ledger: Arc<Ledger>,
    owned: HashMap<i32, Buffer>,
    stop: CancellationToken,
}

impl Stage {
    pub fn new(
        kafka: &KafkaConfig,
        cfg: AggregateConfig,
        ledger: Arc<Ledger>,
        stop: CancellationToken,
    ) -> Result<Stage, Error> {
        let consumer: BaseConsumer<Callbacks> = kafka
            .stage_consumer(
                "aggregate",
                &cfg.group_id,
                cfg.session_timeout_ms,
                cfg.max_poll_interval_ms,
            )
            .create_with_context(Callbacks::default())
            .map_err(Error::kafka)?;
        consumer
            .subscribe(&[topics::USAGE_PRICED])
            .map_err(Error::kafka)?;
        Ok(Stage {
            cfg,
            consumer,
            ledger,
            owned: HashMap::new(),
            stop,
        })
    }

    /// The loop. Returns when `stop` is cancelled (after writing what is buffered) or on an
    /// error that retrying cannot fix.
    pub fn run(mut self) -> Result<(), Error> {
        while !self.stop.is_cancelled() {
            // Decoded while the message is borrowed (the loop then needs `self` mutably), so
            // the payload is never copied.
            let polled = match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(msg)) => {
                    let payload = msg.payload().unwrap_or_default();
                    Some((
                        msg.partition(),
                        msg.offset(),
                        payload.len(),
                        PricedUsage::from_avro(payload),
                    ))
                }
                Some(Err(e)) => {
                    warn!(error = %e, "consumer");
                    None
                }
                None => None,
            };
            self.apply_revocations();
            if let Some((p, offset, bytes, decoded)) = polled {
                self.handle(p, offset, bytes, decoded)?;
            }
            self.flush_due(false)?;
        }
        self.flush_due(true)?;
        self.consumer.unsubscribe();
        Ok(())
    }

    /// A revoked partition's buffer is dropped: its new owner reads those rows again from
    /// where the files end.
    fn apply_revocations(&mut self) {
        let revoked =
            std::mem::take(&mut *self.consumer.context().revoked.lock().expect("revoked"));
        for p in revoked {
            if let Some(b) = self.owned.remove(&p) {
                info!(partition = p, dropped = b.rows.len(), "partition revoked");
            }
        }
    }

    /// Takes over partition `p`: where the table has it, then a seek. Returns the start.
    fn take_over(&mut self, p: i32) -> Result<i64, Error> {
        // 1. the table's txn version says where p's ledger ends
        let after = self.ledger.txn_version(p)?;
        let start = match after {
            Some(last) => Offset::Offset(last + 1),
            // 2. nothing of p yet: everything still in the topic
            None => Offset::Beginning,
        };
        // 3. read from there, whatever the group's committed offset says
        self.consumer
            .seek(topics::USAGE_PRICED, p, start, Duration::from_secs(10))
            .map_err(Error::kafka)?;
        let start = match start {
            Offset::Offset(o) => o,
            _ => {
                self.consumer
                    .fetch_watermarks(topics::USAGE_PRICED, p, Duration::from_secs(10))
                    .map_err(Error::kafka)?
                    .0
            }
        };
        info!(partition = p, start, "took over partition");
        self.owned.insert(p, Buffer::new(after, start));
        Ok(start)
    }

    fn handle(
        &mut self,
        p: i32,
        offset: i64,
        bytes: usize,
        decoded: Result<PricedUsage, meterline_schemas::Error>,
    ) -> Result<(), Error> {
        if !self.owned.contains_key(&p) {
            let start = self.take_over(p)?;
            if offset != start {
                return Ok(()); // fetched before the seek; it comes again from `start`
            }
        }
        let b = self.owned.get_mut(&p).expect("owned");
        if offset < b.next {
            return Ok(()); // a refetch of rows already buffered or written
        }
        if b.first.is_none() {
            b.first = Some(offset);
            b.opened = Instant::now();
        }
        b.next = offset + 1;
        b.bytes += bytes;
        // The disk is refusing writes: stop fetching this partition once a bounded backlog is
        // buffered, instead of growing without limit; resumed after the next good write.
        if b.retry_at.is_some()
            && !b.paused
            && (b.rows.len() >= PAUSE_AT_FLUSHES * self.cfg.flush_rows
                || b.bytes >= PAUSE_AT_FLUSHES * self.cfg.flush_bytes)
        {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topics::USAGE_PRICED, p);
            match self.consumer.pause(&tpl) {
                Ok(()) => {
                    b.paused = true;
                    warn!(
                        partition = p,
                        rows = b.rows.len(),
                        "ledger writes failing: partition paused"
                    );
                }
                Err(e) => warn!(partition = p, error = %e, "pausing the partition failed"),
            }
        }
        match decoded {
            Ok(priced) => b.rows.push(Row {
                priced,
                partition: p,
                offset,
            }),
            // Poison: enrich wrote it, so no retry can fix it. It stays in the topic (and in
            // the flush's offset range, so it is not read again); count it and say where.
            Err(e) => {
                metrics::counter!(m::AGGREGATE_POISON).increment(1);
                error!(partition = p, offset, error = %e, "undecodable priced record skipped");
            }
        }
        Ok(())
    }

    fn flush_due(&mut self, all: bool) -> Result<(), Error> {
        let now = Instant::now();
        let due: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, b)| b.due(&self.cfg, now, all))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.flush(p)?;
        }
        let buffered: usize = self.owned.values().map(|b| b.rows.len()).sum();
        metrics::gauge!(m::AGGREGATE_BUFFERED_ROWS).set(buffered as f64);
        Ok(())
    }

    fn flush(&mut self, p: i32) -> Result<(), Error> {
        let t0 = Instant::now();
        let b = self.owned.get_mut(&p).expect("owned");
        let (first, last) = (b.first.expect("due"), b.next - 1);
        let n = b.rows.len();
        // (only poison records: the commit holds just the txn, so they are not read again)
        match self.ledger.write_flush(p, b.after, first, last, &b.rows) {
            Ok(flushed) => {
                let (files, bytes) = (flushed.files, flushed.bytes);
                b.rows.clear();
                b.first = None;
                b.after = Some(last);
                b.bytes = 0;
                b.retry_at = None;
                if b.paused {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(topics::USAGE_PRICED, p);
                    if self.consumer.resume(&tpl).is_ok() {
                        b.paused = false;
                        info!(
                            partition = p,
                            "ledger writes succeed again: partition resumed"
                        );
                    }
                }
                metrics::counter!(m::AGGREGATE_ROWS_WRITTEN).increment(n as u64);
                metrics::counter!(m::AGGREGATE_FILES_WRITTEN).increment(files.len() as u64);
                metrics::counter!(m::AGGREGATE_BYTES_WRITTEN).increment(bytes);
                metrics::histogram!(m::AGGREGATE_FLUSH_ROWS).record(n as f64);
                metrics::histogram!(m::AGGREGATE_FLUSH_SECONDS).record(t0.elapsed().as_secs_f64());
                // Informational only (lag tooling); the table's txn versions are the progress.
                let mut tpl = TopicPartitionList::new();
                if tpl
                    .add_partition_offset(topics::USAGE_PRICED, p, Offset::Offset(last + 1))
                    .is_ok()
                {
                    let _ = self.consumer.commit(&tpl, CommitMode::Async);
                }
            }
            Err(e @ meterline_ledger::Error::Fenced { .. }) => {
                // Another instance of the group owns p now (a rebalance this one has not seen
                // yet, or it stalled past its session): its rows are in the table once, by the
                // other writer. Drop the buffer; if p is still assigned here, the next record
                // takes it over again from the table.
                warn!(partition = p, error = %e, dropped = n, "flush fenced: partition given up");
                metrics::counter!(m::AGGREGATE_FENCED).increment(1);
                if b.paused {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(topics::USAGE_PRICED, p);
                    let _ = self.consumer.resume(&tpl);
                }
                self.owned.remove(&p);
            }
            Err(e) if e.is_retryable() => {
                // Retryable (disk full, permissions fixed by an operator): keep the rows, try
                // again in a few seconds; the consumer keeps its position.
                metrics::counter!(m::AGGREGATE_WRITE_ERRORS).increment(1);
                error!(partition = p, error = %e, "writing the ledger failed; retrying in 5 s");
                b.retry_at = Some(Instant::now() + Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
