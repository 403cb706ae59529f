//! The active instance's writes, fenced by the broker. The lease (`meterline_runtime::lease`)
//! decides which instance should work; it cannot stop an instance that stalled past its
//! session from acting on a stale belief when it wakes. These producers can: each has a
//! `transactional.id` fixed per deployment (`[watch.lease] group_id`), and a new holder's
//! `init_transactions` bumps the id's epoch, aborting the old holder's open transaction and
//! making every later commit of the old holder fail (`ProducerFenced`). A signal or anomaly is
//! published, and the deliverer's progress committed, only in a transaction that commits.
//! Readers are `read_committed`, so what a fenced instance sent is never seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use meterline_runtime::kafka::KafkaConfig;

use crate::Error;

/// How long one transactional call may take; also the transaction timeout's base.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);

/// One record to publish.
pub struct Out<'a> {
    pub topic: &'static str,
    pub key: &'a str,
    pub payload: Vec<u8>,
}

/// A transactional producer of the active instance.
pub struct FencedProducer {
    producer: BaseProducer,
    transactional_id: String,
}

/// Whether a Kafka error means another instance has taken the transactional id over.
pub fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// What a failed transactional call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// Another instance holds the id now: stop, back to standby.
    Fenced,
    /// The producer cannot go on (fatal) — or the transaction must be aborted — and the
    /// work restarts from the topics (the supervisor decides from the error).
    Failed,
}

/// `code` is the call's error code, `fatal_code` the producer's fatal error if it has one
/// (librdkafka reports a fenced producer's later calls as `_FATAL`).
pub fn classify(
    code: Option<RDKafkaErrorCode>,
    fatal_code: Option<RDKafkaErrorCode>,
) -> TxnFailure {
    if code.is_some_and(is_fenced_code) || fatal_code.is_some_and(is_fenced_code) {
        TxnFailure::Fenced
    } else {
        TxnFailure::Failed
    }
}

impl FencedProducer {
    /// Creates the producer and takes the id over: whoever held it before is fenced from now
    /// on and its open transaction is aborted (so reading the topics after this sees all it
    /// ever committed, and nothing more will come from it).
    pub fn take_over(
        kafka: &KafkaConfig,
        role: &str,
        transactional_id: String,
    ) -> Result<FencedProducer, Error> {
        let producer: BaseProducer = kafka
            .client(role)
            .set("transactional.id", &transactional_id)
            // A holder killed mid-transaction holds readers back (read_committed) until its
            // successor's init_transactions or this timeout aborts it.
            .set(
                "transaction.timeout.ms",
                (TXN_TIMEOUT.as_millis() * 2).to_string(),
            )
            .set("message.timeout.ms", TXN_TIMEOUT.as_millis().to_string())
            .set("linger.ms", "0")
            .create()
            .map_err(Error::kafka)?;
        let p = FencedProducer {
            producer,
            transactional_id,
        };
        p.producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| p.failure("take over", e))?;
        Ok(p)
    }

    /// Publishes `records` in one transaction: all of them or (aborted, fenced) none.
    pub fn publish(&self, records: &[Out<'_>]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        self.in_transaction("publish", |p| {
            for r in records {
                p.send(BaseRecord::to(r.topic).key(r.key).payload(&r.payload))
                    .map_err(|(e, _)| e)?;
            }
            Ok(())
        })
    }

    /// Commits `offsets` for the consumer group of `group` in a transaction: progress that
    /// only counts while this instance is not fenced, and the proof that it is not (the
    /// coordinator checks the producer's epoch).
    pub fn commit_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), Error> {
        self.in_transaction("commit offsets", |p| {
            p.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)
        })
    }

    fn in_transaction(
        &self,
        what: &'static str,
        body: impl FnOnce(&BaseProducer) -> Result<(), KafkaError>,
    ) -> Result<(), Error> {
        let r = self
            .producer
            .begin_transaction()
            .and_then(|()| body(&self.producer))
            .and_then(|()| self.producer.commit_transaction(TXN_TIMEOUT));
        r.map_err(|e| {
            let err = self.failure(what, e);
            if !matches!(err, Error::Fenced { .. }) {
                // Back to a known state; the caller's work restarts from the topics anyway.
                let _ = self.producer.abort_transaction(TXN_TIMEOUT);
            }
            err
        })
    }

    fn failure(&self, what: &'static str, e: KafkaError) -> Error {
        let fatal = self.producer.client().fatal_error().map(|(c, _)| c);
        match classify(e.rdkafka_error_code(), fatal) {
            TxnFailure::Fenced => Error::Fenced {
                transactional_id: self.transactional_id.clone(),
                source: e,
            },
            TxnFailure::Failed => Error::Publish { what, source: e },
        }
    }
}

/// The alert deliverer's progress (per topic partition, the next offset to read after a
/// restart), committed only through the fenced producer. [`FencedProgress::confirm`] is the
/// check a delivery makes before every HTTP attempt: a transaction committing the progress so
/// far, which fails once another instance has taken over. So an instance that wakes from a
/// stall after losing the lease cannot deliver anything more; what it cannot prevent is a stall
/// between a confirmation and the request it guards (milliseconds), which is why every
/// delivery also carries its alert's id for receivers to drop a repeat.
pub struct FencedProgress {
    producer: Arc<FencedProducer>,
    group: Arc<ConsumerGroupMetadata>,
    next: Mutex<BTreeMap<(String, i32), i64>>,
    /// When the last confirmation began: one that began after a caller asked answers it too.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl FencedProgress {
    pub fn new(producer: FencedProducer, group: ConsumerGroupMetadata) -> FencedProgress {
        FencedProgress {
            producer: Arc::new(producer),
            group: Arc::new(group),
            next: Mutex::default(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    fn offsets(&self) -> BTreeMap<(String, i32), i64> {
        self.next.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first offset read from a partition in this term: everything before it was done by
    /// earlier terms.
    pub fn started_at(&self, topic: &str, partition: i32, offset: i64) {
        self.next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((topic.to_string(), partition))
            .or_insert(offset);
    }

    /// Everything before `next` is done (delivered, given up or skipped).
    pub fn advance(&self, topic: &str, partition: i32, next: i64) {
        let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let e = n.entry((topic.to_string(), partition)).or_insert(next);
        *e = (*e).max(next);
    }

    /// Commits the progress so far in a transaction; `Error::Fenced` once another instance
    /// has taken over. Concurrent callers share a commit that began after they asked.
    pub async fn confirm(&self) -> Result<(), Error> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if last.is_some_and(|began| began >= asked) {
            return Ok(());
        }
        let began = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in self.offsets() {
            tpl.add_partition_offset(&topic, p, Offset::Offset(next))
                .map_err(Error::kafka)?;
        }
        if tpl.count() == 0 {
            // Nothing read yet, so nothing to deliver: there is nothing to guard.
            return Ok(());
        }
        let (producer, group) = (self.producer.clone(), self.group.clone());
        tokio::task::spawn_blocking(move || producer.commit_offsets(&tpl, &group))
            .await
            .map_err(Error::Blocking)??;
        *last = Some(began);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_is_told_from_other_failures_also_behind_a_fatal_error() {
        use RDKafkaErrorCode as C;
        assert_eq!(classify(Some(C::ProducerFenced), None), TxnFailure::Fenced);
        assert_eq!(
            classify(Some(C::InvalidProducerEpoch), None),
            TxnFailure::Fenced
        );
        assert_eq!(
            classify(Some(C::Fatal), Some(C::Fenced)),
            TxnFailure::Fenced,
            "a fenced producer's later calls fail as _FATAL"
        );
        assert_eq!(classify(Some(C::RequestTimedOut), None), TxnFailure::Failed);
        assert_eq!(
            classify(Some(C::Fatal), Some(C::TransactionalIdAuthorizationFailed)),
            TxnFailure::Failed
        );
        assert_eq!(classify(None, None), TxnFailure::Failed);
    }
}
