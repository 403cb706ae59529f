//! Each input format, posted to a real ingest over HTTP, arrives on `meterline.usage.raw`
//! decoded to the expected UsageEvent (real broker, real samples from the formats' authors).

mod common;

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use common::Harness;
use meterline_schemas::{CallStatus, Operation, ServiceTier, UsageEvent};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The usage snapshots of an Anthropic SSE stream: message_start's, then each message_delta's.
fn anthropic_stream_usages(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| match v["type"].as_str() {
            Some("message_start") => Some(v["message"]["usage"].clone()),
            Some("message_delta") => Some(v["usage"].clone()),
            _ => None,
        })
        .collect()
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn otlp_request() -> ExportTraceServiceRequest {
    use any_value::Value::{IntValue, StringValue};
    let genai = Span {
        trace_id: vec![0x5b; 16],
        span_id: vec![0x01, 2, 3, 4, 5, 6, 7, 8],
        name: "chat gpt-4o".into(),
        start_time_unix_nano: 1_760_000_000_000_000_000,
        end_time_unix_nano: 1_760_000_001_250_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", StringValue("chat".into())),
            kv("gen_ai.provider.name", StringValue("openai".into())),
            kv("gen_ai.request.model", StringValue("gpt-4o".into())),
            kv(
                "gen_ai.response.model",
                StringValue("gpt-4o-2024-08-06".into()),
            ),
            kv("gen_ai.response.id", StringValue("chatcmpl-otlp-1".into())),
            kv("gen_ai.usage.input_tokens", IntValue(120)),
            kv("gen_ai.usage.cache_read.input_tokens", IntValue(20)),
            kv("gen_ai.usage.output_tokens", IntValue(30)),
            kv("gen_ai.usage.reasoning.output_tokens", IntValue(10)),
            kv("meterline.team_id", StringValue("search".into())),
        ],
        status: Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        ..Default::default()
    };
    let plain = Span {
        trace_id: vec![0x5b; 16],
        span_id: vec![9; 8],
        name: "GET /".into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("meterline.api_key_id", StringValue("key-otlp".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![plain, genai],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_arrives_decoded_on_the_raw_topic() {
    let h = Harness::start().await;

    // native: disjoint buckets as-is
    let native = json!({"event_id": "n-1", "occurred_at": "2026-11-01T10:00:00Z", "provider": "OpenAI", "model": "gpt-4o",
        "operation": "chat", "api_key_id": "key-1", "team_id": "search", "org_id": "acme", "tags": {"env": "prod"},
        "usage": {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 300, "reasoning_tokens": 50},
        "service_tier": "batch", "latency_ms": 900, "gateway_reported_cost": "0.0123"});
    // native carrying provider usage objects verbatim
    let openai_usage =
        serde_json::from_str::<Value>(&fixture("openai_chat_completion_example.json")).unwrap()
            ["usage"]
            .clone();
    let anthropic_usage =
        serde_json::from_str::<Value>(&fixture("anthropic_message_response.json")).unwrap()
            ["usage"]
            .clone();
    let stream = anthropic_stream_usages(&fixture("anthropic_message_stream.sse"));
    assert_eq!(stream.len(), 2, "message_start + message_delta");
    let with_provider = json!([
        {"event_id": "n-openai", "occurred_at": "2026-11-01T10:00:01Z", "provider": "openai", "model": "gpt-4o-2024-08-06", "team_id": "t", "provider_usage": openai_usage},
        {"event_id": "n-anthropic", "occurred_at": "2026-11-01T10:00:02Z", "provider": "anthropic", "model": "claude-sonnet-4-20250514", "team_id": "t", "provider_usage": anthropic_usage},
        {"event_id": "n-stream", "occurred_at": "2026-11-01T10:00:03Z", "provider": "anthropic", "model": "claude-sonnet-4-20250514", "team_id": "t", "provider_usage_stream": stream},
    ]);
    assert_eq!(
        h.post("/v1/events", "application/json", native.to_string())
            .await
            .0,
        200
    );
    // usage objects recorded by the Envoy AI Gateway project from real OpenAI/Azure calls
    let envoy: Vec<Value> = fixture("envoy_openai_usages.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let envoy_items: Vec<Value> = envoy
        .iter()
        .map(|c| json!({"event_id": format!("envoy-{}", c["cassette"].as_str().unwrap()), "occurred_at": "2026-11-01T09:00:00Z",
                        "provider": "openai", "model": c["model"], "team_id": "t", "provider_usage": c["usage"]}))
        .collect();
    assert_eq!(
        h.post(
            "/v1/events",
            "application/json",
            json!(envoy_items).to_string()
        )
        .await
        .0,
        200
    );
    let (st, body) = h
        .post("/v1/events", "application/json", with_provider.to_string())
        .await;
    assert_eq!((st, body["accepted"].as_u64()), (200, Some(3)), "{body}");
    // NDJSON
    let nd = format!(
        "{}\n{}\n",
        json!({"request_id": "req-nd-1", "occurred_at": "2026-11-01T10:00:04Z", "provider": "openai", "model": "gpt-4o-mini", "user_id": "u1", "usage": {"input_tokens": 5}}),
        json!({"event_id": "nd-2", "occurred_at": "2026-11-01T10:00:05Z", "provider": "openai", "model": "gpt-4o-mini", "user_id": "u1", "usage": {"input_tokens": 6}})
    );
    assert_eq!(
        h.post("/v1/events", "application/x-ndjson", nd).await.0,
        200
    );

    // CloudEvents: OpenMeter's example event with GenAI data, structured and batch modes
    let mut ce: Value = serde_json::from_str(&fixture("openmeter_event_example.json")).unwrap();
    ce["data"] = json!({"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-20250514",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_read.input_tokens": 20, "gen_ai.usage.output_tokens": 7, "team_id": "ce-team"});
    assert_eq!(
        h.post(
            "/v1/events/cloudevents",
            "application/cloudevents+json",
            ce.to_string()
        )
        .await
        .0,
        200
    );
    let mut ce2 = ce.clone();
    ce2["id"] = json!("batch-1");
    ce2["data"] = json!({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 3});
    assert_eq!(
        h.post(
            "/v1/events/cloudevents",
            "application/cloudevents-batch+json",
            json!([ce2]).to_string()
        )
        .await
        .0,
        200
    );

    // LiteLLM StandardLoggingPayload: json_array (default), single and ndjson modes
    let gcs: Value = serde_json::from_str(&fixture("litellm_slp_gcs_pubsub_test.json")).unwrap();
    let mut sentinel: Value =
        serde_json::from_str(&fixture("litellm_slp_azure_sentinel_example.json")).unwrap();
    sentinel["id"] = json!("litellm-sentinel-1");
    let mut attributed = gcs.clone();
    attributed["id"] = json!("litellm-attr-1");
    attributed["metadata"]["user_api_key_hash"] =
        json!("88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b");
    attributed["metadata"]["user_api_key_team_id"] = json!("team-litellm");
    attributed["metadata"]["user_api_key_org_id"] = json!("org-litellm");
    attributed["metadata"]["user_api_key_user_id"] = json!("user-7");
    attributed["request_tags"] = json!(["env:prod", "feature=search", "beta"]);
    attributed["response"]["usage"] = json!({"prompt_tokens": 2000, "completion_tokens": 100, "total_tokens": 2100,
        "prompt_tokens_details": {"cached_tokens": 1500}, "completion_tokens_details": {"reasoning_tokens": 40}});
    assert_eq!(
        h.post(
            "/v1/events/litellm",
            "application/json",
            json!([gcs, attributed]).to_string()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        h.post(
            "/v1/events/litellm",
            "application/x-ndjson",
            format!("{sentinel}\n")
        )
        .await
        .0,
        200
    );

    // OTLP traces: protobuf and JSON
    let req = otlp_request();
    let (st, _) = h
        .post("/v1/traces", "application/x-protobuf", req.encode_to_vec())
        .await;
    assert_eq!(st, 200);
    let otlp_json = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "meterline.team_id", "value": {"stringValue": "otel-team"}}]},
        "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "chat", "kind": 3,
            "startTimeUnixNano": "1760000000000000000", "endTimeUnixNano": "1760000000500000000",
            "attributes": [{"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                           {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                           {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "42"}},
                           {"key": "gen_ai.usage.completion_tokens", "value": {"intValue": "8"}}],
            "status": {"code": 2}}]}]}]});
    let (st, body) = h
        .post("/v1/traces", "application/json", otlp_json.to_string())
        .await;
    assert_eq!(st, 200, "{body}");

    // an edge acknowledges an event once the broker acked it or its spool holds it (then it
    // reaches the topic a little later: seen under load, 3 of 15 read at once)
    common::eventually(
        std::time::Duration::from_secs(60),
        "15 events on the raw topic",
        || async { h.raw_events().await.len() >= 15 },
    )
    .await;
    let events: HashMap<String, UsageEvent> = h
        .raw_events()
        .await
        .into_iter()
        // LiteLLM ids are `<call id>@<start µs>`: keyed here by the call id part
        .map(|e| {
            let key = match e.format.as_str() {
                "litellm" => e.event_id.split('@').next().unwrap_or_default().to_string(),
                _ => e.event_id.clone(),
            };
            (key, e)
        })
        .collect();
    assert_eq!(
        events.len(),
        15,
        "ids: {:?}",
        events.keys().collect::<Vec<_>>()
    );

    let n = &events["n-1"];
    assert_eq!(
        (
            n.provider.as_str(),
            n.model.as_str(),
            n.operation,
            n.service_tier
        ),
        ("openai", "gpt-4o", Operation::Chat, ServiceTier::Batch)
    );
    assert_eq!(
        (
            n.usage.input_tokens,
            n.usage.cache_read_tokens,
            n.usage.output_tokens,
            n.usage.reasoning_tokens
        ),
        (1000, 200, 300, 50)
    );
    assert_eq!(
        (
            n.api_key_id.as_deref(),
            n.team_id.as_deref(),
            n.tags["env"].as_str()
        ),
        (Some("key-1"), Some("search"), "prod")
    );
    assert_eq!(n.gateway_reported_cost.unwrap().to_string(), "0.0123");
    assert_eq!(
        (n.source.as_str(), n.format.as_str()),
        ("test-edge", "native")
    );
    assert_eq!(
        n.occurred_at,
        Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0).unwrap()
    );

    let az = &events["envoy-azure-chat-basic.yaml"].usage;
    assert_eq!(
        (az.input_tokens, az.output_tokens, az.reasoning_tokens),
        (8, 79, 192),
        "271 completion tokens of which 192 reasoning"
    );
    let dd = &events["envoy-chat-detailed-usage.yaml"].usage;
    assert_eq!(
        (dd.input_tokens, dd.output_tokens, dd.reasoning_tokens),
        (12, 0, 100)
    );
    let o = &events["n-openai"].usage;
    assert_eq!(
        (o.input_tokens, o.cache_read_tokens, o.output_tokens),
        (1117, 0, 46)
    );
    let a = &events["n-anthropic"].usage;
    assert_eq!(
        (a.input_tokens, a.output_tokens, a.cache_write_5m_tokens),
        (13, 5, 0)
    );
    let s = &events["n-stream"].usage;
    assert_eq!(
        (s.input_tokens, s.output_tokens),
        (13, 5),
        "last cumulative value, not 2 + 5"
    );
    assert_eq!(
        events["req-nd-1"].request_id.as_deref(),
        Some("req-nd-1"),
        "event id derived from request id"
    );

    let c = &events["service-name/5c10fade-1c9e-4d6c-8275-c52c36731d3c"];
    assert_eq!(
        (
            c.api_key_id.as_deref(),
            c.team_id.as_deref(),
            c.format.as_str()
        ),
        (Some("customer-id"), Some("ce-team"), "cloudevents")
    );
    assert_eq!(
        (
            c.usage.input_tokens,
            c.usage.cache_read_tokens,
            c.usage.output_tokens
        ),
        (80, 20, 7),
        "OTel input includes cache reads"
    );
    assert_eq!(
        c.occurred_at,
        Utc.with_ymd_and_hms(2023, 1, 1, 1, 1, 1).unwrap() + chrono::Duration::milliseconds(1)
    );
    let c2 = &events["service-name/batch-1"];
    assert_eq!(
        (
            c2.provider.as_str(),
            c2.usage.input_tokens,
            c2.usage.output_tokens
        ),
        ("openai", 11, 3),
        "deprecated names"
    );

    let l = &events["chatcmpl-2299b6a2-82a3-465a-b47c-04e685a2227f"];
    assert_eq!(
        (
            l.provider.as_str(),
            l.model.as_str(),
            l.usage.input_tokens,
            l.usage.output_tokens
        ),
        ("openai", "gpt-4o", 10, 20)
    );
    assert_eq!(
        l.gateway_reported_cost.unwrap().to_string(),
        "0.000225",
        "response_cost kept, float noise rounded at 18 dp"
    );
    assert_eq!(
        l.occurred_at,
        Utc.with_ymd_and_hms(2025, 1, 24, 9, 20, 46).unwrap()
            + chrono::Duration::microseconds(847_371)
    );
    assert_eq!(l.latency_ms, Some(4));
    let la = &events["litellm-attr-1"];
    assert_eq!(
        la.api_key_id.as_deref(),
        Some("88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b")
    );
    assert_eq!(
        (
            la.team_id.as_deref(),
            la.org_id.as_deref(),
            la.user_id.as_deref()
        ),
        (Some("team-litellm"), Some("org-litellm"), Some("user-7"))
    );
    assert_eq!(
        (
            la.tags["env"].as_str(),
            la.tags["feature"].as_str(),
            la.tags["beta"].as_str()
        ),
        ("prod", "search", "")
    );
    assert_eq!(
        (
            la.usage.input_tokens,
            la.usage.cache_read_tokens,
            la.usage.output_tokens,
            la.usage.reasoning_tokens
        ),
        (500, 1500, 60, 40)
    );
    let ls = &events["litellm-sentinel-1"];
    assert_eq!((ls.latency_ms, ls.ttft_ms), (Some(1794), Some(1794)));

    let t = &events["5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b/0102030405060708"];
    assert_eq!(
        (
            t.model.as_str(),
            t.api_key_id.as_deref(),
            t.team_id.as_deref()
        ),
        ("gpt-4o-2024-08-06", Some("key-otlp"), Some("search"))
    );
    assert_eq!(
        (
            t.usage.input_tokens,
            t.usage.cache_read_tokens,
            t.usage.output_tokens,
            t.usage.reasoning_tokens
        ),
        (100, 20, 20, 10)
    );
    assert_eq!(
        (t.latency_ms, t.request_id.as_deref()),
        (Some(1250), Some("chatcmpl-otlp-1"))
    );
    let tj = &events["0af7651916cd43dd8448eb211c80319c/b7ad6b7169203331"];
    assert_eq!(
        (
            tj.usage.input_tokens,
            tj.usage.output_tokens,
            tj.status,
            tj.team_id.as_deref()
        ),
        (42, 8, CallStatus::Error, Some("otel-team"))
    );
}
