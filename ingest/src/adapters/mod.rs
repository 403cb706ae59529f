//! Input formats → `UsageEvent`. Each adapter is a pure function from one decoded item to an
//! event or a precise [`FieldError`]; the HTTP layer adds the item index.

pub mod cloudevents;
pub mod genai;
pub mod litellm;
pub mod native;
pub mod otlp;
pub mod usage;

use chrono::{DateTime, Utc};
use meterline_schemas::UsageEvent;
use serde::Serialize;
use serde_json::value::RawValue;

/// Longest accepted identifier (event ids, keys, model names).
pub const MAX_ID_LEN: usize = 512;
/// Most tags on one event, and longest tag key or value.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 256;
/// Largest plausible count of one quantity in one call (a trillion): bounds every later sum.
pub const MAX_COUNT: i64 = 1_000_000_000_000;

/// What is wrong with one field of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the offending field inside the item (`usage.input_tokens`), or `""` for the item.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Prefixes the path with `base` (`usage` + `prompt_tokens` → `usage.prompt_tokens`).
    pub fn under(mut self, base: &str) -> Self {
        if !base.is_empty() {
            self.field = if self.field.is_empty() {
                base.to_string()
            } else {
                format!("{base}.{}", self.field)
            };
        }
        self
    }
}

/// An item of a batch that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    /// 0-based position of the item in the batch (array index, NDJSON line, or span number).
    pub index: usize,
    /// Path of the offending field inside the item.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

/// Facts the edge adds to every event.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub source: String,
    pub received_at: DateTime<Utc>,
}

/// The items of a JSON body: one object, a JSON array, or NDJSON (one value per line).
/// Fails only when the body as a whole cannot be split (e.g. a malformed array).
pub fn split_items(
    body: &[u8],
    ndjson: bool,
) -> Result<Vec<Result<&RawValue, FieldError>>, FieldError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| FieldError::new("", format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(FieldError::new("", "empty body"));
    }
    if !ndjson && trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| FieldError::new("", format!("malformed JSON array: {e}")))?;
        return Ok(items.into_iter().map(Ok).collect());
    }
    if !ndjson {
        let one: &RawValue = serde_json::from_str(text)
            .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
        return Ok(vec![Ok(one)]);
    }
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<&RawValue>(l)
                .map_err(|e| FieldError::new("", format!("malformed JSON line: {e}")))
        })
        .collect())
}

/// The last step of every adapter: the event as it will be stored (times at the contract's
/// microsecond precision: OTLP and CloudEvents carry nanoseconds, which the Avro wire would
/// drop after the edge accepted them — found by fuzzing), then checked by [`check_event`].
pub fn seal_event(mut e: UsageEvent) -> Result<UsageEvent, FieldError> {
    use meterline_schemas::time::at_wire_precision;
    e.occurred_at = at_wire_precision(e.occurred_at);
    e.received_at = at_wire_precision(e.received_at);
    check_event(&e)?;
    Ok(e)
}

/// Checks what every adapter must guarantee before an event leaves the edge.
pub fn check_event(e: &UsageEvent) -> Result<(), FieldError> {
    for (field, v) in [
        ("event_id", &e.event_id),
        ("provider", &e.provider),
        ("model", &e.model),
    ] {
        if v.trim().is_empty() {
            return Err(FieldError::new(field, "required and must not be empty"));
        }
        if v.len() > MAX_ID_LEN {
            return Err(FieldError::new(
                field,
                format!("longer than {MAX_ID_LEN} bytes"),
            ));
        }
    }
    for (field, v) in [
        ("request_id", &e.request_id),
        ("api_key_id", &e.api_key_id),
        ("user_id", &e.user_id),
        ("team_id", &e.team_id),
        ("org_id", &e.org_id),
        ("project_id", &e.project_id),
        ("end_user", &e.end_user),
        ("agent_id", &e.agent_id),
        ("workflow_id", &e.workflow_id),
        ("session_id", &e.session_id),
        ("region", &e.region),
    ] {
        if v.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
            return Err(FieldError::new(
                field,
                format!("longer than {MAX_ID_LEN} bytes"),
            ));
        }
    }
    for (field, v) in [
        ("event_id", Some(&e.event_id)),
        ("provider", Some(&e.provider)),
        ("model", Some(&e.model)),
        ("request_id", e.request_id.as_ref()),
        ("api_key_id", e.api_key_id.as_ref()),
        ("user_id", e.user_id.as_ref()),
        ("team_id", e.team_id.as_ref()),
        ("org_id", e.org_id.as_ref()),
        ("project_id", e.project_id.as_ref()),
    ] {
        if v.is_some_and(|s| s.chars().any(char::is_control)) {
            return Err(FieldError::new(
                field,
                "must not contain control characters (NUL, newline, …)",
            ));
        }
    }
    // "No billable quantity, no event": an event that bills nothing is a mistake upstream
    // (an unknown usage shape read as zeros, an empty object), never a silent $0.
    if e.usage.is_empty() {
        return Err(FieldError::new(
            "usage",
            "no billable quantity: every count is 0 (an empty or unrecognised usage object?)",
        ));
    }
    for (field, v) in e.usage.counts() {
        if v > MAX_COUNT {
            return Err(FieldError::new(
                &format!("usage.{field}"),
                format!("{v} exceeds the plausible maximum of {MAX_COUNT} per call"),
            ));
        }
    }
    if e.tags.len() > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("{} tags exceed the limit of {MAX_TAGS}", e.tags.len()),
        ));
    }
    if let Some((k, _)) = e
        .tags
        .iter()
        .find(|(k, v)| k.len() > MAX_TAG_LEN || v.len() > MAX_TAG_LEN)
    {
        return Err(FieldError::new(
            &format!("tags.{k}"),
            format!("tag key or value longer than {MAX_TAG_LEN} bytes"),
        ));
    }
    if e.occurred_at > e.received_at + chrono::Duration::hours(24) {
        return Err(FieldError::new(
            "occurred_at",
            "more than 24 h in the future",
        ));
    }
    Ok(())
}

/// `o[key]` as an object; absent or null is an empty object, anything else an error.
pub fn object_or_empty<'a>(
    o: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
    empty: &'a serde_json::Map<String, serde_json::Value>,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, FieldError> {
    match o.get(key) {
        Some(serde_json::Value::Object(m)) => Ok(m),
        None | Some(serde_json::Value::Null) => Ok(empty),
        Some(x) => Err(FieldError::new(
            key,
            format!("must be an object (got {})", usage::kind(x)),
        )),
    }
}

/// The same for an owned string, without reallocating when it is already trimmed.
pub fn owned(s: Option<String>) -> Option<String> {
    match s {
        Some(v) if v.trim().len() == v.len() => (!v.is_empty()).then_some(v),
        other => non_empty(other.as_deref()),
    }
}

/// A non-empty trimmed string, or None.
pub fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
