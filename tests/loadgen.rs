//! `meterline loadgen` against the real edge (in-process) and Apache Kafka: every format
//! arrives, nothing is refused, the summary's counts are the raw topic's, and deliberately
//! resent batches are on the topic twice with the same content.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{eventually, Harness, EDGE_TOKEN};
use meterline::loadgen::{self, LoadgenArgs};
use meterline_schemas::UsageEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_every_format_and_the_topic_agrees() {
    let h = Harness::start().await;
    let mut args = LoadgenArgs::new(h.base.clone(), 200.0, Duration::from_secs(5));
    args.token = EDGE_TOKEN.into();
    args.seed = Some(42);
    // Small batches: the harness edge takes at most 50 items and 64 KiB per request.
    args.batch = 5;
    args.concurrency = 16;
    args.resend_share = 0.1;
    args.quiet = true;
    let t0 = Instant::now();
    let s = loadgen::run(args).await.expect("loadgen runs");
    eprintln!("{s}loadgen took {:.2} s", t0.elapsed().as_secs_f64());

    assert!(s.sent >= 950 && s.sent <= 1050, "sent {}", s.sent);
    assert_eq!(s.rejected, 0, "{:?}", s.rejection_samples);
    assert_eq!(s.failed, 0, "{:?}", s.rejection_samples);
    assert_eq!(s.http_errors, 0, "{:?}", s.rejection_samples);
    assert_eq!(s.accepted, s.sent - s.rejected);
    assert!(!s.resent_ids.is_empty(), "some batches resent");
    assert!(s.retried >= s.resent_ids.len() as u64);
    for f in ["native", "litellm", "cloudevents", "otlp"] {
        assert!(s.sent_by_format.get(f).copied().unwrap_or(0) > 0, "{f}");
    }
    assert!(
        s.achieved_rate > 150.0,
        "achieved {:.1}/s of 200/s",
        s.achieved_rate
    );

    // A 2xx means acked by the broker: the topic already holds everything, read it once
    // the watermarks say so.
    let expected_records = s.accepted as usize + s.resent_ids.len();
    eventually(
        Duration::from_secs(30),
        "every record on the raw topic",
        || async { h.raw_events().await.len() >= expected_records },
    )
    .await;
    let events: Vec<UsageEvent> = h.raw_events().await;

    let mut by_id: HashMap<&str, Vec<&UsageEvent>> = HashMap::new();
    for e in &events {
        by_id.entry(e.event_id.as_str()).or_default().push(e);
    }
    assert_eq!(by_id.len() as u64, s.accepted, "distinct ids = accepted");
    assert_eq!(
        events.len(),
        expected_records,
        "records = accepted + resent"
    );

    let formats: HashSet<&str> = events.iter().map(|e| e.format.as_str()).collect();
    assert_eq!(
        formats,
        HashSet::from(["native", "litellm", "cloudevents", "otlp"])
    );
    for (f, n) in &s.sent_by_format {
        let distinct = by_id.values().filter(|v| v[0].format == *f).count() as u64;
        assert_eq!(distinct, *n, "{f}: distinct ids on the topic vs sent");
    }

    let resent: HashSet<&str> = s.resent_ids.iter().map(String::as_str).collect();
    for (id, copies) in &by_id {
        if resent.contains(id) {
            assert_eq!(copies.len(), 2, "{id} resent once");
            let (mut a, mut b) = (copies[0].clone(), copies[1].clone());
            a.received_at = chrono::DateTime::UNIX_EPOCH;
            b.received_at = chrono::DateTime::UNIX_EPOCH;
            assert_eq!(a, b, "{id}: a resend carries the same content");
        } else {
            assert_eq!(copies.len(), 1, "{id} sent once");
        }
    }

    // The traffic's mix is there: every model, cache hits, teams and keys.
    let models: HashSet<&str> = events.iter().map(|e| e.model.as_str()).collect();
    for m in ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro"] {
        assert!(models.contains(m), "{m} in {models:?}");
    }
    let teams: HashSet<_> = events.iter().filter_map(|e| e.team_id.clone()).collect();
    assert_eq!(teams.len(), 5, "{teams:?}");
    assert!(events.iter().all(|e| e.api_key_id.is_some()));
    assert!(events.iter().any(|e| e.usage.cache_read_tokens > 0));
    assert!(events.iter().any(|e| e.usage.reasoning_tokens > 0));
}
