//! Publishing price and tenant changes as events (CLI, API admin routes, `meterline dev`):
//! numbered after the versions already published, nothing sent for unchanged entries.

use std::collections::BTreeMap;
use std::time::Duration;

use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::topics;
use meterline_schemas::{AvroRecord, PriceChange, TenantChange};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::loader::{self, Reference};
use crate::Error;

const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// What publishing a set of changes did (or would do, for a dry run).
#[derive(Debug, Default)]
pub struct Publication {
    /// (id, new version) of entries that did not exist.
    pub added: Vec<(String, i64)>,
    /// (id, new version) of entries whose content changed.
    pub changed: Vec<(String, i64)>,
    /// Ids identical to their latest version (nothing published).
    pub unchanged: Vec<String>,
}

fn producer(kafka: &KafkaConfig) -> Result<BaseProducer, Error> {
    kafka
        .client("admin")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(Error::kafka)
}

fn flush(p: &BaseProducer) -> Result<(), Error> {
    p.flush(Duration::from_secs(30)).map_err(Error::kafka)
}

/// Reads the reference topics as enrich will see them.
pub fn load(kafka: &KafkaConfig) -> Result<Reference, Error> {
    Ok(loader::load(kafka, LOAD_TIMEOUT)?.0)
}

fn same_price(a: &PriceChange, b: &PriceChange) -> bool {
    (
        &a.provider,
        &a.model,
        &a.aliases,
        &a.currency,
        &a.rates,
        a.effective_from,
        a.effective_to,
        a.deleted,
    ) == (
        &b.provider,
        &b.model,
        &b.aliases,
        &b.currency,
        &b.rates,
        b.effective_from,
        b.effective_to,
        b.deleted,
    )
}

/// Numbers `drafts` after the versions already published and, unless `dry_run`, publishes the
/// new and changed ones to `meterline.prices` (key `<price_id>@<version>`, so compaction keeps
/// every version: the history is what explains past costs).
pub fn publish_prices(
    kafka: &KafkaConfig,
    drafts: Vec<PriceChange>,
    reason: &str,
    dry_run: bool,
) -> Result<Publication, Error> {
    publish_prices_with_progress(kafka, drafts, reason, dry_run, |_, _| {})
}

/// As [`publish_prices`], calling `progress(entries_done, entries)` as it goes: before each
/// entry is compared (and sent, unless unchanged or a dry run), and once all are acknowledged.
pub fn publish_prices_with_progress(
    kafka: &KafkaConfig,
    drafts: Vec<PriceChange>,
    reason: &str,
    dry_run: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<Publication, Error> {
    let current = load(kafka)?;
    let book = current.prices.read().expect("price book lock");
    let mut out = Publication::default();
    let p = producer(kafka)?;
    let entries = drafts.len();
    for (i, mut d) in drafts.into_iter().enumerate() {
        progress(i, entries);
        let latest = book.versions(&d.price_id).iter().max_by_key(|v| v.version);
        if latest.is_some_and(|l| same_price(l, &d)) {
            out.unchanged.push(d.price_id);
            continue;
        }
        d.version = latest.map(|l| l.version + 1).unwrap_or(1);
        if d.reason.is_empty() {
            d.reason = reason.to_string();
        }
        if latest.is_some() {
            out.changed.push((d.price_id.clone(), d.version));
        } else {
            out.added.push((d.price_id.clone(), d.version));
        }
        if !dry_run {
            let key = format!("{}@{}", d.price_id, d.version);
            let value = d.to_avro().map_err(Error::codec)?;
            send(&p, topics::PRICES, &key, &value)?;
        }
    }
    flush(&p)?;
    progress(entries, entries);
    Ok(out)
}

fn same_rule(a: &TenantChange, b: &TenantChange) -> bool {
    (
        &a.matches,
        a.priority,
        &a.tenant,
        a.effective_from,
        a.effective_to,
        a.deleted,
    ) == (
        &b.matches,
        b.priority,
        &b.tenant,
        b.effective_from,
        b.effective_to,
        b.deleted,
    )
}

/// As `publish_prices`, for tenant rules (`meterline.tenants`, key `<rule_id>@<version>`).
pub fn publish_tenants(
    kafka: &KafkaConfig,
    drafts: Vec<TenantChange>,
    reason: &str,
    dry_run: bool,
) -> Result<Publication, Error> {
    let current = load(kafka)?;
    let dir = current.tenants.read().expect("tenant lock");
    let latest: BTreeMap<&str, &TenantChange> =
        dir.latest().map(|r| (r.rule_id.as_str(), r)).collect();
    let mut out = Publication::default();
    let p = producer(kafka)?;
    for mut d in drafts {
        let l = latest.get(d.rule_id.as_str());
        if l.is_some_and(|l| same_rule(l, &d)) {
            out.unchanged.push(d.rule_id);
            continue;
        }
        d.version = l.map(|l| l.version + 1).unwrap_or(1);
        if d.reason.is_empty() {
            d.reason = reason.to_string();
        }
        if l.is_some() {
            out.changed.push((d.rule_id.clone(), d.version));
        } else {
            out.added.push((d.rule_id.clone(), d.version));
        }
        if !dry_run {
            let key = format!("{}@{}", d.rule_id, d.version);
            let value = d.to_avro().map_err(Error::codec)?;
            send(&p, topics::TENANTS, &key, &value)?;
        }
    }
    flush(&p)?;
    Ok(out)
}

fn send(p: &BaseProducer, topic: &str, key: &str, value: &[u8]) -> Result<(), Error> {
    p.send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| Error::kafka(e))
}
