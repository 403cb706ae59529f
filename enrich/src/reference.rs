//! The reference data enrich prices with: the price book (`meterline.prices`) and the tenant
//! directory (`meterline.tenants`). Both topics are read from the beginning up to their end
//! before the first event is priced, then followed live by a background thread.
//!
//! A change applies by the event's `occurred_at`, not by when it arrived: a back-dated
//! correction reprices the events priced *after* it arrives (including any replayed from the
//! rejected topic); events already priced keep the price they were billed at.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meterline_schemas::kafka::KafkaConfig;
use meterline_schemas::metric_names as m;
use meterline_schemas::{topics, AvroRecord, PriceChange, TenantChange};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::price_book::PriceBook;
use crate::tenants::TenantDirectory;
use crate::Error;

/// Prices and tenants, shared between the follower thread and the pricing loop.
#[derive(Default)]
pub struct Reference {
    pub prices: RwLock<PriceBook>,
    pub tenants: RwLock<TenantDirectory>,
}

impl Reference {
    fn apply(&self, topic: &str, bytes: &[u8]) {
        let ok = match topic {
            topics::PRICES => PriceChange::from_avro(bytes).map(|c| {
                self.prices.write().expect("price book lock").apply(c);
            }),
            topics::TENANTS => TenantChange::from_avro(bytes).map(|c| {
                self.tenants.write().expect("tenant lock").apply(c);
            }),
            _ => return,
        };
        let status = match ok {
            Ok(()) => "applied",
            Err(e) => {
                // A reference record this version cannot read is skipped, loudly: pricing
                // without it rejects the affected events rather than guessing.
                warn!(topic, error = %e, "skipping unreadable reference record");
                "unreadable"
            }
        };
        metrics::counter!(m::ENRICH_REFERENCE_RECORDS, m::LABEL_TOPIC => topic.to_string(), m::LABEL_STATUS => status)
            .increment(1);
    }
}

fn consumer(kafka: &KafkaConfig) -> Result<BaseConsumer, Error> {
    let c: BaseConsumer = kafka
        .client("enrich-reference")
        // No group: every instance reads the whole reference topics.
        .set("group.id", "meterline-reference-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(Error::kafka)?;
    Ok(c)
}

/// Reads both reference topics to their current end into `Reference`.
pub fn load(kafka: &KafkaConfig, timeout: Duration) -> Result<(Reference, BaseConsumer), Error> {
    let reference = Reference::default();
    let c = consumer(kafka)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in [topics::PRICES, topics::TENANTS] {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(Error::kafka)?;
        let parts = md
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(Error::kafka)?;
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(Error::kafka)?;
            if hi > lo {
                ends.push((topic, p, hi));
            }
        }
    }
    c.assign(&tpl).map_err(Error::kafka)?;
    let deadline = Instant::now() + timeout;
    // Done when every partition's position has reached the end seen at start.
    let done = |c: &BaseConsumer| {
        let Ok(pos) = c.position() else { return false };
        ends.iter().all(|(t, p, hi)| {
            matches!(pos.find_partition(t, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *hi)
        })
    };
    while !done(&c) {
        if Instant::now() > deadline {
            return Err(Error::Reference(format!(
                "reference topics not read to their end within {timeout:?}"
            )));
        }
        if let Some(msg) = c.poll(Duration::from_millis(100)) {
            let msg = msg.map_err(Error::kafka)?;
            if let Some(v) = msg.payload() {
                reference.apply(msg.topic(), v);
            }
        }
    }
    Ok((reference, c))
}

/// Loads the reference topics, then follows them on a thread until `stop`.
pub fn load_and_follow(
    kafka: &KafkaConfig,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<Arc<Reference>, Error> {
    let (reference, c) = load(kafka, timeout)?;
    let reference = Arc::new(reference);
    let r = reference.clone();
    std::thread::Builder::new()
        .name("enrich-reference".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                match c.poll(Duration::from_millis(200)) {
                    Some(Ok(msg)) => {
                        if let Some(v) = msg.payload() {
                            r.apply(msg.topic(), v);
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "reference topic poll"),
                    None => {}
                }
            }
        })
        .map_err(|e| Error::Reference(e.to_string()))?;
    Ok(reference)
}
