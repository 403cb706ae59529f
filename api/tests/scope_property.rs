//! The scoping rule as a property: a team lead's query — whatever expression it evaluates,
//! failing or not, wherever it puts it — gets the same answer (status, error text, rows)
//! over a ledger holding only its team's rows as over one where other teams' rows surround
//! them (same files, other files, other anomalies and budgets). If any expression ran on a
//! row outside the scope, or anything derived from such rows reached the answer, some
//! generated query would tell the two apart.

mod common;

use std::collections::HashSet;
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
    /// What the lead sees of `own` (see [`normal`]).
    own_view: Own,
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
        let (own, mixed) = runtime.block_on(async {
            let own = start(own_dir.path(), |_| {}).await;
            own.budgets.set(budget_snapshot(false));
            let mixed = start(mixed_dir.path(), |_| {}).await;
            mixed.budgets.set(budget_snapshot(true));
            (own.base, mixed.base)
        });
        let own_view = runtime.block_on(own_of(&own));
        Ledgers {
            runtime,
            own,
            mixed,
            own_view,
            _dirs: (own_dir, mixed_dir),
        }
    })
}

/// What the lead sees over its own rows only: every row of every table (as the API answers
/// it) and every value in them, as text.
#[derive(Default)]
struct Own {
    rows: HashSet<String>,
    values: HashSet<String>,
}

async fn own_of(base: &str) -> Own {
    fn leaves(v: &Value, out: &mut HashSet<String>) {
        match v {
            Value::Array(xs) => xs.iter().for_each(|x| leaves(x, out)),
            Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
            Value::String(s) => drop(out.insert(s.clone())),
            Value::Null => {}
            other => drop(out.insert(other.to_string())),
        }
    }
    let mut own = Own::default();
    for (t, _, _) in TABLES {
        let (status, body) = sql(base, LEAD, &format!("SELECT * FROM {t}")).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        leaves(&v["rows"], &mut own.values);
        own.rows
            .extend(v["rows"].as_array().unwrap().iter().map(|r| r.to_string()));
    }
    assert!(own.values.contains("gpt-4o-mini"), "{:?}", own.values);
    own
}

/// An answer to `q` in a form that depends only on what SQL defines, so that both ledgers
/// must give the same: not on row order, nor on which of two equally close function names
/// DataFusion suggests for an unknown one, nor on what a race between threads decides —
/// - which of tied rows a `LIMIT` keeps: rows all of the lead's own are compared by number;
/// - which of the lead's own values an error quotes (rows fail on several threads at once
///   and the first error answers): the error up to that value, and every other value it
///   quotes that is not one of the lead's.
/// A value of another team's, quoted or in a row, is never masked: it differs between the
/// ledgers (and the caller checks the raw answers for the foreign rows' secrets).
fn normal(q: &str, status: u16, body: &str, own: &Own) -> (u16, String) {
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
            v["rows"] = if q.contains(" LIMIT ") && rows.iter().all(|r| own.rows.contains(r)) {
                Value::from(format!("{} of the lead's own rows", rows.len()))
            } else {
                Value::from(rows)
            };
            (status, v.to_string())
        }
        _ => (status, quoted_own_values_masked(body, &own.values)),
    }
}

/// `body` up to its first quoted value that is one of `own` (as `'<own value>'`), then the
/// other quoted values that are not.
fn quoted_own_values_masked(body: &str, own: &HashSet<String>) -> String {
    let parts: Vec<&str> = body.split('\'').collect();
    let mut out = String::new();
    let mut masked = false;
    for (i, part) in parts.iter().enumerate() {
        // odd parts are between quotes
        let quoted = i % 2 == 1 && i + 1 < parts.len();
        if !masked {
            if i > 0 {
                out.push('\'');
            }
            if quoted && own.contains(*part) {
                out.push_str("<own value>'");
                masked = true;
            } else {
                out.push_str(part);
            }
        } else if quoted && !own.contains(*part) {
            out.push_str(&format!(" '{part}'"));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn other_teams_rows_change_nothing_a_lead_can_see(q in query()) {
        let l = ledgers();
        let (a, b) = l.runtime.block_on(async {
            tokio::join!(sql(&l.own, LEAD, &q), sql(&l.mixed, LEAD, &q))
        });
        for s in SECRETS {
            prop_assert!(!b.1.contains(s), "{} leaked {}: {}", q, s, b.1);
        }
        let (own, mixed) = (normal(&q, a.0, &a.1, &l.own_view), normal(&q, b.0, &b.1, &l.own_view));
        prop_assert_eq!(&own, &mixed, "{}", q);
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
        let (a, b) = l.runtime.block_on(async {
            tokio::join!(sql(&l.own, LEAD, q), sql(&l.mixed, LEAD, q))
        });
        assert_no_secret(q, &b.1);
        let (own, mixed) = (normal(&q, a.0, &a.1, &l.own_view), normal(&q, b.0, &b.1, &l.own_view));
        assert_eq!(own, mixed, "{q}");
    }
}

#[test]
fn only_the_leads_own_values_are_masked() {
    let own = Own {
        rows: [r#"{"model":"gpt-4o"}"#.to_string()].into(),
        values: ["gpt-4o".to_string()].into(),
    };
    let e = "from 'gpt-4o': bad date; nor 'ds-secret-model' nor 'gpt-4o'";
    assert_eq!(
        quoted_own_values_masked(e, &own.values),
        "from '<own value>' 'ds-secret-model'"
    );
    // an unpaired quote masks nothing after it
    assert_eq!(
        quoted_own_values_masked("it's gpt-4o", &own.values),
        "it's gpt-4o"
    );
    // a LIMIT's rows by number where all are the lead's own, as they are otherwise
    let rows = |r: &str| format!(r#"{{"row_count":1,"rows":[{r}]}}"#);
    let (mine, theirs) = (
        rows(r#"{"model":"gpt-4o"}"#),
        rows(r#"{"model":"ds-secret-model"}"#),
    );
    let q = "SELECT * FROM usage ORDER BY 1 LIMIT 1";
    assert!(normal(q, 200, &mine, &own)
        .1
        .contains("1 of the lead's own rows"));
    assert!(normal(q, 200, &theirs, &own).1.contains("ds-secret-model"));
    assert!(normal("SELECT * FROM usage", 200, &mine, &own)
        .1
        .contains("gpt-4o"));
}
