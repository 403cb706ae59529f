//! Writes `tests/fixtures/usage_event.v1.bin`: a UsageEvent as a producer running the v1
//! schema (before agent/workflow/session ids, region and audio buckets) wrote it. Kept so the
//! fixture can be regenerated and audited; the test only reads the committed bytes.

use apache_avro::types::{Record, Value};
use apache_avro::Schema;

fn main() {
    let schema = Schema::parse_str(include_str!("../avro/history/usage_event.v1.avsc")).unwrap();
    let usage_schema = match &schema {
        Schema::Record(r) => r
            .fields
            .iter()
            .find(|f| f.name == "usage")
            .unwrap()
            .schema
            .clone(),
        _ => unreachable!(),
    };
    let mut usage = Record::new(&usage_schema).unwrap();
    for (k, v) in [
        ("input_tokens", 1200i64),
        ("cache_read_tokens", 300),
        ("output_tokens", 450),
        ("reasoning_tokens", 50),
    ] {
        usage.put(k, Value::Long(v));
    }
    for k in [
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "images",
        "characters",
        "requests",
    ] {
        usage.put(k, Value::Long(0));
    }
    usage.put("seconds", Value::Union(0, Box::new(Value::Null)));
    let mut r = Record::new(&schema).unwrap();
    let s = |v: &str| Value::Union(1, Box::new(Value::String(v.into())));
    let null = || Value::Union(0, Box::new(Value::Null));
    r.put("event_id", Value::String("evt-v1-0001".into()));
    r.put("occurred_at", Value::TimestampMicros(1_735_689_600_000_000));
    r.put("received_at", Value::TimestampMicros(1_735_689_601_000_000));
    r.put("source", Value::String("edge-old".into()));
    r.put("format", Value::String("native".into()));
    r.put("request_id", null());
    r.put("api_key_id", s("key-7"));
    r.put("user_id", null());
    r.put("team_id", s("team-a"));
    r.put("org_id", s("acme"));
    r.put("project_id", null());
    r.put("end_user", null());
    r.put(
        "tags",
        Value::Map(
            [("env".to_string(), Value::String("prod".into()))]
                .into_iter()
                .collect(),
        ),
    );
    r.put("provider", Value::String("openai".into()));
    r.put("model", Value::String("gpt-4o".into()));
    r.put("operation", Value::Enum(0, "chat".into()));
    r.put("usage", usage);
    r.put("service_tier", Value::Enum(0, "standard".into()));
    r.put("status", Value::Enum(0, "success".into()));
    r.put("http_status", Value::Union(1, Box::new(Value::Int(200))));
    r.put("latency_ms", null());
    r.put("ttft_ms", null());
    r.put("gateway_reported_cost", null());
    let body = apache_avro::to_avro_datum(&schema, r).unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&meterline_schemas::codec::fingerprint(&schema));
    out.extend_from_slice(&body);
    std::fs::write(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/usage_event.v1.bin"
        ),
        out,
    )
    .unwrap();
}
