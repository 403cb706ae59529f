//! CloudEvents 1.0, JSON structured mode (one event) and batch mode (an array), compatible
//! with OpenMeter's ingest: `subject` is the attribution key (the API key id), `time` the call
//! time, `data` an object with `gen_ai.*` attribute names (see `genai.rs`). The event id is
//! `source/id`: CloudEvents ids are unique per source only.

use chrono::{DateTime, Utc};
use meterline_schemas::UsageEvent;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::genai;
use super::usage::kind;
use super::{non_empty, object_or_empty, seal_event, Ctx, FieldError};

fn required_str<'a>(o: &'a Map<String, Value>, k: &str) -> Result<&'a str, FieldError> {
    match o.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(FieldError::new(k, "must not be empty")),
        Some(v) => Err(FieldError::new(
            k,
            format!("must be a string (got {})", kind(v)),
        )),
        None => Err(FieldError::new(
            k,
            "required CloudEvents attribute is missing",
        )),
    }
}

pub fn decode(raw: &RawValue, ctx: &Ctx) -> Result<UsageEvent, FieldError> {
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| FieldError::new("", e.to_string()))?;
    let o = v.as_object().ok_or_else(|| {
        FieldError::new(
            "",
            format!("a CloudEvent must be an object (got {})", kind(&v)),
        )
    })?;
    let spec = required_str(o, "specversion")?;
    if spec != "1.0" {
        return Err(FieldError::new(
            "specversion",
            format!("unsupported '{spec}' (1.0)"),
        ));
    }
    let id = required_str(o, "id")?;
    let source = required_str(o, "source")?;
    required_str(o, "type")?;
    if o.contains_key("data_base64") {
        return Err(FieldError::new(
            "data_base64",
            "binary data is not a usage record; send JSON `data`",
        ));
    }
    let occurred_at = match o.get("time") {
        None | Some(Value::Null) => ctx.received_at,
        Some(Value::String(t)) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| FieldError::new("time", format!("not an RFC 3339 timestamp: {e}")))?,
        Some(x) => {
            return Err(FieldError::new(
                "time",
                format!("must be a string (got {})", kind(x)),
            ))
        }
    };
    let empty = Map::new();
    let data = object_or_empty(o, "data", &empty)?;
    if !genai::has_usage(data) {
        return Err(FieldError::new(
            "data",
            "no token usage (gen_ai.usage.input_tokens / output_tokens)",
        ));
    }
    let subject = non_empty(o.get("subject").and_then(Value::as_str));
    // Money from the item's text, not from the f64 the parsed `Value` holds.
    let gateway_reported_cost = match data.get("meterline.gateway_reported_cost") {
        None => None,
        Some(_) => {
            #[derive(serde::Deserialize)]
            struct Ce<'a> {
                #[serde(borrow)]
                data: Data<'a>,
            }
            #[derive(serde::Deserialize)]
            struct Data<'a> {
                #[serde(borrow, rename = "meterline.gateway_reported_cost")]
                cost: &'a RawValue,
            }
            let ce: Ce = serde_json::from_str(raw.get()).map_err(|e| {
                FieldError::new("data.meterline.gateway_reported_cost", e.to_string())
            })?;
            super::usage::decimal_raw(ce.data.cost, "data.meterline.gateway_reported_cost")?
        }
    };
    let mut e = genai::event(
        data,
        format!("{source}/{id}"),
        occurred_at,
        ctx,
        "cloudevents",
    )
    .map_err(|e| e.under("data"))?;
    e.request_id = e.request_id.or_else(|| Some(id.to_string()));
    e.api_key_id = e.api_key_id.or(subject);
    e.gateway_reported_cost = gateway_reported_cost;
    seal_event(e)
}
