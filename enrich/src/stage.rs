//! The consume → price → produce loop, exactly once (see `txn.rs` for the protocol).
//!
//! Runs on one blocking thread: a `read_committed` group consumer on `meterline.usage.raw`,
//! and per owned input partition a transactional producer, a dedup window and the open batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use meterline_runtime::kafka::KafkaConfig;
use meterline_runtime::lag::{self, LagTracker};
use meterline_schemas::metric_names as m;
use meterline_schemas::topics::{self, headers};
use meterline_schemas::{AvroRecord, UsageEvent};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::EnrichConfig;
use crate::dedup::{self, DedupWindow, Verdict};
use crate::pricing::{self, Rejection};
use crate::tail;
use crate::txn::{self, Batch, BatchPolicy, TxnFailure};
use crate::Error;
use meterline_reference::loader::Reference;
use meterline_reference::tenants::UNATTRIBUTED;

/// Rebalance callbacks only record what happened; the loop acts on it after `poll` returns.
/// Correctness does not depend on acting in time: a new owner's `init_transactions` fences us.
/// librdkafka's periodic statistics (`statistics.interval.ms`) arrive here too, on the poll
/// thread: they carry each partition's offsets, so lag is reported without a broker round trip.
#[derive(Default)]
pub struct RebalanceLog {
    events: Mutex<Vec<RebalanceEvent>>,
    lag: Mutex<LagTracker>,
}

#[derive(Debug)]
enum RebalanceEvent {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

fn raw_partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements_for_topic(topics::USAGE_RAW)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ClientContext for RebalanceLog {
    fn stats(&self, stats: rdkafka::Statistics) {
        let offsets = lag::offsets_of(&stats, topics::USAGE_RAW);
        let report = self
            .lag
            .lock()
            .expect("lag tracker")
            .report(stats.ts, &offsets);
        lag::publish(
            &report,
            m::ENRICH_CONSUMER_LAG,
            m::ENRICH_BACKLOG_DRAIN_SECONDS,
        );
    }
}
impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            self.events
                .lock()
                .expect("rebalance log")
                .push(RebalanceEvent::Revoked(raw_partitions(tpl)));
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.events
                .lock()
                .expect("rebalance log")
                .push(RebalanceEvent::Assigned(raw_partitions(tpl)));
        }
    }
}

/// What this instance holds for one input partition it owns.
struct Owned {
    producer: BaseProducer,
    dedup: DedupWindow,
    batch: Option<Batch>,
    /// The offset the take-over sought to, until the first record there is handled.
    start: Option<i64>,
}

/// Per-event counters, registered once (the `counter!` macro looks the key up on every call).
struct Counters {
    events_in: metrics::Counter,
    priced: metrics::Counter,
    duplicates: metrics::Counter,
    late: metrics::Counter,
    unattributed: metrics::Counter,
}

impl Counters {
    fn register() -> Counters {
        // Aborts by reason counted from zero: on `/metrics` (and in `rate()`) before the first.
        for reason in ["revoked", "fenced", "error"] {
            metrics::counter!(m::ENRICH_TXN_ABORTS, m::LABEL_REASON => reason).increment(0);
        }
        Counters {
            events_in: metrics::counter!(m::ENRICH_EVENTS_IN),
            priced: metrics::counter!(m::ENRICH_EVENTS_PRICED),
            duplicates: metrics::counter!(m::ENRICH_DUPLICATES_DROPPED),
            late: metrics::counter!(m::ENRICH_LATE_EVENTS),
            unattributed: metrics::counter!(m::ENRICH_UNATTRIBUTED),
        }
    }
}

pub struct Stage {
    counters: Counters,
    kafka: KafkaConfig,
    cfg: EnrichConfig,
    consumer: BaseConsumer<RebalanceLog>,
    tail_reader: BaseConsumer,
    reference: Arc<Reference>,
    owned: HashMap<i32, Owned>,
    policy: BatchPolicy,
    stop: CancellationToken,
    last_lag_report: Instant,
}

fn txn_timeout(cfg: &EnrichConfig) -> Duration {
    Duration::from_millis(cfg.txn_timeout_ms)
}

/// Sends `record`, waiting while librdkafka's queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), Error> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => return Err(Error::kafka(e)),
        }
    }
}

fn failure(e: &KafkaError) -> TxnFailure {
    match e {
        KafkaError::Transaction(r) => {
            txn::classify(r.is_fatal(), r.txn_requires_abort(), r.is_retriable())
        }
        _ => TxnFailure::Abort,
    }
}

impl Stage {
    pub fn new(
        kafka: KafkaConfig,
        cfg: EnrichConfig,
        reference: Arc<Reference>,
        stop: CancellationToken,
    ) -> Result<Stage, Error> {
        let consumer: BaseConsumer<RebalanceLog> = kafka
            .stage_consumer(
                "enrich",
                &cfg.group_id,
                cfg.session_timeout_ms,
                cfg.max_poll_interval_ms,
            )
            .create_with_context(RebalanceLog::default())
            .map_err(Error::kafka)?;
        let tail_reader: BaseConsumer = kafka
            .client("enrich-tail")
            .set("group.id", format!("{}-tail", cfg.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(Error::kafka)?;
        // Output partition = input partition: the output topics must have as many partitions.
        let count = |t: &str| -> Result<usize, Error> {
            let md = consumer
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .map_err(Error::kafka)?;
            Ok(md
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0))
        };
        let raw = count(topics::USAGE_RAW)?;
        for out in [topics::USAGE_PRICED, topics::USAGE_REJECTED] {
            let n = count(out)?;
            if n != raw {
                return Err(Error::Config(format!(
                    "{out} has {n} partitions but {} has {raw}: enrich writes each event to the partition number it was read from, so they must match",
                    topics::USAGE_RAW
                )));
            }
        }
        consumer
            .subscribe(&[topics::USAGE_RAW])
            .map_err(Error::kafka)?;
        let policy = BatchPolicy {
            max_records: cfg.txn_max_records,
            max_age: Duration::from_millis(cfg.txn_max_ms),
        };
        Ok(Stage {
            counters: Counters::register(),
            kafka,
            cfg,
            consumer,
            tail_reader,
            reference,
            owned: HashMap::new(),
            policy,
            stop,
            last_lag_report: Instant::now(),
        })
    }

    /// The loop. Returns when `stop` is cancelled (after committing open batches) or on a
    /// fatal error.
    pub fn run(mut self) -> Result<(), Error> {
        while !self.stop.is_cancelled() {
            // Copy the record out so the loop may borrow `self` mutably (the copy is small next
            // to decoding and re-encoding it).
            let polled = match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(msg)) => Some((
                    msg.partition(),
                    msg.offset(),
                    msg.key().map(<[u8]>::to_vec),
                    msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    replays_of(&msg),
                )),
                Some(Err(e)) => {
                    warn!(error = %e, "consumer");
                    None
                }
                None => None,
            };
            self.apply_rebalances()?;
            if let Some((p, offset, key, payload, replays)) = polled {
                self.handle(p, offset, key.as_deref(), &payload, replays)?;
            }
            self.commit_due(false)?;
            self.report_gauges();
        }
        self.commit_due(true)?;
        self.consumer.unsubscribe();
        Ok(())
    }

    fn apply_rebalances(&mut self) -> Result<(), Error> {
        let events: Vec<RebalanceEvent> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .expect("rebalance log"),
        );
        for e in events {
            match e {
                RebalanceEvent::Revoked(ps) => {
                    for p in ps {
                        if let Some(o) = self.owned.remove(&p) {
                            if o.batch.is_some() {
                                // Not ours any more: never commit it. The new owner's
                                // init_transactions would abort it anyway.
                                let _ = o.producer.abort_transaction(txn_timeout(&self.cfg));
                                metrics::counter!(m::ENRICH_TXN_ABORTS, m::LABEL_REASON => "revoked").increment(1);
                            }
                        }
                    }
                }
                RebalanceEvent::Assigned(ps) => {
                    info!(partitions = ?ps, "assigned");
                    // Take over at once, not at the first record: a crashed owner's open
                    // transaction holds pending offsets, and Kafka answers the committed
                    // offsets of a read_committed group (which the consumer needs before it
                    // fetches anything) only once that transaction ends — after
                    // transaction.timeout.ms, unless our init_transactions fences it now.
                    for p in ps {
                        if !self.owned.contains_key(&p) {
                            self.take_over(p)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes over input partition `p`. Returns the offset processing must start from.
    fn take_over(&mut self, p: i32) -> Result<i64, Error> {
        let t0 = Instant::now();
        // 1. Fence the previous owner: same transactional id → its open transaction aborts
        //    and it can no longer commit.
        let producer: BaseProducer = self
            .kafka
            .client(&format!("enrich-p{p}"))
            .set(
                "transactional.id",
                txn::transactional_id(&self.cfg.group_id, p),
            )
            .set(
                "transaction.timeout.ms",
                (self.cfg.txn_timeout_ms * 2).to_string(),
            )
            .set("message.timeout.ms", self.cfg.txn_timeout_ms.to_string())
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .create()
            .map_err(Error::kafka)?;
        producer
            .init_transactions(txn_timeout(&self.cfg))
            .map_err(Error::kafka)?;
        // 2. Only now read where to start: an offset a fenced owner committed just before is
        //    included, and nothing after it can be committed by anyone else.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topics::USAGE_RAW, p);
        let committed = self
            .consumer
            .committed_offsets(tpl, txn_timeout(&self.cfg))
            .map_err(Error::kafka)?;
        let start = match committed
            .find_partition(topics::USAGE_RAW, p)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => {
                self.consumer
                    .fetch_watermarks(topics::USAGE_RAW, p, Duration::from_secs(10))
                    .map_err(Error::kafka)?
                    .0
            }
        };
        match self.consumer.seek(
            topics::USAGE_RAW,
            p,
            Offset::Offset(start),
            Duration::from_secs(10),
        ) {
            Ok(()) => {}
            // Taken over right at assignment, the partition may still be waiting for its own
            // committed offset (ERR__STATE): it then starts from that offset, the same one we
            // read after fencing, and `Owned::start` skips anything older.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {}
            Err(e) => return Err(Error::kafka(e)),
        }
        // 3. Rebuild the dedup window from our own committed output of partition p.
        let window = chrono::Duration::seconds(self.cfg.dedup_window_secs as i64);
        let dedup = tail::rebuild(&self.tail_reader, p, window)?;
        metrics::histogram!(m::ENRICH_REBUILD_SECONDS).record(t0.elapsed().as_secs_f64());
        info!(
            partition = p,
            start,
            dedup_ids = dedup.len(),
            "took over partition"
        );
        self.owned.insert(
            p,
            Owned {
                producer,
                dedup,
                batch: None,
                start: Some(start),
            },
        );
        Ok(start)
    }

    fn handle(
        &mut self,
        p: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        replays: u32,
    ) -> Result<(), Error> {
        if !self.owned.contains_key(&p) {
            self.take_over(p)?;
        }
        let owned = self.owned.get_mut(&p).expect("owned partition");
        if let Some(start) = owned.start {
            if offset < start {
                // Fetched before the take-over's seek: it comes again from `start`.
                return Ok(());
            }
            // At or past `start`: the offsets in between, if any, are transaction markers
            // (a committed offset may point at one), never records to skip.
            owned.start = None;
        }
        if let Some(b) = &owned.batch {
            if offset < b.next_offset {
                return Ok(()); // already handled in this transaction (a refetch)
            }
        }
        if owned.batch.is_none() {
            owned.producer.begin_transaction().map_err(Error::kafka)?;
            owned.batch = Some(Batch::open(offset, Instant::now()));
        }
        self.counters.events_in.increment(1);
        let source = || format!("{}/{p}/{offset}", topics::USAGE_RAW);
        let event = match UsageEvent::from_avro(payload) {
            Ok(e) => e,
            Err(e) => {
                // Poison: cannot be read by this version. Kept whole on the rejected topic.
                let r = Rejection::undecodable(e);
                reject(
                    &owned.producer,
                    p,
                    key,
                    payload,
                    None,
                    &r,
                    &source(),
                    replays,
                )?;
                owned.batch.as_mut().expect("open batch").record(offset);
                return Ok(());
            }
        };
        let mut event = event;
        let fp = dedup::fingerprint(&event);
        let mut verdict = owned.dedup.check(&event.event_id, fp, event.occurred_at);
        if verdict == Verdict::Conflict && replays > 0 {
            // An operator replayed an id conflict: it is a distinct call that reused an id.
            // It is billed under an id derived from its content, so replaying it again is a
            // duplicate of that id, never a second bill.
            event.event_id = format!("{}#{fp:016x}", event.event_id);
            verdict = owned.dedup.check(&event.event_id, fp, event.occurred_at);
        }
        match verdict {
            Verdict::Duplicate => {
                self.counters.duplicates.increment(1);
            }
            Verdict::Conflict => {
                let r = Rejection {
                    code: "id_conflict",
                    field: "event_id".into(),
                    reason: format!(
                        "event id '{}' was already billed with other billable content (usage, model or attribution): not a retry. Replaying it bills it under a derived id.",
                        event.event_id
                    ),
                };
                reject(
                    &owned.producer,
                    p,
                    key,
                    payload,
                    Some(&event.event_id),
                    &r,
                    &source(),
                    replays,
                )?;
            }
            Verdict::New | Verdict::Late => {
                if verdict == Verdict::Late {
                    self.counters.late.increment(1);
                }
                let event_id = event.event_id.clone();
                let occurred_at = event.occurred_at;
                let occurred = occurred_at.timestamp_micros().to_string();
                let priced = {
                    let prices = self.reference.prices.read().expect("price book lock");
                    let tenants = self.reference.tenants.read().expect("tenant lock");
                    pricing::enrich(event, &prices, &tenants, Utc::now())
                };
                match priced {
                    Ok(priced) => {
                        if priced.tenant.org == UNATTRIBUTED {
                            self.counters.unattributed.increment(1);
                        }
                        let value = priced.to_avro().map_err(Error::codec)?;
                        // Remembered only now that it is billed (a rejection never is).
                        owned.dedup.remember(&event_id, fp, occurred_at);
                        let wm = owned
                            .dedup
                            .watermark()
                            .map(|w| w.timestamp_micros())
                            .unwrap_or_default()
                            .to_string();
                        let fp_hex = format!("{fp:016x}");
                        let hs = OwnedHeaders::new()
                            .insert(Header {
                                key: headers::EVENT_ID,
                                value: Some(event_id.as_bytes()),
                            })
                            .insert(Header {
                                key: headers::OCCURRED_AT,
                                value: Some(occurred.as_bytes()),
                            })
                            .insert(Header {
                                key: headers::WATERMARK,
                                value: Some(wm.as_bytes()),
                            })
                            .insert(Header {
                                key: headers::FINGERPRINT,
                                value: Some(fp_hex.as_bytes()),
                            });
                        let mut rec = BaseRecord::to(topics::USAGE_PRICED)
                            .partition(p)
                            .payload(value.as_slice())
                            .headers(hs);
                        if let Some(k) = key {
                            rec = rec.key(k);
                        }
                        send(&owned.producer, rec)?;
                        self.counters.priced.increment(1);
                    }
                    Err(r) => {
                        reject(
                            &owned.producer,
                            p,
                            key,
                            payload,
                            Some(&event_id),
                            &r,
                            &source(),
                            replays,
                        )?;
                    }
                }
            }
        }
        owned.batch.as_mut().expect("open batch").record(offset);
        Ok(())
    }

    /// Commits every batch that is due (all open ones when `all`).
    fn commit_due(&mut self, all: bool) -> Result<(), Error> {
        let now = Instant::now();
        let due: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, o)| {
                o.batch
                    .as_ref()
                    .is_some_and(|b| (all && b.records > 0) || b.due(&self.policy, now))
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.commit(p)?;
        }
        for o in self.owned.values() {
            o.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn commit(&mut self, p: i32) -> Result<(), Error> {
        let t0 = Instant::now();
        let timeout = txn_timeout(&self.cfg);
        let meta = self.consumer.group_metadata().ok_or_else(|| {
            Error::Broker("no consumer group metadata (not in a group yet)".into())
        })?;
        let owned = self.owned.get_mut(&p).expect("owned partition");
        let batch = owned.batch.clone().expect("open batch");
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(topics::USAGE_RAW, p, Offset::Offset(batch.next_offset))
            .map_err(Error::kafka)?;
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            // 1. the consumed offsets join the transaction, 2. output + offsets commit together
            let r = owned
                .producer
                .send_offsets_to_transaction(&offsets, &meta, timeout)
                .and_then(|()| owned.producer.commit_transaction(timeout));
            match r {
                Ok(()) => break Ok(()),
                Err(e) => match failure(&e) {
                    TxnFailure::Retry if attempts < 5 => continue,
                    TxnFailure::Fatal => break Err((TxnFailure::Fatal, e)),
                    _ => break Err((TxnFailure::Abort, e)),
                },
            }
        };
        match result {
            Ok(()) => {
                // 3. only now are the batch's ids part of the committed output
                owned.dedup.commit();
                owned.batch = None;
                metrics::counter!(m::ENRICH_TXN_COMMITS).increment(1);
                metrics::histogram!(m::ENRICH_TXN_RECORDS).record(batch.records as f64);
                metrics::histogram!(m::ENRICH_COMMIT_LATENCY).record(t0.elapsed().as_secs_f64());
                Ok(())
            }
            Err((TxnFailure::Fatal, e)) => {
                // Fenced: another instance owns p now. Give it up; nothing was committed.
                warn!(partition = p, error = %e, "producer fenced; dropping partition");
                self.owned.remove(&p);
                metrics::counter!(m::ENRICH_TXN_ABORTS, m::LABEL_REASON => "fenced").increment(1);
                Ok(())
            }
            Err((_, e)) => {
                warn!(partition = p, error = %e, "transaction failed; aborting and rewinding");
                let _ = owned.producer.abort_transaction(timeout);
                owned.dedup.rollback();
                owned.batch = None;
                metrics::counter!(m::ENRICH_TXN_ABORTS, m::LABEL_REASON => "error").increment(1);
                self.consumer
                    .seek(
                        topics::USAGE_RAW,
                        p,
                        Offset::Offset(batch.first_offset),
                        Duration::from_secs(10),
                    )
                    .map_err(Error::kafka)
            }
        }
    }

    fn report_gauges(&mut self) {
        if self.last_lag_report.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_lag_report = Instant::now();
        let ids: usize = self.owned.values().map(|o| o.dedup.len()).sum();
        metrics::gauge!(m::ENRICH_DEDUP_IDS).set(ids as f64);
    }
}

fn replays_of(msg: &BorrowedMessage<'_>) -> u32 {
    msg.headers()
        .and_then(|hs| {
            hs.iter()
                .find(|h| h.key == headers::REPLAYS)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes the original bytes to the rejected topic (same partition) with the reason headers.
#[allow(clippy::too_many_arguments)]
fn reject(
    producer: &BaseProducer,
    p: i32,
    key: Option<&[u8]>,
    payload: &[u8],
    event_id: Option<&str>,
    r: &Rejection,
    source: &str,
    replays: u32,
) -> Result<(), Error> {
    let replays = replays.to_string();
    let mut hs = OwnedHeaders::new()
        .insert(Header {
            key: headers::REASON_CODE,
            value: Some(r.code.as_bytes()),
        })
        .insert(Header {
            key: headers::REASON_FIELD,
            value: Some(r.field.as_bytes()),
        })
        .insert(Header {
            key: headers::REASON,
            value: Some(r.reason.as_bytes()),
        })
        .insert(Header {
            key: headers::SOURCE,
            value: Some(source.as_bytes()),
        })
        .insert(Header {
            key: headers::REPLAYS,
            value: Some(replays.as_bytes()),
        });
    if let Some(id) = event_id {
        hs = hs.insert(Header {
            key: headers::EVENT_ID,
            value: Some(id.as_bytes()),
        });
    }
    let mut rec = BaseRecord::to(topics::USAGE_REJECTED)
        .partition(p)
        .payload(payload)
        .headers(hs);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    send(producer, rec)?;
    metrics::counter!(m::ENRICH_EVENTS_REJECTED, m::LABEL_REASON => r.code).increment(1);
    Ok(())
}
