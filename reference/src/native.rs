//! meterline's own price file, for negotiated contracts and self-hosted models, in TOML or JSON:
//!
//! ```toml
//! [[price]]
//! provider = "self-hosted"          # matched against the event's provider
//! model = "llama-3.1-70b"           # and its model (aliases below)
//! aliases = ["meta-llama/Llama-3.1-70B-Instruct"]
//! currency = "USD"                  # default USD
//! effective_from = "2026-01-01T00:00:00Z"   # optional; `--effective-from` fills it in
//!
//! [[price.rate]]
//! unit = "input_token"              # see `meterline_schemas::unit`
//! price = "0.20"                    # a decimal string, never a float
//! per = 1_000_000                   # price is for this many units (default 1)
//! tier = "batch"                    # standard (default) | batch | priority | flex
//! above_input_tokens = 200000       # context tier: applies above this request size
//! ```
//!
//! Prices are strings (or integers) so they are read exactly; a TOML/JSON float is refused
//! because it has already been through binary floating point.

use chrono::{DateTime, Utc};
use meterline_schemas::{Money, PriceChange, Rate, ServiceTier};
use rust_decimal::Decimal;
use serde::Deserialize;

use meterline_schemas::unit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(alias = "prices")]
    price: Vec<NativePrice>,
}

/// One priced model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePrice {
    /// Stable id of the entry (the compacted topic key); default `<provider>/<model>`.
    id: Option<String>,
    provider: String,
    model: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default = "usd")]
    currency: String,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_to: Option<DateTime<Utc>>,
    #[serde(alias = "rates")]
    rate: Vec<NativeRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRate {
    unit: String,
    price: Money,
    #[serde(default = "one")]
    per: u64,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    above_input_tokens: i64,
}

fn usd() -> String {
    "USD".into()
}
fn one() -> u64 {
    1
}

/// Which syntax a price file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Json,
}

impl Syntax {
    /// By file extension (`.json`, else TOML).
    pub fn of_path(path: &std::path::Path) -> Syntax {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Syntax::Json,
            _ => Syntax::Toml,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NativeError {
    #[error("price file: {0}")]
    Syntax(String),
    #[error("price[{index}] ({id}).{field}: {reason}")]
    Invalid {
        index: usize,
        id: String,
        field: String,
        reason: String,
    },
}

/// Every unit a rate may name.
pub const UNITS: [&str; 12] = [
    unit::INPUT,
    unit::OUTPUT,
    unit::CACHE_READ,
    unit::CACHE_WRITE_5M,
    unit::CACHE_WRITE_1H,
    unit::REASONING,
    unit::AUDIO_INPUT,
    unit::AUDIO_OUTPUT,
    unit::IMAGE,
    unit::SECOND,
    unit::CHARACTER,
    unit::REQUEST,
];

/// Parses a price file into PriceChange drafts (version 0: the publisher numbers them).
/// `default_from` applies to entries without their own `effective_from`.
pub fn parse(
    text: &str,
    syntax: Syntax,
    default_from: Option<DateTime<Utc>>,
    author: &str,
    source: &str,
) -> Result<Vec<PriceChange>, NativeError> {
    let file: PriceFile = match syntax {
        Syntax::Toml => toml::from_str(text).map_err(|e| NativeError::Syntax(e.to_string()))?,
        Syntax::Json => {
            serde_json::from_str(text).map_err(|e| NativeError::Syntax(e.to_string()))?
        }
    };
    let mut out = Vec::with_capacity(file.price.len());
    for (index, p) in file.price.into_iter().enumerate() {
        let id =
            p.id.clone()
                .unwrap_or_else(|| format!("{}/{}", p.provider, p.model));
        let invalid = |field: String, reason: String| NativeError::Invalid {
            index,
            id: id.clone(),
            field,
            reason,
        };
        if p.provider.trim().is_empty() || p.model.trim().is_empty() {
            return Err(invalid(
                "model".into(),
                "provider and model are required".into(),
            ));
        }
        if p.currency.len() != 3 || !p.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "currency".into(),
                "an ISO 4217 code such as USD".into(),
            ));
        }
        let effective_from = p.effective_from.or(default_from).ok_or_else(|| {
            invalid(
                "effective_from".into(),
                "missing (set it in the file or pass --effective-from)".into(),
            )
        })?;
        if p.effective_to.is_some_and(|to| to <= effective_from) {
            return Err(invalid(
                "effective_to".into(),
                "must be after effective_from".into(),
            ));
        }
        if p.rate.is_empty() {
            return Err(invalid("rate".into(), "at least one rate".into()));
        }
        let mut rates = Vec::with_capacity(p.rate.len());
        for (i, r) in p.rate.iter().enumerate() {
            let field = |f: &str| format!("rate[{i}].{f}");
            if !UNITS.contains(&r.unit.as_str()) {
                return Err(invalid(
                    field("unit"),
                    format!("unknown unit '{}' (one of {})", r.unit, UNITS.join(", ")),
                ));
            }
            let tier = r.tier.as_deref().unwrap_or("standard");
            if ServiceTier::parse(tier).map(|t| t.as_str()) != Some(tier) {
                return Err(invalid(
                    field("tier"),
                    format!("unknown tier '{tier}' (standard, batch, priority, flex)"),
                ));
            }
            if r.per == 0 || r.above_input_tokens < 0 {
                return Err(invalid(field("per"), "must be positive".into()));
            }
            if r.price.decimal().is_sign_negative() {
                return Err(invalid(field("price"), "must not be negative".into()));
            }
            let per = Decimal::from(r.per);
            let unit_price = r.price.decimal() / per;
            // Exact division only: a price that needs rounding per unit is ambiguous.
            if unit_price * per != r.price.decimal() {
                return Err(invalid(field("per"), "price / per is not exact".into()));
            }
            let price = Money::new(unit_price)
                .map_err(|_| invalid(field("price"), "more than 18 decimals per unit".into()))?;
            if rates.iter().any(|x: &Rate| {
                x.unit == r.unit && x.tier == tier && x.above_input_tokens == r.above_input_tokens
            }) {
                return Err(invalid(field("unit"), "duplicate unit/tier/above".into()));
            }
            rates.push(Rate {
                unit: r.unit.clone(),
                tier: tier.into(),
                above_input_tokens: r.above_input_tokens,
                price,
            });
        }
        rates.sort_by(|a, b| {
            (&a.unit, &a.tier, a.above_input_tokens).cmp(&(&b.unit, &b.tier, b.above_input_tokens))
        });
        out.push(PriceChange {
            price_id: id,
            version: 0,
            provider: p.provider,
            model: p.model,
            aliases: p.aliases,
            currency: p.currency,
            rates,
            effective_from,
            effective_to: p.effective_to,
            deleted: false,
            author: author.into(),
            reason: String::new(),
            source: source.into(),
            changed_at: Utc::now(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[price]]
provider = "self-hosted"
model = "llama-3.1-70b"
aliases = ["meta-llama/Llama-3.1-70B-Instruct"]
effective_from = "2026-01-01T00:00:00Z"

[[price.rate]]
unit = "input_token"
price = "0.20"
per = 1_000_000

[[price.rate]]
unit = "output_token"
price = "0.60"
per = 1_000_000

[[price.rate]]
unit = "input_token"
tier = "batch"
price = "0.1"
per = 1000000
"#;

    #[test]
    fn toml_prices_are_exact_per_unit() {
        let v = parse(FILE, Syntax::Toml, None, "me", "file").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].price_id, "self-hosted/llama-3.1-70b");
        let r: Vec<String> = v[0]
            .rates
            .iter()
            .map(|r| format!("{}:{}={}", r.unit, r.tier, r.price))
            .collect();
        assert_eq!(
            r,
            [
                "input_token:batch=0.0000001",
                "input_token:standard=0.0000002",
                "output_token:standard=0.0000006"
            ]
        );
    }

    #[test]
    fn json_is_the_same_shape() {
        let json = r#"{"price":[{"provider":"acme","model":"m","effective_from":"2026-01-01T00:00:00Z",
            "rate":[{"unit":"request","price":"0.002"}]}]}"#;
        let v = parse(json, Syntax::Json, None, "me", "file").unwrap();
        assert_eq!(v[0].rates[0].price.to_string(), "0.002");
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        let float = FILE.replace("price = \"0.20\"", "price = 0.20");
        assert!(matches!(
            parse(&float, Syntax::Toml, None, "", ""),
            Err(NativeError::Syntax(_))
        ));
        let unit = FILE.replace("\"output_token\"", "\"tokens\"");
        let e = parse(&unit, Syntax::Toml, None, "", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "price[0] (self-hosted/llama-3.1-70b).rate[1].unit: unknown unit 'tokens' (one of input_token, output_token, cache_read_token, cache_write_5m_token, cache_write_1h_token, reasoning_token, audio_input_token, audio_output_token, image, second, character, request)"
        );
        let no_date = FILE.replace("effective_from = \"2026-01-01T00:00:00Z\"", "");
        assert!(parse(&no_date, Syntax::Toml, None, "", "")
            .unwrap_err()
            .to_string()
            .contains("effective_from: missing"));
        let from = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            parse(&no_date, Syntax::Toml, Some(from), "", "").unwrap()[0].effective_from,
            from
        );
        let tier = FILE.replace("tier = \"batch\"", "tier = \"cheap\"");
        assert!(parse(&tier, Syntax::Toml, None, "", "")
            .unwrap_err()
            .to_string()
            .contains("rate[2].tier"));
        let inexact = FILE.replace("per = 1_000_000", "per = 3");
        assert!(parse(&inexact, Syntax::Toml, None, "", "")
            .unwrap_err()
            .to_string()
            .contains("not exact"));
        let unknown = FILE.replace("aliases", "alias_list");
        assert!(matches!(
            parse(&unknown, Syntax::Toml, None, "", ""),
            Err(NativeError::Syntax(_))
        ));
    }
}
