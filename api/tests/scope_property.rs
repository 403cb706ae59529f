//! The scoping rule as a property: a team lead's query — whatever expression it evaluates,
//! failing or not, wherever it puts it — gets the same answer (status, error text, rows)
//! over a ledger holding only its team's rows as over one where other teams' rows surround
//! them (same files, other files, other anomalies and budgets). If any expression ran on a
//! row outside the scope, or anything derived from such rows reached the answer, some
//! generated query would tell the two apart.
//!
//! Both APIs run each query in one partition (`api.query_partitions = 1`): in several,
//! which of tied rows a `LIMIT` keeps or which of the lead's own failing rows an error
//! quotes is a race between threads, and the two answers could differ with no row of another
//! team involved. A third API, over the mixed ledger in the default partitions, answers every
//! query too: nothing of the foreign rows may be in its answers.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use serde_json::Value;

/// Columns by table: (text columns, number columns).
const TABLES: [(&str, &[&str], &[&str]); 4] = [
    (
        "usage",
        &[
            "team",
            "model",
            "api_key_id",
            "event_id",
            "cost_center",
            "date",
            "provider",
        ],
        &[
            "cost_total",
            "input_tokens",
            "output_tokens",
            "kafka_offset",
            "kafka_partition",
        ],
    ),
    (
        "anomalies",
        &[
            "scope_value",
            "scope_kind",
            "top_contributors",
            "model",
            "anomaly_id",
        ],
        &["observed", "score", "expected"],
    ),
    (
        "budgets",
        &["name", "budget_id", "scope_value", "scope_kind", "team"],
        &["limit_amount", "version"],
    ),
    (
        "daily_spend",
        &["team", "model", "date", "cost_center"],
        &["cost", "events", "input_tokens"],
    ),
];

/// Values to compare with: the lead's own, and other teams' (a predicate on them used to
/// answer yes/no about rows the lead may not see).
const WORDS: [&str; 10] = [
    "search",
    "gpt-4o",
    "key-search-7",
    "data-science",
    "key-ds-4242",
    "ds-secret-model",
    "ads-secret",
    "unattributed-secret",
    "acme",
    "team",
];
const NUMBERS: [&str; 6] = ["0", "1", "2.5", "500", "999", "4242"];

fn pick(xs: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(xs.to_vec())
}

/// A boolean expression over `t`'s columns.
fn predicate(
    texts: &'static [&'static str],
    nums: &'static [&'static str],
) -> BoxedStrategy<String> {
    prop_oneof![
        (pick(texts), pick(&WORDS)).prop_map(|(c, w)| format!("CAST({c} AS VARCHAR) = '{w}'")),
        (pick(texts), pick(&WORDS)).prop_map(|(c, w)| {
            format!("CAST({c} AS VARCHAR) LIKE '{}%'", &w[..w.len().min(4)])
        }),
        (pick(nums), pick(&NUMBERS)).prop_map(|(c, n)| format!("{c} > {n}")),
        pick(texts).prop_map(|c| format!("{c} IS NULL")),
        (pick(texts), 0..30usize).prop_map(|(c, n)| format!("length(CAST({c} AS VARCHAR)) > {n}")),
    ]
    .boxed()
}

/// An integer expression that fails on some rows (and not on others).
fn failing(texts: &'static [&'static str], nums: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        pick(texts).prop_map(|c| format!("CAST(CAST({c} AS VARCHAR) AS INT)")),
        pick(texts).prop_map(|c| format!("CAST({c} AS INT)")),
        predicate(texts, nums).prop_map(|p| format!("1 / (CASE WHEN {p} THEN 0 ELSE 1 END)")),
        pick(nums).prop_map(|c| format!("CAST({c} AS TINYINT)")),
        pick(nums).prop_map(|c| format!("CAST(1 AS BIGINT) / CAST({c} - {c} AS BIGINT)")),
        pick(texts).prop_map(|c| format!("CAST(to_timestamp(CAST({c} AS VARCHAR)) AS BIGINT)")),
        pick(texts).prop_map(|c| format!("CAST(arrow_cast(CAST({c} AS VARCHAR), 'Int64') AS INT)")),
        (pick(texts), predicate(texts, nums)).prop_map(|(c, p)| {
            format!("CASE WHEN {p} THEN CAST(CAST({c} AS VARCHAR) AS INT) ELSE 1 END")
        }),
    ]
    .boxed()
}

/// A query putting a failing expression somewhere in a query over one table (or two).
fn query() -> impl Strategy<Value = String> {
    (0..TABLES.len(), 0..TABLES.len()).prop_flat_map(|(i, j)| {
        let (t, texts, nums) = TABLES[i];
        let (u, texts2, nums2) = TABLES[j];
        let f = failing(texts, nums);
        let p = predicate(texts, nums);
        let k = pick(texts);
        let _ = &k;
        prop_oneof![
            f.clone().prop_map(move |f| format!("SELECT count(*) AS n FROM {t} WHERE {f} = 1")),
            f.clone().prop_map(move |f| format!("SELECT {f} AS x FROM {t}")),
            (f.clone(), k.clone()).prop_map(move |(f, k)| format!(
                "SELECT CAST({k} AS VARCHAR) AS k, sum({f}) AS s FROM {t} GROUP BY CAST({k} AS VARCHAR) HAVING sum({f}) > 0"
            )),
            f.clone().prop_map(move |f| format!("SELECT * FROM {t} ORDER BY {f} LIMIT 1")),
            (p.clone(), f.clone()).prop_map(move |(p, f)| format!(
                "SELECT count(*) AS n FROM {t} WHERE {p} AND {f} > 0"
            )),
            (f.clone(), failing(texts2, nums2)).prop_map(move |(f, g)| format!(
                "SELECT count(*) AS n FROM {t} WHERE {f} = 1 OR EXISTS (SELECT 1 FROM {u} WHERE {g} = 1)"
            )),
            (f.clone(), failing(texts2, nums2)).prop_map(move |(f, g)| format!(
                "SELECT count(*) AS n FROM (SELECT {f} AS x FROM {t}) a JOIN (SELECT {g} AS y FROM {u}) b ON a.x = b.y"
            )),
            p.prop_map(move |p| format!("SELECT count(*) AS n, max(1 / (CASE WHEN {p} THEN 0 ELSE 1 END)) AS m FROM {t}")),
        ]
    })
}

struct Ledgers {
    runtime: tokio::runtime::Runtime,
    own: String,
    mixed: String,
    /// Over the mixed ledger, in the default partitions.
    parallel: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Two APIs: over the lead's rows only, and over the lead's rows among other teams'.
fn ledgers() -> &'static Ledgers {
    static L: OnceLock<Ledgers> = OnceLock::new();
    L.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (own_dir, mixed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_ledger(own_dir.path(), false);
        write_ledger(mixed_dir.path(), true);
        let one = |c: &mut meterline_api::ApiConfig| c.query_partitions = 1;
        let (own, mixed, parallel) = runtime.block_on(async {
            let own = start(own_dir.path(), one).await;
            own.budgets.set(budget_snapshot(false));
            let mixed = start(mixed_dir.path(), one).await;
            mixed.budgets.set(budget_snapshot(true));
            let parallel = start(mixed_dir.path(), |_| {}).await;
            parallel.budgets.set(budget_snapshot(true));
            (own.base, mixed.base, parallel.base)
        });
        Ledgers {
            runtime,
            own,
            mixed,
            parallel,
            _dirs: (own_dir, mixed_dir),
        }
    })
}

/// An answer in a form that does not depend on row order (nor on which of two equally close
/// function names DataFusion suggests for an unknown one).
fn normal(status: u16, body: &str) -> (u16, String) {
    let body = match body.find("\\nDid you mean") {
        Some(i) => &body[..i],
        None => body,
    };
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) if v.get("rows").is_some() => {
            let mut rows: Vec<String> = v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.to_string())
                .collect();
            rows.sort();
            v["rows"] = Value::from(rows);
            (status, v.to_string())
        }
        _ => (status, body.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn other_teams_rows_change_nothing_a_lead_can_see(q in query()) {
        let l = ledgers();
        let (own, mixed, parallel) = l.runtime.block_on(async {
            let (a, b, c) = tokio::join!(
                sql(&l.own, LEAD, &q),
                sql(&l.mixed, LEAD, &q),
                sql(&l.parallel, LEAD, &q)
            );
            (normal(a.0, &a.1), normal(b.0, &b.1), c.1)
        });
        prop_assert_eq!(&own, &mixed, "{}", q);
        for s in SECRETS {
            prop_assert!(!mixed.1.contains(s), "{} leaked {}: {}", q, s, mixed.1);
            prop_assert!(!parallel.contains(s), "{} leaked {} in parallel: {}", q, s, parallel);
        }
    }
}

#[test]
fn the_examples_the_attacker_used_are_among_them() {
    // the same property, on the exact queries of the report
    let l = ledgers();
    for q in [
        "SELECT * FROM usage WHERE CAST(CAST(api_key_id AS VARCHAR) AS INT) > 0",
        "SELECT * FROM anomalies WHERE CAST(top_contributors AS INT) > 0",
        "SELECT * FROM budgets WHERE CAST(name AS INT) > 0",
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN team='data-science' THEN 0 ELSE 1 END)=1",
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN cost_total > 999 THEN 0 ELSE 1 END)=1",
        "SELECT kafka_offset FROM usage",
        "SELECT max(kafka_offset) - min(kafka_offset) AS spread FROM usage",
        "EXPLAIN SELECT * FROM usage",
        "EXPLAIN VERBOSE SELECT * FROM usage",
        "SELECT input_file_name() AS f FROM usage",
    ] {
        let (own, mixed, parallel) = l.runtime.block_on(async {
            let (a, b, c) = tokio::join!(
                sql(&l.own, LEAD, q),
                sql(&l.mixed, LEAD, q),
                sql(&l.parallel, LEAD, q)
            );
            (normal(a.0, &a.1), normal(b.0, &b.1), c.1)
        });
        assert_eq!(own, mixed, "{q}");
        assert_no_secret(q, &mixed.1);
        assert_no_secret(q, &parallel);
    }
}
