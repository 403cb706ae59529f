//! The effective-dated price book: every PriceChange version ever published, looked up by
//! (provider, model) and the call's `occurred_at`. A version applies from its
//! `effective_from` (inclusive) to its `effective_to` (exclusive) or the next version's start;
//! so a back-dated correction reprices events not yet priced, and a future price applies only
//! once its time comes. A `deleted` version retires the entry from its start.
//!
//! Model names seen in traffic are resolved in this order (first hit wins):
//! 1. the exact name, then a declared alias;
//! 2. the name without a provider/region prefix (`bedrock/`, `azure/`, `us.`, `eu.`, `global.`);
//! 3. the name without a dated snapshot suffix (`-2024-08-06`, `-20250514`, `-v1:0`);
//!
//! each first under the event's provider, then under any provider (catalog keys such as
//! `anthropic.claude-…` carry the provider in the name).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meterline_schemas::PriceChange;

use crate::history::History;

#[derive(Default)]
pub struct PriceBook {
    versions: History<PriceChange>,
    /// lower-cased name → price_ids that answer to it (canonical model names and aliases).
    names: HashMap<String, Vec<String>>,
}

fn strip_prefix(model: &str) -> &str {
    let m = model.rsplit('/').next().unwrap_or(model);
    for p in ["us.", "eu.", "apac.", "global.", "jp.", "au."] {
        if let Some(rest) = m.strip_prefix(p) {
            return rest;
        }
    }
    m
}

fn strip_snapshot(model: &str) -> &str {
    let m = model
        .strip_suffix(":0")
        .map(|m| {
            m.trim_end_matches(|c: char| c.is_ascii_digit())
                .trim_end_matches("-v")
        })
        .unwrap_or(model);
    let bytes = m.as_bytes();
    // -YYYY-MM-DD
    if m.len() > 11
        && bytes[m.len() - 11] == b'-'
        && m[m.len() - 10..].chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        })
    {
        return &m[..m.len() - 11];
    }
    // -YYYYMMDD
    if m.len() > 9
        && bytes[m.len() - 9] == b'-'
        && m[m.len() - 8..].chars().all(|c| c.is_ascii_digit())
    {
        return &m[..m.len() - 9];
    }
    m
}

impl PriceBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version (idempotent for a repeated (price_id, version)).
    pub fn apply(&mut self, change: PriceChange) {
        for name in std::iter::once(&change.model)
            .chain(change.aliases.iter())
            .chain(std::iter::once(&change.price_id))
        {
            let ids = self.names.entry(name.to_ascii_lowercase()).or_default();
            if !ids.contains(&change.price_id) {
                ids.push(change.price_id.clone());
            }
        }
        self.versions.insert(change);
    }

    fn lookup(&self, provider: &str, name: &str, at: DateTime<Utc>) -> Option<&PriceChange> {
        let ids = self.names.get(&name.to_ascii_lowercase())?;
        let in_force: Vec<&PriceChange> = ids
            .iter()
            .filter_map(|id| self.versions.in_force(id, at))
            .collect();
        in_force
            .iter()
            .find(|c| c.provider.eq_ignore_ascii_case(provider))
            .or(in_force.first())
            .copied()
    }

    /// The price that applies to a call of `model` from `provider` that happened at `occurred_at`.
    pub fn price_at(
        &self,
        provider: &str,
        model: &str,
        occurred_at: DateTime<Utc>,
    ) -> Option<&PriceChange> {
        let unprefixed = strip_prefix(model);
        [
            model,
            unprefixed,
            strip_snapshot(model),
            strip_snapshot(unprefixed),
        ]
        .into_iter()
        .find_map(|name| self.lookup(provider, name, occurred_at))
    }

    /// Every version of `price_id`, ordered by (effective_from, version).
    pub fn versions(&self, price_id: &str) -> &[PriceChange] {
        self.versions.versions(price_id)
    }

    /// The highest version of every entry.
    pub fn latest(&self) -> impl Iterator<Item = &PriceChange> {
        self.versions.latest()
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use meterline_schemas::Rate;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn pc(
        id: &str,
        provider: &str,
        model: &str,
        version: i64,
        from: DateTime<Utc>,
        price: &str,
    ) -> PriceChange {
        PriceChange {
            price_id: id.into(),
            version,
            provider: provider.into(),
            model: model.into(),
            aliases: vec![],
            currency: "USD".into(),
            rates: vec![Rate {
                unit: "input_token".into(),
                tier: "standard".into(),
                above_input_tokens: 0,
                price: price.parse().unwrap(),
            }],
            effective_from: from,
            effective_to: None,
            deleted: false,
            author: "t".into(),
            reason: "".into(),
            source: "".into(),
            changed_at: from,
        }
    }

    fn input_price(
        b: &PriceBook,
        provider: &str,
        model: &str,
        at: DateTime<Utc>,
    ) -> Option<String> {
        b.price_at(provider, model, at)
            .map(|c| c.rates[0].price.to_string())
    }

    #[test]
    fn versions_apply_by_occurred_at() {
        let mut b = PriceBook::new();
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            1,
            t(2024, 1, 1),
            "0.000005",
        ));
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            2,
            t(2025, 1, 1),
            "0.0000025",
        ));
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            3,
            t(2030, 1, 1),
            "0.000001",
        )); // announced future price
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2023, 6, 1)),
            None,
            "before any price: none, never 0"
        );
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2024, 6, 1)).as_deref(),
            Some("0.000005")
        );
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2026, 6, 1)).as_deref(),
            Some("0.0000025")
        );
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2030, 6, 1)).as_deref(),
            Some("0.000001")
        );
        // a back-dated correction of version 2
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            4,
            t(2025, 6, 1),
            "0.000002",
        ));
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2025, 3, 1)).as_deref(),
            Some("0.0000025")
        );
        assert_eq!(
            input_price(&b, "openai", "gpt-4o", t(2025, 7, 1)).as_deref(),
            Some("0.000002")
        );
    }

    #[test]
    fn retirement_and_end_dates() {
        let mut b = PriceBook::new();
        let mut v1 = pc("m", "p", "m", 1, t(2024, 1, 1), "0.1");
        v1.effective_to = Some(t(2024, 2, 1));
        b.apply(v1);
        assert!(b.price_at("p", "m", t(2024, 1, 15)).is_some());
        assert!(
            b.price_at("p", "m", t(2024, 2, 1)).is_none(),
            "end is exclusive"
        );
        let mut gone = pc("m", "p", "m", 2, t(2024, 3, 1), "0.1");
        gone.deleted = true;
        b.apply(gone);
        assert!(b.price_at("p", "m", t(2024, 4, 1)).is_none());
    }

    #[test]
    fn aliases_prefixes_and_snapshots_resolve() {
        let mut b = PriceBook::new();
        let mut c = pc(
            "anthropic/claude-sonnet-4",
            "anthropic",
            "claude-sonnet-4",
            1,
            t(2024, 1, 1),
            "0.000003",
        );
        c.aliases = vec!["claude-sonnet-4-0".into()];
        b.apply(c);
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            1,
            t(2024, 1, 1),
            "0.0000025",
        ));
        b.apply(pc(
            "azure/gpt-4o",
            "azure",
            "gpt-4o",
            1,
            t(2024, 1, 1),
            "0.00000275",
        ));
        let at = t(2025, 1, 1);
        assert_eq!(
            input_price(&b, "anthropic", "claude-sonnet-4-20250514", at).as_deref(),
            Some("0.000003"),
            "dated snapshot"
        );
        assert_eq!(
            input_price(&b, "anthropic", "claude-sonnet-4-0", at).as_deref(),
            Some("0.000003"),
            "alias"
        );
        assert_eq!(
            input_price(&b, "bedrock", "us.claude-sonnet-4-20250514", at).as_deref(),
            Some("0.000003"),
            "region prefix"
        );
        assert_eq!(
            input_price(&b, "openai", "gpt-4o-2024-08-06", at).as_deref(),
            Some("0.0000025")
        );
        assert_eq!(
            input_price(&b, "azure", "gpt-4o", at).as_deref(),
            Some("0.00000275"),
            "provider decides between same-named models"
        );
        assert_eq!(input_price(&b, "openai", "gpt-unknown", at), None);
    }
}
