//! Cost rules: usage (disjoint buckets, see `usage_event.avsc`) × the rates of one price book
//! entry → cost lines that sum exactly to the total. Pure functions, no I/O.
//!
//! Rules, following provider billing:
//! - each bucket is billed once at its own rate (cached input is not billed again as input);
//! - the rate for the event's service tier is used; a tier without its own rate for a unit
//!   falls back to the standard tier's rate (as LiteLLM does);
//! - context-length tiers: the rate with the largest `above_input_tokens` strictly below the
//!   request's total input applies (`_above_200k_tokens` applies from 200,001 tokens);
//! - fallbacks where providers bill the same: cache read/write without a rate → input rate
//!   (no discount), 1h cache write → 5m rate, reasoning → output rate, audio → text rates;
//! - audio input is an input line, audio output an output line; `other` holds the non-token
//!   units (images, seconds, characters, requests);
//! - a positive quantity at a positive rate that rounds to a zero cost is an error, never $0;
//! - a quantity > 0 whose unit has no rate at all is an error (the event is rejected), never $0;
//! - seconds are metered at nanosecond precision (a quantity with more decimals is rounded
//!   half-even to 9 first); the cost is then quantity × rate computed exactly and rounded once,
//!   half-even, to 18 decimals. A product rust_decimal cannot hold exactly (over 28 significant
//!   digits) is an overflow error, so no cost is ever rounded twice.

use meterline_schemas::money::MONEY_SCALE;
use meterline_schemas::{CostLines, Money, Rate, ServiceTier, Usage};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::Error;

/// Decimals a fractional quantity (seconds) is metered at.
const QTY_SCALE: u32 = 9;

/// The rates of one price book entry.
pub struct RateCard<'a> {
    pub price_id: &'a str,
    pub rates: &'a [Rate],
}

impl RateCard<'_> {
    /// The rate for `unit` at `tier` for a request with `total_input` tokens.
    pub fn rate(&self, unit: &str, tier: ServiceTier, total_input: i64) -> Option<Money> {
        let pick = |tier: &str| {
            self.rates
                .iter()
                .filter(|r| {
                    r.unit == unit
                        && r.tier == tier
                        && (r.above_input_tokens == 0 || total_input > r.above_input_tokens)
                })
                .max_by_key(|r| r.above_input_tokens)
                .map(|r| r.price)
        };
        pick(tier.as_str()).or_else(|| pick(ServiceTier::Standard.as_str()))
    }

    /// The first unit among `units` that has a rate.
    fn rate_or(
        &self,
        units: &[&'static str],
        tier: ServiceTier,
        total_input: i64,
    ) -> Option<Money> {
        units.iter().find_map(|u| self.rate(u, tier, total_input))
    }
}

/// quantity × the first available rate among `units`, exact, then rounded once to 18 decimals.
fn line(
    qty: impl Into<Decimal>,
    units: &[&'static str],
    card: &RateCard,
    tier: ServiceTier,
    total_input: i64,
) -> Result<Money, Error> {
    let mut qty: Decimal = qty.into();
    if qty.scale() > QTY_SCALE {
        qty = qty.round_dp_with_strategy(QTY_SCALE, RoundingStrategy::MidpointNearestEven);
    }
    if qty.is_zero() {
        return Ok(Money::ZERO);
    }
    let rate = card
        .rate_or(units, tier, total_input)
        .ok_or_else(|| Error::NoRate {
            price_id: card.price_id.to_string(),
            unit: units[0],
            tier: tier.as_str().to_string(),
        })?;
    let rate = rate.decimal();
    let cost = rate
        .checked_mul(qty)
        .ok_or(Error::Overflow { what: units[0] })?;
    // rust_decimal reduces the scale (rounding) when a product does not fit its 96 bits:
    // refuse that rather than round twice.
    if cost.scale() != rate.scale() + qty.scale() && !cost.is_zero() {
        return Err(Error::Overflow { what: units[0] });
    }
    let cost = cost.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointNearestEven);
    // The guard of "never $0 by accident": a positive quantity at a positive rate is never free.
    if cost.is_zero() && rate > Decimal::ZERO {
        return Err(Error::ZeroCost {
            what: units[0],
            qty: qty.to_string(),
            rate: rate.to_string(),
        });
    }
    Money::new(cost).map_err(|_| Error::Overflow { what: units[0] })
}

fn add(parts: &[Money], what: &'static str) -> Result<Money, Error> {
    parts
        .iter()
        .try_fold(Money::ZERO, |a, b| a.checked_add(*b))
        .ok_or(Error::Overflow { what })
}

/// Prices one event's usage.
pub fn price(usage: &Usage, tier: ServiceTier, card: &RateCard) -> Result<CostLines, Error> {
    use meterline_schemas::unit::*;
    let n = usage.total_input_tokens().ok_or(Error::Overflow {
        what: "total input tokens",
    })?;
    // Audio input is input (as audio output is output): both land in their token line.
    let input = add(
        &[
            line(usage.input_tokens, &[INPUT], card, tier, n)?,
            line(
                usage.audio_input_tokens,
                &[AUDIO_INPUT, INPUT],
                card,
                tier,
                n,
            )?,
        ],
        "input",
    )?;
    let cache_read = line(usage.cache_read_tokens, &[CACHE_READ, INPUT], card, tier, n)?;
    let cache_write = add(
        &[
            line(
                usage.cache_write_5m_tokens,
                &[CACHE_WRITE_5M, INPUT],
                card,
                tier,
                n,
            )?,
            line(
                usage.cache_write_1h_tokens,
                &[CACHE_WRITE_1H, CACHE_WRITE_5M, INPUT],
                card,
                tier,
                n,
            )?,
        ],
        "cache writes",
    )?;
    let output = add(
        &[
            line(usage.output_tokens, &[OUTPUT], card, tier, n)?,
            line(
                usage.audio_output_tokens,
                &[AUDIO_OUTPUT, OUTPUT],
                card,
                tier,
                n,
            )?,
        ],
        "output",
    )?;
    let reasoning = line(usage.reasoning_tokens, &[REASONING, OUTPUT], card, tier, n)?;
    let seconds = usage.seconds.map(|s| s.decimal()).unwrap_or_default();
    let other = add(
        &[
            line(usage.images, &[IMAGE], card, tier, n)?,
            line(seconds, &[SECOND], card, tier, n)?,
            line(usage.characters, &[CHARACTER], card, tier, n)?,
            line(usage.requests, &[REQUEST], card, tier, n)?,
        ],
        "other units",
    )?;
    let total = add(
        &[input, cache_read, cache_write, output, reasoning, other],
        "total",
    )?;
    Ok(CostLines {
        input,
        cache_read,
        cache_write,
        output,
        reasoning,
        other,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::unit::*;

    fn r(unit: &str, tier: &str, above: i64, price: &str) -> Rate {
        Rate {
            unit: unit.into(),
            tier: tier.into(),
            above_input_tokens: above,
            price: price.parse().unwrap(),
        }
    }

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    /// gpt-4o in LiteLLM's catalog (1.109.1): input 2.5e-06, cached 1.25e-06, output 1e-05,
    /// batches 1.25e-06 / 5e-06.
    fn gpt4o() -> Vec<Rate> {
        vec![
            r(INPUT, "standard", 0, "2.5e-06"),
            r(CACHE_READ, "standard", 0, "1.25e-06"),
            r(OUTPUT, "standard", 0, "1e-05"),
            r(INPUT, "batch", 0, "1.25e-06"),
            r(OUTPUT, "batch", 0, "5e-06"),
        ]
    }

    fn u(input: i64, cache_read: i64, output: i64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_tokens: cache_read,
            output_tokens: output,
            ..Default::default()
        }
    }

    #[test]
    fn litellm_recorded_response_cost_is_reproduced_exactly() {
        // tests/fixtures/litellm_slp_gcs_pubsub_test.json: gpt-4o, 10 prompt + 20 completion
        // tokens, response_cost 0.00022500000000000002 (a float for 0.000225).
        let rates = gpt4o();
        let c = price(
            &u(10, 0, 20),
            ServiceTier::Standard,
            &RateCard {
                price_id: "openai/gpt-4o",
                rates: &rates,
            },
        )
        .unwrap();
        assert_eq!(c.total, m("0.000225"));
        assert_eq!((c.input, c.output), (m("0.000025"), m("0.0002")));
    }

    #[test]
    fn cached_input_is_billed_once_at_the_cache_rate() {
        let rates = gpt4o();
        let c = price(
            &u(500, 1500, 60),
            ServiceTier::Standard,
            &RateCard {
                price_id: "p",
                rates: &rates,
            },
        )
        .unwrap();
        assert_eq!(c.input, m("0.00125"));
        assert_eq!(c.cache_read, m("0.001875"));
        assert_eq!(c.output, m("0.0006"));
        assert_eq!(c.total, m("0.003725"));
    }

    #[test]
    fn batch_tier_uses_its_rates_and_falls_back_per_unit() {
        let rates = gpt4o();
        let c = price(
            &u(1000, 100, 100),
            ServiceTier::Batch,
            &RateCard {
                price_id: "p",
                rates: &rates,
            },
        )
        .unwrap();
        assert_eq!(c.input, m("0.00125"));
        assert_eq!(c.output, m("0.0005"));
        assert_eq!(
            c.cache_read,
            m("0.000125"),
            "no batch cache rate: standard cache rate"
        );
    }

    #[test]
    fn context_tier_applies_strictly_above_its_threshold() {
        let rates = vec![
            r(INPUT, "standard", 0, "0.000003"),
            r(INPUT, "standard", 200_000, "0.000006"),
            r(OUTPUT, "standard", 0, "0.000015"),
            r(OUTPUT, "standard", 200_000, "0.0000225"),
        ];
        let card = RateCard {
            price_id: "p",
            rates: &rates,
        };
        assert_eq!(
            price(&u(200_000, 0, 1), ServiceTier::Standard, &card)
                .unwrap()
                .input,
            m("0.6")
        );
        let above = price(&u(150_000, 50_001, 1), ServiceTier::Standard, &card).unwrap();
        assert_eq!(
            above.input,
            m("0.9"),
            "total input 200,001 > 200k: tier rate"
        );
        assert_eq!(above.output, m("0.0000225"));
        assert_eq!(
            above.cache_read,
            m("0.300006"),
            "no cache rate: input rate of the tier"
        );
    }

    #[test]
    fn anthropic_cache_writes_reasoning_and_units() {
        let rates = vec![
            r(INPUT, "standard", 0, "0.000003"),
            r(OUTPUT, "standard", 0, "0.000015"),
            r(CACHE_READ, "standard", 0, "3e-07"),
            r(CACHE_WRITE_5M, "standard", 0, "3.75e-06"),
            r(CACHE_WRITE_1H, "standard", 0, "6e-06"),
            r(IMAGE, "standard", 0, "0.04"),
            r(SECOND, "standard", 0, "0.0001"),
        ];
        let usage = Usage {
            input_tokens: 13,
            cache_write_5m_tokens: 60,
            cache_write_1h_tokens: 40,
            output_tokens: 5,
            reasoning_tokens: 10,
            images: 2,
            seconds: Some(m("7.5")),
            ..Default::default()
        };
        let c = price(
            &usage,
            ServiceTier::Standard,
            &RateCard {
                price_id: "p",
                rates: &rates,
            },
        )
        .unwrap();
        assert_eq!(c.cache_write, m("0.000465"));
        assert_eq!(c.reasoning, m("0.00015"), "reasoning at the output rate");
        assert_eq!(c.other, m("0.08075"));
        assert_eq!(
            c.total,
            c.input + c.cache_read + c.cache_write + c.output + c.reasoning + c.other
        );
    }

    #[test]
    fn a_missing_rate_is_an_error_never_zero() {
        let rates = vec![r(INPUT, "standard", 0, "0.000001")];
        let e = price(
            &u(10, 0, 5),
            ServiceTier::Standard,
            &RateCard {
                price_id: "emb",
                rates: &rates,
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::NoRate { price_id, unit: OUTPUT, tier } if price_id == "emb" && tier == "standard"),
            "{e:?}"
        );
        let e = price(
            &Usage {
                images: 1,
                ..Default::default()
            },
            ServiceTier::Standard,
            &RateCard {
                price_id: "emb",
                rates: &rates,
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::NoRate { unit: IMAGE, .. }));
        // zero quantities need no rate
        assert_eq!(
            price(
                &u(10, 0, 0),
                ServiceTier::Standard,
                &RateCard {
                    price_id: "emb",
                    rates: &rates
                }
            )
            .unwrap()
            .total,
            m("0.00001")
        );
    }
}
