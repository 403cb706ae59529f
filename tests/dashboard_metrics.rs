//! Every metric a Grafana panel (dashboards/*.json) queries is exported by a running stage.
//! The stages run for real on Apache Kafka (enrich, aggregate, watch and the api as processes,
//! each with its own /metrics; the edge in this process), events go through them — billed ones,
//! a duplicate, an unattributed one, one without a price, one the edge refuses, one the broker
//! refuses (spooled, then dead-lettered) and a budget crossing delivered to a webhook — and then
//! each dashboard's metrics must be on its stage's /metrics (the overview's on any stage's),
//! with the labels its queries select or group by. Also: the healthcheck paths of
//! docker-compose.yml answer 200 on the running stages, and every metric name constant is on a
//! dashboard unless listed here as deliberately not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{eventually, spawn_stage, Harness, FINANCE_TOKEN};
use serde_json::{json, Value};

/// Series Prometheus makes itself, not a stage.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Metric name constants deliberately on no dashboard, with why.
const NOT_ON_DASHBOARDS: [(&str, &str); 0] = [];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------------------------
// What the dashboards ask for

/// A metric a query selects, and the labels it names in its matchers or groupings.
#[derive(Debug, Default)]
struct Query {
    metrics: BTreeSet<String>,
    /// label → matched on these metrics (`name{label=…}`)
    matchers: BTreeSet<(String, String)>,
    /// `by (…)` / `without (…)` / `on (…)` … labels: on some metric of the query
    grouping: BTreeSet<String>,
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: [&str; 8] = [
    "bool", "and", "or", "unless", "offset", "inf", "nan", "atan2",
];
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Reads a PromQL expression: metric names (not functions, aggregations or keywords), the
/// label names of their matchers, and the labels of groupings. Strings and ranges are skipped.
fn parse_promql(expr: &str) -> Query {
    let c: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // `(a, b)` label list starting at c[j] == '(' → labels, index after ')'
    let label_list = |j: usize| -> (Vec<String>, usize) {
        let end = j + c[j..].iter().position(|&x| x == ')').expect("closing )");
        let inner: String = c[j + 1..end].iter().collect();
        let labels = inner
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        (labels, end + 1)
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '[' {
            i += c[i..].iter().position(|&x| x == ']').expect("closing ]") + 1;
        } else if ch.is_ascii_digit() || (ch == '.' && i + 1 < c.len() && c[i + 1].is_ascii_digit())
        {
            // a number (also 1e3, 0x1f, 1.5)
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if next < c.len() && c[next] == '(' {
                    let (labels, after) = label_list(next);
                    q.grouping.extend(labels);
                    i = after;
                }
            } else if AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
                || (next < c.len() && c[next] == '(')
            {
                // a function, an aggregation or a keyword
            } else {
                q.metrics.insert(word.clone());
                if next < c.len() && c[next] == '{' {
                    let end = next + c[next..].iter().position(|&x| x == '}').expect("closing }");
                    let inner: String = c[next + 1..end].iter().collect();
                    for m in split_outside_quotes(&inner) {
                        let label: String = m
                            .chars()
                            .take_while(|x| x.is_ascii_alphanumeric() || *x == '_')
                            .collect();
                        if !label.is_empty() {
                            q.matchers.insert((word.clone(), label));
                        }
                    }
                    i = end + 1;
                }
            }
        } else {
            i += 1;
        }
    }
    q
}

fn split_outside_quotes(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for ch in s.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().unwrap().push(ch);
    }
    out.into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// dashboard file stem → (panel title, expr) of every target.
fn dashboards() -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let d: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let mut exprs = vec![];
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                exprs.push((
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
        assert!(!exprs.is_empty(), "{} queries nothing", f.display());
        out.insert(f.file_stem().unwrap().to_str().unwrap().to_string(), exprs);
    }
    out
}

#[test]
fn the_promql_reader_finds_metrics_and_labels() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, job) (rate(meterline_a_seconds_bucket{reason!="x,y", kind=~"a|b"}[5m]))) / sum without(instance) (meterline_b) and on (partition) meterline_c offset 5m > bool 1e3"#,
    );
    assert_eq!(
        q.metrics,
        ["meterline_a_seconds_bucket", "meterline_b", "meterline_c"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        q.matchers,
        [
            ("meterline_a_seconds_bucket".to_string(), "kind".to_string()),
            (
                "meterline_a_seconds_bucket".to_string(),
                "reason".to_string()
            )
        ]
        .into()
    );
    assert_eq!(
        q.grouping,
        ["instance", "job", "le", "partition"]
            .map(String::from)
            .into()
    );
}

#[test]
fn every_metric_name_constant_is_on_a_dashboard() {
    let consts = std::fs::read_to_string(repo().join("schemas/src/metric_names.rs")).unwrap();
    let names: BTreeSet<String> = consts
        .split('"')
        .filter(|s| s.starts_with("meterline_"))
        .map(String::from)
        .collect();
    assert!(names.len() > 40, "{names:?}");
    let mut used = BTreeSet::new();
    for exprs in dashboards().values() {
        for (_, e) in exprs {
            for m in parse_promql(e).metrics {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| m.strip_suffix(s))
                    .unwrap_or(&m)
                    .to_string();
                used.insert(base);
                used.insert(m);
            }
        }
    }
    let exempt: BTreeSet<&str> = NOT_ON_DASHBOARDS.iter().map(|(n, _)| *n).collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !used.contains(*n) && !exempt.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "metrics on no dashboard: {missing:?}");
    for n in exempt {
        assert!(names.contains(n), "{n} is no longer a constant");
        assert!(
            !used.contains(n),
            "{n} is on a dashboard now: drop it from NOT_ON_DASHBOARDS"
        );
    }
}

// ------------------------------------------------------------------------------------------
// What the stages export

/// metric name → label names seen on its samples, from Prometheus text.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let end = name_end + line[name_end..].rfind('}').unwrap();
            for l in split_outside_quotes(&line[name_end + 1..end]) {
                labels.insert(l.split('=').next().unwrap().trim().to_string());
            }
        }
    }
    out
}

/// What of `exprs` is not in `have`: missing metrics and labels, described.
fn missing(exprs: &[(String, String)], have: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = vec![];
    for (title, e) in exprs {
        let q = parse_promql(e);
        assert!(!q.metrics.is_empty(), "{title}: `{e}` selects no metric");
        for m in &q.metrics {
            if !have.contains_key(m) && !PROMETHEUS_SERIES.contains(&m.as_str()) {
                out.push(format!("{title}: {m} (in `{e}`)"));
            }
        }
        for (m, l) in &q.matchers {
            let on = have.get(m).is_some_and(|ls| ls.contains(l));
            if !on && !TARGET_LABELS.contains(&l.as_str()) {
                out.push(format!("{title}: label {l} of {m} (in `{e}`)"));
            }
        }
        for l in &q.grouping {
            let on = q
                .metrics
                .iter()
                .any(|m| have.get(m).is_some_and(|ls| ls.contains(l)));
            if !on && !TARGET_LABELS.contains(&l.as_str()) {
                out.push(format!(
                    "{title}: grouping label {l} on none of {:?} (in `{e}`)",
                    q.metrics
                ));
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// The stages, for real

const TENANTS: &str = r#"
- rule_id: key-7
  match: { api_key_id: key-7 }
  tenant: { org: acme, cost_center: CC-100, team: search }
"#;

fn event(id: &str, key: &str, model: &str, input: u64, output: u64) -> String {
    json!({"event_id": id, "occurred_at": chrono::Utc::now().to_rfc3339(), "provider": "openai",
           "model": model, "operation": "chat", "api_key_id": key,
           "usage": {"input_tokens": input, "output_tokens": output}})
    .to_string()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The healthcheck path of each compose service running `stage`.
fn compose_health_paths() -> BTreeMap<String, String> {
    let c: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for s in c["services"].as_object().unwrap().values() {
        let (Some(cmd), Some(test)) =
            (s["command"].as_array(), s["healthcheck"]["test"].as_array())
        else {
            continue;
        };
        if s.get("build").is_none() {
            continue;
        }
        let url = test
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with("http://"))
            .unwrap();
        let path = &url["http://".len()..][url["http://".len()..].find('/').unwrap()..];
        out.insert(cmd[0].as_str().unwrap().to_string(), path.to_string());
    }
    out
}

/// Stage processes, killed when dropped (also when an assertion fails: they would otherwise
/// outlive the test, retrying a broker that is gone).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported_by_a_running_stage() {
    let t0 = Instant::now();
    let boards = dashboards();
    let health = compose_health_paths();
    let mut h = Harness::start().await;
    let log = h.dir.path().join("stages.log");
    let (hook, calls) = common::webhook_receiver().await;
    let client = reqwest::Client::new();

    // 1. reference data: prices (gpt-4o) and key-7 → team search
    common::publish_reference(&h, TENANTS).await;

    // 2. the edge with a small client-side message size (an event over it is refused by the
    //    producer: spooled, then dead-lettered), and the other stages as processes
    h.stop_ingest().await;
    h.kafka
        .properties
        .insert("message.max.bytes".into(), "2000".into());
    h.start_ingest().await;
    let data = h.dir.path().join("data");
    let ports: BTreeMap<&str, u16> = ["enrich", "aggregate", "watch", "api"]
        .into_iter()
        .map(|s| (s, meterline::broker::free_port()))
        .collect();
    let api_config = h.dir.path().join("api.toml");
    std::fs::write(
        &api_config,
        format!(
            "[[api.tokens]]\nprincipal = \"fin\"\nsha256 = \"{}\"\nrole = \"finance\"\n",
            meterline_runtime::auth::hash_token(FINANCE_TOKEN)
        ),
    )
    .unwrap();
    let at = |stage: &str| format!("127.0.0.1:{}", ports[stage]);
    let d = data.display().to_string();
    let _children = Children(vec![
        spawn_stage(
            &h,
            "enrich",
            &[("METERLINE_ENRICH__LISTEN", at("enrich"))],
            &log,
        ),
        spawn_stage(
            &h,
            "aggregate",
            &[
                ("METERLINE_AGGREGATE__LISTEN", at("aggregate")),
                ("METERLINE_AGGREGATE__DATA_DIR", d.clone()),
                ("METERLINE_AGGREGATE__FLUSH_MS", "500".into()),
            ],
            &log,
        ),
        spawn_stage(
            &h,
            "watch",
            &[
                ("METERLINE_WATCH__LISTEN", at("watch")),
                ("METERLINE_WATCH__DATA_DIR", d.clone()),
                ("METERLINE_WATCH__ALERTS__BACKOFF_INITIAL_MS", "100".into()),
            ],
            &log,
        ),
        spawn_stage(
            &h,
            "api",
            &[
                ("METERLINE_CONFIG", api_config.display().to_string()),
                ("METERLINE_API__LISTEN", at("api")),
                ("METERLINE_API__DATA_DIR", d.clone()),
            ],
            &log,
        ),
    ]);

    // 3. a budget to cross: team search, 0.01 USD this month, block at 100 %, with a webhook
    common::create_blocking_budget(&h, "search-monthly", "team=search", "0.01", &hook);

    // 4. traffic: one event the broker refuses (spooled, dead-lettered) …
    let tags: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("k{i}"), json!("v".repeat(200))))
        .collect();
    let big = json!({"event_id": "too-big", "occurred_at": chrono::Utc::now().to_rfc3339(), "provider": "openai",
                     "model": "gpt-4o", "api_key_id": "key-7", "tags": tags, "usage": {"input_tokens": 1}});
    let (st, body) = h
        .post("/v1/events", "application/json", big.to_string())
        .await;
    assert_eq!(st, 200, "{body}");
    eventually(Duration::from_secs(30), "dead-lettered", || async {
        h.metric("meterline_ingest_dead_lettered_total").await == 1.0
    })
    .await;
    // … billed ones crossing the budget (0.0025 + 0.01 > 0.01), a retry of one, an
    // unattributed one, one without a price, one the edge refuses
    for (id, key, model, i, o) in [
        ("e-1", "key-7", "gpt-4o", 1000, 0),
        ("e-2", "key-7", "gpt-4o", 0, 1000),
        ("e-2", "key-7", "gpt-4o", 0, 1000),
        ("e-3", "key-unknown", "gpt-4o", 100, 10),
        ("e-4", "key-7", "no-such-model", 100, 10),
    ] {
        let (st, body) = h
            .post(
                "/v1/events",
                "application/json",
                event(id, key, model, i, o),
            )
            .await;
        assert_eq!(st, 200, "{id}: {body}");
    }
    let (st, _) = h
        .post(
            "/v1/events",
            "application/json",
            r#"{"event_id": "no-usage"}"#,
        )
        .await;
    assert!((400..500).contains(&st), "refused at the edge: {st}");
    let (st, body) = h
        .post(
            "/v1/enforcement/check",
            "application/json",
            json!({"api_key_id": "key-7"}).to_string(),
        )
        .await;
    assert_eq!(st, 200, "{body}");

    // 5. the crossing reaches the webhook; the ledger has the billed rows; the api answers SQL
    eventually(Duration::from_secs(90), "the webhook call", || async {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    let sql_url = format!("http://{}/v1/sql", at("api"));
    eventually(
        Duration::from_secs(30),
        "the billed rows in the ledger, by SQL",
        || async {
            let r = client
                .post(&sql_url)
                .bearer_auth(FINANCE_TOKEN)
                .json(&json!({"sql": "SELECT count(*) AS n FROM usage"}))
                .send()
                .await;
            match r {
                // {"rows":[{"n":3}],…}: e-1, e-2 once, e-3 (e-4 has no price, too-big no row)
                Ok(r) if r.status().is_success() => {
                    r.json::<Value>()
                        .await
                        .ok()
                        .map(|v| v["rows"][0]["n"].clone())
                        == Some(json!(3))
                }
                _ => false,
            }
        },
    )
    .await;

    // 6. every dashboard's metrics on its stage (the overview's on any); lag gauges come with
    //    librdkafka's statistics every 5 s, so this is waited for
    let stage_urls: BTreeMap<String, String> =
        std::iter::once(("ingest".to_string(), h.base.clone()))
            .chain(
                ports
                    .keys()
                    .map(|s| (s.to_string(), format!("http://{}", at(s)))),
            )
            .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let gaps = loop {
        let mut per_stage = BTreeMap::new();
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (stage, base) in &stage_urls {
            let (status, text) = get(&client, &format!("{base}/metrics")).await;
            assert_eq!(status, 200, "{stage} /metrics: {text}");
            let e = exported(&text);
            for (m, ls) in &e {
                all.entry(m.clone()).or_default().extend(ls.iter().cloned());
            }
            per_stage.insert(stage.clone(), e);
        }
        let mut gaps = vec![];
        for (board, exprs) in &boards {
            let have = match per_stage.get(board) {
                Some(e) => e,
                None => {
                    assert_eq!(board, "overview", "dashboards/{board}.json names no stage");
                    &all
                }
            };
            gaps.extend(
                missing(exprs, have)
                    .into_iter()
                    .map(|g| format!("{board}: {g}")),
            );
        }
        if gaps.is_empty() || Instant::now() > deadline {
            break gaps;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        gaps.is_empty(),
        "not exported by the running stages:\n  {}\n(stage log: {})",
        gaps.join("\n  "),
        log.display()
    );
    assert_eq!(
        boards.keys().cloned().collect::<BTreeSet<_>>(),
        stage_urls
            .keys()
            .cloned()
            .chain(["overview".to_string()])
            .collect(),
        "a dashboard per stage and an overview"
    );

    // 7. the healthchecks of docker-compose.yml ask what the stages answer
    assert_eq!(health.len(), stage_urls.len(), "{health:?}");
    for (stage, path) in &health {
        let (status, body) = get(&client, &format!("{}{path}", stage_urls[stage])).await;
        assert_eq!(status, 200, "{stage} {path}: {body}");
    }

    eprintln!("took {:.1} s", t0.elapsed().as_secs_f64());
}
