//! OTLP/HTTP traces (JSON and protobuf): every span carrying GenAI usage attributes becomes a
//! usage event; other spans are ignored. Resource attributes are merged under span attributes
//! (a span's value wins). The event id is `trace_id/span_id` (hex), stable across retries.

use chrono::{TimeZone, Utc};
use meterline_schemas::{CallStatus, UsageEvent};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde_json::{Map, Value};

use super::genai;
use super::{seal_event, Ctx, FieldError};

fn any_to_json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attrs(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
        _ => Value::Null,
    }
}

fn attrs(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .filter_map(|kv| kv.value.as_ref().map(|v| (kv.key.clone(), any_to_json(v))))
        .collect()
}

/// The outcome for one span that looked like a model call.
pub struct SpanResult {
    pub index: usize,
    pub event: Result<UsageEvent, FieldError>,
}

/// Events from every GenAI span of the request; `index` counts spans across the request.
pub fn decode(req: &ExportTraceServiceRequest, ctx: &Ctx) -> Vec<SpanResult> {
    let mut out = Vec::new();
    let mut index = 0usize;
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let mut a = resource.clone();
                a.extend(attrs(&span.attributes));
                if genai::has_usage(&a) {
                    out.push(SpanResult {
                        index,
                        event: span_event(span, &a, ctx),
                    });
                }
                index += 1;
            }
        }
    }
    out
}

fn span_event(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
    a: &Map<String, Value>,
    ctx: &Ctx,
) -> Result<UsageEvent, FieldError> {
    if span.trace_id.len() != 16 || span.span_id.len() != 8 {
        return Err(FieldError::new(
            "traceId",
            "span needs a 16-byte trace id and an 8-byte span id",
        ));
    }
    let start = Utc.timestamp_nanos(span.start_time_unix_nano as i64);
    let latency = span
        .end_time_unix_nano
        .checked_sub(span.start_time_unix_nano)
        .map(|ns| (ns / 1_000_000) as i64);
    let errored = span.status.as_ref().is_some_and(|s| s.code == 2);
    let event_id = format!(
        "{}/{}",
        hex::encode(&span.trace_id),
        hex::encode(&span.span_id)
    );
    let mut e = genai::event(a, event_id, start, ctx, "otlp")?;
    if errored {
        e.status = CallStatus::Error;
    }
    e.http_status = a
        .get("http.response.status_code")
        .and_then(Value::as_i64)
        .map(|v| v as i32);
    e.latency_ms = latency;
    seal_event(e)
}
