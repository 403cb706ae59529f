//! Budgets: which budgets a priced event counts against, the period it falls in, running spend
//! per (budget, period), and threshold crossings — each emitted once per (budget, period,
//! threshold). Pure: no Kafka, no files; the stage feeds it rows and restores what it already
//! emitted from the compacted signals topic.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use meterline_schemas::scope::Attribution;
use meterline_schemas::{
    BudgetAction, BudgetChange, BudgetSignal, BudgetState, Money, PricedUsage,
};

use meterline_reference::budgets::period_at;

use crate::Error;

/// How long after its end a period still takes late events (and is kept in memory). Events
/// later than this still reach the ledger; they no longer move a budget nobody enforces.
pub const LATE_GRACE: Duration = Duration::hours(1);

/// What the budget ledger needs of a priced row (from the stream or from a Parquet file).
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    pub who: Attribution,
    pub occurred_at: DateTime<Utc>,
    pub cost: Money,
    pub currency: String,
    /// The usage mix, for anomaly detection: uncached input, cache reads, output.
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub output_tokens: i64,
    /// The call failed (its cost still counts).
    pub failed: bool,
}

impl SpendRow {
    pub fn of_priced(row: &PricedUsage) -> SpendRow {
        SpendRow {
            who: Attribution::of_priced(row),
            occurred_at: row.event.occurred_at,
            cost: row.cost.total,
            currency: row.currency.clone(),
            input_tokens: row.event.usage.input_tokens,
            cache_read_tokens: row.event.usage.cache_read_tokens,
            output_tokens: row.event.usage.output_tokens,
            failed: row.event.status == meterline_schemas::CallStatus::Error,
        }
    }
}

#[derive(Debug, Default)]
struct PeriodSpend {
    end: Option<DateTime<Utc>>,
    spend: Money,
    /// Highest threshold percent already signalled in this period.
    signalled: Option<i32>,
}

/// Running spend of every budget in every open period, and what has been signalled.
#[derive(Debug, Default)]
pub struct BudgetBook {
    budgets: HashMap<String, BudgetChange>,
    periods: HashMap<(String, DateTime<Utc>), PeriodSpend>,
}

impl BudgetBook {
    /// The newest version of a budget replaces the previous one; `deleted` removes it.
    /// Returns whether anything changed.
    pub fn apply(&mut self, change: BudgetChange) -> bool {
        let newer = self
            .budgets
            .get(&change.budget_id)
            .is_none_or(|b| change.version > b.version);
        if !newer {
            return false;
        }
        if change.deleted {
            self.budgets.remove(&change.budget_id);
            self.periods.retain(|(id, _), _| *id != change.budget_id);
        } else {
            self.budgets.insert(change.budget_id.clone(), change);
        }
        true
    }

    pub fn budgets(&self) -> impl Iterator<Item = &BudgetChange> {
        self.budgets.values()
    }

    /// A signal already on the topic: its threshold is not emitted again in its period — as
    /// long as it was emitted under the budget's current terms (limit and currency). A signal
    /// from before the limit changed does not hold back crossings of the new limit.
    pub fn restore(&mut self, s: &BudgetSignal) {
        let Some(b) = self.budgets.get(&s.budget_id) else {
            return;
        };
        if b.limit != s.limit || b.currency != s.currency {
            return;
        }
        let p = self
            .periods
            .entry((s.budget_id.clone(), s.period_start))
            .or_default();
        p.end = Some(s.period_end);
        p.signalled = p.signalled.max(s.threshold_percent);
    }

    /// Forgets all spend, keeps the budgets and what was signalled (a rebuild follows).
    pub fn clear_spend(&mut self) {
        for p in self.periods.values_mut() {
            p.spend = Money::ZERO;
        }
    }

    /// Spend so far of `budget_id` in the period starting at `start`.
    pub fn spend(&self, budget_id: &str, start: DateTime<Utc>) -> Money {
        self.periods
            .get(&(budget_id.to_string(), start))
            .map(|p| p.spend)
            .unwrap_or_default()
    }

    /// The earliest instant an open period of any budget starts: a rebuild reads the ledger
    /// from there.
    pub fn open_since(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let mut min: Option<DateTime<Utc>> = None;
        for b in self.budgets.values() {
            if let Some((start, _)) = period_at(b, now - LATE_GRACE)?.or(period_at(b, now)?) {
                min = Some(min.map_or(start, |m| m.min(start)));
            }
        }
        Ok(min)
    }

    /// Drops periods that ended more than [`LATE_GRACE`] ago.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.periods
            .retain(|_, p| p.end.is_none_or(|end| end + LATE_GRACE > now));
    }

    /// Counts `row` against every budget it falls under; returns the crossings it causes, in
    /// threshold order (one event may cross several thresholds at once: each is signalled).
    pub fn add(&mut self, row: &SpendRow, now: DateTime<Utc>) -> Result<Vec<BudgetSignal>, Error> {
        let mut out = vec![];
        for b in self.budgets.values() {
            if b.currency != row.currency
                || !b.scope.matches(&row.who)
                || row.occurred_at < b.effective_from
                || b.effective_to.is_some_and(|to| row.occurred_at >= to)
            {
                continue;
            }
            let Some((start, end)) = period_at(b, row.occurred_at)? else {
                continue;
            };
            if end + LATE_GRACE <= now {
                continue; // a closed period
            }
            let p = self
                .periods
                .entry((b.budget_id.clone(), start))
                .or_default();
            p.end = Some(end);
            p.spend = p
                .spend
                .checked_add(row.cost)
                .ok_or_else(|| Error::Fatal(format!("budget {} spend overflows", b.budget_id)))?;
            out.extend(crossings(b, p, start, end, now));
        }
        Ok(out)
    }

    /// After a budget's terms changed: its state in the current period under the new terms,
    /// as one signal (state `ok` when below every threshold, so an edge blocking under the old
    /// terms lets go), and the thresholds reached count as signalled from now on. `None` when
    /// the budget is gone, has no open period, or neither was nor is over a threshold (a new
    /// budget starts silently).
    pub fn reevaluate(
        &mut self,
        budget_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetSignal>, Error> {
        let Some(b) = self.budgets.get(budget_id) else {
            return Ok(None);
        };
        let Some((start, end)) = period_at(b, now)? else {
            return Ok(None);
        };
        let p = self
            .periods
            .entry((b.budget_id.clone(), start))
            .or_default();
        p.end = Some(end);
        let before = p.signalled.take();
        let reached = crossings(b, p, start, end, now);
        if before.is_none() && reached.is_empty() {
            return Ok(None); // nothing was signalled and nothing is: no news
        }
        Ok(Some(reached.into_iter().last().unwrap_or_else(|| {
            BudgetSignal {
                budget_id: b.budget_id.clone(),
                scope: b.scope.clone(),
                period_start: start,
                period_end: end,
                state: BudgetState::Ok,
                spend: p.spend,
                limit: b.limit,
                currency: b.currency.clone(),
                threshold_percent: None,
                action: BudgetAction::Notify,
                at: now,
            }
        })))
    }
}

/// The thresholds `p`'s spend has reached and not yet signalled, lowest first; marks them.
fn crossings(
    b: &BudgetChange,
    p: &mut PeriodSpend,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<BudgetSignal> {
    let mut thresholds: Vec<_> = b.thresholds.iter().collect();
    thresholds.sort_by_key(|t| t.percent);
    let mut out = vec![];
    for t in thresholds {
        if p.signalled.is_some_and(|s| s >= t.percent) {
            continue;
        }
        // spend ≥ limit × percent / 100, compared exactly
        let reached = p.spend.decimal() * rust_decimal::Decimal::from(100)
            >= b.limit.decimal() * rust_decimal::Decimal::from(t.percent);
        if !reached {
            break;
        }
        p.signalled = Some(t.percent);
        out.push(BudgetSignal {
            budget_id: b.budget_id.clone(),
            scope: b.scope.clone(),
            period_start: start,
            period_end: end,
            state: if t.percent >= 100 {
                BudgetState::Exceeded
            } else {
                BudgetState::Warning
            },
            spend: p.spend,
            limit: b.limit,
            currency: b.currency.clone(),
            threshold_percent: Some(t.percent),
            action: t.action,
            at: now,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{PeriodKind, Scope, ScopeKind, Threshold, UsageEvent};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(period: PeriodKind, tz: &str) -> BudgetChange {
        BudgetChange {
            budget_id: "b1".into(),
            version: 1,
            name: "search monthly".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            limit: "100".parse().unwrap(),
            currency: "USD".into(),
            period,
            timezone: tz.into(),
            custom_from: None,
            custom_to: None,
            thresholds: vec![
                Threshold {
                    percent: 100,
                    action: BudgetAction::Block,
                },
                Threshold {
                    percent: 50,
                    action: BudgetAction::Notify,
                },
                Threshold {
                    percent: 80,
                    action: BudgetAction::Throttle,
                },
            ],
            webhooks: vec![],
            effective_from: t("2026-01-01T00:00:00Z"),
            effective_to: None,
            deleted: false,
            author: "t".into(),
            reason: "t".into(),
            changed_at: t("2026-01-01T00:00:00Z"),
        }
    }

    fn row(team: &str, at: &str, cost: &str) -> SpendRow {
        SpendRow::of_priced(&priced(team, at, cost))
    }

    fn priced(team: &str, at: &str, cost: &str) -> PricedUsage {
        let mut event = UsageEvent::example();
        event.occurred_at = t(at);
        PricedUsage {
            priced_at: t(at),
            ..PricedUsage::example(event, team, cost.parse().unwrap())
        }
    }

    #[test]
    fn periods_follow_the_budget_time_zone() {
        let m = budget(PeriodKind::Month, "Europe/Berlin");
        // 23:30 UTC on Jan 31 is already February in Berlin (UTC+1)
        let (s, e) = period_at(&m, t("2026-01-31T23:30:00Z")).unwrap().unwrap();
        assert_eq!(
            (s, e),
            (t("2026-01-31T23:00:00Z"), t("2026-02-28T23:00:00Z"))
        );
        // March has the DST switch: the period is 31 days minus one hour long
        let (s, e) = period_at(&m, t("2026-03-15T12:00:00Z")).unwrap().unwrap();
        assert_eq!(
            (s, e),
            (t("2026-02-28T23:00:00Z"), t("2026-03-31T22:00:00Z"))
        );
        let w = budget(PeriodKind::Week, "UTC");
        // 2026-11-25 is a Wednesday
        let (s, e) = period_at(&w, t("2026-11-25T08:00:00Z")).unwrap().unwrap();
        assert_eq!(
            (s, e),
            (t("2026-11-23T00:00:00Z"), t("2026-11-30T00:00:00Z"))
        );
        let d = budget(PeriodKind::Day, "America/New_York");
        let (s, _) = period_at(&d, t("2026-07-01T03:00:00Z")).unwrap().unwrap();
        assert_eq!(s, t("2026-06-30T04:00:00Z"));
        let mut c = budget(PeriodKind::Custom, "UTC");
        assert!(
            period_at(&c, t("2026-01-01T00:00:00Z")).is_err(),
            "custom needs a range"
        );
        c.custom_from = Some(t("2026-05-01T00:00:00Z"));
        c.custom_to = Some(t("2026-05-10T00:00:00Z"));
        assert_eq!(
            period_at(&c, t("2026-05-10T00:00:00Z")).unwrap(),
            None,
            "end is exclusive"
        );
        assert!(period_at(&budget(PeriodKind::Day, "Mars/Olympus"), Utc::now()).is_err());
    }

    #[test]
    fn each_threshold_is_signalled_once_per_period_and_a_new_period_starts_clean() {
        let mut book = BudgetBook::default();
        book.apply(budget(PeriodKind::Month, "UTC"));
        let now = t("2026-03-20T00:00:00Z");
        assert!(book
            .add(
                &row("search", "2026-03-01T10:00:00Z", "49.999999999999999999"),
                now
            )
            .unwrap()
            .is_empty());
        let s = book
            .add(
                &row("search", "2026-03-02T10:00:00Z", "0.000000000000000001"),
                now,
            )
            .unwrap();
        assert_eq!(s.len(), 1, "exactly at 50 %");
        assert_eq!(
            (s[0].threshold_percent, s[0].state),
            (Some(50), BudgetState::Warning)
        );
        assert!(
            book.add(&row("ads", "2026-03-02T10:00:00Z", "1000"), now)
                .unwrap()
                .is_empty(),
            "other team"
        );
        // one event crossing 80 and 100 at once: both, in order
        let s = book
            .add(&row("search", "2026-03-03T10:00:00Z", "60"), now)
            .unwrap();
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.threshold_percent, s.action, s.state))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(80), BudgetAction::Throttle, BudgetState::Warning),
                (Some(100), BudgetAction::Block, BudgetState::Exceeded)
            ]
        );
        assert_eq!(s[1].spend, "110".parse().unwrap());
        assert!(
            book.add(&row("search", "2026-03-04T10:00:00Z", "500"), now)
                .unwrap()
                .is_empty(),
            "no repeats"
        );
        // April: a new period
        let s = book
            .add(&row("search", "2026-04-01T00:00:00Z", "50"), now)
            .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].period_start, t("2026-04-01T00:00:00Z"));
    }

    #[test]
    fn restored_signals_are_not_emitted_again_after_a_restart() {
        let mut before = BudgetBook::default();
        before.apply(budget(PeriodKind::Month, "UTC"));
        let now = t("2026-03-20T00:00:00Z");
        let emitted = before
            .add(&row("search", "2026-03-01T10:00:00Z", "85"), now)
            .unwrap();
        assert_eq!(emitted.len(), 2);
        // restart: the spend is rebuilt from the ledger, the signals from their topic
        let mut after = BudgetBook::default();
        after.apply(budget(PeriodKind::Month, "UTC"));
        for s in &emitted {
            after.restore(s);
        }
        assert!(after
            .add(&row("search", "2026-03-01T10:00:00Z", "85"), now)
            .unwrap()
            .is_empty());
        let s = after
            .add(&row("search", "2026-03-02T10:00:00Z", "15"), now)
            .unwrap();
        assert_eq!(
            s.iter().map(|s| s.threshold_percent).collect::<Vec<_>>(),
            vec![Some(100)]
        );
    }

    #[test]
    fn scopes_versions_and_deletion() {
        let r = priced("search", "2026-03-01T10:00:00Z", "1");
        let sc = |kind, value: &str| Scope {
            kind,
            value: value.into(),
        };
        let in_scope = |s: &Scope, r: &PricedUsage| s.matches(&Attribution::of_priced(r));
        assert!(in_scope(&sc(ScopeKind::Org, "acme"), &r));
        assert!(in_scope(&sc(ScopeKind::ApiKey, "key-1"), &r));
        assert!(in_scope(&sc(ScopeKind::Model, "openai/gpt-4o"), &r));
        assert!(in_scope(&sc(ScopeKind::Model, "gpt-4o"), &r));
        assert!(!in_scope(&sc(ScopeKind::Model, "anthropic/gpt-4o"), &r));
        assert!(!in_scope(&sc(ScopeKind::Tag, "env"), &r));
        let mut tagged = r.clone();
        tagged.event.tags.insert("env".into(), "prod".into());
        assert!(in_scope(&sc(ScopeKind::Tag, "env=prod"), &tagged));
        assert!(!in_scope(&sc(ScopeKind::CostCenter, "cc"), &r));

        let mut book = BudgetBook::default();
        let mut v2 = budget(PeriodKind::Month, "UTC");
        v2.version = 2;
        v2.limit = "10".parse().unwrap();
        book.apply(v2.clone());
        book.apply(budget(PeriodKind::Month, "UTC")); // an older version arriving late
        assert_eq!(book.budgets().next().unwrap().limit, "10".parse().unwrap());
        let mut del = v2;
        del.version = 3;
        del.deleted = true;
        book.apply(del);
        assert_eq!(book.budgets().count(), 0);
    }

    #[test]
    fn a_changed_limit_reevaluates_and_old_signals_do_not_hold_back_new_crossings() {
        let now = t("2026-03-20T00:00:00Z");
        let mut book = BudgetBook::default();
        book.apply(budget(PeriodKind::Month, "UTC"));
        let emitted = book
            .add(&row("search", "2026-03-01T10:00:00Z", "120"), now)
            .unwrap();
        assert_eq!(emitted.len(), 3);
        // the limit is raised to 200: at 120 the budget is at 60 % → warning, not blocked
        let mut v2 = budget(PeriodKind::Month, "UTC");
        v2.version = 2;
        v2.limit = "200".parse().unwrap();
        assert!(book.apply(v2.clone()));
        assert!(
            !book.apply(v2.clone()),
            "a replayed version changes nothing"
        );
        let s = book.reevaluate("b1", now).unwrap().unwrap();
        assert_eq!(
            (s.threshold_percent, s.action, s.state),
            (Some(50), BudgetAction::Notify, BudgetState::Warning)
        );
        let s = book
            .add(&row("search", "2026-03-02T10:00:00Z", "40"), now)
            .unwrap();
        assert_eq!(
            s.iter().map(|s| s.threshold_percent).collect::<Vec<_>>(),
            vec![Some(80)]
        );
        // after a restart, the signals emitted under limit 100 are not restored against 200
        let mut after = BudgetBook::default();
        after.apply(v2);
        for s in &emitted {
            after.restore(s);
        }
        let s = after
            .add(&row("search", "2026-03-01T10:00:00Z", "100"), now)
            .unwrap();
        assert_eq!(
            s.iter().map(|s| s.threshold_percent).collect::<Vec<_>>(),
            vec![Some(50)]
        );
        // raised so far that nothing is reached: an explicit `ok`
        let mut v3 = budget(PeriodKind::Month, "UTC");
        v3.version = 3;
        v3.limit = "1000".parse().unwrap();
        book.apply(v3);
        let s = book.reevaluate("b1", now).unwrap().unwrap();
        assert_eq!((s.state, s.threshold_percent), (BudgetState::Ok, None));
        // and again: nothing was over, nothing is — no news
        assert_eq!(book.reevaluate("b1", now).unwrap(), None);
    }

    #[test]
    fn closed_periods_take_no_spend_and_are_pruned() {
        let mut book = BudgetBook::default();
        book.apply(budget(PeriodKind::Day, "UTC"));
        let now = t("2026-03-20T12:00:00Z");
        // yesterday's period ended 12 h ago: beyond the grace
        assert!(book
            .add(&row("search", "2026-03-19T10:00:00Z", "500"), now)
            .unwrap()
            .is_empty());
        assert_eq!(book.spend("b1", t("2026-03-19T00:00:00Z")), Money::ZERO);
        // within the grace: 30 min after midnight, a late event of the previous day counts
        let just_after = t("2026-03-20T00:30:00Z");
        let s = book
            .add(&row("search", "2026-03-19T23:59:59Z", "60"), just_after)
            .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            book.open_since(just_after).unwrap(),
            Some(t("2026-03-19T00:00:00Z"))
        );
        book.prune(now);
        assert_eq!(book.spend("b1", t("2026-03-19T00:00:00Z")), Money::ZERO);
        assert_eq!(
            book.open_since(now).unwrap(),
            Some(t("2026-03-20T00:00:00Z"))
        );
    }
}
