//! Provider usage objects → meterline's disjoint usage buckets. Each provider's convention is
//! undone here, once:
//! - OpenAI (chat/completions): `prompt_tokens` INCLUDES `cached_tokens` (and audio);
//!   `completion_tokens` INCLUDES `reasoning_tokens` (and audio).
//! - OpenAI Responses API: `input_tokens` includes `input_tokens_details.cached_tokens`,
//!   `output_tokens` includes `output_tokens_details.reasoning_tokens`.
//! - Anthropic: `input_tokens` EXCLUDES cache reads and writes, which come apart
//!   (`cache_read_input_tokens`, `cache_creation_input_tokens` with a 5m/1h split);
//!   `output_tokens` includes thinking tokens. A stream's `message_delta` usage is cumulative:
//!   the last value wins, it is never summed.
//! - OpenTelemetry GenAI: `gen_ai.usage.input_tokens` includes cache read/creation tokens.

use meterline_schemas::{Money, ServiceTier, Usage};
use serde_json::value::RawValue;
use serde_json::Value;

use super::FieldError;

/// A non-negative integer count at `path` (missing or null = 0).
pub fn count(v: &Value, path: &str) -> Result<i64, FieldError> {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(x) => cur = x,
            None => return Ok(0),
        }
    }
    json_count(cur, path)
}

pub fn json_count(v: &Value, path: &str) -> Result<i64, FieldError> {
    match v {
        Value::Null => Ok(0),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i < 0 {
                    Err(FieldError::new(
                        path,
                        format!("must not be negative (got {i})"),
                    ))
                } else {
                    Ok(i)
                }
            } else if n.as_u64().is_some() {
                Err(FieldError::new(
                    path,
                    format!("overflows a 64-bit signed count (got {n})"),
                ))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f >= 0.0 && f < 9.2e18 => Ok(f as i64),
                    _ => Err(FieldError::new(
                        path,
                        format!("must be a non-negative integer (got {n})"),
                    )),
                }
            }
        }
        other => Err(FieldError::new(
            path,
            format!("must be a non-negative integer (got {})", kind(other)),
        )),
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Sum of counts; saturates so that absurd inputs fail the `minus` check instead of wrapping.
fn sum(parts: &[i64]) -> i64 {
    parts.iter().fold(0i64, |a, b| a.saturating_add(*b))
}

/// `a - b`, or an error naming both fields when the details exceed their total.
fn minus(total: i64, total_path: &str, parts: i64, what: &str) -> Result<i64, FieldError> {
    total.checked_sub(parts).filter(|r| *r >= 0).ok_or_else(|| {
        FieldError::new(
            total_path,
            format!("{total} is smaller than the {what} it includes ({parts})"),
        )
    })
}

/// Which provider convention a usage object follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageShape {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
}

/// Picks the convention from the object's keys (and the provider name where keys are shared).
/// `None` when the object has none of the keys of any convention: an object meterline does not
/// understand is refused, never read as zero tokens.
pub fn detect(provider: &str, v: &Value) -> Option<UsageShape> {
    let has = |k: &str| v.get(k).is_some();
    if has("prompt_tokens") || has("completion_tokens") {
        Some(UsageShape::OpenAiChat)
    } else if has("cache_creation_input_tokens")
        || has("cache_read_input_tokens")
        || has("cache_creation")
        || (provider.eq_ignore_ascii_case("anthropic")
            && (has("input_tokens") || has("output_tokens")))
    {
        Some(UsageShape::Anthropic)
    } else if has("input_tokens") || has("output_tokens") {
        Some(UsageShape::OpenAiResponses)
    } else {
        None
    }
}

/// Normalises one provider usage object; `base` is the field path for error messages.
pub fn normalize(provider: &str, v: &Value, base: &str) -> Result<Usage, FieldError> {
    let Some(obj) = v.as_object() else {
        return Err(FieldError::new(
            base,
            format!("must be an object (got {})", kind(v)),
        ));
    };
    // OpenAI audio transcriptions bill by duration (whisper-1) or by tokens (gpt-4o-transcribe).
    let r = match v.get("type").and_then(Value::as_str) {
        Some("duration") => seconds(v, "seconds").map(|s| Usage {
            seconds: Some(s),
            ..Default::default()
        }),
        Some("tokens") => openai_transcription_tokens(v),
        _ => match detect(provider, v) {
            Some(UsageShape::OpenAiChat) => openai_chat(v),
            Some(UsageShape::OpenAiResponses) => openai_responses(v),
            Some(UsageShape::Anthropic) => anthropic(v),
            None => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
                return Err(FieldError::new(
                    base,
                    format!(
                        "not a usage object meterline understands (keys: [{}]): expected OpenAI chat (prompt_tokens, completion_tokens), OpenAI responses (input_tokens, output_tokens), Anthropic (input_tokens, output_tokens, cache_*_input_tokens) or a transcription's {{\"type\": \"duration\", \"seconds\": …}}",
                        keys.join(", ")
                    ),
                ));
            }
        },
    };
    r.map_err(|e| e.under(base))
}

/// OpenAI transcription usage billed by tokens: `{"type": "tokens", "input_tokens",
/// "input_token_details": {"audio_tokens", "text_tokens"}, "output_tokens"}`.
fn openai_transcription_tokens(v: &Value) -> Result<Usage, FieldError> {
    let input = count(v, "input_tokens")?;
    let audio = count(v, "input_token_details.audio_tokens")?;
    Ok(Usage {
        input_tokens: minus(input, "input_tokens", audio, "audio tokens")?,
        audio_input_tokens: audio,
        output_tokens: count(v, "output_tokens")?,
        ..Default::default()
    })
}

/// OpenAI Chat Completions usage (also LiteLLM's Usage, which adds Anthropic-style cache fields).
pub fn openai_chat(v: &Value) -> Result<Usage, FieldError> {
    if v.get("type").and_then(Value::as_str) == Some("duration") {
        return Ok(Usage {
            seconds: Some(seconds(v, "seconds")?),
            requests: 0,
            ..Default::default()
        });
    }
    let prompt = count(v, "prompt_tokens")?;
    let completion = count(v, "completion_tokens")?;
    let cached =
        count(v, "prompt_tokens_details.cached_tokens")?.max(count(v, "cache_read_input_tokens")?);
    let audio_in = count(v, "prompt_tokens_details.audio_tokens")?;
    // cache writes: OpenAI's `cache_write_tokens`, LiteLLM's `cache_creation_tokens` or the
    // Anthropic-style top-level field LiteLLM passes through.
    let reported_writes = count(v, "prompt_tokens_details.cache_write_tokens")?
        .max(count(v, "prompt_tokens_details.cache_creation_tokens")?)
        .max(count(v, "cache_creation_input_tokens")?);
    let (w5, w1) = split_writes(v, reported_writes)?;
    let write_total = sum(&[w5, w1]);
    let reasoning = count(v, "completion_tokens_details.reasoning_tokens")?;
    let audio_out = count(v, "completion_tokens_details.audio_tokens")?;
    Ok(Usage {
        input_tokens: minus(
            prompt,
            "prompt_tokens",
            sum(&[cached, write_total, audio_in]),
            "cached, cache-write and audio tokens",
        )?,
        cache_read_tokens: cached,
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1,
        output_tokens: minus(
            completion,
            "completion_tokens",
            sum(&[reasoning, audio_out]),
            "reasoning and audio tokens",
        )?,
        reasoning_tokens: reasoning,
        audio_input_tokens: audio_in,
        audio_output_tokens: audio_out,
        ..Default::default()
    })
}

/// OpenAI Responses API usage.
pub fn openai_responses(v: &Value) -> Result<Usage, FieldError> {
    let input = count(v, "input_tokens")?;
    let output = count(v, "output_tokens")?;
    let cached = count(v, "input_tokens_details.cached_tokens")?;
    let writes = count(v, "input_tokens_details.cache_write_tokens")?;
    let reasoning = count(v, "output_tokens_details.reasoning_tokens")?;
    Ok(Usage {
        input_tokens: minus(
            input,
            "input_tokens",
            sum(&[cached, writes]),
            "cached and cache-write tokens",
        )?,
        cache_read_tokens: cached,
        cache_write_5m_tokens: writes,
        output_tokens: minus(output, "output_tokens", reasoning, "reasoning tokens")?,
        reasoning_tokens: reasoning,
        ..Default::default()
    })
}

/// Anthropic Messages usage.
pub fn anthropic(v: &Value) -> Result<Usage, FieldError> {
    let writes = count(v, "cache_creation_input_tokens")?;
    let (w5, w1) = split_writes(v, writes)?;
    let output = count(v, "output_tokens")?;
    let thinking = count(v, "output_tokens_details.thinking_tokens")?;
    Ok(Usage {
        input_tokens: count(v, "input_tokens")?,
        cache_read_tokens: count(v, "cache_read_input_tokens")?,
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1,
        output_tokens: minus(output, "output_tokens", thinking, "thinking tokens")?,
        reasoning_tokens: thinking,
        requests: count(v, "server_tool_use.web_search_requests")?,
        ..Default::default()
    })
}

/// An Anthropic stream's usage, given as its usage snapshots (message_start's
/// `message.usage`, then each message_delta's `usage`) or as the stream's events themselves
/// (`{"type": "message_start", "message": {...}}`, `{"type": "message_delta", "usage": {...}}`;
/// other event types carry no usage and are skipped). Counts are cumulative: each later
/// snapshot replaces the fields it carries; they are never summed.
pub fn anthropic_stream(snapshots: &[Value], base: &str) -> Result<Usage, FieldError> {
    let mut merged = serde_json::Map::new();
    for (i, s) in snapshots.iter().enumerate() {
        let at = || format!("{base}[{i}]");
        let obj = s.as_object().ok_or_else(|| {
            FieldError::new(&at(), format!("must be an object (got {})", kind(s)))
        })?;
        let usage = match obj.get("type").and_then(Value::as_str) {
            None => Some(s),
            Some("message_start") => s.get("message").and_then(|m| m.get("usage")),
            Some("message_delta") => s.get("usage"),
            Some(_) => None, // ping, content_block_*, message_stop: no usage
        };
        let Some(usage) = usage else { continue };
        let usage = usage.as_object().ok_or_else(|| {
            FieldError::new(
                &at(),
                format!("usage must be an object (got {})", kind(usage)),
            )
        })?;
        for (k, v) in usage {
            if !v.is_null() {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    if ![
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ]
    .iter()
    .any(|k| merged.contains_key(*k))
    {
        return Err(FieldError::new(
            base,
            "no usage in the stream: expected message_start / message_delta usage (input_tokens, output_tokens, …)",
        ));
    }
    anthropic(&Value::Object(merged)).map_err(|e| e.under(base))
}

/// Splits cache writes into 5m/1h using `cache_creation{ephemeral_5m_input_tokens,
/// ephemeral_1h_input_tokens}` (Anthropic) or `cache_creation_token_details` (LiteLLM);
/// without a split, every write is a 5 minute write. The parts always add up to the total
/// (the reported total, or the split's sum when no total was reported).
fn split_writes(v: &Value, total: i64) -> Result<(i64, i64), FieldError> {
    for obj in [
        "cache_creation",
        "cache_creation_token_details",
        "prompt_tokens_details.cache_creation_token_details",
    ] {
        let five = count(v, &format!("{obj}.ephemeral_5m_input_tokens"))?;
        let hour = count(v, &format!("{obj}.ephemeral_1h_input_tokens"))?;
        let split = sum(&[five, hour]);
        if split > 0 {
            let total = total.max(split);
            let w1 = hour.min(total);
            return Ok((total - w1, w1));
        }
    }
    Ok((total, 0))
}

/// An exact decimal quantity (seconds) from a JSON number or string.
pub fn seconds(v: &Value, path: &str) -> Result<Money, FieldError> {
    let x = v.get(path).unwrap_or(&Value::Null);
    decimal(x, path)
}

/// A decimal from a parsed JSON value. A JSON number has been through f64 here: use it only
/// for quantities (seconds), never for money — money comes from the text ([`decimal_raw`]).
pub fn decimal(x: &Value, path: &str) -> Result<Money, FieldError> {
    let text = match x {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            return Err(FieldError::new(
                path,
                format!("must be a decimal number (got {})", kind(other)),
            ))
        }
    };
    decimal_text(&text, path)
}

/// A decimal from the item's own JSON text (a number or a string holding one), exactly as
/// written: `0.029538000000000002` stays that, where f64 would make it `0.029538`. `null` →
/// `None`.
pub fn decimal_raw(raw: &RawValue, path: &str) -> Result<Option<Money>, FieldError> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| FieldError::new(path, format!("not a JSON string: {e}")))?;
        return decimal_text(&s, path).map(Some);
    }
    if text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        return decimal_text(text, path).map(Some);
    }
    Err(FieldError::new(
        path,
        format!(
            "must be a decimal number (got {})",
            match text.as_bytes().first() {
                Some(b'{') => "object",
                Some(b'[') => "array",
                Some(b't') | Some(b'f') => "boolean",
                _ => "something else",
            }
        ),
    ))
}

/// Parses decimal text (plain or scientific), non-negative, within Decimal(38, 18); more than
/// 18 decimals (gateways' float noise such as `0.00022500000000000002`) are rounded half-even.
pub fn decimal_text(text: &str, path: &str) -> Result<Money, FieldError> {
    let m = text
        .parse::<rust_decimal::Decimal>()
        .or_else(|_| rust_decimal::Decimal::from_scientific(text))
        .map_err(|_| {
            FieldError::new(
                path,
                format!("'{text}' is not a decimal number (or is beyond 28 significant digits)"),
            )
        })?;
    if m.is_sign_negative() && !m.is_zero() {
        return Err(FieldError::new(path, "must not be negative"));
    }
    Money::rounded(m).map_err(|_| {
        FieldError::new(
            path,
            format!("'{text}' is out of range (at most 10^20, 18 decimals)"),
        )
    })
}

pub fn tier(s: &str, path: &str) -> Result<ServiceTier, FieldError> {
    ServiceTier::parse(s).ok_or_else(|| {
        FieldError::new(
            path,
            format!("unknown service tier '{s}' (standard, batch, priority, flex)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_cached_and_reasoning_are_taken_out_of_their_totals() {
        let u = normalize(
            "openai",
            &json!({"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                     "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 0}}),
            "usage",
        )
        .unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.output_tokens,
                u.reasoning_tokens
            ),
            (93, 1024, 36, 10)
        );
        assert_eq!(u.total_input_tokens(), Some(1117));
    }

    #[test]
    fn anthropic_cache_fields_are_apart_and_split_by_ttl() {
        let u = normalize(
            "anthropic",
            &json!({"input_tokens": 13, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50,
                     "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 40},
                     "output_tokens": 5}),
            "usage",
        )
        .unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_5m_tokens,
                u.cache_write_1h_tokens
            ),
            (13, 50, 60, 40)
        );
        assert_eq!(u.total_input_tokens(), Some(163));
    }

    #[test]
    fn anthropic_stream_takes_the_last_cumulative_value() {
        let u = anthropic_stream(
            &[
                json!({"input_tokens": 13, "cache_read_input_tokens": 7, "output_tokens": 2}),
                json!({"output_tokens": 3}),
                json!({"input_tokens": 13, "output_tokens": 5}),
            ],
            "usage",
        )
        .unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.output_tokens),
            (13, 7, 5)
        );
    }

    #[test]
    fn responses_api_shape() {
        let u = normalize(
            "openai",
            &json!({"input_tokens": 75, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 1035,
                     "output_tokens_details": {"reasoning_tokens": 832}, "total_tokens": 1110}),
            "usage",
        )
        .unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.reasoning_tokens),
            (75, 203, 832)
        );
    }

    #[test]
    fn bad_counts_name_the_field() {
        let e = normalize("openai", &json!({"prompt_tokens": -1}), "usage").unwrap_err();
        assert_eq!(e.field, "usage.prompt_tokens");
        let e = normalize("openai", &json!({"prompt_tokens": "12"}), "usage").unwrap_err();
        assert!(e.reason.contains("string"), "{}", e.reason);
        let e = normalize(
            "openai",
            &json!({"prompt_tokens": 18446744073709551615u64}),
            "usage",
        )
        .unwrap_err();
        assert!(e.reason.contains("overflows"));
        let e = normalize(
            "openai",
            &json!({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}),
            "usage",
        )
        .unwrap_err();
        assert_eq!(e.field, "usage.prompt_tokens");
    }

    #[test]
    fn cache_write_split_always_adds_up_and_sums_never_wrap() {
        let u = normalize("openai", &json!({"prompt_tokens": 1000, "prompt_tokens_details": {"cache_creation_token_details": {"ephemeral_5m_input_tokens": 200}}}), "usage").unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_write_5m_tokens,
                u.cache_write_1h_tokens
            ),
            (800, 200, 0)
        );
        assert_eq!(u.total_input_tokens(), Some(1000));
        let big = 1i64 << 62;
        let e = normalize("openai", &json!({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": big, "audio_tokens": big, "cache_write_tokens": big}}), "usage").unwrap_err();
        assert_eq!(e.field, "usage.prompt_tokens");
    }

    #[test]
    fn float_costs_keep_their_printed_value() {
        assert_eq!(
            decimal(&json!(0.00022500000000000002), "c")
                .unwrap()
                .to_string(),
            "0.000225"
        );
        assert_eq!(
            decimal(&json!("2.5e-06"), "c").unwrap().to_string(),
            "0.0000025"
        );
    }
}
