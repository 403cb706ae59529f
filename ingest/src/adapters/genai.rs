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

/// Everything but identity/time, which each format carries its own way.
pub struct GenAiFields {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub operation: Operation,
    pub usage: Usage,
    pub service_tier: ServiceTier,
    pub status: CallStatus,
    pub response_id: Option<String>,
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    pub workflow_id: Option<String>,
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub end_user: Option<String>,
    pub region: Option<String>,
    pub tags: BTreeMap<String, String>,
}

pub fn fields(a: &impl Attrs) -> Result<GenAiFields, FieldError> {
    let tier = match string(
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
            tags.insert(
                k.clone(),
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    Ok(GenAiFields {
        provider: string(a, &["gen_ai.provider.name", "gen_ai.system", "provider"])?,
        model: string(
            a,
            &["gen_ai.response.model", "gen_ai.request.model", "model"],
        )?,
        operation: operation(string(a, &["gen_ai.operation.name"])?.as_deref()),
        usage: usage(a)?,
        service_tier: tier,
        status: if a.get("error.type").is_some() {
            CallStatus::Error
        } else {
            CallStatus::Success
        },
        response_id: string(a, &["gen_ai.response.id"])?,
        session_id: string(a, &["gen_ai.conversation.id", "session.id"])?,
        agent_id: string(a, &["gen_ai.agent.id"])?,
        workflow_id: string(a, &["meterline.workflow_id", "workflow_id"])?,
        api_key_id: string(a, &["meterline.api_key_id", "api_key_id"])?,
        user_id: string(a, &["meterline.user_id", "user_id", "user.id"])?,
        team_id: string(a, &["meterline.team_id", "team_id"])?,
        org_id: string(a, &["meterline.org_id", "org_id"])?,
        project_id: string(a, &["meterline.project_id", "project_id"])?,
        end_user: string(a, &["meterline.end_user", "end_user", "enduser.id"])?,
        region: string(a, &["cloud.region", "region"])?,
        tags,
    })
}

impl GenAiFields {
    /// The event these attributes describe; the caller sets what its format carries apart
    /// (gateway cost, latency, HTTP status). Field errors name attribute keys.
    pub fn into_event(
        self,
        event_id: String,
        occurred_at: DateTime<Utc>,
        ctx: &Ctx,
        format: &str,
    ) -> Result<UsageEvent, FieldError> {
        Ok(UsageEvent {
            event_id,
            occurred_at,
            received_at: ctx.received_at,
            source: ctx.source.clone(),
            format: format.into(),
            request_id: self.response_id,
            api_key_id: self.api_key_id,
            user_id: self.user_id,
            team_id: self.team_id,
            org_id: self.org_id,
            project_id: self.project_id,
            end_user: self.end_user,
            tags: self.tags,
            agent_id: self.agent_id,
            workflow_id: self.workflow_id,
            session_id: self.session_id,
            provider: self
                .provider
                .ok_or_else(|| {
                    FieldError::new("gen_ai.provider.name", "required (or gen_ai.system)")
                })?
                .to_ascii_lowercase(),
            model: self.model.ok_or_else(|| {
                FieldError::new(
                    "gen_ai.request.model",
                    "required (or gen_ai.response.model)",
                )
            })?,
            operation: self.operation,
            usage: self.usage,
            service_tier: self.service_tier,
            status: self.status,
            http_status: None,
            latency_ms: None,
            ttft_ms: None,
            region: self.region,
            gateway_reported_cost: None,
        })
    }
}
