//! A record the producer refuses outright (here: larger than `message.max.bytes`) is kept in
//! the dead-letter spool, counted, and does not wedge the edge: later events still flow.

mod common;

use std::time::Duration;

use common::{eventually, Harness};
use meterline_schemas::AvroRecord;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproducible_record_is_dead_lettered_and_the_edge_keeps_flowing() {
    let mut h = Harness::start().await;
    // Restart ingest with a small client-side message size limit.
    h.stop_ingest().await;
    h.kafka
        .properties
        .insert("message.max.bytes".into(), "2000".into());
    h.start_ingest().await;

    let tags: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("k{i}"), json!("v".repeat(200))))
        .collect();
    let big = json!({"event_id": "too-big", "occurred_at": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o", "team_id": "t", "tags": tags, "usage": {"input_tokens": 1}});
    let (st, body) = h
        .post("/v1/events", "application/json", big.to_string())
        .await;
    assert_eq!(st, 200, "accepted durably (the spool), not lost: {body}");
    eventually(Duration::from_secs(30), "dead-lettered", || async {
        h.metric("meterline_ingest_dead_lettered_total").await == 1.0
    })
    .await;
    eventually(Duration::from_secs(30), "spool empty", || async {
        h.metric("meterline_ingest_spool_depth_events").await == 0.0
    })
    .await;

    let ok = json!({"event_id": "small", "occurred_at": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o", "team_id": "t", "usage": {"input_tokens": 1}});
    assert_eq!(
        h.post("/v1/events", "application/json", ok.to_string())
            .await
            .0,
        200
    );
    let ids: Vec<String> = h
        .raw_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, vec!["small"]);

    // the refused record is readable from the dead-letter spool
    let dl = meterline_ingest::spool::Spool::open(
        &h.dir.path().join("spool").join("dead-letter"),
        u64::MAX,
        64 << 20,
    )
    .unwrap();
    let (recs, _) = dl.peek(10).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        meterline_schemas::UsageEvent::from_avro(&recs[0].value)
            .unwrap()
            .event_id,
        "too-big"
    );
}
