//! One simulated model call written in each of the edge's four formats, with each format's own
//! field names: native UsageEvent JSON, LiteLLM's StandardLoggingPayload (`generic_api`
//! callback), CloudEvents 1.0 with `gen_ai.*` data (OpenMeter style) and OTLP/HTTP JSON spans
//! with `gen_ai.*` attributes. Each renderer also returns the id the edge keys the event on.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

/// The wire format of a batch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Native,
    Litellm,
    Cloudevents,
    Otlp,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Native,
        Format::Litellm,
        Format::Cloudevents,
        Format::Otlp,
    ];

    /// The name the edge writes in the event's `format` field.
    pub fn label(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Litellm => "litellm",
            Format::Cloudevents => "cloudevents",
            Format::Otlp => "otlp",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Format::Native => "/v1/events",
            Format::Litellm => "/v1/events/litellm",
            Format::Cloudevents => "/v1/events/cloudevents",
            Format::Otlp => "/v1/traces",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Cloudevents => "application/cloudevents-batch+json",
            _ => "application/json",
        }
    }
}

/// One model call as a gateway saw it; `input_tokens` includes `cached_tokens`,
/// `output_tokens` includes `reasoning_tokens` (the OpenAI / OTel convention).
#[derive(Clone, Debug)]
pub struct Call {
    /// Unique within the run; the formats derive their ids from it.
    pub seq: u64,
    pub run: String,
    pub uuid: uuid::Uuid,
    pub started: DateTime<Utc>,
    pub org: &'static str,
    pub team: &'static str,
    pub key_hash: String,
    pub key_alias: String,
    pub user: String,
    pub provider: &'static str,
    pub model: &'static str,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub stream: bool,
    /// Answered from the gateway's own response cache (billed at zero).
    pub gateway_cache_hit: bool,
    pub ttft_ms: u64,
    pub latency_ms: u64,
    /// What the gateway says the call cost (USD), exact at 9 decimals.
    pub cost: rust_decimal::Decimal,
    pub environment: &'static str,
}

impl Call {
    fn ended(&self) -> DateTime<Utc> {
        self.started + chrono::Duration::milliseconds(self.latency_ms as i64)
    }

    fn response_id(&self) -> String {
        match self.provider {
            "anthropic" => format!("msg_{}", self.uuid.simple()),
            _ => format!("chatcmpl-{}", self.uuid.simple()),
        }
    }

    /// Epoch seconds with µs precision, as LiteLLM writes its times.
    fn epoch(t: DateTime<Utc>) -> f64 {
        t.timestamp_micros() as f64 / 1e6
    }
}

/// The body of one request holding `calls` in `format`, and the ids the edge keys them on.
pub fn render(format: Format, calls: &[Call]) -> (Vec<u8>, Vec<String>) {
    match format {
        Format::Otlp => {
            let (body, ids) = otlp(calls);
            (body.to_string().into_bytes(), ids)
        }
        _ => {
            let (items, ids): (Vec<Value>, Vec<String>) = calls
                .iter()
                .map(|c| match format {
                    Format::Native => native(c),
                    Format::Litellm => litellm(c),
                    Format::Cloudevents => cloudevent(c),
                    Format::Otlp => unreachable!(),
                })
                .unzip();
            (Value::Array(items).to_string().into_bytes(), ids)
        }
    }
}

/// Native UsageEvent JSON: disjoint buckets for OpenAI and Gemini, the provider's own usage
/// object for Anthropic (a stream's `message_start` / `message_delta` events when streamed).
pub fn native(c: &Call) -> (Value, String) {
    let id = format!("lg-{}-{}", c.run, c.seq);
    let mut v = json!({
        "event_id": id,
        "occurred_at": c.started.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "request_id": c.response_id(),
        "api_key_id": c.key_hash,
        "user_id": c.user,
        "team_id": c.team,
        "org_id": c.org,
        "tags": {"env": c.environment, "key_alias": c.key_alias, "stream": c.stream.to_string()},
        "provider": c.provider,
        "model": c.model,
        "operation": "chat",
        "status": "success",
        "http_status": 200,
        "latency_ms": c.latency_ms,
        "gateway_reported_cost": c.cost.to_string(),
        "cache_hit": c.gateway_cache_hit,
    });
    if c.stream {
        v["ttft_ms"] = json!(c.ttft_ms);
    }
    if c.provider == "anthropic" {
        let start = json!({"input_tokens": c.input_tokens - c.cached_tokens,
            "cache_read_input_tokens": c.cached_tokens, "cache_creation_input_tokens": 0,
            "output_tokens": 1});
        if c.stream {
            v["provider_usage_stream"] = json!([
                {"type": "message_start", "message": {"id": c.response_id(), "type": "message",
                    "role": "assistant", "model": c.model, "usage": start}},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": c.output_tokens}},
            ]);
        } else {
            let mut u = start;
            u["output_tokens"] = json!(c.output_tokens);
            v["provider_usage"] = u;
        }
    } else {
        v["usage"] = json!({
            "input_tokens": c.input_tokens - c.cached_tokens,
            "cache_read_tokens": c.cached_tokens,
            "output_tokens": c.output_tokens - c.reasoning_tokens,
            "reasoning_tokens": c.reasoning_tokens,
        });
    }
    (v, id)
}

/// LiteLLM's StandardLoggingPayload (no messages: as with `turn_off_message_logging`).
pub fn litellm(c: &Call) -> (Value, String) {
    let call_id = c.uuid.hyphenated().to_string();
    let start = Call::epoch(c.started);
    let id = format!("{call_id}@{}", (start * 1e6).round() as i64);
    let mut usage = json!({
        "prompt_tokens": c.input_tokens,
        "completion_tokens": c.output_tokens,
        "total_tokens": c.input_tokens + c.output_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens, "audio_tokens": null},
        "completion_tokens_details": {"reasoning_tokens": c.reasoning_tokens, "audio_tokens": null},
    });
    if c.provider == "anthropic" {
        usage["cache_read_input_tokens"] = json!(c.cached_tokens);
        usage["cache_creation_input_tokens"] = json!(0);
    }
    // LiteLLM sends a JSON number: written from the Decimal's text, never through a float
    let response_cost = serde_json::value::RawValue::from_string(if c.gateway_cache_hit {
        "0.0".to_string()
    } else {
        c.cost.to_string()
    })
    .expect("a decimal is a JSON number");
    let v = json!({
        "id": c.response_id(),
        "trace_id": format!("{}", uuid::Uuid::from_u128(c.uuid.as_u128().rotate_left(64)).hyphenated()),
        "litellm_call_id": call_id,
        "call_type": "acompletion",
        "stream": c.stream,
        "cache_hit": c.gateway_cache_hit,
        "cache_key": if c.gateway_cache_hit { json!(format!("{:x}", c.uuid.as_u128())) } else { Value::Null },
        "saved_cache_cost": 0.0,
        "status": "success",
        "custom_llm_provider": c.provider,
        "model": c.model,
        "model_group": c.model,
        "model_id": format!("{}-{}", c.provider, c.model),
        "api_base": match c.provider {
            "openai" => "https://api.openai.com/v1",
            "anthropic" => "https://api.anthropic.com/v1/messages",
            _ => "https://generativelanguage.googleapis.com/v1beta",
        },
        "startTime": start,
        "endTime": Call::epoch(c.ended()),
        "completionStartTime": Call::epoch(if c.stream {
            c.started + chrono::Duration::milliseconds(c.ttft_ms as i64)
        } else {
            c.ended()
        }),
        "response_time": c.latency_ms as f64 / 1000.0,
        "response_cost": response_cost,
        "prompt_tokens": c.input_tokens,
        "completion_tokens": c.output_tokens,
        "total_tokens": c.input_tokens + c.output_tokens,
        "end_user": c.user,
        "request_tags": [format!("env:{}", c.environment), format!("team:{}", c.team)],
        "metadata": {
            "user_api_key_hash": c.key_hash,
            "user_api_key_alias": c.key_alias,
            "user_api_key_team_id": c.team,
            "user_api_key_team_alias": c.team,
            "user_api_key_org_id": c.org,
            "user_api_key_user_id": c.user,
            "user_api_key_end_user_id": null,
            "requester_ip_address": "",
            "spend_logs_metadata": null,
        },
        "model_parameters": {"stream": c.stream, "max_tokens": 4096},
        "hidden_params": {"model_id": format!("{}-{}", c.provider, c.model), "cache_key": null,
            "api_base": null, "response_cost": response_cost, "additional_headers": {}},
        "messages": [],
        "response": {
            "id": c.response_id(),
            "object": "chat.completion",
            "created": c.ended().timestamp(),
            "model": c.model,
            "choices": [],
            "usage": usage,
        },
        "error_str": null,
        "error_information": {"error_code": "", "error_class": "", "llm_provider": "", "traceback": "", "error_message": ""},
    });
    (v, id)
}

fn genai_attrs(c: &Call) -> Vec<(&'static str, Value)> {
    let mut a = vec![
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!(c.provider)),
        ("gen_ai.request.model", json!(c.model)),
        ("gen_ai.response.model", json!(c.model)),
        ("gen_ai.response.id", json!(c.response_id())),
        ("gen_ai.usage.input_tokens", json!(c.input_tokens)),
        (
            "gen_ai.usage.cache_read.input_tokens",
            json!(c.cached_tokens),
        ),
        ("gen_ai.usage.output_tokens", json!(c.output_tokens)),
        ("meterline.api_key_id", json!(c.key_hash)),
        ("meterline.team_id", json!(c.team)),
        ("meterline.org_id", json!(c.org)),
        ("meterline.user_id", json!(c.user)),
    ];
    if c.reasoning_tokens > 0 {
        a.push((
            "gen_ai.usage.reasoning.output_tokens",
            json!(c.reasoning_tokens),
        ));
    }
    a
}

/// CloudEvents 1.0 (batch mode item), OpenMeter style: `subject` = API key, `data` with
/// `gen_ai.*` names.
pub fn cloudevent(c: &Call) -> (Value, String) {
    let source = format!("loadgen/{}", c.run);
    let ce_id = format!("{}", c.uuid.simple());
    let mut data: serde_json::Map<String, Value> = genai_attrs(c)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    data.insert(
        "meterline.gateway_reported_cost".into(),
        json!(c.cost.to_string()),
    );
    let v = json!({
        "specversion": "1.0",
        "type": "gen_ai.usage",
        "id": ce_id,
        "source": source,
        "time": c.started.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "subject": c.key_hash,
        "datacontenttype": "application/json",
        "data": data,
    });
    (v, format!("{source}/{ce_id}"))
}

/// One OTLP/HTTP JSON export request: one resource (the gateway), one scope, a client span
/// per call.
pub fn otlp(calls: &[Call]) -> (Value, Vec<String>) {
    let mut ids = Vec::with_capacity(calls.len());
    let spans: Vec<Value> = calls
        .iter()
        .map(|c| {
            let bits = c.uuid.as_u128();
            let trace = format!("{bits:032x}");
            let span = format!("{:016x}", (bits as u64) ^ (bits >> 64) as u64 | 1);
            ids.push(format!("{trace}/{span}"));
            let nanos = |t: DateTime<Utc>| {
                t.timestamp_nanos_opt()
                    .unwrap_or_else(|| Utc.timestamp_nanos(0).timestamp_nanos_opt().unwrap())
                    .to_string()
            };
            let mut attrs: Vec<Value> = genai_attrs(c)
                .into_iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Number(n) => json!({"intValue": n.to_string()}),
                        Value::String(s) => json!({"stringValue": s}),
                        other => json!({"stringValue": other.to_string()}),
                    };
                    json!({"key": k, "value": value})
                })
                .collect();
            attrs.push(json!({"key": "http.response.status_code", "value": {"intValue": "200"}}));
            json!({
                "traceId": trace,
                "spanId": span,
                "name": format!("chat {}", c.model),
                "kind": 3,
                "startTimeUnixNano": nanos(c.started),
                "endTimeUnixNano": nanos(c.ended()),
                "attributes": attrs,
                "status": {"code": 1},
            })
        })
        .collect();
    let v = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "llm-gateway"}},
            {"key": "deployment.environment.name", "value": {"stringValue": "prod"}},
        ]},
        "scopeSpans": [{"scope": {"name": "meterline-loadgen", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]});
    (v, ids)
}
