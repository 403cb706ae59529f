//! The reference data enrich prices with: the price book (`meterline.prices`) and the tenant
//! directory (`meterline.tenants`). Both topics are read from the beginning up to their end
//! before the first event is priced, then followed live by a background thread.
//!
//! A change applies by the event's `occurred_at`, not by when it arrived: a back-dated
//! correction reprices the events priced *after* it arrives (including any replayed from the
//! rejected topic); events already priced keep the price they were billed at.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use meterline_runtime::follow::{self, TopicFollower};
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::metric_names as m;
use meterline_schemas::{topics, AvroRecord, PriceChange, TenantChange};
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

const TOPICS: [&str; 2] = [topics::PRICES, topics::TENANTS];

/// Reads the reference topics to their end (within `timeout`); the follower goes on from there.
pub fn load(kafka: &KafkaConfig, timeout: Duration) -> Result<(Reference, TopicFollower), Error> {
    let reference = Reference::default();
    let mut follower = TopicFollower::start(follow::reader(kafka, "enrich-reference")?, &TOPICS)?;
    follower.read_to_end(timeout, |topic, v| reference.apply(topic, v))?;
    Ok((reference, follower))
}

/// Loads the reference topics, then follows them on a thread until `stop`.
pub fn load_and_follow(
    kafka: &KafkaConfig,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<Arc<Reference>, Error> {
    let (reference, follower) = load(kafka, timeout)?;
    let reference = Arc::new(reference);
    let r = reference.clone();
    follower.follow_on_thread("enrich-reference", stop, move |topic, v| r.apply(topic, v))?;
    Ok(reference)
}
