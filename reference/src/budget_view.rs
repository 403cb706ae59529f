//! The one view of budgets and their signals: which budgets exist on what terms
//! (`meterline.budgets`) and which signal of the budget tracker (`meterline.budget.signals`)
//! is in force for each. The edge decides allow/throttle/block from it and the API's budget
//! report shows it: both read the same records by the same rules, so the report cannot
//! disagree with what the edge enforces.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meterline_schemas::{BudgetChange, BudgetSignal};

/// Budgets (latest version of each live one) and the latest signal of each.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BudgetView {
    budgets: BTreeMap<String, BudgetChange>,
    signals: BTreeMap<String, BudgetSignal>,
}

impl BudgetView {
    /// Applies a budget version. Versions only move forward (a compacted topic may deliver an
    /// older one after a newer one on a re-read); a deleted budget is no longer live.
    pub fn apply_budget(&mut self, b: BudgetChange) {
        if self
            .budgets
            .get(&b.budget_id)
            .is_some_and(|o| o.version >= b.version)
        {
            return;
        }
        // A deletion is kept as the budget's latest version, so an older live version read
        // later cannot bring the budget back. Its signals stay: whether one is in force
        // depends only on the budget's current version, never on the order the two topics
        // were read in (the report reads them apart, the edge interleaved).
        self.budgets.insert(b.budget_id.clone(), b);
    }

    /// Applies a signal. The latest is the one of the latest period, then the latest
    /// decision time, then the highest threshold (two thresholds crossed by one flush share
    /// a time).
    pub fn apply_signal(&mut self, s: BudgetSignal) {
        let newer = self.signals.get(&s.budget_id).is_none_or(|o| {
            (s.period_start, s.at, s.threshold_percent)
                >= (o.period_start, o.at, o.threshold_percent)
        });
        if newer {
            self.signals.insert(s.budget_id.clone(), s);
        }
    }

    /// Live budgets (not deleted), by id.
    pub fn budgets(&self) -> impl Iterator<Item = &BudgetChange> {
        self.budgets.values().filter(|b| !b.deleted)
    }

    /// The live budget `id`.
    pub fn budget(&self, id: &str) -> Option<&BudgetChange> {
        self.budgets.get(id).filter(|b| !b.deleted)
    }

    /// The signal in force for budget `id` at `now`: the latest one, if its period contains
    /// `now` and it was decided on the budget's current terms (limit and currency). A changed
    /// limit is re-evaluated by the tracker, which publishes the new state; until then the
    /// budget has no signal in force.
    pub fn signal_in_force(&self, id: &str, now: DateTime<Utc>) -> Option<&BudgetSignal> {
        let b = self.budget(id)?;
        self.signals.get(id).filter(|s| {
            b.limit == s.limit
                && b.currency == s.currency
                && s.period_start <= now
                && now < s.period_end
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{
        BudgetAction, BudgetState, Money, PeriodKind, Scope, ScopeKind, Threshold,
    };

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(version: i64, limit: &str, deleted: bool) -> BudgetChange {
        BudgetChange {
            budget_id: "b".into(),
            version,
            name: "search".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            limit: limit.parse::<Money>().unwrap(),
            currency: "USD".into(),
            period: PeriodKind::Month,
            timezone: "UTC".into(),
            custom_from: None,
            custom_to: None,
            thresholds: vec![Threshold {
                percent: 100,
                action: BudgetAction::Block,
            }],
            webhooks: vec![],
            effective_from: t("2026-01-01T00:00:00Z"),
            effective_to: None,
            deleted,
            author: "t".into(),
            reason: String::new(),
            changed_at: t("2026-01-01T00:00:00Z"),
        }
    }

    fn signal(limit: &str, start: &str, end: &str, at: &str, pct: i32) -> BudgetSignal {
        BudgetSignal {
            budget_id: "b".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            period_start: t(start),
            period_end: t(end),
            state: BudgetState::Exceeded,
            action: BudgetAction::Block,
            threshold_percent: Some(pct),
            spend: "120".parse().unwrap(),
            limit: limit.parse().unwrap(),
            currency: "USD".into(),
            at: t(at),
        }
    }

    #[test]
    fn the_latest_signal_is_by_period_then_time_then_threshold() {
        let nov = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
        let dec = ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z");
        let mut v = BudgetView::default();
        v.apply_budget(budget(1, "100", false));
        // a December signal, then a late-read November one decided later: December stands
        v.apply_signal(signal("100", dec.0, dec.1, "2026-12-02T00:00:00Z", 80));
        v.apply_signal(signal("100", nov.0, nov.1, "2026-12-03T00:00:00Z", 100));
        let now = t("2026-12-05T00:00:00Z");
        assert_eq!(
            v.signal_in_force("b", now).unwrap().threshold_percent,
            Some(80)
        );
        // same time, higher threshold wins
        v.apply_signal(signal("100", dec.0, dec.1, "2026-12-02T00:00:00Z", 100));
        assert_eq!(
            v.signal_in_force("b", now).unwrap().threshold_percent,
            Some(100)
        );
        // the period over: nothing in force
        assert!(v.signal_in_force("b", t("2027-01-01T00:00:00Z")).is_none());
    }

    #[test]
    fn changed_terms_and_deletions_end_a_signal() {
        let now = t("2026-12-05T00:00:00Z");
        let mut v = BudgetView::default();
        v.apply_budget(budget(1, "100", false));
        v.apply_signal(signal(
            "100",
            "2026-12-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
            "2026-12-02T00:00:00Z",
            100,
        ));
        assert!(v.signal_in_force("b", now).is_some());
        v.apply_budget(budget(2, "500", false));
        assert!(
            v.signal_in_force("b", now).is_none(),
            "decided on the old limit"
        );
        // an older version read late changes nothing
        v.apply_budget(budget(1, "100", false));
        assert_eq!(v.budget("b").unwrap().version, 2);
        v.apply_budget(budget(3, "500", true));
        assert!(v.budget("b").is_none() && v.budgets().next().is_none());
        v.apply_budget(budget(2, "500", false));
        assert!(
            v.budget("b").is_none(),
            "a deletion is not undone by an older version"
        );
    }
}
