//! OpenTelemetry GenAI attribute names (current and deprecated) → UsageEvent fields. Shared by
//! the OTLP adapter (span + resource attributes) and the CloudEvents adapter (`data` keys).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meterline_schemas::{CallStatus, Operation, ServiceTier, Usage, UsageEvent};
use serde_json::Value;

use super::usage::{json_count, kind};
use super::{Ctx, FieldError};

/// Looks attributes up by name; values as JSON (OTLP AnyValue converted).
pub trait Attrs {
    fn get(&self, key: &str) -> Option<&Value>;
}

impl Attrs for serde_json::Map<String, Value> {
    fn get(&self, key: &str) -> Option<&Value> {
        serde_json::Map::get(self, key).filter(|v| !v.is_null())
    }
}

/// The first present name among `names`.
fn first<'a>(a: &'a impl Attrs, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
    names.iter().find_map(|n| a.get(n).map(|v| (*n, v)))
}

pub fn string(a: &impl Attrs, names: &[&'static str]) -> Result<Option<String>, FieldError> {
    match first(a, names) {
        None => Ok(None),
        Some((_, Value::String(s))) => Ok(super::non_empty(Some(s))),
        Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
        Some((n, v)) => Err(FieldError::new(
            n,
            format!("must be a string (got {})", kind(v)),
        )),
    }
}

fn tokens(a: &impl Attrs, names: &[&'static str]) -> Result<i64, FieldError> {
    match first(a, names) {
        None => Ok(0),
        // OTLP/JSON encodes int64 as a string.
        Some((n, Value::String(s))) => s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            FieldError::new(n, format!("must be a non-negative integer (got '{s}')"))
        }),
        Some((n, v)) => json_count(v, n),
    }
}

/// Usage from `gen_ai.usage.*` (inputs include cache tokens, outputs include reasoning).
pub fn usage(a: &impl Attrs) -> Result<Usage, FieldError> {
    let input = tokens(
        a,
        &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"],
    )?;
    let read = tokens(
        a,
        &[
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
        ],
    )?;
    let write = tokens(
        a,
        &[
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
        ],
    )?;
    let output = tokens(
        a,
        &[
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
        ],
    )?;
    let reasoning = tokens(
        a,
        &[
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
        ],
    )?;
    let uncached = input
        .checked_sub(read.saturating_add(write))
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            FieldError::new(
                "gen_ai.usage.input_tokens",
                format!(
                    "{input} is smaller than the cache tokens it includes ({})",
                    read + write
                ),
            )
        })?;
    let out = output
        .checked_sub(reasoning)
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            FieldError::new(
                "gen_ai.usage.output_tokens",
                format!("{output} is smaller than the reasoning tokens it includes ({reasoning})"),
            )
        })?;
    Ok(Usage {
        input_tokens: uncached,
        cache_read_tokens: read,
        cache_write_5m_tokens: write,
        output_tokens: out,
        reasoning_tokens: reasoning,
        ..Default::default()
    })
}

/// True when the attributes describe a model call with usage (spans without it are not billed).
pub fn has_usage(a: &impl Attrs) -> bool {
    first(
        a,
        &[
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
        ],
    )
    .is_some()
}

pub fn operation(name: Option<&str>) -> Operation {
    match name.unwrap_or("") {
        "chat" | "generate_content" => Operation::Chat,
        "text_completion" => Operation::Completion,
        "embeddings" => Operation::Embedding,
        other => Operation::parse(other).unwrap_or(Operation::Other),
    }
}

/// The event the attributes describe. Identity and time come from the format (`event_id`,
/// `occurred_at`); gateway cost, latency and HTTP status are left for the caller to set.
/// Field errors name attribute keys.
pub fn event(
    a: &impl Attrs,
    event_id: String,
    occurred_at: DateTime<Utc>,
    ctx: &Ctx,
    format: &str,
) -> Result<UsageEvent, FieldError> {
    let service_tier = match string(
        a,
        &[
            "openai.response.service_tier",
            "gen_ai.openai.response.service_tier",
            "openai.request.service_tier",
            "gen_ai.openai.request.service_tier",
        ],
    )? {
        Some(t) => super::usage::tier(&t, "openai.response.service_tier").unwrap_or_default(),
        None => ServiceTier::Standard,
    };
    let mut tags = BTreeMap::new();
    if let Some(Value::Object(m)) = a.get("meterline.tags").or_else(|| a.get("tags")) {
        for (k, v) in m {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            tags.insert(k.clone(), v);
        }
    }
    let provider = string(a, &["gen_ai.provider.name", "gen_ai.system", "provider"])?
        .ok_or_else(|| FieldError::new("gen_ai.provider.name", "required (or gen_ai.system)"))?;
    let model = string(
        a,
        &["gen_ai.response.model", "gen_ai.request.model", "model"],
    )?
    .ok_or_else(|| {
        FieldError::new(
            "gen_ai.request.model",
            "required (or gen_ai.response.model)",
        )
    })?;
    Ok(UsageEvent {
        event_id,
        occurred_at,
        received_at: ctx.received_at,
        source: ctx.source.clone(),
        format: format.into(),
        request_id: string(a, &["gen_ai.response.id"])?,
        api_key_id: string(a, &["meterline.api_key_id", "api_key_id"])?,
        user_id: string(a, &["meterline.user_id", "user_id", "user.id"])?,
        team_id: string(a, &["meterline.team_id", "team_id"])?,
        org_id: string(a, &["meterline.org_id", "org_id"])?,
        project_id: string(a, &["meterline.project_id", "project_id"])?,
        end_user: string(a, &["meterline.end_user", "end_user", "enduser.id"])?,
        tags,
        agent_id: string(a, &["gen_ai.agent.id"])?,
        workflow_id: string(a, &["meterline.workflow_id", "workflow_id"])?,
        session_id: string(a, &["gen_ai.conversation.id", "session.id"])?,
        provider: provider.to_ascii_lowercase(),
        model,
        operation: operation(string(a, &["gen_ai.operation.name"])?.as_deref()),
        usage: usage(a)?,
        service_tier,
        status: if a.get("error.type").is_some() {
            CallStatus::Error
        } else {
            CallStatus::Success
        },
        http_status: None,
        latency_ms: None,
        ttft_ms: None,
        region: string(a, &["cloud.region", "region"])?,
        gateway_reported_cost: None,
        cache_hit: false,
    })
}
