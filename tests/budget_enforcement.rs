//! A budget crossed end to end, on a real broker, real files and real HTTP: events posted to
//! the edge are priced by `meterline enrich`, written to the ledger by `meterline aggregate`,
//! counted by `meterline watch`'s budget tracker, the crossing is published once, delivered
//! once to a local webhook receiver, and the edge's enforcement check flips to block. Then
//! aggregate and watch are SIGKILLed and restarted: the spend is rebuilt from the ledger, and
//! no second signal or webhook call follows.

mod common;

use std::time::Duration;

use common::{drain_topic, eventually, spawn_stage, Harness, EDGE_TOKEN};
use meterline_schemas::{topics, AvroRecord, BudgetSignal, BudgetState};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const TENANTS: &str = r#"
- rule_id: key-7
  match: { api_key_id: key-7 }
  tenant: { org: acme, cost_center: CC-100, team: search }
"#;

async fn check(h: &Harness) -> Value {
    let (status, body) = h
        .post(
            "/v1/enforcement/check",
            "application/json",
            json!({"api_key_id": "key-7"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn event(id: &str, input: u64, output: u64) -> Value {
    json!({"event_id": id, "occurred_at": chrono::Utc::now().to_rfc3339(), "provider": "openai",
           "model": "gpt-4o", "operation": "chat", "api_key_id": "key-7",
           "usage": {"input_tokens": input, "output_tokens": output}})
}

fn signals(h: &Harness) -> Vec<BudgetSignal> {
    drain_topic(&h.kafka.brokers, topics::BUDGET_SIGNALS)
        .iter()
        .map(|b| BudgetSignal::from_avro(b).unwrap())
        .collect()
}

/// The alert group's committed offset on the signals topic.
fn alerts_committed(brokers: &str) -> i64 {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "meterline-alerts")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topics::BUDGET_SIGNALS, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => 0,
    }
}

async fn metric(client: &reqwest::Client, port: u16, name: &str) -> f64 {
    let Ok(r) = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_is_signalled_once_delivered_once_and_blocks_at_the_edge() {
    let h = Harness::start().await;
    let log = h.dir.path().join("stages.log");
    let (hook, calls) = common::webhook_receiver().await;

    // 1. reference data: prices (gpt-4o $2.50 / $10 per M tokens) and key-7 → team search
    common::publish_reference(&h, TENANTS).await;

    // 2. the stages
    let mut enrich = spawn_stage(
        &h,
        "enrich",
        &[("METERLINE_ENRICH__LISTEN", "127.0.0.1:0".into())],
        &log,
    );
    let (sink_port, port) = (
        meterline::broker::free_port(),
        meterline::broker::free_port(),
    );
    let data = h.dir.path().join("data");
    let aggregate_settings = [
        (
            "METERLINE_AGGREGATE__LISTEN",
            format!("127.0.0.1:{sink_port}"),
        ),
        ("METERLINE_AGGREGATE__DATA_DIR", data.display().to_string()),
        ("METERLINE_AGGREGATE__FLUSH_MS", "500".into()),
    ];
    let watch_settings = [
        ("METERLINE_WATCH__LISTEN", format!("127.0.0.1:{port}")),
        ("METERLINE_WATCH__DATA_DIR", data.display().to_string()),
        ("METERLINE_WATCH__ALERTS__BACKOFF_INITIAL_MS", "100".into()),
    ];
    let mut aggregate = spawn_stage(&h, "aggregate", &aggregate_settings, &log);
    let mut watch = spawn_stage(&h, "watch", &watch_settings, &log);

    // 3. a budget through the CLI: team search, 0.01 USD this month, block at 100 %
    common::create_blocking_budget(&h, "search-monthly", "team=search", "0.01", &hook);

    // 4. below the limit: 1000 input tokens = 0.0025 (25 %) → still allowed
    eventually(
        Duration::from_secs(30),
        "edge enforcement ready",
        || async { check(&h).await["ready"] == true },
    )
    .await;
    let (s, b) = h
        .post(
            "/v1/events",
            "application/json",
            event("e-1", 1000, 0).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(60), "first row counted", || async {
        metric(
            &client,
            port,
            "meterline_aggregate_budget_lag_seconds_count",
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(check(&h).await["decision"], "allow");
    assert!(signals(&h).is_empty());

    // 5. over it: + 1000 output tokens = 0.01 → 0.0125 in total (125 %)
    let (s, b) = h
        .post(
            "/v1/events",
            "application/json",
            event("e-2", 0, 1000).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    eventually(Duration::from_secs(30), "the edge blocks", || async {
        check(&h).await["decision"] == "block"
    })
    .await;
    let answer = check(&h).await;
    assert_eq!(answer["budgets"][0]["budget_id"], "search-monthly");
    assert_eq!(answer["budgets"][0]["spend"], "0.0125");
    assert_eq!(answer["budgets"][0]["limit"], "0.01");
    // ext_authz: 429 with the decision and the budget in headers
    let r = client
        .post(format!(
            "{}/v1/enforcement/ext_authz/v1/chat/completions",
            h.base
        ))
        .header("x-meterline-authorization", format!("Bearer {EDGE_TOKEN}"))
        .header("x-meterline-api-key-id", "key-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-meterline-decision"], "block");
    assert_eq!(r.headers()["x-meterline-budgets"], "search-monthly");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let other = client
        .post(format!("{}/v1/enforcement/ext_authz", h.base))
        .header("x-meterline-authorization", format!("Bearer {EDGE_TOKEN}"))
        .header("x-meterline-api-key-id", "key-8")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "another key is not blocked");

    let s = signals(&h);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].state, s[0].threshold_percent, s[0].spend.to_string()),
        (BudgetState::Exceeded, Some(100), "0.0125".to_string())
    );
    eventually(Duration::from_secs(30), "the webhook call", || async {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    eventually(Duration::from_secs(30), "delivery committed", || async {
        let b = h.kafka.brokers.clone();
        tokio::task::spawn_blocking(move || alerts_committed(&b))
            .await
            .unwrap()
            >= 1
    })
    .await;
    {
        let c = calls.lock().unwrap();
        assert_eq!(c.len(), 1);
        let body = &c[0].1;
        assert_eq!(body["type"], "budget_signal");
        assert_eq!(body["budget_name"], "search-monthly");
        assert_eq!(body["signal"]["state"], "exceeded");
        assert_eq!(body["signal"]["spend"], "0.0125");
    }

    // 6. SIGKILL and restart: rebuilt from the ledger + stream, nothing signalled again. Both
    //    rows are in files first, so what the restarted tracker reads live is only e-3.
    eventually(
        Duration::from_secs(30),
        "both rows in the ledger",
        || async {
            metric(&client, sink_port, "meterline_aggregate_rows_written_total").await >= 2.0
        },
    )
    .await;
    for p in [&mut aggregate, &mut watch] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    let mut aggregate = spawn_stage(&h, "aggregate", &aggregate_settings, &log);
    let mut watch = spawn_stage(&h, "watch", &watch_settings, &log);
    // The restarted watch is active once the killed one's lease session has ended (6 s: it
    // cannot tell a dead predecessor from a stalled one). Its first rebuild is waited for, so
    // e-3 reaches it through the stream, not through a file the restarted sink flushed first.
    eventually(
        Duration::from_secs(60),
        "the restarted watch is active and has rebuilt spend",
        || async {
            metric(
                &client,
                port,
                "meterline_aggregate_budget_rebuild_seconds_count",
            )
            .await
                >= 1.0
        },
    )
    .await;
    let (s, b) = h
        .post(
            "/v1/events",
            "application/json",
            event("e-3", 1000, 0).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    eventually(
        Duration::from_secs(60),
        "the restarted tracker counts e-3",
        || async {
            metric(
                &client,
                port,
                "meterline_aggregate_budget_lag_seconds_count",
            )
            .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(signals(&h).len(), 1, "no second signal after the restart");
    assert_eq!(calls.lock().unwrap().len(), 1, "no second webhook call");
    assert_eq!(check(&h).await["decision"], "block");

    for p in [&mut aggregate, &mut watch, &mut enrich] {
        p.kill().unwrap();
        let _ = p.wait();
    }
}
