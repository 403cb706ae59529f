//! `meterline enrich`: prices raw usage with the price in force when it happened and
//! attributes it to the org. This session: the pure cost rules (`cost`); the price book,
//! tenant directory, dedup and the exactly-once loop follow.

pub mod cost;
pub mod litellm;
pub mod price_book;

/// Errors of the enrich stage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No rate for a unit the event uses: the event is rejected with this reason, never priced at 0.
    #[error("no {unit} rate (tier {tier}) in price {price_id}")]
    NoRate {
        price_id: String,
        unit: &'static str,
        tier: String,
    },
    #[error("cost of {what} overflows")]
    Overflow { what: &'static str },
}
