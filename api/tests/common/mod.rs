//! Fixtures shared by the API's test binaries: a ledger written by the real writer with a
//! team lead's rows (team `search`) and, optionally, other teams' rows around them; an API on
//! port 0 over it; a SQL client.
#![allow(dead_code)]

use std::path::Path;

use meterline_api::{ApiConfig, App};
use meterline_ledger::Row;
use meterline_ledger::{Ledger, LedgerConfig};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::{
    Anomaly, Contributor, PricedUsage, Scope, ScopeKind, TenantPath, UsageEvent,
};
use serde_json::json;

pub const LEAD: &str = "lead-token";
pub const FINANCE: &str = "finance-token";

/// The lead's rows, the same in every ledger: (team, api key, model, cost, day of Nov 2026).
pub const OWN: [(&str, &str, &str, &str); 3] = [
    ("search", "key-search-7", "gpt-4o", "1.25"),
    ("search", "key-search-7", "gpt-4o-mini", "2.5"),
    ("search", "key-search-7", "gpt-4o", "0.000000000000000001"),
];

/// Other teams' rows: their values must never reach the lead, in any form.
pub const FOREIGN: [(Option<&str>, &str, &str, &str, u32); 5] = [
    (
        Some("data-science"),
        "key-ds-4242",
        "ds-secret-model",
        "999.999",
        20,
    ),
    (
        Some("data-science"),
        "key-ds-4243",
        "ds-secret-model",
        "4242.5",
        20,
    ),
    (None, "key-nobody-31337", "unattributed-secret", "999.5", 20),
    (Some("ads-secret"), "key-ads-777", "gpt-4o", "999.25", 21),
    (
        Some("ads-secret"),
        "key-ads-778",
        "ads-secret-model",
        "77.7",
        23,
    ),
];

/// Substrings of the foreign rows: none may appear in a lead's answer.
pub const SECRETS: [&str; 9] = [
    "data-science",
    "key-ds",
    "ds-secret",
    "key-nobody",
    "unattributed",
    "ads-secret",
    "key-ads",
    "999",
    "4242",
];

pub fn row(
    offset: i64,
    team: Option<&str>,
    api_key: &str,
    model: &str,
    cost: &str,
    day: u32,
) -> Row {
    let mut event = UsageEvent::example();
    event.event_id = format!("e-{team:?}-{model}-{cost}");
    event.model = model.into();
    event.api_key_id = Some(api_key.into());
    event.occurred_at = format!("2026-11-{day:02}T10:00:00Z").parse().unwrap();
    event.received_at = event.occurred_at;
    Row {
        priced: PricedUsage {
            tenant: TenantPath {
                org: "acme".into(),
                cost_center: team.map(|t| format!("cc-{t}")),
                team: team.map(str::to_string),
                ..Default::default()
            },
            priced_at: "2026-11-20T10:00:01Z".parse().unwrap(),
            ..PricedUsage::example(event, "", cost.parse().unwrap())
        },
        partition: 0,
        offset,
    }
}

fn anomaly(kind: ScopeKind, value: &str, observed: &str, contributor: &str) -> Anomaly {
    Anomaly {
        anomaly_id: format!("spend_spike/{value}"),
        scope: Scope {
            kind,
            value: value.into(),
        },
        model: Some("gpt-4o".into()),
        kind: "spend_spike".into(),
        window_start: "2026-11-20T10:00:00Z".parse().unwrap(),
        window_end: "2026-11-20T11:00:00Z".parse().unwrap(),
        observed: observed.parse().unwrap(),
        expected: "1".parse().unwrap(),
        score: 9.0,
        method: "robust_z".into(),
        top_contributors: vec![Contributor {
            kind: "api_key".into(),
            value: contributor.into(),
            spend: observed.parse().unwrap(),
        }],
        at: "2026-11-20T11:00:05Z".parse().unwrap(),
    }
}

/// A ledger (and anomalies) under `dir`: the lead's rows on 2026-11-20 and, with `foreign`,
/// other teams' rows in the same file (interleaved, so offsets have gaps) and in other files.
pub fn write_ledger(dir: &Path, foreign: bool) {
    let mut rows = vec![];
    let mut offset = 0;
    for (i, (team, key, model, cost)) in OWN.iter().enumerate() {
        if foreign {
            let (t, k, m, c, d) = FOREIGN[i];
            rows.push(row(offset, t, k, m, c, d));
            offset += 1;
        }
        rows.push(row(offset, Some(team), key, model, cost, 20));
        offset += 1;
    }
    if foreign {
        for (t, k, m, c, d) in &FOREIGN[OWN.len()..] {
            rows.push(row(offset, *t, k, m, c, *d));
            offset += 1;
        }
    }
    Ledger::open(&LedgerConfig::default(), dir)
        .unwrap()
        .append(0, 0, offset - 1, &rows)
        .unwrap();
    let mut anomalies = vec![anomaly(ScopeKind::Team, "search", "5", "key-search-7")];
    if foreign {
        anomalies.push(anomaly(
            ScopeKind::Team,
            "data-science",
            "999",
            "key-ds-4242",
        ));
        anomalies.push(anomaly(ScopeKind::Org, "acme", "4242", "key-nobody-31337"));
    }
    meterline_ledger::AnomalyTable::open(&meterline_ledger::LedgerConfig::default(), dir)
        .unwrap()
        .replace_hour("2026-11-20T10:00:00Z".parse().unwrap(), &anomalies)
        .unwrap();
}

pub fn tokens() -> Vec<TokenConfig> {
    let token = |p: &str, t: &str, role, teams: Vec<String>| TokenConfig {
        principal: p.into(),
        sha256: hash_token(t),
        role,
        teams,
    };
    vec![
        token("lead", LEAD, Role::TeamLead, vec!["search".into()]),
        token("fin", FINANCE, Role::Finance, vec![]),
    ]
}

/// A running API.
pub struct Server {
    pub base: String,
    /// Queries running on its query runtime.
    pub running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// What its `budgets` table shows.
    pub budgets: std::sync::Arc<meterline_api::BudgetCache>,
}

/// An API over `dir` (already written), serving on port 0.
pub async fn start(dir: &Path, edit: impl FnOnce(&mut ApiConfig)) -> Server {
    let mut cfg = ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        tokens: tokens(),
        ..Default::default()
    };
    edit(&mut cfg);
    let app = App::build(None, cfg, LedgerConfig::default())
        .await
        .unwrap();
    let server = Server {
        base: format!("http://{}", app.local_addr()),
        running: app.running_queries(),
        budgets: app.budgets(),
    };
    tokio::spawn(app.run_until_stopped());
    server
}

/// [`start`]'s base URL.
pub async fn serve(dir: &Path, edit: impl FnOnce(&mut ApiConfig)) -> String {
    start(dir, edit).await.base
}

pub async fn sql(base: &str, token: &str, q: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .bearer_auth(token)
        .json(&json!({ "sql": q }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Panics if `body` holds anything of the foreign rows.
pub fn assert_no_secret(q: &str, body: &str) {
    for s in SECRETS {
        assert!(!body.contains(s), "{q} leaked {s:?}: {body}");
    }
}

/// Live budgets: the lead's team budget and, with `foreign`, others' (an org budget and
/// another team's, whose names are secrets too).
pub fn budget_snapshot(foreign: bool) -> meterline_api::BudgetSnapshot {
    let budget = |id: &str, name: &str, scope: &str, limit: &str| {
        let d: meterline_reference::budgets::BudgetDraft = serde_json::from_value(json!({
            "budget_id": id, "name": name, "scope": scope, "limit": limit,
            "effective_from": "2026-11-01T00:00:00Z",
        }))
        .unwrap();
        let b =
            meterline_reference::budgets::draft(d, "test", "2026-11-01T00:00:00Z".parse().unwrap())
                .unwrap();
        (id.to_string(), b)
    };
    let mut all = vec![budget(
        "b-search",
        "search monthly",
        "team=search",
        "100.00",
    )];
    if foreign {
        all.push(budget(
            "b-ds",
            "key-ds-4242 data-science budget",
            "team=data-science",
            "999.50",
        ));
        all.push(budget(
            "b-org",
            "unattributed-secret org budget",
            "org=acme",
            "4242.00",
        ));
    }
    meterline_api::BudgetSnapshot::new(all.into_iter().collect(), &[])
}
