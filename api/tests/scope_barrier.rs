//! A team lead's expressions never run on other teams' rows, and nothing derived from those
//! rows reaches it: not in plans (statistics, paths, file names), not in errors, not as a
//! yes/no answer, not in provenance columns. Checked on the examples an attacker used, then
//! as a property: any query, over a ledger with only the lead's rows and over one with other
//! teams' rows around them, gets the same answer (status, error text, rows).

mod common;

use common::*;

/// The physical plan of an `EXPLAIN` answer.
fn physical_plan(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["plan_type"] == "physical_plan")
        .unwrap_or_else(|| panic!("no physical plan: {body}"))["plan"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn plans_show_no_statistics_paths_or_file_names() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    let data_dir = dir.path().canonicalize().unwrap().display().to_string();
    for q in [
        "EXPLAIN VERBOSE SELECT * FROM usage",
        "EXPLAIN ANALYZE SELECT * FROM usage",
        "EXPLAIN ANALYZE VERBOSE SELECT count(*) FROM usage",
        "EXPLAIN (COSTS ON) SELECT * FROM usage",
        "EXPLAIN (ANALYZE) SELECT * FROM usage",
        "EXPLAIN FORMAT TREE SELECT * FROM usage",
        "EXPLAIN SELECT * FROM usage",
        "EXPLAIN SELECT * FROM anomalies",
        "EXPLAIN SELECT * FROM budgets",
    ] {
        let (status, body) = sql(&base, LEAD, q).await;
        assert_no_secret(q, &body);
        for s in [
            data_dir.as_str(),
            "part-",
            "date=",
            "Rows=",
            "Exact(",
            "Inexact(",
            "file_groups",
        ] {
            assert!(!body.contains(s), "{q} ({status}) shows {s:?}: {body}");
        }
        if q.contains("ANALYZE") || q.contains("VERBOSE") || q.contains('(') {
            assert_eq!(status, 400, "{q}: {body}");
            assert!(body.contains("team_lead"), "{q}: says why: {body}");
        } else {
            assert_eq!(status, 200, "{q}: {body}");
        }
    }
    // finance still gets every form
    for q in [
        "EXPLAIN VERBOSE SELECT * FROM usage",
        "EXPLAIN ANALYZE SELECT * FROM usage",
    ] {
        assert_eq!(sql(&base, FINANCE, q).await.0, 200, "{q}");
    }
}

#[tokio::test]
async fn the_callers_predicates_sit_above_the_scope_in_the_physical_plan() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    let q = "EXPLAIN SELECT model FROM usage WHERE CAST(CAST(api_key_id AS VARCHAR) AS INT) > 0 \
             AND date = '2026-11-20'";
    let (status, body) = sql(&base, LEAD, q).await;
    assert_eq!(status, 200, "{body}");
    let physical = physical_plan(&body);
    let lines: Vec<&str> = physical.lines().collect();
    let scope = lines
        .iter()
        .position(|l| l.contains("ScopeExec"))
        .unwrap_or_else(|| panic!("no ScopeExec: {physical}"));
    let filter = lines
        .iter()
        .position(|l| l.contains("api_key_id"))
        .unwrap_or_else(|| panic!("no user filter: {physical}"));
    assert!(
        filter < scope,
        "the caller's filter is above the scope: {physical}"
    );
    assert!(
        lines[scope..].iter().all(|l| !l.contains("api_key_id")),
        "nothing of the caller's filter at or below the scope: {physical}"
    );
    assert_eq!(scope, lines.len() - 1, "the scope is a leaf: {physical}");
}

/// A lead's comparisons of `date` with text only pick whole days below the scope (the listing
/// table applies them exactly): no filter re-compares every row's date above it, and the
/// days chosen are the right ones.
#[tokio::test]
async fn date_literals_select_days_below_the_scope_and_are_not_compared_again() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    let (status, body) = sql(
        &base,
        LEAD,
        "EXPLAIN SELECT model FROM usage WHERE date >= '2026-11-20' AND date < '2026-11-21'",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let physical = physical_plan(&body);
    assert!(physical.contains("ScopeExec"), "{physical}");
    assert!(
        !physical.contains("FilterExec"),
        "date compared per row: {physical}"
    );
    // the days chosen: the lead's three rows are all on the 20th; other teams' on 20, 21, 23
    for (filter, rows) in [
        ("date >= '2026-11-20' AND date < '2026-11-21'", 3),
        ("date = '2026-11-20'", 3),
        ("date BETWEEN '2026-11-01' AND '2026-11-30'", 3),
        ("date > '2026-11-20'", 0),
        ("date IN ('2026-11-21', '2026-11-23')", 0),
        ("date < '2026-11-20' OR date >= '2026-11-21'", 0),
    ] {
        let q = format!("SELECT count(*) AS n FROM usage WHERE {filter}");
        let (status, body) = sql(&base, LEAD, &q).await;
        assert_eq!(status, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["rows"][0]["n"], rows, "{q}: {body}");
    }
}

#[tokio::test]
async fn errors_quote_only_the_leads_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    for (q, own) in [
        (
            "SELECT * FROM usage WHERE CAST(CAST(api_key_id AS VARCHAR) AS INT) > 0",
            "key-search-7",
        ),
        ("SELECT * FROM usage WHERE CAST(model AS INT) > 0", "gpt-4o"),
        (
            "SELECT * FROM anomalies WHERE CAST(top_contributors AS INT) > 0",
            "key-search-7",
        ),
        (
            "SELECT * FROM daily_spend WHERE CAST(CAST(model AS VARCHAR) AS INT) > 0",
            "gpt-4o",
        ),
    ] {
        let (status, body) = sql(&base, LEAD, q).await;
        assert_eq!(status, 422, "{q}: {body}");
        assert!(body.contains(own), "{q}: the lead's own value: {body}");
        assert_no_secret(q, &body);
    }
}

#[tokio::test]
async fn no_yes_no_answer_about_other_teams() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    // each would divide by zero on some other team's row
    for q in [
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN team='data-science' THEN 0 ELSE 1 END)=1",
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN team IS NULL THEN 0 ELSE 1 END)=1",
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN cost_total > 500 THEN 0 ELSE 1 END)=1",
        "SELECT count(*) AS n FROM usage WHERE 1/(CASE WHEN api_key_id LIKE 'key-ds%' THEN 0 ELSE 1 END)=1",
        "SELECT count(*) AS n FROM anomalies WHERE 1/(CASE WHEN scope_kind = 'org' THEN 0 ELSE 1 END)=1",
    ] {
        let (status, body) = sql(&base, LEAD, q).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_no_secret(q, &body);
    }
}

#[tokio::test]
async fn provenance_is_hidden_from_leads() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |_| {}).await;
    let q = "SELECT kafka_partition, kafka_offset FROM usage";
    let (status, body) = sql(&base, LEAD, q).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{body}");
    for r in rows {
        assert!(
            r["kafka_offset"].is_null() && r["kafka_partition"].is_null(),
            "{body}"
        );
    }
    // finance sees where rows came from
    let (_, body) = sql(&base, FINANCE, "SELECT max(kafka_offset) AS m FROM usage").await;
    assert!(body.contains("\"m\":7"), "{body}");
}
