//! LiteLLM's StandardLoggingPayload, exactly as its `generic_api` callback posts it
//! (`json_array` by default, `ndjson`, or `single`). Attribution comes from
//! `metadata.user_api_key_hash/_team_id/_org_id/_user_id/_project_id/_end_user_id` and
//! `request_tags`; token detail from the usage object (`response.usage`, else
//! `metadata.usage_object` / `hidden_params.usage_object`, else the top-level counts);
//! `response_cost` is kept as `gateway_reported_cost` (from its JSON text, never a float).
//! `messages` and `response` content are never read beyond `response.usage`.
//!
//! The event id is `<litellm_call_id>@<startTime in µs>` (LiteLLM's id of the call — which a
//! client may choose through the `x-litellm-call-id` header, hence the start time), falling
//! back to `id` only for payloads without a call id. `id` is the *provider's response id* in these payloads
//! (`chatcmpl-…`), which caches, mocks and some providers repeat across distinct calls: keyed on
//! it, distinct calls looked like retries. `cache_hit: true` (answered from LiteLLM's own cache,
//! `response_cost: 0`) is kept as usage billed at zero.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use meterline_schemas::{CallStatus, Money, Operation, ServiceTier, Usage, UsageEvent};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::usage::{self, kind};
use super::{non_empty, object_or_empty, seal_event, Ctx, FieldError};

/// LiteLLM writes times as epoch seconds (float) or as `"2025-01-24 09:20:46.847371"` (UTC).
fn time(v: Option<&Value>, field: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n
                .as_f64()
                .ok_or_else(|| FieldError::new(field, "not a number"))?;
            let micros = (secs * 1e6).round() as i64;
            Utc.timestamp_micros(micros)
                .single()
                .map(Some)
                .ok_or_else(|| FieldError::new(field, "out of range"))
        }
        Some(Value::String(s)) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.with_timezone(&Utc)));
            }
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .map(|t| Some(t.and_utc()))
                .map_err(|_| {
                    FieldError::new(
                        field,
                        format!(
                            "'{s}' is not a time (epoch seconds or YYYY-MM-DD HH:MM:SS.ffffff)"
                        ),
                    )
                })
        }
        Some(x) => Err(FieldError::new(
            field,
            format!("must be a number or string (got {})", kind(x)),
        )),
    }
}

fn s<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

fn operation(call_type: &str) -> Operation {
    let c = call_type.trim_start_matches('a');
    match c {
        "completion" | "responses" | "generate_content" => Operation::Chat,
        "text_completion" => Operation::Completion,
        "embedding" => Operation::Embedding,
        "image_generation" | "image_edit" => Operation::Image,
        "transcription" | "speech" => Operation::Audio,
        "rerank" => Operation::Rerank,
        "moderation" => Operation::Moderation,
        "realtime" => Operation::Realtime,
        _ => Operation::Other,
    }
}

/// `request_tags` is a list of strings; `key:value` / `key=value` become a keyed tag, a bare
/// tag maps to "". A key given more than once keeps every value, comma-joined in order of
/// appearance (`team:a`, `team:b` → `team = "a,b"`), never just the last.
fn tags(v: Option<&Value>) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, t) in items.iter().enumerate() {
                let t = t.as_str().ok_or_else(|| {
                    FieldError::new(
                        &format!("request_tags[{i}]"),
                        format!("must be a string (got {})", kind(t)),
                    )
                })?;
                let (k, v) = match t.split_once([':', '=']) {
                    Some((k, v)) => (k.trim(), v.trim()),
                    None => (t.trim(), ""),
                };
                match out.entry(k.to_string()) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(v.to_string());
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let kept = e.get_mut();
                        if !v.is_empty() && !kept.split(',').any(|x| x == v) {
                            if !kept.is_empty() {
                                kept.push(',');
                            }
                            kept.push_str(v);
                        }
                    }
                }
            }
        }
        Some(x) => {
            return Err(FieldError::new(
                "request_tags",
                format!("must be an array (got {})", kind(x)),
            ))
        }
    }
    Ok(out)
}

fn usage_object(o: &Map<String, Value>) -> Option<(&'static str, &Value)> {
    fn pick(v: Option<&Value>) -> Option<&Value> {
        v.filter(|u| u.is_object())
    }
    pick(o.get("response").and_then(|r| r.get("usage")))
        .map(|u| ("response.usage", u))
        .or_else(|| {
            pick(o.get("metadata").and_then(|m| m.get("usage_object")))
                .map(|u| ("metadata.usage_object", u))
        })
        .or_else(|| {
            pick(o.get("hidden_params").and_then(|m| m.get("usage_object")))
                .map(|u| ("hidden_params.usage_object", u))
        })
}

/// `response_cost` from the payload's own text (the parsed `Value` holds an f64).
fn response_cost(raw: &RawValue) -> Result<Option<Money>, FieldError> {
    #[derive(serde::Deserialize)]
    struct Cost<'a> {
        #[serde(borrow, default)]
        response_cost: Option<&'a RawValue>,
    }
    let c: Cost = serde_json::from_str(raw.get())
        .map_err(|e| FieldError::new("response_cost", e.to_string()))?;
    match c.response_cost {
        Some(r) => usage::decimal_raw(r, "response_cost"),
        None => Ok(None),
    }
}

pub fn decode(raw: &RawValue, ctx: &Ctx) -> Result<UsageEvent, FieldError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| FieldError::new("", e.to_string()))?;
    let o = v.as_object().ok_or_else(|| {
        FieldError::new(
            "",
            format!(
                "a StandardLoggingPayload must be an object (got {})",
                kind(&v)
            ),
        )
    })?;
    let call_id = non_empty(s(o, "litellm_call_id"));
    let response_id = non_empty(s(o, "id"));
    let key = call_id
        .clone()
        .or_else(|| response_id.clone())
        .ok_or_else(|| FieldError::new("litellm_call_id", "required (or id)"))?;
    let empty = Map::new();
    let md = object_or_empty(o, "metadata", &empty)?;
    let provider = non_empty(s(o, "custom_llm_provider"))
        .or_else(|| {
            non_empty(
                o.get("hidden_params")
                    .and_then(|h| h.get("upstream_provider"))
                    .and_then(Value::as_str),
            )
        })
        .ok_or_else(|| FieldError::new("custom_llm_provider", "required"))?;
    let model = non_empty(
        o.get("hidden_params")
            .and_then(|h| h.get("litellm_model_name"))
            .and_then(Value::as_str),
    )
    .or_else(|| non_empty(s(o, "model")))
    .ok_or_else(|| FieldError::new("model", "required"))?;
    let start = time(o.get("startTime"), "startTime")?;
    // A client may choose its call id (LiteLLM takes an `x-litellm-call-id` request header
    // as is), so the id alone is not unique per call; with the call's start time (µs) it is,
    // and a log batch LiteLLM sends again carries both unchanged.
    let id = match start {
        Some(t) => format!("{key}@{}", t.timestamp_micros()),
        None => key,
    };
    let end = time(o.get("endTime"), "endTime")?;
    let first_token = time(o.get("completionStartTime"), "completionStartTime")?;
    let usage: Usage = match usage_object(o) {
        Some((path, u)) => usage::openai_chat(u).map_err(|e| e.under(path))?,
        None => Usage {
            input_tokens: usage::count(&v, "prompt_tokens")?,
            output_tokens: usage::count(&v, "completion_tokens")?,
            ..Default::default()
        },
    };
    let ms = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
        (Some(a), Some(b)) if b >= a => Some((b - a).num_milliseconds()),
        _ => None,
    };
    let tier = o
        .get("cost_breakdown")
        .and_then(|c| c.get("service_tier"))
        .and_then(Value::as_str)
        .and_then(ServiceTier::parse)
        .unwrap_or_default();
    let error_code = o
        .get("error_information")
        .and_then(|e| e.get("error_code"))
        .and_then(Value::as_str)
        .and_then(|c| c.parse::<i32>().ok());
    let status = match s(o, "status") {
        Some("failure") => CallStatus::Error,
        _ => CallStatus::Success,
    };
    let e = UsageEvent {
        event_id: id.clone(),
        occurred_at: start.unwrap_or(ctx.received_at),
        received_at: ctx.received_at,
        source: ctx.source.clone(),
        format: "litellm".into(),
        request_id: response_id.or(call_id),
        api_key_id: non_empty(s(md, "user_api_key_hash")),
        user_id: non_empty(s(md, "user_api_key_user_id")),
        team_id: non_empty(s(md, "user_api_key_team_id")),
        org_id: non_empty(s(md, "user_api_key_org_id")),
        project_id: non_empty(s(md, "user_api_key_project_id")),
        end_user: non_empty(s(md, "user_api_key_end_user_id"))
            .or_else(|| non_empty(s(o, "end_user"))),
        tags: tags(o.get("request_tags"))?,
        agent_id: None,
        workflow_id: None,
        session_id: non_empty(s(o, "session_id")).or_else(|| non_empty(s(o, "trace_id"))),
        provider: provider.to_ascii_lowercase(),
        model,
        operation: operation(s(o, "call_type").unwrap_or("")),
        usage,
        service_tier: tier,
        status,
        http_status: if status == CallStatus::Error {
            error_code
        } else {
            Some(200)
        },
        latency_ms: ms(start, end),
        ttft_ms: ms(start, first_token),
        region: None,
        gateway_reported_cost: response_cost(raw)?,
        cache_hit: matches!(o.get("cache_hit"), Some(Value::Bool(true)))
            || matches!(
                o.get("cache_hit").and_then(Value::as_str),
                Some("True" | "true")
            ),
    };
    seal_event(e)
}
