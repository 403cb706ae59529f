//! One event in, one priced event (or a rejection with its reason) out. Pure: the price book
//! and the tenant directory are passed in.

use chrono::{DateTime, Utc};
use meterline_schemas::{PricedUsage, UsageEvent};

use crate::cost::{self, RateCard};
use crate::Error;
use meterline_reference::price_book::PriceBook;
use meterline_reference::tenants::TenantDirectory;

/// Why an event was not priced. Travels as headers on `meterline.usage.rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable machine code: `no_price`, `no_rate`, `no_quantity`, `zero_cost`, `overflow`,
    /// `id_conflict`, `undecodable`.
    pub code: &'static str,
    /// The field of the event at fault (`model`, `usage.cache_read_tokens`, `value`).
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

impl Rejection {
    pub fn undecodable(reason: impl std::fmt::Display) -> Rejection {
        Rejection {
            code: "undecodable",
            field: "value".into(),
            reason: reason.to_string(),
        }
    }
}

/// The usage field a rate unit prices (for the rejection's `field`).
fn usage_field(unit: &str) -> &'static str {
    use meterline_schemas::unit::*;
    match unit {
        INPUT => "usage.input_tokens",
        OUTPUT => "usage.output_tokens",
        CACHE_READ => "usage.cache_read_tokens",
        CACHE_WRITE_5M => "usage.cache_write_5m_tokens",
        CACHE_WRITE_1H => "usage.cache_write_1h_tokens",
        REASONING => "usage.reasoning_tokens",
        AUDIO_INPUT => "usage.audio_input_tokens",
        AUDIO_OUTPUT => "usage.audio_output_tokens",
        IMAGE => "usage.images",
        SECOND => "usage.seconds",
        CHARACTER => "usage.characters",
        REQUEST => "usage.requests",
        _ => "usage",
    }
}

/// Prices `event` with the price in force at its `occurred_at` and attributes it.
pub fn enrich(
    event: UsageEvent,
    prices: &PriceBook,
    tenants: &TenantDirectory,
    priced_at: DateTime<Utc>,
) -> Result<PricedUsage, Rejection> {
    if event.usage.is_empty() {
        // Edges refuse these (400); this catches producers that bypass an edge.
        return Err(Rejection {
            code: "no_quantity",
            field: "usage".into(),
            reason: "the event has no billable quantity (every usage count is 0)".into(),
        });
    }
    let Some((price, resolution)) =
        prices.price_at(&event.provider, &event.model, event.occurred_at)
    else {
        return Err(Rejection {
            code: "no_price",
            field: "model".into(),
            reason: format!(
                "no price for {}/{} in force at {}",
                event.provider,
                event.model,
                event.occurred_at.to_rfc3339()
            ),
        });
    };
    let card = RateCard {
        price_id: &price.price_id,
        rates: &price.rates,
    };
    let lines = cost::price(&event.usage, event.service_tier, &card).map_err(|e| match &e {
        Error::NoRate { unit, .. } => Rejection {
            code: "no_rate",
            field: usage_field(unit).into(),
            reason: format!("{e} (version {})", price.version),
        },
        Error::ZeroCost { what, .. } => Rejection {
            code: "zero_cost",
            field: usage_field(what).into(),
            reason: format!("{e} (price {} version {})", price.price_id, price.version),
        },
        _ => Rejection {
            code: "overflow",
            field: "usage".into(),
            reason: e.to_string(),
        },
    })?;
    // A gateway cache hit called no provider: the price is still resolved (and an unknown
    // model still rejected) so the record names what was served, but it costs nothing. The
    // tokens stay in the ledger, so the saving is visible.
    let lines = if event.cache_hit {
        meterline_schemas::CostLines::default()
    } else {
        lines
    };
    let (tenant, rule) = tenants.resolve(&event);
    Ok(PricedUsage {
        tenant_rule_id: rule.map(str::to_string),
        tenant,
        price_id: price.price_id.clone(),
        price_version: price.version,
        price_resolution: resolution.as_str().to_string(),
        model: price.model.clone(),
        currency: price.currency.clone(),
        cost: lines,
        priced_at,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{PriceChange, Rate};

    fn book() -> PriceBook {
        let mut b = PriceBook::new();
        b.apply(PriceChange {
            price_id: "openai/gpt-4o".into(),
            version: 3,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            aliases: vec![],
            currency: "USD".into(),
            rates: vec![
                Rate {
                    unit: "input_token".into(),
                    tier: "standard".into(),
                    above_input_tokens: 0,
                    price: "0.0000025".parse().unwrap(),
                },
                Rate {
                    unit: "output_token".into(),
                    tier: "standard".into(),
                    above_input_tokens: 0,
                    price: "0.00001".parse().unwrap(),
                },
            ],
            effective_from: DateTime::from_timestamp(0, 0).unwrap(),
            effective_to: None,
            deleted: false,
            author: "t".into(),
            reason: "".into(),
            source: "".into(),
            changed_at: DateTime::from_timestamp(0, 0).unwrap(),
        });
        b
    }

    #[test]
    fn priced_event_carries_price_version_and_tenant() {
        let p = enrich(
            UsageEvent::example(),
            &book(),
            &TenantDirectory::new(),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(p.cost.total.to_string(), "0.00045");
        assert_eq!((p.price_id.as_str(), p.price_version), ("openai/gpt-4o", 3));
        // no tenant rule: the org and team the event names stand
        assert_eq!(
            (
                p.tenant.org.as_str(),
                p.tenant.team.as_deref(),
                p.tenant_rule_id
            ),
            ("org-1", Some("team-1"), None)
        );
    }

    #[test]
    fn rejections_name_code_and_field() {
        let mut e = UsageEvent::example();
        e.model = "gpt-5-unknown".into();
        let r = enrich(e, &book(), &TenantDirectory::new(), Utc::now()).unwrap_err();
        assert_eq!((r.code, r.field.as_str()), ("no_price", "model"));
        let mut e = UsageEvent::example();
        e.usage.cache_write_5m_tokens = 0;
        e.usage.images = 2;
        let r = enrich(e, &book(), &TenantDirectory::new(), Utc::now()).unwrap_err();
        assert_eq!((r.code, r.field.as_str()), ("no_rate", "usage.images"));
    }

    #[test]
    fn empty_usage_is_rejected_and_cache_hits_cost_nothing() {
        let mut e = UsageEvent::example();
        e.usage = Default::default();
        let r = enrich(e, &book(), &TenantDirectory::new(), Utc::now()).unwrap_err();
        assert_eq!((r.code, r.field.as_str()), ("no_quantity", "usage"));
        let mut e = UsageEvent::example();
        e.cache_hit = true;
        let p = enrich(e, &book(), &TenantDirectory::new(), Utc::now()).unwrap();
        assert!(p.cost.total.is_zero());
        assert_eq!(
            p.event.usage.input_tokens, 100,
            "usage kept: the saving is visible"
        );
        let mut e = UsageEvent::example();
        e.model = "openai/gpt-4o-2024-08-06".into();
        let p = enrich(e, &book(), &TenantDirectory::new(), Utc::now()).unwrap();
        assert_eq!(
            (p.model.as_str(), p.price_resolution.as_str()),
            // the price id `openai/gpt-4o` is itself a name of the entry
            ("gpt-4o", "snapshot_stripped")
        );
    }
}
