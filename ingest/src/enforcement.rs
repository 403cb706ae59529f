//! The enforcement read path: may this key still spend?
//!
//! The edge follows `meterline.budget.signals` (what the budget tracker decided),
//! `meterline.budgets` (which budgets exist, on what terms) and `meterline.tenants` (to place
//! a key in the org the same way enrich bills it) into memory, and answers from there: no
//! broker round trip per check.
//!
//! A signal counts while its period is open, its budget still exists with the same limit
//! (a changed limit is re-evaluated by the tracker, which publishes the new state) and its
//! scope covers the caller. The decision is the strongest action among those signals:
//! block > throttle > allow (`notify` thresholds only inform).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meterline_reference::tenants::{TenantDirectory, UNATTRIBUTED};
use meterline_reference::BudgetView;
use meterline_runtime::follow::{self, TopicFollower};
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::scope::Attribution;
use meterline_schemas::{
    topics, AvroRecord, BudgetAction, BudgetChange, BudgetSignal, BudgetState, Money, Scope,
    TenantChange, UsageEvent,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a gateway knows about a call it is about to make.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The virtual key / API key id (as sent in usage events).
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Provider and model, when the gateway knows them (for model-scoped budgets).
    pub provider: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Throttle,
    Block,
}

/// A budget that made the decision.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ResponsibleBudget {
    pub budget_id: String,
    pub name: String,
    /// `kind:value`
    pub scope: String,
    #[schema(value_type = String)]
    pub state: BudgetState,
    #[schema(value_type = String)]
    pub action: BudgetAction,
    pub threshold_percent: Option<i32>,
    #[schema(value_type = String)]
    pub spend: Money,
    #[schema(value_type = String)]
    pub limit: Money,
    pub currency: String,
    pub period_end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CheckResponse {
    pub decision: Decision,
    /// Every budget over a threshold that covers the caller, strongest action first.
    pub budgets: Vec<ResponsibleBudget>,
    /// Seconds until the earliest blocking period ends (for Retry-After).
    pub retry_after_secs: Option<i64>,
    /// False until the edge has read the budget topics once (then every answer is `allow`).
    pub ready: bool,
}

/// Budgets, their signals and the tenant directory, as of the topics' last records.
#[derive(Default)]
pub struct EnforcementState {
    /// The one budget view (`meterline-reference`): the API's budget report reads the same.
    budgets: BudgetView,
    tenants: TenantDirectory,
    ready: bool,
}

impl EnforcementState {
    pub fn apply_budget(&mut self, b: BudgetChange) {
        self.budgets.apply_budget(b);
    }

    pub fn apply_signal(&mut self, s: BudgetSignal) {
        self.budgets.apply_signal(s);
    }

    pub fn apply_tenant(&mut self, t: TenantChange) {
        self.tenants.apply(t);
    }

    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    /// The caller's attribution: what enrich would bill it to (tenant rules), falling back to
    /// what the gateway says where no rule claims it.
    fn attribution(&self, r: &CheckRequest, now: DateTime<Utc>) -> Attribution {
        let mut e = UsageEvent::example();
        e.occurred_at = now;
        e.api_key_id = r.api_key_id.clone();
        e.user_id = r.user_id.clone();
        e.team_id = r.team_id.clone();
        e.org_id = r.org_id.clone();
        e.project_id = r.project_id.clone();
        e.tags = r.tags.clone();
        let (t, _) = self.tenants.resolve(&e);
        let resolved = t.org != UNATTRIBUTED;
        let pick = |rule: Option<String>, said: &Option<String>| {
            if resolved {
                rule
            } else {
                said.clone()
            }
        };
        Attribution {
            org: if resolved {
                Some(t.org)
            } else {
                r.org_id.clone()
            },
            cost_center: pick(t.cost_center, &None),
            team: pick(t.team, &r.team_id),
            project: pick(t.project, &r.project_id),
            api_key_id: r.api_key_id.clone(),
            user_id: r.user_id.clone(),
            tags: r.tags.clone(),
            provider: r.provider.clone(),
            model: r.model.clone(),
        }
    }

    pub fn check(&self, r: &CheckRequest, now: DateTime<Utc>) -> CheckResponse {
        if !self.ready {
            return CheckResponse {
                decision: Decision::Allow,
                budgets: vec![],
                retry_after_secs: None,
                ready: false,
            };
        }
        let who = self.attribution(r, now);
        let mut out: Vec<(Decision, ResponsibleBudget)> = vec![];
        for b in self.budgets.budgets() {
            let Some(s) = self.budgets.signal_in_force(&b.budget_id, now) else {
                continue;
            };
            if s.state == BudgetState::Ok || !covers(&b.scope, &who) {
                continue;
            }
            let decision = match s.action {
                BudgetAction::Block => Decision::Block,
                BudgetAction::Throttle => Decision::Throttle,
                BudgetAction::Notify => Decision::Allow,
            };
            out.push((
                decision,
                ResponsibleBudget {
                    budget_id: b.budget_id.clone(),
                    name: b.name.clone(),
                    scope: b.scope.label(),
                    state: s.state,
                    action: s.action,
                    threshold_percent: s.threshold_percent,
                    spend: s.spend,
                    limit: s.limit,
                    currency: s.currency.clone(),
                    period_end: s.period_end,
                },
            ));
        }
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.budget_id.cmp(&b.1.budget_id)));
        let decision = out.first().map_or(Decision::Allow, |(d, _)| *d);
        let retry_after_secs = (decision != Decision::Allow)
            .then(|| {
                out.iter()
                    .filter(|(d, _)| *d == decision)
                    .map(|(_, b)| (b.period_end - now).num_seconds().max(1))
                    .min()
            })
            .flatten();
        CheckResponse {
            decision,
            budgets: out.into_iter().map(|(_, b)| b).collect(),
            retry_after_secs,
            ready: true,
        }
    }
}

fn covers(scope: &Scope, who: &Attribution) -> bool {
    scope.matches(who)
}

/// Shared between the follower thread and the HTTP handlers.
pub type Shared = Arc<RwLock<EnforcementState>>;

const FOLLOWED: [&str; 3] = [topics::BUDGETS, topics::BUDGET_SIGNALS, topics::TENANTS];

fn apply(state: &Shared, topic: &str, bytes: &[u8]) {
    let mut s = state.write().expect("enforcement state");
    let ok = match topic {
        topics::BUDGETS => BudgetChange::from_avro(bytes).map(|b| s.apply_budget(b)),
        topics::BUDGET_SIGNALS => BudgetSignal::from_avro(bytes).map(|b| s.apply_signal(b)),
        topics::TENANTS => TenantChange::from_avro(bytes).map(|t| s.apply_tenant(t)),
        _ => Ok(()),
    };
    if let Err(e) = ok {
        warn!(topic, error = %e, "enforcement: skipping unreadable record");
    }
}

/// Follows the topics on a thread until `stop`. The edge serves meanwhile (`ready: false`
/// answers allow): a broker outage must not stop gateways.
pub fn follow(
    kafka: &KafkaConfig,
    stop: CancellationToken,
) -> Result<Shared, meterline_runtime::Error> {
    let state: Shared = Arc::default();
    let kafka = kafka.clone();
    let st = state.clone();
    std::thread::Builder::new()
        .name("enforcement".into())
        .spawn(move || {
            // 1. where the topics end now (retried until the broker answers)
            let mut follower = loop {
                if stop.is_cancelled() {
                    return;
                }
                let started = follow::reader(&kafka, "ingest-enforcement")
                    .and_then(|c| TopicFollower::start(c, &FOLLOWED));
                match started {
                    Ok(f) => break f,
                    Err(e) => {
                        warn!(error = %e, "enforcement: broker not reachable; answering allow");
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
            };
            // 2. everything from the beginning, then keep following; ready once caught up
            let mut ready = false;
            while !stop.is_cancelled() {
                if let Err(e) = follower.poll(Duration::from_millis(100), |t, v| apply(&st, t, v)) {
                    warn!(error = %e, "enforcement: poll");
                }
                if !ready && follower.caught_up() {
                    ready = true;
                    st.write().expect("enforcement state").set_ready();
                    info!("enforcement state loaded");
                }
            }
        })
        .map_err(|source| meterline_runtime::Error::Thread {
            name: "enforcement".into(),
            source,
        })?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{ScopeKind, TenantMatch, TenantPath, Threshold};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(id: &str, kind: ScopeKind, value: &str, limit: &str) -> BudgetChange {
        BudgetChange {
            budget_id: id.into(),
            version: 1,
            name: format!("{id} name"),
            scope: Scope {
                kind,
                value: value.into(),
            },
            limit: limit.parse().unwrap(),
            currency: "USD".into(),
            period: meterline_schemas::PeriodKind::Month,
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
            deleted: false,
            author: "a".into(),
            reason: "r".into(),
            changed_at: t("2026-01-01T00:00:00Z"),
        }
    }

    fn signal(b: &BudgetChange, action: BudgetAction, percent: i32) -> BudgetSignal {
        BudgetSignal {
            budget_id: b.budget_id.clone(),
            scope: b.scope.clone(),
            period_start: t("2026-11-01T00:00:00Z"),
            period_end: t("2026-12-01T00:00:00Z"),
            state: if percent >= 100 {
                BudgetState::Exceeded
            } else {
                BudgetState::Warning
            },
            spend: b.limit,
            limit: b.limit,
            currency: "USD".into(),
            threshold_percent: Some(percent),
            action,
            at: t("2026-11-20T00:00:00Z"),
        }
    }

    fn state() -> EnforcementState {
        let mut s = EnforcementState::default();
        s.apply_tenant(TenantChange {
            rule_id: "k7".into(),
            version: 1,
            priority: 0,
            matches: TenantMatch {
                api_key_id: Some("key-7".into()),
                ..Default::default()
            },
            tenant: TenantPath {
                org: "acme".into(),
                cost_center: Some("cc-1".into()),
                team: Some("search".into()),
                ..Default::default()
            },
            effective_from: t("2026-01-01T00:00:00Z"),
            effective_to: None,
            deleted: false,
            author: "a".into(),
            reason: "r".into(),
            changed_at: t("2026-01-01T00:00:00Z"),
        });
        s.set_ready();
        s
    }

    fn key(k: &str) -> CheckRequest {
        CheckRequest {
            api_key_id: Some(k.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_key_is_blocked_by_its_teams_budget_through_the_tenant_directory() {
        let mut s = state();
        let now = t("2026-11-23T10:00:00Z");
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Allow);
        let team = budget("team-search", ScopeKind::Team, "search", "100");
        let cc = budget("cc-1", ScopeKind::CostCenter, "cc-1", "1000");
        s.apply_budget(team.clone());
        s.apply_budget(cc.clone());
        s.apply_signal(signal(&cc, BudgetAction::Throttle, 80));
        let r = s.check(&key("key-7"), now);
        assert_eq!(r.decision, Decision::Throttle);
        s.apply_signal(signal(&team, BudgetAction::Block, 100));
        let r = s.check(&key("key-7"), now);
        assert_eq!(r.decision, Decision::Block);
        assert_eq!(
            r.budgets
                .iter()
                .map(|b| b.budget_id.as_str())
                .collect::<Vec<_>>(),
            vec!["team-search", "cc-1"],
            "strongest first"
        );
        assert_eq!(
            r.retry_after_secs,
            Some((t("2026-12-01T00:00:00Z") - now).num_seconds())
        );
        // another key of no rule, another team: allowed
        assert_eq!(s.check(&key("key-8"), now).decision, Decision::Allow);
        // unattributed key, but the gateway says which team: the gateway's word is used
        let said = CheckRequest {
            api_key_id: Some("key-9".into()),
            team_id: Some("search".into()),
            ..Default::default()
        };
        assert_eq!(s.check(&said, now).decision, Decision::Block);
        // next month: the period is over
        assert_eq!(
            s.check(&key("key-7"), t("2026-12-01T00:00:00Z")).decision,
            Decision::Allow
        );
    }

    #[test]
    fn stale_signals_do_not_block() {
        let mut s = state();
        let now = t("2026-11-23T10:00:00Z");
        let b = budget("k", ScopeKind::ApiKey, "key-7", "100");
        s.apply_budget(b.clone());
        s.apply_signal(signal(&b, BudgetAction::Block, 100));
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Block);
        // the limit was raised: the old signal no longer holds (the tracker re-evaluates)
        let mut v2 = b.clone();
        v2.version = 2;
        v2.limit = "500".parse().unwrap();
        s.apply_budget(v2.clone());
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Allow);
        // an older version arriving late changes nothing
        s.apply_budget(b.clone());
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Allow);
        // deleted
        let mut v3 = v2.clone();
        v3.version = 3;
        s.apply_budget(v3.clone());
        s.apply_signal(signal(&v3, BudgetAction::Block, 100));
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Block);
        let mut v4 = v3;
        v4.version = 4;
        v4.deleted = true;
        s.apply_budget(v4);
        assert_eq!(s.check(&key("key-7"), now).decision, Decision::Allow);
        // an `ok` re-evaluation clears a block
        let mut s2 = state();
        s2.apply_budget(b.clone());
        s2.apply_signal(signal(&b, BudgetAction::Block, 100));
        let mut ok = signal(&b, BudgetAction::Notify, 0);
        ok.state = BudgetState::Ok;
        ok.threshold_percent = None;
        ok.at = t("2026-11-21T00:00:00Z");
        s2.apply_signal(ok);
        assert_eq!(s2.check(&key("key-7"), now).decision, Decision::Allow);
    }

    #[test]
    fn not_ready_allows() {
        let s = EnforcementState::default();
        let r = s.check(&key("key-7"), Utc::now());
        assert_eq!((r.decision, r.ready), (Decision::Allow, false));
    }
}
