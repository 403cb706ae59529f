//! The contract: every schema parses, every type round-trips through its schema, older
//! writers still decode, and bad bytes fail with a precise error.

use std::collections::BTreeMap;

use apache_avro::Schema;
use chrono::{TimeZone, Utc};
use meterline_schemas::*;

fn t(s: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(s, 123_456_000).unwrap()
}

fn m(s: &str) -> Money {
    s.parse().unwrap()
}

pub fn sample_event() -> UsageEvent {
    UsageEvent {
        event_id: "evt-1".into(),
        occurred_at: t(1_760_000_000),
        received_at: t(1_760_000_001),
        source: "edge-a".into(),
        format: "litellm".into(),
        request_id: Some("req-1".into()),
        api_key_id: Some("key-1".into()),
        user_id: Some("u-1".into()),
        team_id: Some("team-1".into()),
        org_id: Some("org-1".into()),
        project_id: Some("p-1".into()),
        end_user: Some("customer-9".into()),
        tags: BTreeMap::from([
            ("env".into(), "prod".into()),
            ("feature".into(), "search".into()),
        ]),
        agent_id: Some("agent-1".into()),
        workflow_id: Some("wf-1".into()),
        session_id: Some("s-1".into()),
        provider: "anthropic".into(),
        model: "claude-sonnet-4-20250514".into(),
        operation: Operation::Chat,
        usage: Usage {
            input_tokens: 1,
            cache_read_tokens: 2,
            cache_write_5m_tokens: 3,
            cache_write_1h_tokens: 4,
            output_tokens: 5,
            reasoning_tokens: 6,
            audio_input_tokens: 7,
            audio_output_tokens: 8,
            images: 9,
            seconds: Some(m("12.5")),
            characters: 10,
            requests: 11,
        },
        service_tier: ServiceTier::Priority,
        status: CallStatus::Error,
        http_status: Some(429),
        latency_ms: Some(1234),
        ttft_ms: Some(99),
        region: Some("eu-west-1".into()),
        gateway_reported_cost: Some(m("0.000225000000000001")),
        cache_hit: true,
    }
}

fn scope() -> Scope {
    Scope {
        kind: ScopeKind::CostCenter,
        value: "cc-42".into(),
    }
}

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = v.to_avro().unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[2..10], &T::codec().fingerprint());
    assert_eq!(
        bytes,
        T::codec().encode_reference(v).unwrap(),
        "{}: serde_avro_fast and apache-avro wrote different bytes",
        T::NAME
    );
    assert_eq!(
        &T::from_avro(&bytes).unwrap(),
        v,
        "{} did not round-trip",
        T::NAME
    );
}

#[test]
fn every_schema_parses_and_has_a_distinct_fingerprint() {
    let texts = [
        <UsageEvent as AvroRecord>::SCHEMA,
        <PricedUsage as AvroRecord>::SCHEMA,
        <PriceChange as AvroRecord>::SCHEMA,
        <TenantChange as AvroRecord>::SCHEMA,
        <BudgetChange as AvroRecord>::SCHEMA,
        <BudgetSignal as AvroRecord>::SCHEMA,
        <Anomaly as AvroRecord>::SCHEMA,
        include_str!("../avro/history/usage_event.v1.avsc"),
    ];
    let mut fps = std::collections::HashSet::new();
    for text in texts {
        let s = Schema::parse_str(text).expect("schema parses");
        assert!(fps.insert(codec::fingerprint(&s)), "duplicate fingerprint");
    }
}

#[test]
fn usage_event_round_trips_with_every_field_set() {
    round_trip(&sample_event());
}

#[test]
fn usage_event_round_trips_with_optional_fields_empty() {
    let mut e = sample_event();
    e.request_id = None;
    e.api_key_id = None;
    e.tags.clear();
    e.usage = Usage::default();
    e.gateway_reported_cost = None;
    e.region = None;
    e.operation = Operation::Other;
    round_trip(&e);
}

#[test]
fn every_enum_symbol_matches_the_schema_order() {
    // The Avro writer encodes enums by variant index: a reordered Rust enum would silently
    // change meaning. Round-trip every variant.
    for op in Operation::ALL {
        let mut e = sample_event();
        e.operation = op;
        round_trip(&e);
    }
    for tier in [
        ServiceTier::Standard,
        ServiceTier::Batch,
        ServiceTier::Priority,
        ServiceTier::Flex,
    ] {
        let mut e = sample_event();
        e.service_tier = tier;
        round_trip(&e);
    }
}

fn priced(total: &str) -> PricedUsage {
    PricedUsage {
        event: sample_event(),
        tenant: TenantPath {
            org: "acme".into(),
            business_unit: Some("bu".into()),
            cost_center: Some("cc-42".into()),
            team: Some("search".into()),
            project: None,
            environment: Some("prod".into()),
        },
        tenant_rule_id: Some("rule-1".into()),
        price_id: "anthropic/claude-sonnet-4".into(),
        price_version: 3,
        price_resolution: "exact".into(),
        model: String::new(),
        currency: "USD".into(),
        cost: CostLines {
            input: m("0.000003"),
            cache_read: m("0.0000006"),
            cache_write: m("0.00001125"),
            output: m("0.000075"),
            reasoning: m("0.00009"),
            other: m("0"),
            total: m(total),
        },
        priced_at: t(1_760_000_002),
    }
}

#[test]
fn priced_usage_round_trips() {
    round_trip(&priced("0.00017985"));
}

#[test]
fn money_beyond_the_fast_encoder_falls_back_to_the_same_bytes() {
    // serde_avro_fast rescales through rust_decimal's 96-bit mantissa (~7.9e10 at scale 18);
    // Money goes to 1e20, so larger amounts take the apache-avro path. Same bytes either way.
    for total in [
        "79228162514.26433759",
        "99999999999999999999.99999999",
        "-99999999999999999999.99999999",
        "-0.000000000000000001",
        "0",
    ] {
        round_trip(&priced(total));
    }
}

#[test]
fn reference_and_signal_records_round_trip() {
    round_trip(&PriceChange {
        price_id: "openai/gpt-4o".into(),
        version: 2,
        provider: "openai".into(),
        model: "gpt-4o".into(),
        aliases: vec!["gpt-4o-2024-08-06".into()],
        currency: "USD".into(),
        rates: vec![
            Rate {
                unit: "input_token".into(),
                tier: "standard".into(),
                above_input_tokens: 0,
                price: m("2.5e-6"),
            },
            Rate {
                unit: "output_token".into(),
                tier: "batch".into(),
                above_input_tokens: 128_000,
                price: m("0.000005"),
            },
        ],
        effective_from: t(1_700_000_000),
        effective_to: Some(t(1_800_000_000)),
        deleted: false,
        author: "finance@acme".into(),
        reason: "contract".into(),
        source: "litellm 1.109.1".into(),
        changed_at: t(1_760_000_000),
    });
    round_trip(&TenantChange {
        rule_id: "r1".into(),
        version: 1,
        matches: TenantMatch {
            api_key_id: Some("k".into()),
            tag_key: Some("env".into()),
            tag_value: Some("prod".into()),
            ..Default::default()
        },
        priority: 10,
        tenant: TenantPath {
            org: "acme".into(),
            ..Default::default()
        },
        effective_from: t(1_700_000_000),
        effective_to: None,
        deleted: true,
        author: "a".into(),
        reason: "".into(),
        changed_at: t(1_700_000_001),
    });
    round_trip(&BudgetChange {
        budget_id: "b1".into(),
        version: 4,
        name: "search monthly".into(),
        scope: scope(),
        limit: m("1000.00"),
        currency: "USD".into(),
        period: PeriodKind::Month,
        timezone: "Europe/Berlin".into(),
        custom_from: None,
        custom_to: Some(t(1_800_000_000)),
        thresholds: vec![
            Threshold {
                percent: 80,
                action: BudgetAction::Notify,
            },
            Threshold {
                percent: 100,
                action: BudgetAction::Block,
            },
        ],
        webhooks: vec!["http://127.0.0.1:9/hook".into()],
        effective_from: t(1_700_000_000),
        effective_to: None,
        deleted: false,
        author: "a".into(),
        reason: "r".into(),
        changed_at: t(1_700_000_000),
    });
    round_trip(&BudgetSignal {
        budget_id: "b1".into(),
        scope: scope(),
        period_start: t(1_700_000_000),
        period_end: t(1_702_592_000),
        state: BudgetState::Exceeded,
        spend: m("1000.01"),
        limit: m("1000"),
        currency: "USD".into(),
        threshold_percent: Some(100),
        action: BudgetAction::Throttle,
        at: t(1_700_100_000),
    });
    round_trip(&Anomaly {
        anomaly_id: "a1".into(),
        scope: scope(),
        model: Some("gpt-4o".into()),
        kind: "spend_rate".into(),
        window_start: t(1_700_000_000),
        window_end: t(1_700_003_600),
        observed: m("120.5"),
        expected: m("10.25"),
        score: 7.5,
        method: "hour_of_week_median_mad".into(),
        top_contributors: vec![Contributor {
            kind: "api_key".into(),
            value: "k1".into(),
            spend: m("100"),
        }],
        at: t(1_700_003_700),
    });
}

#[test]
fn a_record_written_with_schema_v1_still_decodes() {
    let bytes = include_bytes!("fixtures/usage_event.v1.bin");
    let e = UsageEvent::from_avro(bytes).expect("v1 record decodes with the current schema");
    assert_eq!(e.event_id, "evt-v1-0001");
    assert_eq!(e.usage.input_tokens, 1200);
    assert_eq!(e.usage.cache_read_tokens, 300);
    assert_eq!(e.usage.reasoning_tokens, 50);
    assert_eq!(e.team_id.as_deref(), Some("team-a"));
    assert_eq!(e.tags.get("env").map(String::as_str), Some("prod"));
    // fields added after v1 take their schema defaults
    assert_eq!(e.usage.audio_input_tokens, 0);
    assert_eq!(e.region, None);
    assert_eq!(e.agent_id, None);
    assert_eq!(e.occurred_at, Utc.timestamp_opt(1_735_689_600, 0).unwrap());
}

#[test]
fn unknown_fingerprint_and_garbage_fail_clearly() {
    let mut bytes = sample_event().to_avro().unwrap();
    bytes[5] ^= 0xFF;
    let err = UsageEvent::from_avro(&bytes).unwrap_err().to_string();
    assert!(err.contains("unknown schema fingerprint"), "{err}");
    let err = UsageEvent::from_avro(b"{\"json\":1}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("single-object"), "{err}");
    let mut truncated = sample_event().to_avro().unwrap();
    truncated.truncate(truncated.len() - 3);
    assert!(UsageEvent::from_avro(&truncated).is_err());
}

#[test]
fn a_priced_record_is_not_a_usage_event() {
    let e = sample_event();
    let bytes = e.to_avro().unwrap();
    assert!(PricedUsage::from_avro(&bytes).is_err());
}

#[test]
fn arrow_ledger_schema_uses_the_money_type() {
    let s = arrow_schema::usage_ledger_schema();
    for c in arrow_schema::MONEY_COLUMNS {
        assert_eq!(
            s.field_with_name(c).unwrap().data_type(),
            &arrow_schema::money_type()
        );
    }
}

/// Fuzzer finding (avro_decode): a v1 UsageEvent whose tags map declares 2^29 items made
/// apache-avro reserve them all (a 10 GiB allocation) before reading one. The decoder now
/// refuses a count beyond what a Kafka record could hold, before allocating.
#[test]
fn a_huge_declared_item_count_is_refused_before_allocating() {
    let bytes = include_bytes!("fixtures/fuzz/usage_event_v1_tags_count_2e29.bin");
    let e = UsageEvent::from_avro(bytes).unwrap_err().to_string();
    assert!(
        e.contains("allocat") && e.contains(&codec::MAX_AVRO_ALLOCATION.to_string()),
        "{e}"
    );
}
