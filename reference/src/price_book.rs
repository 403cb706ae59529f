//! The effective-dated price book: every PriceChange version ever published, looked up by
//! (provider, model) and the call's `occurred_at`. A version applies from its
//! `effective_from` (inclusive) to its `effective_to` (exclusive) or the next version's start;
//! so a back-dated correction reprices events not yet priced, and a future price applies only
//! once its time comes. A `deleted` version retires the entry from its start.
//!
//! Model names seen in traffic are resolved in this order (first hit wins), and only ever to
//! an entry of the event's own provider family (`provider_family`): a reseller's or another
//! cloud's entry for the same model name (`gmi/openai/gpt-4o`, `vercel_ai_gateway/openai/o3-mini`)
//! never prices an `openai` call, whatever the name says.
//! 1. the exact name (an entry's model name or price id), then a declared alias;
//! 2. the name without its provider/region prefix (`openai/`, `bedrock/`, `us.`, `eu.`, `global.`):
//!    the prefix is understood as a route, not matched as text;
//! 3. the name without a dated snapshot suffix (`-2024-08-06`, `-20250514`, `-v1:0`);
//! 4. both removed.
//!
//! Which step found the price travels with the priced record (`PricedUsage::price_resolution`)
//! and `meterline prices resolve PROVIDER MODEL` shows it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meterline_schemas::PriceChange;

use crate::history::History;

/// How a model name reached its price entry (`PricedUsage::price_resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The entry's model name or price id.
    Exact,
    /// One of the entry's declared aliases.
    Alias,
    /// After removing a provider or region prefix (`openai/`, `us.`).
    PrefixStripped,
    /// After removing a dated snapshot suffix (`-2024-08-06`).
    SnapshotStripped,
    /// After removing both.
    PrefixAndSnapshotStripped,
}

impl Resolution {
    pub fn as_str(&self) -> &'static str {
        match self {
            Resolution::Exact => "exact",
            Resolution::Alias => "alias",
            Resolution::PrefixStripped => "prefix_stripped",
            Resolution::SnapshotStripped => "snapshot_stripped",
            Resolution::PrefixAndSnapshotStripped => "prefix_and_snapshot_stripped",
        }
    }
}

/// The provider a price entry or an event names, reduced to who bills the call: LiteLLM's
/// catalog splits one provider's entries by API surface (`vertex_ai-language-models`,
/// `vertex_ai-anthropic_models`, `bedrock_converse`, `text-completion-openai`), which are the
/// same bill. Different companies (`azure` and `azure_ai`, `gemini` and `vertex_ai`, `openai`
/// and a reseller) stay apart.
pub fn provider_family(provider: &str) -> String {
    let p = provider.trim().to_ascii_lowercase();
    if p.starts_with("vertex_ai") {
        return "vertex_ai".into();
    }
    match p.as_str() {
        "bedrock_converse" | "bedrock_mantle" => "bedrock".into(),
        "text-completion-openai" => "openai".into(),
        "azure_text" => "azure".into(),
        "text-completion-codestral" => "codestral".into(),
        _ => p,
    }
}

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

    /// The entry of `family` that answers to `name` at `at`, and whether by name or alias.
    fn lookup(&self, family: &str, name: &str, at: DateTime<Utc>) -> Option<(&PriceChange, bool)> {
        let ids = self.names.get(&name.to_ascii_lowercase())?;
        ids.iter()
            .filter_map(|id| self.versions.in_force(id, at))
            .find(|c| provider_family(&c.provider) == family)
            .map(|c| {
                let by_name =
                    c.model.eq_ignore_ascii_case(name) || c.price_id.eq_ignore_ascii_case(name);
                (c, by_name)
            })
    }

    /// The price that applies to a call of `model` from `provider` that happened at
    /// `occurred_at`, and how the name found it. Never an entry of another provider family.
    pub fn price_at(
        &self,
        provider: &str,
        model: &str,
        occurred_at: DateTime<Utc>,
    ) -> Option<(&PriceChange, Resolution)> {
        let family = provider_family(provider);
        let unprefixed = strip_prefix(model);
        let candidates = [
            (model, Resolution::Exact),
            (unprefixed, Resolution::PrefixStripped),
            (strip_snapshot(model), Resolution::SnapshotStripped),
            (
                strip_snapshot(unprefixed),
                Resolution::PrefixAndSnapshotStripped,
            ),
        ];
        candidates.into_iter().find_map(|(name, how)| {
            self.lookup(&family, name, occurred_at)
                .map(|(c, by_name)| match (how, by_name) {
                    (Resolution::Exact, false) => (c, Resolution::Alias),
                    _ => (c, how),
                })
        })
    }

    /// Every version of `price_id`, ordered by (effective_from, version).
    pub fn versions(&self, price_id: &str) -> &[PriceChange] {
        self.versions.versions(price_id)
    }

    /// Every version of every entry: by price id, then (effective_from, version).
    pub fn every_version(&self) -> Vec<&PriceChange> {
        self.versions.every_version()
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
            .map(|(c, _)| c.rates[0].price.to_string())
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
            input_price(&b, "anthropic", "us.claude-sonnet-4-20250514", at).as_deref(),
            Some("0.000003"),
            "region prefix"
        );
        assert_eq!(
            input_price(&b, "bedrock", "us.claude-sonnet-4-20250514", at),
            None,
            "bedrock has no entry here: anthropic's own price must not apply"
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

    #[test]
    fn another_providers_entry_never_applies() {
        // LiteLLM's catalog: the reseller entry `gmi/openai/gpt-4o` has model name
        // `openai/gpt-4o` and no cache-read rate; openai's own entry is `gpt-4o`.
        let mut b = PriceBook::new();
        b.apply(pc(
            "gmi/openai/gpt-4o",
            "gmi",
            "openai/gpt-4o",
            1,
            t(2024, 1, 1),
            "0.9",
        ));
        b.apply(pc(
            "vercel_ai_gateway/openai/o3-mini",
            "vercel_ai_gateway",
            "openai/o3-mini",
            1,
            t(2024, 1, 1),
            "0.8",
        ));
        b.apply(pc(
            "gpt-4o",
            "openai",
            "gpt-4o",
            1,
            t(2024, 1, 1),
            "0.0000025",
        ));
        let at = t(2025, 1, 1);
        let (c, how) = b.price_at("openai", "openai/gpt-4o", at).unwrap();
        assert_eq!(
            (c.price_id.as_str(), how),
            ("gpt-4o", Resolution::PrefixStripped)
        );
        assert!(
            b.price_at("openai", "openai/o3-mini", at).is_none(),
            "only a reseller prices o3-mini here: no price, never theirs"
        );
        let (c, how) = b.price_at("gmi", "openai/gpt-4o", at).unwrap();
        assert_eq!(
            (c.price_id.as_str(), how),
            ("gmi/openai/gpt-4o", Resolution::Exact)
        );
    }

    #[test]
    fn one_model_two_names_resolve_to_one_entry_and_say_how() {
        let mut b = PriceBook::new();
        b.apply(pc(
            "gemini/gemini-2.5-pro",
            "gemini",
            "gemini-2.5-pro",
            1,
            t(2024, 1, 1),
            "0.00000125",
        ));
        b.apply(pc(
            "gemini-2.5-pro",
            "vertex_ai-language-models",
            "gemini-2.5-pro",
            1,
            t(2024, 1, 1),
            "0.000002",
        ));
        let at = t(2025, 1, 1);
        let a = b.price_at("gemini", "gemini/gemini-2.5-pro", at).unwrap();
        let c = b.price_at("gemini", "gemini-2.5-pro", at).unwrap();
        assert_eq!(a.0.price_id, c.0.price_id);
        assert_eq!(a.0.model, "gemini-2.5-pro");
        assert_eq!((a.1, c.1), (Resolution::Exact, Resolution::Exact));
        let v = b.price_at("vertex_ai", "gemini-2.5-pro-001", at);
        assert!(v.is_none(), "-001 is not a dated snapshot");
        let (v, how) = b.price_at("vertex_ai", "gemini-2.5-pro", at).unwrap();
        assert_eq!(
            (v.price_id.as_str(), how),
            ("gemini-2.5-pro", Resolution::Exact)
        );
        assert_eq!(provider_family("bedrock_converse"), "bedrock");
        assert_ne!(provider_family("azure_ai"), provider_family("azure"));
    }
}
