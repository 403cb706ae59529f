//! FOCUS 1.2 rules checked over a chargeback export (the `format=focus` CSV), row by row and
//! over the whole dataset.
//!
//! The official validator (PyPI `focus-validator`) runs too (`official`: a Python process,
//! seconds per export, verdicts per rule). The rules it applies that can be decided from the
//! export alone are also encoded here, under the validator's rule ids (its `model-1.2.json`),
//! with the row each violation is on, and without the validator's CSV type inference. The quoted requirement texts
//! are excerpts of the FOCUS 1.2 specification, © FinOps Foundation, CC-BY-4.0
//! (<https://github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec>, tag v1.2), as the
//! validator carries them. Rules the validator itself calls "Dynamic" (they need the price list
//! or the invoice) are checked where meterline's own semantics decide them; those carry a
//! `meterline:` id.
//!
//! Applicability (the validator's criteria) meterline declares: usage measurement, sub accounts
//! (the grouping), more than one sub account type, tagging, account naming. Not declared: public
//! price list / unit pricing / negotiated pricing (a chargeback line blends the rates of several
//! token kinds and price versions, so no single unit price exists for it), commitment discounts,
//! regions, capacity reservations.

pub mod official;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use rust_decimal::Decimal;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub rule: &'static str,
    /// Data row (0-based), `None` for dataset rules.
    pub row: Option<usize>,
    pub detail: String,
}

/// Columns FOCUS 1.2 defines (57); anything else must carry the `x_` prefix.
pub const FOCUS_COLUMNS: [&str; 57] = [
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
];

/// Dataset presence rules: (rule, column). Mandatory ones, then the conditional and
/// recommended ones whose applicability meterline declares (see the module doc).
const PRESENCE: [(&str, &str); 30] = [
    ("CostAndUsage-D-005-M", "BillingAccountName"),
    ("CostAndUsage-D-006-M", "BilledCost"),
    ("CostAndUsage-D-008-M", "ChargeCategory"),
    ("CostAndUsage-D-009-M", "BillingPeriodStart"),
    ("CostAndUsage-D-010-M", "BillingPeriodEnd"),
    ("CostAndUsage-D-021-M", "PublisherName"),
    ("CostAndUsage-D-023-M", "InvoiceIssuerName"),
    ("CostAndUsage-D-024-M", "BillingAccountId"),
    ("CostAndUsage-D-025-M", "ChargeDescription"),
    ("CostAndUsage-D-026-M", "ChargeClass"),
    ("CostAndUsage-D-028-M", "ChargePeriodEnd"),
    ("CostAndUsage-D-030-M", "ContractedCost"),
    ("CostAndUsage-D-031-M", "EffectiveCost"),
    ("CostAndUsage-D-032-M", "ListCost"),
    ("CostAndUsage-D-035-M", "BillingCurrency"),
    ("CostAndUsage-D-036-M", "PricingQuantity"),
    ("CostAndUsage-D-037-M", "ChargePeriodStart"),
    ("CostAndUsage-D-038-M", "ProviderName"),
    ("CostAndUsage-D-040-M", "ServiceCategory"),
    ("CostAndUsage-D-041-M", "ServiceName"),
    ("CostAndUsage-D-068-M", "PricingUnit"),
    ("CostAndUsage-D-011-C", "ConsumedQuantity"),
    ("CostAndUsage-D-066-C", "ConsumedUnit"),
    ("CostAndUsage-D-019-C", "SubAccountId"),
    ("CostAndUsage-D-029-C", "SubAccountName"),
    ("CostAndUsage-D-067-C", "SubAccountType"),
    ("CostAndUsage-D-064-C", "Tags"),
    ("CostAndUsage-D-027-O", "ChargeFrequency"),
    ("CostAndUsage-D-042-O", "ServiceSubcategory"),
    ("CostAndUsage-D-022-C", "PricingCategory"),
];

const CHARGE_CATEGORIES: [&str; 5] = ["Usage", "Purchase", "Tax", "Credit", "Adjustment"];
const CHARGE_FREQUENCIES: [&str; 3] = ["One-Time", "Recurring", "Usage-Based"];
const PRICING_CATEGORIES: [&str; 4] = ["Standard", "Dynamic", "Committed", "Other"];
const SERVICE_CATEGORIES: [&str; 19] = [
    "AI and Machine Learning",
    "Analytics",
    "Business Applications",
    "Compute",
    "Databases",
    "Developer Tools",
    "Multicloud",
    "Identity",
    "Integration",
    "Internet of Things",
    "Management and Governance",
    "Media",
    "Migration",
    "Mobile",
    "Networking",
    "Security",
    "Storage",
    "Web",
    "Other",
];
/// The AI and Machine Learning subcategories (each has that one parent).
const AI_SUBCATEGORIES: [&str; 6] = [
    "AI Platforms",
    "Bots",
    "Generative AI",
    "Machine Learning",
    "Natural Language Processing",
    "Other (AI and Machine Learning)",
];
/// ISO 4217 codes that are not national currencies (metals, SDR, testing, none).
const NOT_NATIONAL: [&str; 9] = [
    "XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "XSU", "XUA",
];

/// A parsed export: the header and each row as column → value (empty cell = null).
pub struct Export {
    pub header: Vec<String>,
    pub rows: Vec<BTreeMap<String, Option<String>>>,
}

impl Export {
    pub fn parse(csv_bytes: &[u8]) -> Export {
        let mut rd = csv::Reader::from_reader(csv_bytes);
        let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
        let rows = rd
            .records()
            .map(|r| {
                let r = r.unwrap();
                header
                    .iter()
                    .zip(r.iter())
                    .map(|(h, v)| (h.clone(), (!v.is_empty()).then(|| v.to_string())))
                    .collect()
            })
            .collect();
        Export { header, rows }
    }
}

/// `NumericFormat`: integer, decimal or E notation (a sign only when negative), nothing else.
fn numeric(v: &str) -> bool {
    let (m, e) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let m = m.strip_prefix('-').unwrap_or(m);
    let mut parts = m.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = match e {
        None => true,
        Some(e) => digits(e.strip_prefix('-').unwrap_or(e)),
    };
    digits(int) && frac.is_none_or(digits) && exp_ok
}

/// `DateTimeFormat`: `YYYY-MM-DDTHH:mm:ssZ`, UTC.
fn datetime(v: &str) -> Option<chrono::NaiveDateTime> {
    (v.len() == 20)
        .then(|| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%SZ").ok())
        .flatten()
}

/// `UnitFormat` (SHOULD): `<plural-units>`, `<quantity> <plural-units>` (whole quantity),
/// `<unit>-<plural-time-units>`, `<plural-units>/<time-unit>`; capitalised words.
fn unit_format(v: &str) -> bool {
    let (qty, unit) = match v.split_once(' ') {
        Some((q, u)) => (Some(q), u),
        None => (None, v),
    };
    let whole =
        |q: &str| !q.is_empty() && !q.starts_with('0') && q.bytes().all(|b| b.is_ascii_digit());
    let word = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && w.chars().all(|c| c.is_ascii_alphabetic())
    };
    qty.is_none_or(whole) && unit.split(['-', '/']).all(word)
}

fn dec(v: &str) -> Option<Decimal> {
    Decimal::from_str(v)
        .ok()
        .or_else(|| Decimal::from_scientific(v).ok())
}

/// Every FOCUS 1.2 rule of the module doc that `csv` breaks (empty: clean).
pub fn check(csv_bytes: &[u8]) -> Vec<Violation> {
    let x = Export::parse(csv_bytes);
    let mut out = vec![];
    let mut bad = |rule: &'static str, row: Option<usize>, detail: String| {
        out.push(Violation { rule, row, detail })
    };
    let has = |c: &str| x.header.iter().any(|h| h == c);
    for (rule, col) in PRESENCE {
        if !has(col) {
            bad(
                rule,
                None,
                format!("{col} MUST be present in a FOCUS dataset"),
            );
        }
    }
    for h in &x.header {
        if !FOCUS_COLUMNS.contains(&h.as_str()) && !h.starts_with("x_") {
            bad(
                "ColumnHandling-A-003-M",
                None,
                format!("{h}: custom columns MUST be prefixed with x_"),
            );
        }
    }
    let mut service: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for (i, r) in x.rows.iter().enumerate() {
        let row = Some(i);
        let get = |c: &str| r.get(c).cloned().flatten();
        let is = |c: &str, v: &str| get(c).as_deref() == Some(v);
        let category = get("ChargeCategory");
        let correction = is("ChargeClass", "Correction");
        let usage_or_purchase = is("ChargeCategory", "Usage") || is("ChargeCategory", "Purchase");
        // metrics: not null where mandatory, numeric format, valid decimal
        for (col, not_null, fmt, valid) in [
            (
                "BilledCost",
                "BilledCost-C-003-M",
                "BilledCost-C-002-M",
                "BilledCost-C-004-M",
            ),
            (
                "ContractedCost",
                "ContractedCost-C-003-M",
                "ContractedCost-C-002-M",
                "ContractedCost-C-004-M",
            ),
            (
                "EffectiveCost",
                "EffectiveCost-C-003-M",
                "EffectiveCost-C-002-M",
                "EffectiveCost-C-004-M",
            ),
            (
                "ListCost",
                "ListCost-C-003-M",
                "ListCost-C-002-M",
                "ListCost-C-004-M",
            ),
            (
                "PricingQuantity",
                "",
                "PricingQuantity-C-002-M",
                "PricingQuantity-C-008-M",
            ),
            (
                "ConsumedQuantity",
                "",
                "ConsumedQuantity-C-002-M",
                "ConsumedQuantity-C-008-C",
            ),
        ] {
            match get(col) {
                None if !not_null.is_empty() => {
                    bad(not_null, row, format!("{col} MUST NOT be null"))
                }
                None => {}
                Some(v) => {
                    if !numeric(&v) {
                        bad(fmt, row, format!("{col} {v:?}: NumericFormat"));
                    } else if dec(&v).is_none() {
                        bad(valid, row, format!("{col} {v:?}: not a valid decimal"));
                    }
                }
            }
        }
        // dimensions that MUST NOT be null
        for (col, rule) in [
            ("BillingAccountId", "BillingAccountId-C-001-M"),
            ("BillingAccountName", "BillingAccountName-C-003-C"),
            ("BillingCurrency", "BillingCurrency-C-004-M"),
            ("BillingPeriodEnd", "BillingPeriodEnd-C-003-M"),
            ("BillingPeriodStart", "BillingPeriodStart-C-003-M"),
            ("ChargeCategory", "ChargeCategory-C-002-M"),
            ("ChargeDescription", "ChargeDescription-C-003-O"),
            ("ChargeFrequency", "ChargeFrequency-C-002-M"),
            ("ChargePeriodEnd", "ChargePeriodEnd-C-003-M"),
            ("ChargePeriodStart", "ChargePeriodStart-C-003-M"),
            ("InvoiceIssuerName", "InvoiceIssuerName-C-003-M"),
            ("ProviderName", "ProviderName-C-003-M"),
            ("PublisherName", "PublisherName-C-003-M"),
            ("ServiceCategory", "ServiceCategory-C-002-M"),
            ("ServiceName", "ServiceName-C-003-M"),
            ("ServiceSubcategory", "ServiceSubcategory-C-002-M"),
        ] {
            if get(col).is_none() {
                bad(rule, row, format!("{col} MUST NOT be null"));
            }
        }
        // BilledCost MUST be 0 for charges where payments are received by a third party
        // (the validator: ProviderName differs from InvoiceIssuerName)
        if get("ProviderName") != get("InvoiceIssuerName")
            && get("BilledCost").as_deref().and_then(dec) != Some(Decimal::ZERO)
        {
            bad(
                "BilledCost-C-005-C",
                row,
                format!(
                    "ProviderName {:?} ≠ InvoiceIssuerName {:?} (third party) but BilledCost is {:?}",
                    get("ProviderName"),
                    get("InvoiceIssuerName"),
                    get("BilledCost")
                ),
            );
        }
        // currency
        if let Some(c) = get("BillingCurrency") {
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                bad(
                    "BillingCurrency-C-003-M",
                    row,
                    format!("{c:?}: CurrencyFormat"),
                );
            } else if NOT_NATIONAL.contains(&c.as_str()) {
                bad(
                    "BillingCurrency-C-006-M",
                    row,
                    format!("{c}: not a national currency"),
                );
            }
        }
        // periods: format; start before end; a month; the charge no later than the billing
        let mut t = BTreeMap::new();
        for (col, rule) in [
            ("BillingPeriodStart", "BillingPeriodStart-C-002-M"),
            ("BillingPeriodEnd", "BillingPeriodEnd-C-002-M"),
            ("ChargePeriodStart", "ChargePeriodStart-C-002-M"),
            ("ChargePeriodEnd", "ChargePeriodEnd-C-002-M"),
        ] {
            if let Some(v) = get(col) {
                match datetime(&v) {
                    Some(d) => {
                        t.insert(col, d);
                    }
                    None => bad(rule, row, format!("{col} {v:?}: DateTimeFormat")),
                }
            }
        }
        if let (Some(bs), Some(be)) = (t.get("BillingPeriodStart"), t.get("BillingPeriodEnd")) {
            if bs >= be {
                bad(
                    "BillingPeriodEnd-C-004-M",
                    row,
                    "billing period end not after start".into(),
                );
            }
        }
        if let (Some(cs), Some(ce)) = (t.get("ChargePeriodStart"), t.get("ChargePeriodEnd")) {
            if cs >= ce {
                bad(
                    "ChargePeriodEnd-C-004-M",
                    row,
                    "charge period end not after start".into(),
                );
            }
        }
        // ChargeCategory / ChargeClass
        if let Some(c) = &category {
            if !CHARGE_CATEGORIES.contains(&c.as_str()) {
                bad("ChargeCategory-C-003-M", row, format!("{c:?} not allowed"));
            }
        }
        if let Some(c) = get("ChargeClass") {
            if c != "Correction" {
                bad("ChargeClass-C-005-C", row, format!("ChargeClass {c:?}"));
            }
        }
        // a correction to a previously invoiced billing period (charge period before the
        // billing period) MUST be marked, and only such a row
        if let (Some(cs), Some(bs)) = (t.get("ChargePeriodStart"), t.get("BillingPeriodStart")) {
            let earlier = cs < bs;
            if earlier && !correction {
                bad(
                    "ChargeClass-C-004-C",
                    row,
                    "charge of an earlier billing period without ChargeClass=Correction".into(),
                );
            }
            if !earlier && get("ChargeClass").is_some() {
                bad(
                    "ChargeClass-C-003-C",
                    row,
                    "ChargeClass set on a charge of the current billing period".into(),
                );
            }
        }
        // ChargeFrequency
        if let Some(f) = get("ChargeFrequency") {
            if !CHARGE_FREQUENCIES.contains(&f.as_str()) {
                bad("ChargeFrequency-C-003-M", row, format!("{f:?} not allowed"));
            }
            if f == "Usage-Based" && is("ChargeCategory", "Purchase") {
                bad(
                    "ChargeFrequency-C-004-C",
                    row,
                    "Usage-Based purchase".into(),
                );
            }
        }
        // ConsumedQuantity / ConsumedUnit (no commitment discounts: CommitmentDiscountStatus
        // is null on every row)
        let consumed = get("ConsumedQuantity");
        if category.as_deref() != Some("Usage") && consumed.is_some() {
            bad(
                "ConsumedQuantity-C-004-C",
                row,
                format!("ConsumedQuantity {consumed:?} with ChargeCategory {category:?} (MUST be null when not Usage)"),
            );
        }
        if category.as_deref() == Some("Usage") && !correction && consumed.is_none() {
            bad(
                "ConsumedQuantity-C-006-C",
                row,
                "ConsumedQuantity null on a Usage row".into(),
            );
        }
        match (&consumed, get("ConsumedUnit")) {
            (None, Some(u)) => bad(
                "ConsumedUnit-C-005-C",
                row,
                format!("ConsumedUnit {u:?} without a quantity"),
            ),
            (Some(_), None) => bad(
                "ConsumedUnit-C-006-C",
                row,
                "ConsumedUnit null with a quantity".into(),
            ),
            (_, Some(u)) if !unit_format(&u) => {
                bad("ConsumedUnit-C-003-O", row, format!("{u:?}: UnitFormat"))
            }
            _ => {}
        }
        // PricingQuantity / PricingUnit
        let pq = get("PricingQuantity");
        if is("ChargeCategory", "Tax") && pq.is_some() {
            bad(
                "PricingQuantity-C-004-C",
                row,
                "PricingQuantity on a Tax row".into(),
            );
        }
        if usage_or_purchase && !correction && pq.is_none() {
            bad(
                "PricingQuantity-C-005-C",
                row,
                "PricingQuantity null".into(),
            );
        }
        match (&pq, get("PricingUnit")) {
            (None, Some(u)) => bad(
                "PricingUnit-C-005-C",
                row,
                format!("PricingUnit {u:?} without a quantity"),
            ),
            (Some(_), None) => bad(
                "PricingUnit-C-006-C",
                row,
                "PricingUnit null with a quantity".into(),
            ),
            (_, Some(u)) if !unit_format(&u) => {
                bad("PricingUnit-C-003-O", row, format!("{u:?}: UnitFormat"))
            }
            _ => {}
        }
        // PricingCategory
        if let Some(p) = get("PricingCategory") {
            if !PRICING_CATEGORIES.contains(&p.as_str()) {
                bad("PricingCategory-C-007-M", row, format!("{p:?} not allowed"));
            }
        } else if usage_or_purchase && !correction {
            bad(
                "PricingCategory-C-004-C",
                row,
                "PricingCategory null".into(),
            );
        }
        // services
        if let Some(c) = get("ServiceCategory") {
            if !SERVICE_CATEGORIES.contains(&c.as_str()) {
                bad("ServiceCategory-C-003-M", row, format!("{c:?} not allowed"));
            }
        }
        if let Some(s) = get("ServiceSubcategory") {
            if !AI_SUBCATEGORIES.contains(&s.as_str()) {
                bad(
                    "ServiceSubcategory-C-003-M",
                    row,
                    format!("{s:?} is not an AI subcategory"),
                );
            } else if !is("ServiceCategory", "AI and Machine Learning") {
                bad(
                    "ServiceSubcategory-C-004-M",
                    row,
                    format!("{s:?} under {:?}", get("ServiceCategory")),
                );
            }
        }
        if let Some(n) = get("ServiceName") {
            let e = service.entry(n).or_default();
            e.0.insert(get("ServiceCategory").unwrap_or_default());
            e.1.insert(get("ServiceSubcategory").unwrap_or_default());
        }
        // SKU
        if usage_or_purchase && !correction && get("SkuId").is_none() {
            bad("SkuId-C-005-C", row, "SkuId null".into());
        }
        // sub account: name and type present exactly with the id
        let sub = get("SubAccountId").is_some();
        for (col, null_rule, not_null_rule) in [
            (
                "SubAccountName",
                "SubAccountName-C-004-C",
                "SubAccountName-C-005-C",
            ),
            (
                "SubAccountType",
                "SubAccountType-C-004-C",
                "SubAccountType-C-005-C",
            ),
        ] {
            if !has(col) {
                continue; // its presence rule speaks for it
            }
            match (sub, get(col).is_some()) {
                (false, true) => bad(null_rule, row, format!("{col} without SubAccountId")),
                (true, false) => bad(not_null_rule, row, format!("{col} null with SubAccountId")),
                _ => {}
            }
        }
        // Tags: a JSON object of scalar values
        if let Some(tags) = get("Tags") {
            let ok = match serde_json::from_str::<serde_json::Value>(&tags) {
                Ok(serde_json::Value::Object(m)) => {
                    m.values().all(|v| !v.is_object() && !v.is_array())
                }
                _ => false,
            };
            if !ok {
                bad("Tags-C-001-M", row, format!("{tags:?}: KeyValueFormat"));
            }
        }
    }
    for (name, (cats, subs)) in service {
        if cats.len() != 1 {
            bad(
                "ServiceName-C-005-C",
                None,
                format!("{name}: ServiceCategory {cats:?}"),
            );
        }
        if subs.len() != 1 {
            bad(
                "ServiceName-C-008-C",
                None,
                format!("{name}: ServiceSubcategory {subs:?}"),
            );
        }
    }
    out.sort();
    out
}

/// meterline's own column relations (the decisions documented in DESIGN.md's FOCUS section):
/// - provider = invoice issuer = the internal platform, the model vendor as publisher;
/// - `PricingUnit` is the vendors' price-list unit: `1000000 Tokens` with `PricingQuantity`
///   = the line's tokens / 10^6 (and `ConsumedQuantity` = its tokens in `Tokens`), or
///   `Requests` (= `x_Requests`) for a line without tokens;
/// - `ListCost` = `ContractedCost` = `EffectiveCost` (the exact cost at the rate card: no
///   negotiated or commitment discounts), `BilledCost` their cents: within one cent per row.
pub fn check_meterline(csv_bytes: &[u8], issuer: &str) -> Vec<Violation> {
    let x = Export::parse(csv_bytes);
    let mut out = vec![];
    let mut bad = |rule: &'static str, row: usize, detail: String| {
        out.push(Violation {
            rule,
            row: Some(row),
            detail,
        })
    };
    let million = Decimal::from(1_000_000);
    for (i, r) in x.rows.iter().enumerate() {
        let get = |c: &str| r.get(c).cloned().flatten().unwrap_or_default();
        let num =
            |c: &str| dec(&get(c)).unwrap_or_else(|| panic!("{c} not a decimal: {:?}", get(c)));
        if get("ProviderName") != issuer || get("InvoiceIssuerName") != issuer {
            bad(
                "meterline:provider-is-issuer",
                i,
                format!("{} / {}", get("ProviderName"), get("InvoiceIssuerName")),
            );
        }
        if get("PublisherName").is_empty() || get("PublisherName") == issuer {
            bad("meterline:publisher-is-vendor", i, get("PublisherName"));
        }
        let tokens: Decimal = [
            "x_InputTokens",
            "x_CacheReadTokens",
            "x_CacheWriteTokens",
            "x_OutputTokens",
            "x_ReasoningTokens",
        ]
        .iter()
        .map(|c| num(c))
        .sum();
        let (unit, qty) = (get("PricingUnit"), num("PricingQuantity"));
        match unit.as_str() {
            "1000000 Tokens" => {
                if qty * million != tokens || tokens.is_zero() {
                    bad(
                        "meterline:pricing-quantity",
                        i,
                        format!("{qty} × 10^6 ≠ {tokens} tokens"),
                    );
                }
                if get("ConsumedUnit") != "Tokens" || num("ConsumedQuantity") != tokens {
                    bad(
                        "meterline:consumed-quantity",
                        i,
                        format!("{} {}", get("ConsumedQuantity"), get("ConsumedUnit")),
                    );
                }
            }
            "Requests" => {
                if !tokens.is_zero() || qty != num("x_Requests") {
                    bad(
                        "meterline:pricing-quantity",
                        i,
                        format!("{qty} Requests, {tokens} tokens"),
                    );
                }
            }
            u => bad(
                "PricingUnit-C-008-M",
                i,
                format!("{u:?} is not a price-list unit of the vendors"),
            ),
        }
        let (list, contracted, effective, billed) = (
            num("ListCost"),
            num("ContractedCost"),
            num("EffectiveCost"),
            num("BilledCost"),
        );
        if !(effective <= contracted && contracted <= list) {
            bad(
                "meterline:effective≤contracted≤list",
                i,
                format!("{effective} / {contracted} / {list}"),
            );
        }
        if effective != list {
            bad(
                "meterline:no-discounts",
                i,
                format!("EffectiveCost {effective} ≠ ListCost {list}"),
            );
        }
        if (billed - effective).abs() >= Decimal::new(1, 2) || billed.scale() != 2 {
            bad(
                "meterline:billed-cents",
                i,
                format!("BilledCost {billed} vs EffectiveCost {effective}"),
            );
        }
    }
    out
}
