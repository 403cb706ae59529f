//! The chargeback as FOCUS 1.2 rows (FinOps Open Cost and Usage Specification, CC-BY-4.0):
//! all 21 mandatory columns, the conditional ones that apply to AI inference, and the token
//! detail in `x_` columns (FOCUS reserves the `x_` prefix for provider-defined columns).
//!
//! One row per chargeback line. How the columns are filled:
//! - `BilledCost` = `EffectiveCost` = the line's cents (what is charged back; no amortized
//!   commitments here); `ListCost` = `ContractedCost` = the exact list cost (no negotiated
//!   discounts are modelled);
//! - `PricingQuantity` = requests with `PricingUnit` `Requests` (a line mixes token kinds; the
//!   tokens are in `ConsumedQuantity` / `x_*Tokens`). No unit price column is filled, so the
//!   quantity × unit price = cost rule has nothing to check;
//! - late usage of a closed month: `ChargeCategory` `Adjustment`, `ChargeClass` `Correction`,
//!   `ChargePeriod*` = the month it occurred in.

use super::chargeback::{Category, Chargeback, Line};
use crate::period::Month;
use crate::Error;

/// The 21 mandatory FOCUS 1.2 columns.
pub const MANDATORY: [&str; 21] = [
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
];

/// Conditional / recommended columns filled, then the extension columns.
pub const OTHER: [&str; 16] = [
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingCategory",
    "ServiceSubcategory",
    "SkuId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Model",
    "x_Requests",
    "x_InputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_OutputTokens",
    "x_ReasoningTokens",
];

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn row(c: &Chargeback, l: &Line, issuer: &str) -> Result<Vec<String>, Error> {
    let billing: Month = c.period.parse().map_err(Error::Query)?;
    let charge: Month = l.charge_period.parse().map_err(Error::Query)?;
    let group = l.group.clone().unwrap_or_default();
    let by = c.by.column();
    let adjustment = l.category == Category::Adjustment;
    let tokens = l.input_tokens
        + l.cache_read_tokens
        + l.cache_write_tokens
        + l.output_tokens
        + l.reasoning_tokens;
    let who = if group.is_empty() {
        format!("unattributed {by}")
    } else {
        format!("{by} {group}")
    };
    let description = if adjustment {
        format!(
            "Late {} usage of {} for {who} (occurred {}, closed), billed in {}",
            l.model, l.provider, l.charge_period, c.period
        )
    } else {
        format!(
            "{} usage of {} for {who}, {}",
            l.model, l.provider, c.period
        )
    };
    let tags = serde_json::json!({ by: l.group }).to_string();
    let cells = [
        // mandatory
        l.billed_cost.to_string(),
        l.org.clone(),
        l.org.clone(),
        l.currency.clone(),
        iso(billing.end()),
        iso(billing.start()),
        format!("{:?}", l.category),
        if adjustment {
            "Correction".into()
        } else {
            String::new()
        },
        description,
        iso(charge.end()),
        iso(charge.start()),
        l.list_cost.to_string(),
        l.billed_cost.to_string(),
        issuer.to_string(),
        l.list_cost.to_string(),
        l.events.to_string(),
        "Requests".into(),
        l.provider.clone(),
        l.provider.clone(),
        "AI and Machine Learning".into(),
        format!("{} inference", l.provider),
        // other
        "Usage-Based".into(),
        tokens.to_string(),
        "Tokens".into(),
        "Standard".into(),
        "Generative AI".into(),
        format!("{}/{}", l.provider, l.model),
        group.clone(),
        group,
        tags,
        l.model.clone(),
        l.events.to_string(),
        l.input_tokens.to_string(),
        l.cache_read_tokens.to_string(),
        l.cache_write_tokens.to_string(),
        l.output_tokens.to_string(),
        l.reasoning_tokens.to_string(),
    ];
    Ok(cells.to_vec())
}

/// FOCUS CSV: header, then one row per line (empty cell = null).
pub fn to_csv(c: &Chargeback, issuer: &str) -> Result<Vec<u8>, Error> {
    super::csv_bytes(
        MANDATORY.iter().chain(OTHER.iter()),
        c.lines.iter().map(|l| row(c, l, issuer)),
    )
}
