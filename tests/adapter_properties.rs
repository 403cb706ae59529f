//! The edge's promise, as properties over every adapter: an accepted item bills something
//! (a billable quantity, within range), survives the wire (Avro encode → decode equal) and
//! prices (with a rate for every unit: a cost, never an undecodable/no-quantity rejection);
//! a refused item names a reason. Inputs are real samples (tests/fixtures, with attribution
//! there) mutated at random — a leaf replaced by a random JSON value, a key removed — plus
//! random objects over each format's own field names, so the generator reaches the code paths
//! real payloads do.

use chrono::Utc;
use meterline_enrich::pricing::enrich;
use meterline_ingest::adapters::{cloudevents, litellm, native, Ctx, FieldError};
use meterline_reference::price_book::PriceBook;
use meterline_reference::tenants::TenantDirectory;
use meterline_schemas::{AvroRecord, PriceChange, Rate, UsageEvent};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

type Decode = fn(&RawValue, &Ctx) -> Result<UsageEvent, FieldError>;

fn ctx() -> Ctx {
    Ctx {
        source: "prop".into(),
        received_at: meterline_schemas::time::from_micros(Utc::now().timestamp_micros()).unwrap(),
    }
}

fn samples() -> Vec<(&'static str, Decode, Value)> {
    let fixture = |name: &str| -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
    };
    let anthropic_usage = json!({"input_tokens": 13, "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 7, "output_tokens": 2,
        "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 0}});
    let openai_usage = fixture("openai_chat_completion_example.json")["usage"].clone();
    vec![
        (
            "native",
            native::decode as Decode,
            json!({"event_id": "e1", "occurred_at": "2026-01-01T00:00:00Z", "provider": "openai",
                   "model": "gpt-4o", "api_key_id": "k", "team_id": "t",
                   "usage": {"input_tokens": 10, "output_tokens": 3, "seconds": "1.5"},
                   "gateway_reported_cost": 0.029538000000000002, "tags": {"a": "b"}}),
        ),
        (
            "native provider_usage (openai)",
            native::decode,
            json!({"event_id": "e2", "occurred_at": "2026-01-01T00:00:00Z", "provider": "openai",
                   "model": "gpt-4o", "provider_usage": openai_usage}),
        ),
        (
            "native provider_usage (whisper)",
            native::decode,
            json!({"event_id": "e3", "occurred_at": "2026-01-01T00:00:00Z", "provider": "openai",
                   "model": "whisper-1", "provider_usage": {"type": "duration", "seconds": 7}}),
        ),
        (
            "native provider_usage_stream (anthropic)",
            native::decode,
            json!({"event_id": "e4", "occurred_at": "2026-01-01T00:00:00Z",
                   "provider": "anthropic", "model": "claude-sonnet-4-20250514",
                   "provider_usage_stream": [
                       {"type": "message_start", "message": {"usage": anthropic_usage}},
                       {"type": "ping"},
                       {"type": "message_delta", "usage": {"output_tokens": 40}}]}),
        ),
        (
            "cloudevents",
            cloudevents::decode,
            json!({"specversion": "1.0", "id": "1", "source": "gw", "type": "gen_ai.usage",
                   "subject": "key-1", "time": "2026-01-01T00:00:00Z",
                   "data": {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2,
                            "meterline.gateway_reported_cost": "0.001"}}),
        ),
        (
            "litellm (gcs pubsub sample)",
            litellm::decode,
            fixture("litellm_slp_gcs_pubsub_test.json"),
        ),
        (
            "litellm (azure sentinel sample)",
            litellm::decode,
            fixture("litellm_slp_azure_sentinel_example.json"),
        ),
    ]
}

/// Every (path, value) leaf of `v`, paths as key/index lists.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(k.clone());
                out.push(path.clone());
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                out.push(path.clone());
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn slot<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p)?,
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(m)) = slot(v, parent) {
        m.remove(last);
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0i64..2_000_000).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        Just(json!("2e20")),
        Just(json!(1.5e20)),
        Just(json!("-1")),
        Just(json!("0")),
        Just(json!({})),
        Just(json!([])),
        "[ -~]{0,12}".prop_map(Value::String),
        "\\PC{0,4}".prop_map(Value::String),
        Just(json!("a\u{0}b")),
        Just(Value::String("x".repeat(600))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_.]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A price for the event's own (provider, model) with every unit at 0.001.
fn full_card(e: &UsageEvent) -> PriceBook {
    use meterline_schemas::unit::*;
    let at = chrono::DateTime::from_timestamp(0, 0).unwrap();
    let rates = [
        INPUT,
        OUTPUT,
        CACHE_READ,
        CACHE_WRITE_5M,
        CACHE_WRITE_1H,
        REASONING,
        AUDIO_INPUT,
        AUDIO_OUTPUT,
        IMAGE,
        SECOND,
        CHARACTER,
        REQUEST,
    ]
    .iter()
    .map(|u| Rate {
        unit: u.to_string(),
        tier: "standard".into(),
        above_input_tokens: 0,
        price: "0.001".parse().unwrap(),
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
        author: "t".into(),
        reason: String::new(),
        source: String::new(),
        changed_at: at,
    });
    b
}

/// The property itself, for one decoded item.
fn check(name: &str, item: &Value, r: Result<UsageEvent, FieldError>) -> Result<(), TestCaseError> {
    match r {
        Ok(e) => {
            prop_assert!(
                !e.usage.is_empty(),
                "{name}: accepted without a billable quantity: {item}"
            );
            let bytes = e.to_avro().map_err(|x| {
                TestCaseError::fail(format!(
                    "{name}: accepted but does not encode ({x}): {item}"
                ))
            })?;
            let back = UsageEvent::from_avro(&bytes).map_err(|x| {
                TestCaseError::fail(format!(
                    "{name}: accepted but does not decode ({x}): {item}"
                ))
            })?;
            prop_assert_eq!(&back, &e, "{}: not equal after the wire: {}", name, item);
            // ... and prices: with a rate for every unit, the only refusals left are the
            // arithmetic guards, never "undecodable", "no_quantity" or "no_rate".
            let book = full_card(&e);
            match enrich(back, &book, &TenantDirectory::new(), Utc::now()) {
                Ok(p) => prop_assert!(!p.cost.total.is_zero() || e.cache_hit, "{name}: $0: {item}"),
                Err(r) => prop_assert!(
                    r.code == "zero_cost" || r.code == "overflow",
                    "{name}: accepted but not billable ({} {}: {}): {item}",
                    r.code,
                    r.field,
                    r.reason
                ),
            }
        }
        Err(f) => prop_assert!(!f.reason.is_empty(), "{name}: refusal without a reason"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_real_samples_bill_or_are_refused(
        which in 0usize..7,
        picks in prop::collection::vec((any::<prop::sample::Index>(), json_value(), any::<bool>()), 1..4),
    ) {
        let all = samples();
        let (name, decode, base) = &all[which % all.len()];
        let mut item = base.clone();
        for (at, value, delete) in picks {
            let mut paths = Vec::new();
            leaves(&item, &mut Vec::new(), &mut paths);
            if paths.is_empty() {
                break;
            }
            let path = at.get(&paths).clone();
            if delete {
                remove(&mut item, &path);
            } else if let Some(s) = slot(&mut item, &path) {
                *s = value;
            }
        }
        let raw = serde_json::value::to_raw_value(&item).expect("raw");
        check(name, &item, decode(&raw, &ctx()))?;
    }

    #[test]
    fn random_objects_bill_or_are_refused(which in 0usize..7, v in json_value()) {
        let all = samples();
        let (name, decode, _) = &all[which % all.len()];
        let raw = serde_json::value::to_raw_value(&v).expect("raw");
        check(name, &v, decode(&raw, &ctx()))?;
    }
}

/// The regressions this file exists for, named.
#[test]
fn findings_stay_fixed() {
    let c = ctx();
    let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
    let base = json!({"event_id": "e", "occurred_at": "2026-01-01T00:00:00Z",
                      "provider": "openai", "model": "whisper-1"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    // whisper's duration usage: seconds, not $0
    let e = native::decode(
        &raw(with(
            "provider_usage",
            json!({"type": "duration", "seconds": 7}),
        )),
        &c,
    )
    .unwrap();
    assert_eq!(e.usage.seconds.unwrap().to_string(), "7");
    // an empty or unknown usage object is refused with the field
    for u in [
        json!({}),
        json!({"foo": 1}),
        json!({"prompt_tokens": 0, "completion_tokens": 0}),
    ] {
        let r = native::decode(&raw(with("provider_usage", u.clone())), &c).unwrap_err();
        assert!(
            r.field.starts_with("provider_usage") || r.field == "usage",
            "{u}: {r:?}"
        );
    }
    // whole SSE events posted as the stream: understood
    let stream = json!([{"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
                        {"type": "content_block_delta", "delta": {"text": "hi"}},
                        {"type": "message_delta", "usage": {"output_tokens": 30}}]);
    let mut b = with("provider_usage_stream", stream);
    b["provider"] = json!("anthropic");
    let e = native::decode(&raw(b), &c).unwrap();
    assert_eq!((e.usage.input_tokens, e.usage.output_tokens), (9, 30));
    // money from the JSON text, not through f64
    let text = r#"{"event_id":"e","occurred_at":"2026-01-01T00:00:00Z","provider":"openai",
        "model":"gpt-4o","usage":{"input_tokens":1},"gateway_reported_cost":0.029538000000000002}"#;
    let r: Box<RawValue> = serde_json::from_str(text).unwrap();
    let e = native::decode(&r, &c).unwrap();
    assert_eq!(
        e.gateway_reported_cost.unwrap().to_string(),
        "0.029538000000000002"
    );
    // beyond Decimal(38, 18): a 400 naming the field, never a panic
    let mut b = with("usage", json!({"input_tokens": 1}));
    b["gateway_reported_cost"] = json!("2e20");
    assert_eq!(
        native::decode(&raw(b), &c).unwrap_err().field,
        "gateway_reported_cost"
    );
    // control characters in ids are refused
    let mut b = with("usage", json!({"input_tokens": 1}));
    b["event_id"] = json!("a\u{0}b");
    assert_eq!(native::decode(&raw(b), &c).unwrap_err().field, "event_id");
    // nanosecond times (CloudEvents, OTLP, native) are stored at the contract's microseconds:
    // the accepted event is the one the Avro wire carries (fuzzer finding, adapter_cloudevents)
    let ce = json!({"id": "x", "source": "gw", "specversion": "1.0", "type": "prompt",
                    "subject": "key-1", "time": "2023-01-01T01:01:01.007777777Z",
                    "data": {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-3",
                             "gen_ai.usage.output_tokens": 7}});
    let mut nat = with("usage", json!({"input_tokens": 1}));
    nat["occurred_at"] = json!("2025-10-09T08:53:20.000000001Z");
    for e in [
        cloudevents::decode(&raw(ce), &c).unwrap(),
        native::decode(&raw(nat), &c).unwrap(),
    ] {
        assert_eq!(e.occurred_at.timestamp_subsec_nanos() % 1000, 0, "{e:?}");
        assert_eq!(UsageEvent::from_avro(&e.to_avro().unwrap()).unwrap(), e);
    }
}

#[test]
fn litellm_ids_cache_hits_and_tags() {
    let c = ctx();
    let path = format!(
        "{}/tests/fixtures/litellm_slp_gcs_pubsub_test.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["litellm_call_id"] = json!("call-1");
    v["request_tags"] = json!(["team:a", "team:b", "prod"]);
    v["cache_hit"] = json!(true);
    v["response_cost"] = serde_json::from_str("0").unwrap();
    let e = litellm::decode(&serde_json::value::to_raw_value(&v).unwrap(), &c).unwrap();
    assert!(
        e.event_id.starts_with("call-1@"),
        "litellm_call_id (+ start time), not the provider's response id: {}",
        e.event_id
    );
    assert_eq!(
        e.request_id.as_deref(),
        Some("chatcmpl-2299b6a2-82a3-465a-b47c-04e685a2227f")
    );
    assert!(e.cache_hit);
    assert_eq!(e.tags.get("team").map(String::as_str), Some("a,b"));
    assert_eq!(e.tags.get("prod").map(String::as_str), Some(""));
    // two calls whose provider repeated a response id are two events
    v["litellm_call_id"] = json!("call-2");
    let e2 = litellm::decode(&serde_json::value::to_raw_value(&v).unwrap(), &c).unwrap();
    assert_ne!(e.event_id, e2.event_id);
    // a client-chosen call id reused by two calls: still two events (their start times differ)
    v["litellm_call_id"] = json!("call-1");
    v["startTime"] = json!("2025-01-24 09:20:47.000001");
    let e3 = litellm::decode(&serde_json::value::to_raw_value(&v).unwrap(), &c).unwrap();
    assert_ne!(e.event_id, e3.event_id);
    // the same payload again (LiteLLM re-sending a batch): the same id
    let e4 = litellm::decode(&serde_json::value::to_raw_value(&v).unwrap(), &c).unwrap();
    assert_eq!(e3.event_id, e4.event_id);
}
