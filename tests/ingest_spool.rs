//! Broker outage: while the broker is down every request is answered 2xx from the fsynced
//! spool; when it is back the spool drains and every event id arrives, none twice. Also: the
//! spool survives a restart of ingest itself.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, Harness};
use serde_json::json;

fn batch(prefix: &str, n: usize) -> String {
    let items: Vec<_> = (0..n)
        .map(|i| json!({"event_id": format!("{prefix}-{i}"), "occurred_at": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o",
                        "api_key_id": format!("key-{}", i % 7), "usage": {"input_tokens": 100 + i, "output_tokens": 7}}))
        .collect();
    json!(items).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_absorbed_by_the_spool_and_drained_exactly_once() {
    let mut h = Harness::start().await;
    let mut expected = Vec::new();

    // 1. broker up: direct
    assert_eq!(
        h.post("/v1/events", "application/json", batch("before", 20))
            .await
            .0,
        200
    );
    expected.extend((0..20).map(|i| format!("before-{i}")));

    // 2. broker down: requests keep getting 200 (first one after the produce timeout)
    h.broker.kill();
    for r in 0..10 {
        let prefix = format!("outage{r}");
        let (st, body) = h
            .post("/v1/events", "application/json", batch(&prefix, 25))
            .await;
        assert_eq!(st, 200, "{body}");
        expected.extend((0..25).map(|i| format!("{prefix}-{i}")));
    }
    assert!(
        h.metric("meterline_ingest_spool_depth_events").await >= 225.0,
        "outage events are in the spool"
    );

    // 3. ingest restarts during the outage: the spool is on disk
    h.stop_ingest().await;
    h.start_ingest().await;
    assert!(
        h.metric("meterline_ingest_spool_depth_events").await >= 225.0,
        "spool survived the ingest restart"
    );
    let (st, _) = h
        .post("/v1/events", "application/json", batch("after-restart", 5))
        .await;
    assert_eq!(st, 200);
    expected.extend((0..5).map(|i| format!("after-restart-{i}")));

    // 4. broker back: the spool drains
    h.broker.restart().unwrap();
    eventually(Duration::from_secs(60), "spool drained", || async {
        h.metric("meterline_ingest_spool_depth_events").await == 0.0
    })
    .await;
    assert_eq!(
        h.post("/v1/events", "application/json", batch("back", 10))
            .await
            .0,
        200
    );
    expected.extend((0..10).map(|i| format!("back-{i}")));

    let events = h.raw_events().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *counts.entry(e.event_id.clone()).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(events.len(), expected.len());
}
