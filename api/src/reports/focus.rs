//! The chargeback as FOCUS 1.2 rows (FinOps Open Cost and Usage Specification, CC-BY-4.0):
//! all 21 mandatory columns, the conditional ones that apply to AI inference, and the token
//! detail in `x_` columns (FOCUS reserves the `x_` prefix for provider-defined columns).
//!
//! One row per chargeback line. How the columns are filled (DESIGN.md, "Chargeback as FOCUS"):
//! - who: the internal AI platform resells the model vendors' services to the org's teams, the
//!   FOCUS 1.2 "origination of cost data" cases 2.1 (via a managed service provider) and 5.x
//!   (internal offerings): `ProviderName` = `InvoiceIssuerName` = the platform
//!   (`api.invoice_issuer`), `PublisherName` = the model vendor (the ledger's `provider`).
//!   FOCUS reads a provider other than the issuer as a third party collecting the payment
//!   (BilledCost-C-005-C: BilledCost 0), which an internal chargeback is not;
//! - `BillingAccountId`/`Name` = the org (the one the tenant rule or, without one, the event
//!   names; `unattributed` only when nobody names it); `SubAccountId`/`Name` = the group,
//!   `SubAccountType` its kind (`Cost Center`, `Team`, `Project`), all null without one;
//! - money: `ListCost` = `ContractedCost` = `EffectiveCost` = the exact cost at the rate card
//!   (list prices passed through: no negotiated or commitment discounts, nothing amortized),
//!   `BilledCost` = the line's cents (`chargeback::assemble`), within a cent of it. So
//!   EffectiveCost ≤ ContractedCost ≤ ListCost holds (with equality) on every row, and rounding
//!   lives only in BilledCost, where an invoice needs it;
//! - units: vendors price tokens per million, so `PricingUnit` = `1000000 Tokens` and
//!   `PricingQuantity` = the line's tokens / 10^6 (exact); `ConsumedQuantity` = its tokens in
//!   `Tokens`. A line without tokens (a model priced per request, image, second or character)
//!   is priced in `Requests` (its events). No unit price column: a line blends the rates of
//!   several token kinds (and possibly price versions), so no single price × quantity exists;
//! - `InvoiceId` = `<org>-<billing period>`: the org's statement for the month, provisional
//!   while it is open, issued at the close;
//! - late usage of a closed month (meterline's `Adjustment` lines) is `ChargeCategory`
//!   `Usage` with `ChargeClass` `Correction`: it is consumption (FOCUS `Adjustment` is for
//!   charges that fit no other category), billed in this billing period as a correction of an
//!   earlier, already invoiced one (`ChargePeriod*` = the month it occurred in). As Usage it
//!   keeps its quantities (ConsumedQuantity MUST be null outside Usage).

use rust_decimal::Decimal;

use super::statement::{Category, Chargeback, GroupBy, Line};
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
pub const OTHER: [&str; 18] = [
    "ChargeFrequency",
    "InvoiceId",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingCategory",
    "ServiceSubcategory",
    "SkuId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
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

/// Tokens per `PricingUnit` (`1000000 Tokens`): the vendors' price lists are per million.
const TOKENS_PER_UNIT: i64 = 1_000_000;

/// `InvoiceId`: one statement per billing account and billing period, whatever the grouping
/// (`acme-2026-10`). Provisional while the month is open (FOCUS 1.2 InvoiceId-C-006-O: it MAY
/// be generated before the invoice is issued), issued when the month closes; late usage of an
/// earlier month is on the statement of the month that bills it.
fn invoice_id(org: &str, billing_period: &str) -> String {
    format!("{org}-{billing_period}")
}

/// `SubAccountType` of a grouping.
fn sub_account_type(by: GroupBy) -> &'static str {
    match by {
        GroupBy::CostCenter => "Cost Center",
        GroupBy::Team => "Team",
        GroupBy::Project => "Project",
    }
}

/// `(PricingQuantity, PricingUnit, ConsumedQuantity, ConsumedUnit)` of a line.
fn quantities(l: &Line) -> (String, &'static str, String, &'static str) {
    let tokens = l.input_tokens
        + l.cache_read_tokens
        + l.cache_write_tokens
        + l.output_tokens
        + l.reasoning_tokens;
    if tokens == 0 {
        let n = l.events.to_string();
        return (n.clone(), "Requests", n, "Requests");
    }
    let per_unit = Decimal::from(tokens) / Decimal::from(TOKENS_PER_UNIT);
    (
        per_unit.normalize().to_string(),
        "1000000 Tokens",
        tokens.to_string(),
        "Tokens",
    )
}

fn row(c: &Chargeback, l: &Line, issuer: &str) -> Result<Vec<String>, Error> {
    let billing: Month = c.period.parse().map_err(Error::Query)?;
    let charge: Month = l.charge_period.parse().map_err(Error::Query)?;
    let group = l.group.clone().unwrap_or_default();
    let by = c.by.column();
    let correction = l.category == Category::Adjustment;
    let who = if group.is_empty() {
        format!("{} (no {by})", l.org)
    } else {
        format!("{by} {group}")
    };
    let description = if correction {
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
    let (pricing_qty, pricing_unit, consumed_qty, consumed_unit) = quantities(l);
    let exact = l.list_cost.to_string();
    let mut cells = vec![
        // mandatory
        l.billed_cost.to_string(),
        l.org.clone(),
        l.org.clone(),
        l.currency.clone(),
        iso(billing.end()),
        iso(billing.start()),
        "Usage".into(),
        if correction {
            "Correction".into()
        } else {
            String::new()
        },
        description,
        iso(charge.end()),
        iso(charge.start()),
        exact.clone(),
        exact.clone(),
        issuer.to_string(),
        exact,
        pricing_qty,
        pricing_unit.into(),
        issuer.to_string(),
        l.provider.clone(),
        "AI and Machine Learning".into(),
        format!("{} inference", l.provider),
        // other
        "Usage-Based".into(),
        invoice_id(&l.org, &c.period),
        consumed_qty,
        consumed_unit.into(),
        "Standard".into(),
        "Generative AI".into(),
        format!("{}/{}", l.provider, l.model),
        group.clone(),
        group.clone(),
        if group.is_empty() {
            String::new()
        } else {
            sub_account_type(c.by).into()
        },
        tags,
        l.model.clone(),
    ];
    // x_Requests, x_InputTokens, x_CacheReadTokens, x_CacheWriteTokens, x_OutputTokens,
    // x_ReasoningTokens
    cells.extend(l.count_cells());
    Ok(cells)
}

/// FOCUS CSV: header, then one row per line (empty cell = null).
pub fn to_csv(c: &Chargeback, issuer: &str) -> Result<Vec<u8>, Error> {
    super::csv_bytes(
        MANDATORY.iter().chain(OTHER.iter()),
        c.lines.iter().map(|l| row(c, l, issuer)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tokens: [i64; 5], events: i64) -> Line {
        Line {
            category: Category::Usage,
            charge_period: "2026-10".into(),
            org: "acme".into(),
            group: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            currency: "USD".into(),
            events,
            input_tokens: tokens[0],
            cache_read_tokens: tokens[1],
            cache_write_tokens: tokens[2],
            output_tokens: tokens[3],
            reasoning_tokens: tokens[4],
            list_cost: Decimal::ONE,
            billed_cost: Decimal::ONE,
        }
    }

    #[test]
    fn tokens_are_priced_per_million_and_other_lines_per_request() {
        assert_eq!(
            quantities(&line([5529, 0, 0, 970, 0], 4)),
            ("0.006499".into(), "1000000 Tokens", "6499".into(), "Tokens")
        );
        assert_eq!(
            quantities(&line([2_000_000, 500_000, 0, 500_000, 0], 9)),
            ("3".into(), "1000000 Tokens", "3000000".into(), "Tokens")
        );
        assert_eq!(
            quantities(&line([0; 5], 7)),
            ("7".into(), "Requests", "7".into(), "Requests")
        );
    }
}
