//! The budget report (API `budgets` table) and the edge's enforcement agree: both are fed
//! the same budget versions and signals, in any order, and for every team the budgets the edge
//! names as over a threshold are exactly the report's rows not `ok`, with the same state,
//! threshold and spend. Pure logic (no broker): both read through `meterline_reference::
//! BudgetView`. Before it, the report took a budget's latest signal by time only and ignored
//! changed terms, the edge by period, time and threshold: a late-read November signal hid a
//! December warning from the report, and a raised limit kept an old block on the report only.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Decimal128Type;
use meterline_api::{budgets_batch, BudgetSnapshot};
use meterline_ingest::enforcement::{CheckRequest, EnforcementState};
use meterline_schemas::{
    AvroRecord, BudgetAction, BudgetChange, BudgetSignal, BudgetState, Money, PeriodKind, Scope,
    ScopeKind, Threshold,
};
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const LIMITS: [&str; 2] = ["100", "200"];
const PERIODS: [(&str, &str); 2] = [
    ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
];

fn team(i: usize) -> String {
    format!("team-{}", i % 2)
}

fn budget(i: usize, version: i64, limit: usize, deleted: bool) -> BudgetChange {
    BudgetChange {
        budget_id: format!("b{i}"),
        version,
        name: format!("budget {i}"),
        scope: Scope {
            kind: ScopeKind::Team,
            value: team(i),
        },
        limit: LIMITS[limit].parse::<Money>().unwrap(),
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
        author: "test".into(),
        reason: String::new(),
        changed_at: t("2026-01-01T00:00:00Z"),
    }
}

#[allow(clippy::too_many_arguments)]
fn signal(
    i: usize,
    period: usize,
    at_hour: u32,
    percent: i32,
    state: usize,
    action: usize,
    limit: usize,
    spend: u32,
) -> BudgetSignal {
    let (start, end) = PERIODS[period];
    BudgetSignal {
        budget_id: format!("b{i}"),
        scope: Scope {
            kind: ScopeKind::Team,
            value: team(i),
        },
        period_start: t(start),
        period_end: t(end),
        state: [BudgetState::Ok, BudgetState::Warning, BudgetState::Exceeded][state],
        spend: Money::new(rust_decimal::Decimal::from(spend)).unwrap(),
        limit: LIMITS[limit].parse().unwrap(),
        currency: "USD".into(),
        threshold_percent: Some(percent),
        action: [
            BudgetAction::Notify,
            BudgetAction::Throttle,
            BudgetAction::Block,
        ][action],
        // signals of both periods are decided during December (a late flush of November)
        at: t("2026-12-01T00:00:00Z") + chrono::Duration::hours(at_hour as i64),
    }
}

#[derive(Debug, Clone)]
enum Record {
    Budget(BudgetChange),
    Signal(BudgetSignal),
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (0usize..4, 1i64..4, 0usize..2, prop::bool::weighted(0.15))
            .prop_map(|(i, v, l, d)| Record::Budget(budget(i, v, l, d))),
        (
            0usize..4,
            0usize..2,
            0u32..96,
            prop::sample::select(vec![50, 80, 100]),
            0usize..3,
            0usize..3,
            0usize..2,
            0u32..300
        )
            .prop_map(|(i, p, h, pct, st, a, l, sp)| Record::Signal(signal(
                i, p, h, pct, st, a, l, sp
            ))),
    ]
}

/// (budget id, state, threshold, spend) of every budget over a threshold, per team.
type Verdicts = BTreeMap<String, BTreeSet<(String, String, Option<i32>, String)>>;

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn edge(records: &[Record], now: DateTime<Utc>) -> Verdicts {
    let mut st = EnforcementState::default();
    for r in records {
        match r {
            Record::Budget(b) => st.apply_budget(b.clone()),
            Record::Signal(s) => st.apply_signal(s.clone()),
        }
    }
    st.set_ready();
    let mut out = Verdicts::new();
    for i in 0..2 {
        let team = team(i);
        let r = st.check(
            &CheckRequest {
                team_id: Some(team.clone()),
                ..Default::default()
            },
            now,
        );
        out.insert(
            team,
            r.budgets
                .iter()
                .map(|b| {
                    (
                        b.budget_id.clone(),
                        label(&b.state),
                        b.threshold_percent,
                        b.spend.to_string(),
                    )
                })
                .collect(),
        );
    }
    out
}

fn report(records: &[Record], now: DateTime<Utc>) -> Verdicts {
    // what `budget_defs::load` hands the API: the latest version of each budget ever
    // published (deleted ones included); the signals as records of their topic
    let mut latest: BTreeMap<String, BudgetChange> = BTreeMap::new();
    let mut signals = vec![];
    for r in records {
        match r {
            Record::Budget(b) => {
                if latest
                    .get(&b.budget_id)
                    .is_none_or(|o| b.version > o.version)
                {
                    latest.insert(b.budget_id.clone(), b.clone());
                }
            }
            Record::Signal(s) => signals.push(s.to_avro().unwrap()),
        }
    }
    let batch = budgets_batch(&BudgetSnapshot::new(latest, &signals), now).unwrap();
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let (id, team, state) = (col("budget_id"), col("team"), col("state"));
    let (pct, spend) = (col("signal_threshold_percent"), col("signal_spend"));
    let spend = spend.as_primitive::<Decimal128Type>();
    let pct = pct.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    let mut out: Verdicts = (0..2).map(|i| (team_name(i), BTreeSet::new())).collect();
    for r in 0..batch.num_rows() {
        let state = state.as_string::<i32>().value(r).to_string();
        if state == "ok" {
            continue;
        }
        let money = Money::from_unscaled(spend.value(r)).unwrap();
        out.entry(team.as_string::<i32>().value(r).to_string())
            .or_default()
            .insert((
                id.as_string::<i32>().value(r).to_string(),
                state,
                (!pct.is_null(r)).then(|| pct.value(r)),
                money.to_string(),
            ));
    }
    out
}

fn team_name(i: usize) -> String {
    team(i)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_report_shows_what_the_edge_enforces(records in prop::collection::vec(record(), 0..40)) {
        let now = t("2026-12-05T12:00:00Z");
        prop_assert_eq!(report(&records, now), edge(&records, now));
    }
}

/// The two disagreements found by reading the code, as named cases.
#[test]
fn a_late_signal_of_an_earlier_period_and_a_raised_limit() {
    let now = t("2026-12-05T12:00:00Z");
    // December warning at 80 %, then November's final 100 % decided later
    let records = vec![
        Record::Budget(budget(0, 1, 0, false)),
        Record::Signal(signal(0, 1, 10, 80, 1, 0, 0, 85)),
        Record::Signal(signal(0, 0, 20, 100, 2, 2, 0, 120)),
    ];
    let r = report(&records, now);
    assert_eq!(r["team-0"].len(), 1, "{r:?}");
    assert_eq!(r, edge(&records, now));
    // the limit raised to 200: the old block was decided on other terms
    let mut raised = records.clone();
    raised.push(Record::Signal(signal(0, 1, 30, 100, 2, 2, 0, 120)));
    raised.push(Record::Budget(budget(0, 2, 1, false)));
    let r = report(&raised, now);
    assert!(r["team-0"].is_empty(), "{r:?}");
    assert_eq!(r, edge(&raised, now));
}
