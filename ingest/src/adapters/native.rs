//! Native JSON (`POST /v1/events`): the UsageEvent contract as JSON. `usage` holds the
//! disjoint buckets directly; alternatively `provider_usage` carries a provider's usage object
//! verbatim (OpenAI chat/responses, Anthropic) or `provider_usage_stream` an Anthropic
//! stream's usage snapshots in order, and the edge normalises them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meterline_schemas::{CallStatus, Money, Operation, ServiceTier, Usage, UsageEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{non_empty, owned, seal_event, usage, Ctx, FieldError};

/// Disjoint usage buckets as sent by a native client.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NativeUsage {
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub audio_input_tokens: u64,
    pub audio_output_tokens: u64,
    pub images: u64,
    /// Decimal seconds, as a string or number (read from its text, exactly).
    #[schema(value_type = Option<String>)]
    pub seconds: Option<Box<RawValue>>,
    pub characters: u64,
    pub requests: u64,
}

/// One usage event in meterline's native JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeEvent {
    /// Idempotency key. Defaults to `request_id` when absent.
    pub event_id: Option<String>,
    /// RFC 3339 time of the call.
    #[serde(deserialize_with = "meterline_schemas::time::deserialize")]
    pub occurred_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub end_user: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub agent_id: Option<String>,
    pub workflow_id: Option<String>,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub operation: Option<String>,
    pub usage: Option<NativeUsage>,
    /// A provider's usage object, verbatim.
    #[schema(value_type = Option<Object>)]
    pub provider_usage: Option<Value>,
    /// An Anthropic stream's usage snapshots (message_start then message_delta), verbatim.
    #[schema(value_type = Option<Vec<Object>>)]
    pub provider_usage_stream: Option<Vec<Value>>,
    pub service_tier: Option<String>,
    /// `success` or `error`.
    pub status: Option<String>,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub region: Option<String>,
    /// Decimal string or number (USD), read from its text (never through a float).
    #[schema(value_type = Option<String>)]
    pub gateway_reported_cost: Option<Box<RawValue>>,
    /// The gateway answered from its own response cache (no provider call): billed at zero,
    /// usage kept.
    #[serde(default)]
    pub cache_hit: bool,
}

fn to_i64(v: u64, field: &str) -> Result<i64, FieldError> {
    i64::try_from(v)
        .map_err(|_| FieldError::new(field, format!("overflows a 64-bit signed count (got {v})")))
}

fn native_usage(u: NativeUsage) -> Result<Usage, FieldError> {
    Ok(Usage {
        input_tokens: to_i64(u.input_tokens, "usage.input_tokens")?,
        cache_read_tokens: to_i64(u.cache_read_tokens, "usage.cache_read_tokens")?,
        cache_write_5m_tokens: to_i64(u.cache_write_5m_tokens, "usage.cache_write_5m_tokens")?,
        cache_write_1h_tokens: to_i64(u.cache_write_1h_tokens, "usage.cache_write_1h_tokens")?,
        output_tokens: to_i64(u.output_tokens, "usage.output_tokens")?,
        reasoning_tokens: to_i64(u.reasoning_tokens, "usage.reasoning_tokens")?,
        audio_input_tokens: to_i64(u.audio_input_tokens, "usage.audio_input_tokens")?,
        audio_output_tokens: to_i64(u.audio_output_tokens, "usage.audio_output_tokens")?,
        images: to_i64(u.images, "usage.images")?,
        seconds: match &u.seconds {
            Some(s) => usage::decimal_raw(s, "usage.seconds")?,
            None => None,
        },
        characters: to_i64(u.characters, "usage.characters")?,
        requests: to_i64(u.requests, "usage.requests")?,
    })
}

/// Decodes one native item.
pub fn decode(raw: &RawValue, ctx: &Ctx) -> Result<UsageEvent, FieldError> {
    // Fast path without path tracking; only a failing item is decoded again to name the field.
    let n: NativeEvent = match serde_json::from_str(raw.get()) {
        Ok(n) => n,
        Err(_) => {
            let de = &mut serde_json::Deserializer::from_str(raw.get());
            let e = serde_path_to_error::deserialize::<_, NativeEvent>(de)
                .expect_err("failed once, fails again");
            let path = e.path().to_string();
            return Err(FieldError::new(
                if path == "." { "" } else { &path },
                e.inner().to_string(),
            ));
        }
    };
    let usage = match (n.usage, n.provider_usage, n.provider_usage_stream) {
        (Some(u), None, None) => native_usage(u)?,
        (None, Some(p), None) => usage::normalize(&n.provider, &p, "provider_usage")?,
        (None, None, Some(s)) => usage::anthropic_stream(&s, "provider_usage_stream")?,
        (None, None, None) => {
            return Err(FieldError::new(
                "usage",
                "required (or provider_usage / provider_usage_stream)",
            ))
        }
        _ => {
            return Err(FieldError::new(
                "usage",
                "give exactly one of usage, provider_usage, provider_usage_stream",
            ))
        }
    };
    let operation = match n.operation.as_deref() {
        None => Operation::Other,
        Some(o) => Operation::parse(o).ok_or_else(|| {
            FieldError::new("operation", format!("unknown operation '{o}' (chat, completion, embedding, image, audio, realtime, rerank, moderation, other)"))
        })?,
    };
    let service_tier = n
        .service_tier
        .as_deref()
        .map(|t| usage::tier(t, "service_tier"))
        .transpose()?
        .unwrap_or(ServiceTier::Standard);
    let status = match n.status.as_deref() {
        None | Some("success") => CallStatus::Success,
        Some("error") | Some("failure") => CallStatus::Error,
        Some(s) => {
            return Err(FieldError::new(
                "status",
                format!("unknown status '{s}' (success, error)"),
            ))
        }
    };
    let gateway_reported_cost: Option<Money> = match &n.gateway_reported_cost {
        Some(c) => usage::decimal_raw(c, "gateway_reported_cost")?,
        None => None,
    };
    let request_id = owned(n.request_id);
    let event_id = non_empty(n.event_id.as_deref())
        .or_else(|| request_id.clone())
        .ok_or_else(|| {
            FieldError::new(
                "event_id",
                "required (or request_id, from which it is derived)",
            )
        })?;
    let e = UsageEvent {
        event_id,
        occurred_at: n.occurred_at,
        received_at: ctx.received_at,
        source: ctx.source.clone(),
        format: "native".into(),
        request_id,
        api_key_id: owned(n.api_key_id),
        user_id: owned(n.user_id),
        team_id: owned(n.team_id),
        org_id: owned(n.org_id),
        project_id: owned(n.project_id),
        end_user: owned(n.end_user),
        tags: n.tags,
        agent_id: owned(n.agent_id),
        workflow_id: owned(n.workflow_id),
        session_id: owned(n.session_id),
        provider: if n
            .provider
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
        {
            n.provider.trim().to_ascii_lowercase()
        } else {
            n.provider
        },
        model: if n.model.trim().len() == n.model.len() {
            n.model
        } else {
            n.model.trim().to_string()
        },
        operation,
        usage,
        service_tier,
        status,
        http_status: n.http_status.map(i32::from),
        latency_ms: n.latency_ms.map(|v| to_i64(v, "latency_ms")).transpose()?,
        ttft_ms: n.ttft_ms.map(|v| to_i64(v, "ttft_ms")).transpose()?,
        region: owned(n.region),
        gateway_reported_cost,
        cache_hit: n.cache_hit,
    };
    seal_event(e)
}
