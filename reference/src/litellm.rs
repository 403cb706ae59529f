//! Importer of LiteLLM's price catalog (`model_prices_and_context_window.json`) into
//! PriceChange events. Prices are parsed from their decimal TEXT (`2.5e-06` is exactly
//! 0.0000025), never through f64; the few float artefacts in the catalog with more than 18
//! decimals (`5.0000000000000004e-08`) are rounded half-even to 18 and counted.
//!
//! Field names map to (unit, tier, context tier): a base name (`input_cost_per_token`,
//! `cache_read_input_token_cost`, …) plus optional suffixes `_above_<N>k_tokens`, `_batches`,
//! `_priority`, `_flex`; `tiered_pricing` ranges become context tiers. Tiers meterline does not
//! model (`_balanced`, `_ultrafast`) and per-query search/tool costs are skipped and counted.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use meterline_schemas::{Money, PriceChange, Rate};
use serde_json::value::RawValue;

use meterline_schemas::unit;

/// Base field name → rate unit. Longest names first where one is a prefix of another.
const BASES: [(&str, &str); 13] = [
    (
        "cache_creation_input_token_cost_above_1hr",
        unit::CACHE_WRITE_1H,
    ),
    ("cache_creation_input_token_cost", unit::CACHE_WRITE_5M),
    ("cache_read_input_token_cost", unit::CACHE_READ),
    ("output_cost_per_reasoning_token", unit::REASONING),
    ("input_cost_per_audio_token", unit::AUDIO_INPUT),
    ("output_cost_per_audio_token", unit::AUDIO_OUTPUT),
    ("input_cost_per_token", unit::INPUT),
    ("output_cost_per_token", unit::OUTPUT),
    ("output_cost_per_image", unit::IMAGE),
    ("input_cost_per_image", unit::IMAGE),
    ("input_cost_per_second", unit::SECOND),
    ("input_cost_per_character", unit::CHARACTER),
    ("input_cost_per_request", unit::REQUEST),
];

/// What an import produced.
#[derive(Debug, Default)]
pub struct Import {
    pub changes: Vec<PriceChange>,
    /// Catalog keys without a single usable rate (e.g. free tools, unmodelled units).
    pub skipped_entries: Vec<String>,
    /// Fields not mapped (unknown tier suffixes, per-query costs, …), by name, with counts.
    pub skipped_fields: BTreeMap<String, usize>,
    /// Values rounded because they carried float noise beyond 18 decimals.
    pub rounded_values: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("catalog is not a JSON object of entries: {0}")]
    Shape(String),
    #[error("{key}.{field}: '{text}' is not a decimal price of 0 or more")]
    Price {
        key: String,
        field: String,
        text: String,
    },
}

/// (unit, tier, above) for a catalog field, if it is a price meterline models.
pub fn classify(field: &str) -> Option<(&'static str, &'static str, i64)> {
    for (base, unit) in BASES {
        let Some(mut rest) = field.strip_prefix(base) else {
            continue;
        };
        let mut tier = "standard";
        for (suffix, t) in [
            ("_batches", "batch"),
            ("_priority", "priority"),
            ("_flex", "flex"),
        ] {
            if let Some(r) = rest.strip_suffix(suffix) {
                tier = t;
                rest = r;
                break;
            }
        }
        let above = if rest.is_empty() {
            0
        } else {
            let k = rest.strip_prefix("_above_")?.strip_suffix("k_tokens")?;
            // checked: a 19-digit threshold overflowed (found by fuzzing)
            k.parse::<u32>().ok().map(|k| i64::from(k) * 1000)?
        };
        return Some((unit, tier, above));
    }
    None
}

fn money(text: &str, key: &str, field: &str, rounded: &mut usize) -> Result<Money, ImportError> {
    let err = || ImportError::Price {
        key: key.into(),
        field: field.into(),
        text: text.into(),
    };
    let m = match Money::from_str(text) {
        Ok(m) => m,
        Err(meterline_schemas::Error::MoneyScale(_)) => {
            let d = rust_decimal::Decimal::from_scientific(text)
                .or_else(|_| rust_decimal::Decimal::from_str(text))
                .map_err(|_| err())?;
            *rounded += 1;
            Money::rounded(d).map_err(|_| err())?
        }
        Err(_) => return Err(err()),
    };
    // A negative rate would bill negative money: refused like the native format does (found
    // by fuzzing: `-2.7e-05` was imported as a price).
    if m.decimal().is_sign_negative() {
        return Err(err());
    }
    Ok(m)
}

/// Converts the catalog text into PriceChange events effective from `effective_from`.
pub fn import(
    catalog: &str,
    effective_from: DateTime<Utc>,
    author: &str,
    source: &str,
) -> Result<Import, ImportError> {
    let entries: BTreeMap<String, BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(catalog).map_err(|e| ImportError::Shape(e.to_string()))?;
    let mut out = Import::default();
    for (key, fields) in entries {
        if key == "sample_spec" {
            continue; // documentation, not a model
        }
        let mut rates: Vec<Rate> = Vec::new();
        let push = |rates: &mut Vec<Rate>, unit: &str, tier: &str, above: i64, price: Money| {
            if !rates
                .iter()
                .any(|r| r.unit == unit && r.tier == tier && r.above_input_tokens == above)
            {
                rates.push(Rate {
                    unit: unit.into(),
                    tier: tier.into(),
                    above_input_tokens: above,
                    price,
                });
            }
        };
        for (field, raw) in &fields {
            let text = raw.get();
            if field == "tiered_pricing" {
                let tiers: Vec<BTreeMap<String, Box<RawValue>>> = serde_json::from_str(text)
                    .map_err(|e| ImportError::Shape(format!("{key}.tiered_pricing: {e}")))?;
                for t in tiers {
                    let lower: f64 = t
                        .get("range")
                        .and_then(|r| serde_json::from_str::<Vec<f64>>(r.get()).ok())
                        .and_then(|r| r.first().copied())
                        .unwrap_or(0.0);
                    for (f, v) in &t {
                        if let Some((unit, tier, 0)) = classify(f) {
                            let p = money(v.get(), &key, f, &mut out.rounded_values)?;
                            push(&mut rates, unit, tier, lower as i64, p);
                        }
                    }
                }
                continue;
            }
            match classify(field) {
                Some((unit, tier, above)) if text != "null" => {
                    let p = money(text, &key, field, &mut out.rounded_values)?;
                    push(&mut rates, unit, tier, above, p);
                }
                Some(_) => {}
                None if field.contains("cost") => {
                    *out.skipped_fields.entry(field.clone()).or_default() += 1
                }
                None => {}
            }
        }
        if rates.is_empty() {
            out.skipped_entries.push(key);
            continue;
        }
        rates.sort_by(|a, b| {
            (&a.unit, &a.tier, a.above_input_tokens).cmp(&(&b.unit, &b.tier, b.above_input_tokens))
        });
        let provider = fields
            .get("litellm_provider")
            .and_then(|p| serde_json::from_str::<String>(p.get()).ok())
            .unwrap_or_else(|| "unknown".into());
        let model = key
            .strip_prefix(&format!("{provider}/"))
            .unwrap_or(&key)
            .to_string();
        out.changes.push(PriceChange {
            price_id: key.clone(),
            version: 1,
            provider,
            model,
            aliases: vec![],
            currency: "USD".into(),
            rates,
            effective_from,
            effective_to: None,
            deleted: false,
            author: author.into(),
            reason: "LiteLLM catalog import".into(),
            source: source.into(),
            changed_at: Utc::now(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn excerpt() -> Import {
        let text = include_str!("../tests/fixtures/litellm_catalog_excerpt.json");
        import(
            text,
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
            "test",
            "litellm 1.109.1",
        )
        .unwrap()
    }

    fn entry<'a>(i: &'a Import, id: &str) -> &'a PriceChange {
        i.changes.iter().find(|c| c.price_id == id).unwrap()
    }

    #[test]
    fn field_names_map_to_unit_tier_and_context() {
        assert_eq!(
            classify("input_cost_per_token"),
            Some((unit::INPUT, "standard", 0))
        );
        assert_eq!(
            classify("output_cost_per_token_batches"),
            Some((unit::OUTPUT, "batch", 0))
        );
        assert_eq!(
            classify("cache_read_input_token_cost_above_200k_tokens_priority"),
            Some((unit::CACHE_READ, "priority", 200_000))
        );
        assert_eq!(
            classify("cache_creation_input_token_cost_above_1hr"),
            Some((unit::CACHE_WRITE_1H, "standard", 0))
        );
        assert_eq!(
            classify("input_cost_per_token_above_272k_tokens"),
            Some((unit::INPUT, "standard", 272_000))
        );
        assert_eq!(classify("input_cost_per_token_balanced"), None);
        // a threshold beyond any context window is no price field (it overflowed: fuzzing)
        assert_eq!(
            classify("input_cost_per_token_above_9223372036854775807k_tokens"),
            None
        );
        assert_eq!(classify("input_cost_per_token_above_-5k_tokens"), None);
        assert_eq!(classify("search_context_cost_per_query"), None);
    }

    #[test]
    fn negative_prices_are_refused_naming_the_field() {
        let catalog = r#"{"gemini/gemini-2.5-pro": {"litellm_provider": "gemini",
            "input_cost_per_token": 1.25e-06, "output_cost_per_token": -2.7e-05}}"#;
        let e = import(catalog, Utc::now(), "test", "fuzz")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("output_cost_per_token") && e.contains("-2.7e-05"),
            "{e}"
        );
    }

    #[test]
    fn sample_spec_is_skipped_and_prices_are_exact() {
        let i = excerpt();
        assert!(i.changes.iter().all(|c| c.price_id != "sample_spec"));
        let g = entry(&i, "gpt-4o");
        let rate = |u: &str, t: &str| {
            g.rates
                .iter()
                .find(|r| r.unit == u && r.tier == t)
                .unwrap()
                .price
                .to_string()
        };
        assert_eq!(rate(unit::INPUT, "standard"), "0.0000025");
        assert_eq!(rate(unit::CACHE_READ, "priority"), "0.000002125");
        assert_eq!(rate(unit::OUTPUT, "batch"), "0.000005");
        assert_eq!(g.provider, "openai");
    }

    #[test]
    fn float_artefacts_are_rounded_and_counted() {
        let text =
            r#"{"m": {"litellm_provider": "x", "input_cost_per_token": 5.0000000000000004e-08}}"#;
        let i = import(text, Utc::now(), "t", "s").unwrap();
        assert_eq!(i.rounded_values, 1);
        assert_eq!(i.changes[0].rates[0].price.to_string(), "0.00000005");
        assert!(import(
            r#"{"m": {"input_cost_per_token": "cheap"}}"#,
            Utc::now(),
            "t",
            "s"
        )
        .is_err());
    }
}
