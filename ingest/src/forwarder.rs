//! Hands encoded events to Kafka, or to the spool when the broker is unreachable or slow.
//!
//! An HTTP answer is 2xx only once every accepted event was acked by the broker (`acks=all`,
//! idempotent producer) or fsynced in the spool. `message.timeout.ms` bounds how long librdkafka
//! keeps a message: when it reports a failure, the message is no longer queued in librdkafka,
//! so spooling it cannot make the producer and the drainer both deliver it.
//! While the spool holds records, new events go straight to the spool (no one waits for a
//! broker that is down), and a drainer task sends them in order; once it is empty, events go
//! direct again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use meterline_schemas::metric_names as m;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::spool::{Record, Spool, SpoolError};

/// A produce error that no retry can fix (the record itself is unacceptable to the broker).
pub fn is_poison(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

pub struct Forwarder {
    producer: FutureProducer,
    topic: String,
    spool: Mutex<Spool>,
    spooling: AtomicBool,
    wake: Notify,
    drain_chunk: usize,
    dead_letter_dir: std::path::PathBuf,
}

impl Forwarder {
    pub fn new(
        producer: FutureProducer,
        topic: &str,
        spool: Spool,
        dead_letter_dir: std::path::PathBuf,
    ) -> Arc<Self> {
        let spooling = !spool.is_empty();
        metrics::gauge!(m::INGEST_SPOOL_DEPTH_EVENTS).set(spool.depth_records() as f64);
        metrics::gauge!(m::INGEST_SPOOL_DEPTH_BYTES).set(spool.depth_bytes() as f64);
        // A restart with a non-empty spool starts in spooling mode; say so from the start.
        metrics::gauge!(m::INGEST_MODE_SPOOLING).set(if spooling { 1.0 } else { 0.0 });
        // Counted from zero: on `/metrics` (and in `rate()`) before the first refusal.
        metrics::counter!(m::INGEST_SPOOL_FULL).increment(0);
        Arc::new(Forwarder {
            producer,
            topic: topic.to_string(),
            spool: Mutex::new(spool),
            spooling: AtomicBool::new(spooling),
            wake: Notify::new(),
            drain_chunk: 2000,
            dead_letter_dir,
        })
    }

    pub fn is_spooling(&self) -> bool {
        self.spooling.load(Ordering::Acquire)
    }

    pub async fn spool_depth(&self) -> (u64, u64) {
        let s = self.spool.lock().await;
        (s.depth_records(), s.depth_bytes())
    }

    /// Sends every record; returns the ones the broker did not ack (in order), each with
    /// whether its error is poison.
    async fn send_all(&self, records: Vec<Record>) -> Vec<(Record, bool)> {
        let started = Instant::now();
        let futures = records.iter().map(|r| {
            let rec = FutureRecord::to(&self.topic).key(&r.key).payload(&r.value);
            // Zero queue timeout: a full local queue is a failure now, not a wait.
            self.producer.send(rec, Duration::ZERO)
        });
        let results = join_all(futures).await;
        metrics::histogram!(m::INGEST_PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
        let mut failed = Vec::new();
        for (r, res) in records.into_iter().zip(results) {
            if let Err((e, _)) = res {
                // Label by error code, not message text, to keep label values bounded.
                let code = e
                    .rdkafka_error_code()
                    .map_or_else(|| "client".to_string(), |c| format!("{c:?}"));
                metrics::counter!(m::INGEST_PRODUCE_ERRORS, m::LABEL_REASON => code).increment(1);
                failed.push((r, is_poison(&e)));
            }
        }
        failed
    }

    async fn spool_append(&self, records: &[Record]) -> Result<(), SpoolError> {
        let mut s = self.spool.lock().await;
        match s.append(records) {
            Ok(()) => {
                metrics::counter!(m::INGEST_EVENTS_SPOOLED).increment(records.len() as u64);
                metrics::gauge!(m::INGEST_SPOOL_DEPTH_EVENTS).set(s.depth_records() as f64);
                metrics::gauge!(m::INGEST_SPOOL_DEPTH_BYTES).set(s.depth_bytes() as f64);
                self.spooling.store(true, Ordering::Release);
                metrics::gauge!(m::INGEST_MODE_SPOOLING).set(1.0);
                self.wake.notify_one();
                Ok(())
            }
            Err(e @ SpoolError::Full { .. }) => {
                metrics::counter!(m::INGEST_SPOOL_FULL).increment(1);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `records` durable: broker-acked or fsynced in the spool. Err only when neither is
    /// possible (spool full or failing); then none of `records` was accepted by the spool, but
    /// some may have reached the broker — the caller answers 503 and the edge retries, which
    /// enrich's dedup absorbs.
    pub async fn forward(&self, records: Vec<Record>) -> Result<(), SpoolError> {
        if self.is_spooling() {
            return self.spool_append(&records).await;
        }
        let failed: Vec<Record> = self
            .send_all(records)
            .await
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        // Poison records are spooled too (they were valid input); the drainer dead-letters them.
        tracing::warn!(events = failed.len(), "broker did not ack; spooling");
        self.spool_append(&failed).await
    }

    /// Drains the spool to the broker until cancelled.
    pub async fn run_drainer(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match self.drain_once(&stop).await {
                    Ok(true) => backoff = Duration::from_millis(100),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "spool drain failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {},
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Sends one chunk from the spool head. Ok(true) = progress, Ok(false) = nothing to do.
    async fn drain_once(&self, stop: &CancellationToken) -> Result<bool, String> {
        let (chunk, next) = {
            let s = self.spool.lock().await;
            if s.is_empty() {
                // Switch back to direct mode under the lock: no append can slip in between.
                if self.spooling.swap(false, Ordering::AcqRel) {
                    tracing::info!("spool drained; producing directly again");
                    metrics::gauge!(m::INGEST_MODE_SPOOLING).set(0.0);
                }
                return Ok(false);
            }
            let (chunk, next) = s.peek(self.drain_chunk).map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                drop(s);
                tracing::error!("spool reports records after the cursor but none is readable; resetting its depth");
                self.spool.lock().await.reset_depth();
                return Ok(false);
            }
            (chunk, next)
        };
        let n = chunk.len() as u64;
        // 1. send the chunk; retry only what failed, so acked records are not sent twice
        let mut pending = chunk;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let (poison, retry): (Vec<_>, Vec<_>) = self
                .send_all(pending)
                .await
                .into_iter()
                .partition(|(_, p)| *p);
            if !poison.is_empty() {
                self.dead_letter(poison.into_iter().map(|(r, _)| r).collect())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            pending = retry.into_iter().map(|(r, _)| r).collect();
            if !pending.is_empty() {
                attempt += 1;
                tracing::debug!(
                    failed = pending.len(),
                    attempt,
                    "broker still unavailable for spooled events"
                );
                tokio::select! {
                    // Stopping mid-chunk is safe: the cursor has not moved, the chunk is re-sent
                    // after restart (records already acked then arrive twice; enrich drops them).
                    _ = stop.cancelled() => return Err("stopped while draining".into()),
                    _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))) => {},
                }
            }
        }
        // 2. then move the cursor past the chunk
        let mut s = self.spool.lock().await;
        s.commit(next, n).map_err(|e| e.to_string())?;
        metrics::counter!(m::INGEST_SPOOL_DRAINED).increment(n);
        metrics::gauge!(m::INGEST_SPOOL_DEPTH_EVENTS).set(s.depth_records() as f64);
        metrics::gauge!(m::INGEST_SPOOL_DEPTH_BYTES).set(s.depth_bytes() as f64);
        Ok(true)
    }

    /// Records the broker refuses outright (too large, invalid) leave the drain path for an
    /// append-only dead-letter spool next to it, so one bad record cannot wedge the edge.
    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), SpoolError> {
        let dir = self.dead_letter_dir.clone();
        let n = records.len();
        tokio::task::spawn_blocking(move || {
            Spool::open(&dir, u64::MAX, 64 << 20)?.append(&records)
        })
        .await
        .expect("dead-letter task")?;
        tracing::error!(
            events = n,
            "broker refused spooled events permanently; moved to the dead-letter spool"
        );
        metrics::counter!(m::INGEST_DEAD_LETTERED).increment(n as u64);
        Ok(())
    }

    /// Waits for in-flight messages (graceful shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete at shutdown");
        }
    }
}
