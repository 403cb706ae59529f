//! Properties shared by the fuzz targets (`fuzz/fuzz_targets/*`). Each helper panics with a
//! message naming the property when it does not hold: libFuzzer records the input as a crash.

use std::fmt::Debug;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use meterline_schemas::unit;
use meterline_reference::price_book::PriceBook;
use meterline_enrich::pricing::enrich;
use meterline_reference::tenants::TenantDirectory;
use meterline_ingest::adapters::{check_event, Ctx, FieldError};
use meterline_schemas::{AvroRecord, PriceChange, Rate, TenantChange, Usage, UsageEvent};

pub mod seeds;

/// A fixed "now" (2026-06-01T00:00:00Z), so that a crash reproduces on any day.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_272_000, 0).expect("fixed time")
}

/// What the edge adds to every event, fixed.
pub fn ctx() -> Ctx {
    Ctx {
        source: "fuzz".into(),
        received_at: now(),
    }
}

/// Every count of a usage is ≥ 0 (the buckets are disjoint parts of what was reported).
pub fn assert_counts_non_negative(what: &str, u: &Usage) {
    for (field, v) in u.counts() {
        assert!(v >= 0, "{what}: usage.{field} is negative ({v}): {u:?}");
    }
    if let Some(s) = u.seconds {
        assert!(
            !s.decimal().is_sign_negative() || s.is_zero(),
            "{what}: usage.seconds is negative ({s}): {u:?}"
        );
    }
}

/// A price for the event's own (provider, model) with every unit at 0.001 (as in
/// `ingest/tests/adapter_properties.rs`), in force since the earliest time there is (the edge
/// takes any past `occurred_at`).
fn full_card(e: &UsageEvent) -> PriceBook {
    let at = DateTime::<Utc>::MIN_UTC;
    let rates = [
        unit::INPUT,
        unit::OUTPUT,
        unit::CACHE_READ,
        unit::CACHE_WRITE_5M,
        unit::CACHE_WRITE_1H,
        unit::REASONING,
        unit::AUDIO_INPUT,
        unit::AUDIO_OUTPUT,
        unit::IMAGE,
        unit::SECOND,
        unit::CHARACTER,
        unit::REQUEST,
    ]
    .iter()
    .map(|u| Rate {
        unit: u.to_string(),
        tier: "standard".into(),
        above_input_tokens: 0,
        price: "0.001".parse().expect("price"),
    })
    .collect();
    let mut b = PriceBook::new();
    b.apply(PriceChange {
        price_id: "p".into(),
        version: 1,
        provider: e.provider.clone(),
        model: e.model.clone(),
        aliases: vec![],
        currency: "USD".into(),
        rates,
        effective_from: at,
        effective_to: None,
        deleted: false,
        author: "fuzz".into(),
        reason: String::new(),
        source: String::new(),
        changed_at: at,
    });
    b
}

/// The edge's promise for one decoded item: an accepted event passes the edge's own checks,
/// has a billable quantity, survives the wire (Avro encode → decode equal) and prices (with a
/// rate for every unit only the arithmetic guards may refuse it); a refusal names a reason.
pub fn check_decoded(what: &str, input: &dyn Debug, r: &Result<UsageEvent, FieldError>) {
    match r {
        Ok(e) => check_accepted(what, input, e),
        Err(f) => assert!(
            !f.reason.trim().is_empty(),
            "{what}: refusal without a reason ({f:?}) for {input:?}"
        ),
    }
}

pub fn check_accepted(what: &str, input: &dyn Debug, e: &UsageEvent) {
    assert!(
        !e.usage.is_empty(),
        "{what}: accepted without a billable quantity: {e:?} from {input:?}"
    );
    assert_counts_non_negative(what, &e.usage);
    if let Err(f) = check_event(e) {
        panic!("{what}: accepted an event the edge's own check refuses ({f:?}): {e:?}");
    }
    let bytes = match e.to_avro() {
        Ok(b) => b,
        Err(x) => panic!("{what}: accepted but does not encode ({x}): {e:?}"),
    };
    let back = match UsageEvent::from_avro(&bytes) {
        Ok(b) => b,
        Err(x) => panic!("{what}: accepted but does not decode ({x}): {e:?}"),
    };
    assert_eq!(&back, e, "{what}: not equal after the Avro wire");
    let book = full_card(&back);
    match enrich(back, &book, &TenantDirectory::new(), now()) {
        Ok(p) => assert!(
            !p.cost.total.is_zero() || e.cache_hit,
            "{what}: priced at $0 with every rate at 0.001: {e:?}"
        ),
        Err(r) => assert!(
            r.code == "zero_cost" || r.code == "overflow",
            "{what}: accepted but not billable ({} {}: {}): {e:?}",
            r.code,
            r.field,
            r.reason
        ),
    }
}

/// `t` cut to whole microseconds (what `timestamp-micros` keeps).
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// A published price change: ≥ 1 rate, no two rates for one (unit, tier, above), no negative
/// price, an effective range that is still a range after the wire, and the record decodes
/// to what was encoded (timestamps at µs, the wire's precision).
pub fn check_price_change(what: &str, c: &PriceChange) {
    assert!(!c.rates.is_empty(), "{what}: a price without rates: {c:?}");
    for (i, r) in c.rates.iter().enumerate() {
        assert!(
            !r.price.decimal().is_sign_negative() || r.price.is_zero(),
            "{what}: negative price {} for {}/{} unit {} ({})",
            r.price,
            c.provider,
            c.model,
            r.unit,
            c.price_id
        );
        assert!(
            r.above_input_tokens >= 0,
            "{what}: negative context tier {}: {c:?}",
            r.above_input_tokens
        );
        assert!(
            !c.rates[..i]
                .iter()
                .any(|x| x.unit == r.unit && x.tier == r.tier && x.above_input_tokens == r.above_input_tokens),
            "{what}: two rates for {} {} above {}: {c:?}",
            r.unit,
            r.tier,
            r.above_input_tokens
        );
    }
    let mut sent = c.clone();
    sent.changed_at = micros(sent.changed_at);
    let bytes = sent
        .to_avro()
        .unwrap_or_else(|x| panic!("{what}: price change does not encode ({x}): {c:?}"));
    let back = PriceChange::from_avro(&bytes)
        .unwrap_or_else(|x| panic!("{what}: price change does not decode ({x}): {c:?}"));
    if let Some(to) = back.effective_to {
        assert!(
            to > back.effective_from,
            "{what}: effective_to {to} ≤ effective_from {} after the wire (parsed: {:?} → {:?})",
            back.effective_from,
            c.effective_from,
            c.effective_to
        );
    }
    sent.effective_from = micros(sent.effective_from);
    sent.effective_to = sent.effective_to.map(micros);
    assert_eq!(back, sent, "{what}: price change not equal after the Avro wire");
}

/// Prices a call of every unit at `MAX_COUNT` (the edge's per-call maximum) under `c`: the
/// arithmetic is guarded (a cost or a refusal, never a panic), and a cost is never negative.
pub fn price_with(what: &str, c: &PriceChange) {
    let mut e = UsageEvent::example();
    e.provider = c.provider.clone();
    e.model = c.model.clone();
    e.occurred_at = c.effective_from;
    let n = meterline_ingest::adapters::MAX_COUNT;
    e.usage = Usage {
        input_tokens: n,
        cache_read_tokens: n,
        cache_write_5m_tokens: n,
        cache_write_1h_tokens: n,
        output_tokens: n,
        reasoning_tokens: n,
        audio_input_tokens: n,
        audio_output_tokens: n,
        images: n,
        seconds: Some(meterline_schemas::Money::from(n)),
        characters: n,
        requests: n,
    };
    let mut book = PriceBook::new();
    book.apply(c.clone());
    if let Ok(p) = enrich(e, &book, &TenantDirectory::new(), now()) {
        assert!(
            !p.cost.total.decimal().is_sign_negative() || p.cost.total.is_zero(),
            "{what}: a negative cost {} from {c:?}",
            p.cost.total
        );
        p.to_avro()
            .unwrap_or_else(|x| panic!("{what}: a priced record does not encode ({x}): {p:?}"));
    }
}

/// A published tenant rule: an id, an org, a range that survives the wire, equal after it.
pub fn check_tenant_change(what: &str, c: &TenantChange) {
    assert!(!c.rule_id.trim().is_empty(), "{what}: rule without an id: {c:?}");
    assert!(!c.tenant.org.trim().is_empty(), "{what}: rule without an org: {c:?}");
    let mut sent = c.clone();
    sent.changed_at = micros(sent.changed_at);
    let bytes = sent
        .to_avro()
        .unwrap_or_else(|x| panic!("{what}: tenant change does not encode ({x}): {c:?}"));
    let back = TenantChange::from_avro(&bytes)
        .unwrap_or_else(|x| panic!("{what}: tenant change does not decode ({x}): {c:?}"));
    if let Some(to) = back.effective_to {
        assert!(
            to > back.effective_from,
            "{what}: effective_to {to} ≤ effective_from {} after the wire (parsed: {:?} → {:?})",
            back.effective_from,
            c.effective_from,
            c.effective_to
        );
    }
    sent.effective_from = micros(sent.effective_from);
    sent.effective_to = sent.effective_to.map(micros);
    assert_eq!(back, sent, "{what}: tenant change not equal after the Avro wire");
}

/// Input bytes as text; the parsers take `&str`, so non-UTF-8 inputs are not theirs.
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The OTLP adapter's promise for one request: every GenAI span's outcome with the edge's
/// promise, indexed by span (strictly increasing, within the request's spans).
pub fn check_otlp(
    what: &str,
    req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) {
    let spans: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let out = meterline_ingest::adapters::otlp::decode(req, &ctx());
    let mut last: Option<usize> = None;
    for r in &out {
        assert!(r.index < spans, "{what}: span index {} of {spans} spans", r.index);
        assert!(
            last.is_none_or(|l| r.index > l),
            "{what}: span indexes not increasing ({last:?} then {})",
            r.index
        );
        last = Some(r.index);
        check_decoded(what, &r.index, &r.event);
    }
}
