//! `meterline bench enrich`: the same raw records, on the same broker, through
//! 1. a bare transactional consume→produce passthrough (bytes copied, no decode, no pricing;
//!    librdkafka's canonical exactly-once loop: one consumer, one transactional producer, the
//!    consumed offsets sent in each transaction, committed by the same count/age policy as
//!    enrich), and
//! 2. `meterline enrich` as its own process (so its CPU and RSS are its own).
//!
//! Both are timed identically from outside: their group's committed offsets on the raw topic are
//! polled, and the rate is taken from 10 % to 100 % committed (startup and group join excluded
//! on both sides). Events are spread over the last 50 minutes, so at the end enrich's dedup
//! window holds every id: its peak RSS is with the window filled. The window's cost per id is
//! also measured directly (RSS growth of one `DedupWindow` filled with the same number of ids).

use std::time::{Duration, Instant};

use anyhow::Context;
use meterline_enrich::dedup::DedupWindow;
use meterline_enrich::txn::BatchPolicy;
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::metric_names as m;
use meterline_schemas::topics::{self, TopicSpec};
use meterline_schemas::AvroRecord;
use rand::SeedableRng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{peak_rss_kib, scrape, watch};
use crate::broker::free_port;

const PASSTHROUGH_TOPIC: &str = "meterline.bench.passthrough";
const PASSTHROUGH_GROUP: &str = "meterline-bench-passthrough";
const ENRICH_GROUP: &str = "meterline-bench-enrich";

pub(super) async fn run(
    events: usize,
    brokers: Option<String>,
    policy: BatchPolicy,
) -> anyhow::Result<()> {
    anyhow::ensure!(events >= 10, "--events must be at least 10");
    // First, while this process has freed nothing the allocator could hand back to the window.
    let per_id = dedup_bytes_per_id(events)?;
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::broker(brokers, dir.path())?;
    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        ..Default::default()
    };
    let partitions = kafka.usage_partitions;
    ensure_topics(&kafka, &topics::all(partitions)).await?;
    ensure_topics(
        &kafka,
        &[TopicSpec {
            name: PASSTHROUGH_TOPIC,
            partitions,
            compacted: false,
            kept_forever: false,
        }],
    )
    .await?;
    crate::dev::publish_demo_reference(kafka.clone()).await?;

    // The raw records, produced once; both sides read the same ones.
    let (records, avg_bytes) = raw_records(events)?;
    super::produce_all(&kafka, topics::USAGE_RAW, &records).await?;
    drop(records);

    // 1. baseline, in a thread of this process
    let me = std::process::id();
    let k = kafka.clone();
    let base_thread = std::thread::spawn(move || passthrough(&k, events, policy));
    let base = watch(&kafka, topics::USAGE_RAW, PASSTHROUGH_GROUP, events, me).await?;
    base_thread.join().expect("passthrough thread")?;

    // 2. enrich, as a process
    let metrics_port = free_port();
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\n[enrich]\ngroup_id = \"{ENRICH_GROUP}\"\nlisten = \"127.0.0.1:{metrics_port}\"\ntxn_max_records = {}\ntxn_max_ms = {}\n",
            policy.max_records,
            policy.max_age.as_millis()
        ),
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--config", cfg_path.to_str().unwrap(), "enrich"])
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let stage = watch(&kafka, topics::USAGE_RAW, ENRICH_GROUP, events, pid).await;
    // The dedup gauge is refreshed every few seconds; wait for it to show the filled window.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let gauges = async {
        let t0 = Instant::now();
        loop {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            let ids = scrape(&text, m::ENRICH_DEDUP_IDS);
            if ids >= events as f64 || t0.elapsed() > Duration::from_secs(20) {
                return anyhow::Ok((
                    ids,
                    scrape(&text, m::ENRICH_EVENTS_PRICED),
                    scrape(&text, m::ENRICH_EVENTS_REJECTED),
                    scrape(&text, &format!("{}_count", m::ENRICH_COMMIT_LATENCY)),
                    scrape(&text, &format!("{}_sum", m::ENRICH_COMMIT_LATENCY)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    .await;
    let rss_mib = peak_rss_kib(pid)? as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let stage = stage?;
    let (dedup_ids, priced, rejected, commits, commit_secs) = gauges?;

    let ratio = stage.rate / base.rate;
    println!(
        "bench enrich: {events} events (~{avg_bytes} B Avro each), {partitions} partitions, transactions of ≤ {} records / {} ms, broker {bootstrap}",
        policy.max_records,
        policy.max_age.as_millis()
    );
    println!(
        "  bare txn passthrough     {:>10.0} events/s   CPU {:>6.2} µs/event (whole bench process)",
        base.rate, base.cpu_us_per_event
    );
    println!(
        "  enrich                   {:>10.0} events/s   CPU {:>6.2} µs/event (enrich process)",
        stage.rate, stage.cpu_us_per_event
    );
    println!(
        "  enrich transactions      {commits:>10.0} committed, mean commit {:.1} ms (loop blocked {:.0} % of the run)",
        1000.0 * commit_secs / commits.max(1.0),
        100.0 * commit_secs * stage.rate / events as f64
    );
    println!("  ratio enrich/bare        {ratio:>10.2}   (target ≥ 0.6)");
    // `+ 0.0` turns a scraped -0 into 0.
    let rejected = rejected + 0.0;
    println!("  enrich output            {priced:>10.0} priced, {rejected:.0} rejected");
    println!(
        "  enrich peak RSS          {rss_mib:>10.1} MiB with {dedup_ids:.0} ids in the dedup window"
    );
    println!(
        "  dedup window cost        {per_id:>10.1} B/id measured ({:.1} MiB per million ids); target RSS ≤ 256 MiB + window = {:.1} MiB",
        per_id,
        256.0 + per_id * dedup_ids / (1024.0 * 1024.0)
    );
    Ok(())
}

/// `events` demo events as raw-topic records (key, Avro), occurred over the last 50 minutes.
fn raw_records(events: usize) -> anyhow::Result<(Vec<(String, Vec<u8>)>, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let run = std::process::id();
    let now = chrono::Utc::now();
    let ctx = meterline_ingest::adapters::Ctx {
        source: "bench".into(),
        received_at: now,
    };
    let span_ms = 50 * 60 * 1000;
    let mut out = Vec::with_capacity(events);
    for i in 0..events {
        let mut v = crate::dev::demo_event(&mut rng, &format!("bench-{run}-{i}"));
        let at =
            now - chrono::Duration::milliseconds(span_ms - (i as i64 * span_ms) / events as i64);
        v["occurred_at"] = serde_json::Value::String(at.to_rfc3339());
        let raw = serde_json::value::to_raw_value(&v)?;
        let e = meterline_ingest::adapters::native::decode(&raw, &ctx)
            .map_err(|e| anyhow::anyhow!("demo event invalid: {e:?}"))?;
        out.push((e.partition_key().to_string(), e.to_avro()?));
    }
    let avg = out.iter().map(|r| r.1.len()).sum::<usize>() / events;
    Ok((out, avg))
}

/// The baseline: copy every raw record to the passthrough topic, exactly once.
fn passthrough(kafka: &KafkaConfig, events: usize, policy: BatchPolicy) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka
        .client("bench-passthrough")
        .set("group.id", PASSTHROUGH_GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topics::USAGE_RAW])?;
    let producer: BaseProducer = kafka
        .client("bench-passthrough-txn")
        .set("transactional.id", "meterline-bench-passthrough")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    let (mut done, mut in_txn, mut opened) = (0usize, 0usize, Instant::now());
    let mut next: std::collections::HashMap<i32, i64> = Default::default();
    while done < events {
        if let Some(msg) = consumer.poll(Duration::from_millis(50)) {
            let msg = msg?;
            if in_txn == 0 {
                producer.begin_transaction()?;
                opened = Instant::now();
            }
            let mut rec = BaseRecord::<[u8], [u8]>::to(PASSTHROUGH_TOPIC)
                .partition(msg.partition())
                .payload(msg.payload().unwrap_or_default());
            if let Some(k) = msg.key() {
                rec = rec.key(k);
            }
            meterline_enrich::stage::send(&producer, rec)?;
            next.insert(msg.partition(), msg.offset() + 1);
            in_txn += 1;
            done += 1;
        }
        if in_txn > 0
            && (in_txn >= policy.max_records
                || opened.elapsed() >= policy.max_age
                || done == events)
        {
            let mut offsets = TopicPartitionList::new();
            for (p, o) in &next {
                offsets.add_partition_offset(topics::USAGE_RAW, *p, Offset::Offset(*o))?;
            }
            let meta = consumer.group_metadata().context("group metadata")?;
            producer.send_offsets_to_transaction(&offsets, &meta, timeout)?;
            producer.commit_transaction(timeout)?;
            in_txn = 0;
        }
        producer.poll(Duration::ZERO);
    }
    Ok(())
}

/// Resident memory now (VmRSS), in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

/// RSS growth per id of one window filled with `n` ids (committed, all inside the window).
fn dedup_bytes_per_id(n: usize) -> anyhow::Result<f64> {
    let before = rss_bytes()?;
    let mut w = DedupWindow::new(chrono::Duration::hours(1));
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(50);
    for i in 0..n {
        w.admit(
            &format!("bench-dedup-{i}"),
            t0 + chrono::Duration::milliseconds(i as i64),
        );
    }
    w.commit();
    let after = rss_bytes()?;
    anyhow::ensure!(w.len() == n, "window holds {} of {n}", w.len());
    Ok((after.saturating_sub(before)) as f64 / n as f64)
}
