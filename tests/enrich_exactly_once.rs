//! Exactly once through crashes and rebalances, on a real broker: the enrich stage is killed
//! with SIGKILL mid-transaction again and again (a subprocess), and two instances share the
//! group while members come and go. The read_committed output must hold every event id once,
//! with its cost.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{drain_topic, eventually, spawn_stage, Harness};
use meterline_reference::{native, publish};
use meterline_schemas::{topics, AvroRecord, PricedUsage, UsageEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PRICE: &str = r#"
[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2025-01-01T00:00:00Z"
[[price.rate]]
unit = "input_token"
price = "2.50"
per = 1_000_000
[[price.rate]]
unit = "output_token"
price = "10"
per = 1_000_000
"#;

/// Writes `n` distinct events (ids `ev-<i>`), each id `i % dup_every == 0` twice, straight to
/// the raw topic keyed as ingest keys them. Returns the number of distinct ids.
fn produce_raw(brokers: &str, from: usize, n: usize, dup_every: usize) -> usize {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in from..from + n {
        let mut e = UsageEvent::example();
        e.event_id = format!("ev-{i}");
        e.api_key_id = Some(format!("key-{}", i % 7));
        e.usage.input_tokens = 1000 + i as i64;
        let v = e.to_avro().unwrap();
        let copies = if i % dup_every == 0 { 2 } else { 1 };
        for _ in 0..copies {
            loop {
                match p.send(
                    BaseRecord::to(topics::USAGE_RAW)
                        .key(e.partition_key())
                        .payload(&v),
                ) {
                    Ok(()) => break,
                    Err((_, _)) => {
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    n
}

/// Expected cost of `ev-<i>`: (1000 + i) input at 2.50/M + 20 output at 10/M.
fn expected_cost(i: usize) -> String {
    let d = rust_decimal::Decimal::new(1000 + i as i64, 0) * rust_decimal::Decimal::new(25, 7)
        + rust_decimal::Decimal::new(2, 4);
    d.normalize().to_string()
}

fn publish_price(h: &Harness) {
    let drafts = native::parse(PRICE, native::Syntax::Toml, None, "t", "t").unwrap();
    publish::publish_prices(&h.kafka, drafts, "test", false).unwrap();
}

/// Whether the group's committed offsets on the raw topic reached its end.
fn all_committed(h: &Harness) -> bool {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &h.kafka.brokers)
        .set("group.id", "meterline-enrich")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..h.kafka.usage_partitions {
        tpl.add_partition(topics::USAGE_RAW, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
        return false;
    };
    (0..h.kafka.usage_partitions).all(|p| {
        let (_, hi) = c
            .fetch_watermarks(topics::USAGE_RAW, p, Duration::from_secs(5))
            .unwrap();
        matches!(committed.find_partition(topics::USAGE_RAW, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= hi)
    })
}

fn priced(h: &Harness) -> Vec<PricedUsage> {
    drain_topic(&h.kafka.brokers, topics::USAGE_PRICED)
        .iter()
        .map(|v| PricedUsage::from_avro(v).unwrap())
        .collect()
}

fn assert_exactly_once(all: &[PricedUsage], distinct: usize) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for p in all {
        *count.entry(p.event.event_id.as_str()).or_default() += 1;
        let i: usize = p.event.event_id["ev-".len()..].parse().unwrap();
        assert_eq!(
            p.cost.total.to_string(),
            expected_cost(i),
            "{}",
            p.event.event_id
        );
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "priced more than once: {twice:?}");
    assert_eq!(count.len(), distinct, "every distinct id priced");
}

fn spawn_enrich(h: &Harness, log: &std::path::Path) -> Child {
    let s = |k, v: &str| (k, v.to_string());
    spawn_stage(
        h,
        "enrich",
        &[
            s("METERLINE_ENRICH__LISTEN", "127.0.0.1:0"),
            s("METERLINE_ENRICH__TXN_MAX_RECORDS", "100"),
            s("METERLINE_ENRICH__TXN_MAX_MS", "50"),
            s("METERLINE_ENRICH__SESSION_TIMEOUT_MS", "2000"),
            s("METERLINE_ENRICH__MAX_POLL_INTERVAL_MS", "20000"),
        ],
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_repeatedly_mid_transaction_still_prices_each_id_once() {
    let h = Harness::start().await;
    let h = tokio::task::spawn_blocking(move || {
        publish_price(&h);
        let distinct = produce_raw(&h.kafka.brokers, 0, 3000, 5);
        let log = h.dir.path().join("enrich.log");
        // Kill -9 five times, each as soon as the stage has made progress since the last run
        // (so kills land mid-stream, with a transaction open).
        let mut seen = 0;
        for round in 0..5 {
            let mut child = spawn_enrich(&h, &log);
            let t0 = Instant::now();
            loop {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "no progress in round {round}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                let n = priced(&h).len();
                if n > seen {
                    seen = n;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            if round == 2 {
                // more input while the stage is down
                produce_raw(&h.kafka.brokers, 3000, 500, 5);
            }
        }
        assert!(seen < 3500 + 700, "killed before finishing");
        let mut child = spawn_enrich(&h, &log);
        let t0 = Instant::now();
        while !all_committed(&h) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "stage did not catch up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_exactly_once(&priced(&h), distinct + 500);
        h
    })
    .await
    .unwrap();
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_rebalances_price_each_id_once() {
    // Two input partitions: one each once B has joined.
    let h = Harness::start().await;
    let h = tokio::task::spawn_blocking(move || {
        publish_price(&h);
        produce_raw(&h.kafka.brokers, 0, 2000, 4);
        h
    })
    .await
    .unwrap();
    let cfg = meterline_enrich::EnrichConfig {
        listen: "127.0.0.1:0".into(),
        txn_max_records: 100,
        txn_max_ms: 50,
        session_timeout_ms: 2000,
        max_poll_interval_ms: 20_000,
        ..Default::default()
    };
    // A starts alone; B joins mid-stream (rebalance); A leaves (rebalance); more input.
    let a = meterline_enrich::App::build(&h.kafka, cfg.clone())
        .await
        .unwrap();
    let a_stop = a.stop_token();
    let a_task = tokio::spawn(a.run_until_stopped());
    eventually(Duration::from_secs(60), "A makes progress", || async {
        let k = h.kafka.brokers.clone();
        tokio::task::spawn_blocking(move || drain_topic(&k, topics::USAGE_PRICED).len())
            .await
            .unwrap()
            > 0
    })
    .await;
    let b = meterline_enrich::App::build(&h.kafka, cfg.clone())
        .await
        .unwrap();
    let b_stop = b.stop_token();
    let b_task = tokio::spawn(b.run_until_stopped());
    let k = h.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || produce_raw(&k, 2000, 1000, 4))
        .await
        .unwrap();
    a_stop.cancel();
    a_task.await.unwrap().unwrap();
    let k = h.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || produce_raw(&k, 3000, 500, 4))
        .await
        .unwrap();
    let h = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        while !all_committed(&h) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "B did not catch up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_exactly_once(&priced(&h), 3500);
        h
    })
    .await
    .unwrap();
    b_stop.cancel();
    b_task.await.unwrap().unwrap();
    drop(h);
}
