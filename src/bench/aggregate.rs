//! `meterline bench aggregate`: the same priced records, on the same broker, through
//! 1. a bare `read_committed` consumer that touches each payload and commits its position every
//!    5,000 records (the floor any sink pays), in a thread of this process, and
//! 2. `meterline aggregate` as its own process, writing the Delta ledger with its defaults
//!    except a 2 s age limit (so the last partial flush does not wait 10 s and skew the rate),
//!    and without the budget tracker and alert delivery (consumers of their own, measured by
//!    the latency half of the bench, `budget.rs`).
//!
//! Both are timed from outside by their group's committed offsets (aggregate commits after each
//! flush), from 10 % to 100 %. Also printed: the sink's CPU µs per row, peak RSS and the
//! ledger's bytes per row on disk.

use std::time::Duration;

use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::{topics, AvroRecord, CostLines, Money, PricedUsage, TenantPath};
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{peak_rss_kib, watch};
use crate::broker::free_port;

const BARE_GROUP: &str = "meterline-bench-bare-consumer";
const SINK_GROUP: &str = "meterline-bench-aggregate";

pub(super) async fn run(events: usize, brokers: Option<String>) -> anyhow::Result<()> {
    anyhow::ensure!(events >= 10, "--events must be at least 10");
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::broker(brokers, dir.path())?;
    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        ..Default::default()
    };
    ensure_topics(&kafka, &topics::all(kafka.usage_partitions)).await?;

    let records = priced_records(events)?;
    let avg_bytes = records.iter().map(|r| r.1.len()).sum::<usize>() / events;
    super::produce_all(&kafka, topics::USAGE_PRICED, &records).await?;
    drop(records);

    // 1. bare consumer
    let me = std::process::id();
    let k = kafka.clone();
    let bare_thread = std::thread::spawn(move || bare_consume(&k, events));
    let bare = watch(&kafka, topics::USAGE_PRICED, BARE_GROUP, events, me).await?;
    bare_thread.join().expect("bare consumer thread")?;

    // 2. the sink
    let data = dir.path().join("data");
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\n[aggregate]\ngroup_id = \"{SINK_GROUP}\"\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nflush_ms = 2000\n",
            free_port(),
            data.display()
        ),
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--config", cfg_path.to_str().unwrap(), "aggregate"])
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let sink = watch(&kafka, topics::USAGE_PRICED, SINK_GROUP, events, pid).await;
    let rss_mib = peak_rss_kib(pid)? as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let sink = sink?;
    let (files, bytes) = disk_usage(&data.join("usage"))?;

    println!("bench aggregate: {events} priced events (~{avg_bytes} B Avro each), {} partitions, broker {bootstrap}", kafka.usage_partitions);
    println!(
        "  bare consumer            {:>10.0} rows/s   CPU {:>6.2} µs/row (whole bench process)",
        bare.rate, bare.cpu_us_per_event
    );
    println!(
        "  Delta sink               {:>10.0} rows/s   CPU {:>6.2} µs/row (aggregate process)",
        sink.rate, sink.cpu_us_per_event
    );
    println!(
        "  ratio sink/bare          {:>10.2}   (target ≥ 0.5)",
        sink.rate / bare.rate
    );
    println!(
        "  on disk                  {:>10.1} B/row   ({files} files, {:.1} MiB; Avro on the topic {avg_bytes} B/row)",
        bytes as f64 / events as f64,
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!("  sink peak RSS            {rss_mib:>10.1} MiB   (target ≤ 256)");
    Ok(())
}

/// Demo events priced with plausible costs and tenants, as priced-topic records.
fn priced_records(events: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let now = chrono::Utc::now();
    let ctx = meterline_ingest::adapters::Ctx {
        source: "bench".into(),
        received_at: now,
    };
    let run = std::process::id();
    let mut out = Vec::with_capacity(events);
    for i in 0..events {
        let v = crate::dev::demo_event(&mut rng, &format!("bench-{run}-{i}"));
        let raw = serde_json::value::to_raw_value(&v)?;
        let mut event = meterline_ingest::adapters::native::decode(&raw, &ctx)
            .map_err(|e| anyhow::anyhow!("demo event invalid: {e:?}"))?;
        // a day of traffic
        event.occurred_at = now - chrono::Duration::seconds(rng.random_range(0..86_400));
        let input: Money = format!("0.{:09}", rng.random_range(0..10_000_000)).parse()?;
        let output: Money = format!("0.{:09}", rng.random_range(0..20_000_000)).parse()?;
        let team = event.team_id.clone();
        let priced = PricedUsage {
            tenant: TenantPath {
                org: "acme".into(),
                cost_center: Some(format!("cc-{}", i % 3)),
                team,
                ..Default::default()
            },
            tenant_rule_id: Some("r1".into()),
            price_id: format!("{}/{}", event.provider, event.model),
            price_version: 1,
            price_resolution: "exact".into(),
            model: String::new(),
            currency: "USD".into(),
            cost: CostLines {
                input,
                output,
                total: input + output,
                ..Default::default()
            },
            priced_at: now,
            event,
        };
        out.push((priced.event.partition_key().to_string(), priced.to_avro()?));
    }
    Ok(out)
}

fn bare_consume(kafka: &KafkaConfig, events: usize) -> anyhow::Result<()> {
    let c: BaseConsumer = kafka
        .client("bench-bare")
        .set("group.id", BARE_GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    c.subscribe(&[topics::USAGE_PRICED])?;
    let (mut n, mut touched) = (0usize, 0u64);
    let mut next = std::collections::HashMap::new();
    while n < events {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            let m = m?;
            touched += m.payload().map(|p| p.len() as u64).unwrap_or(0);
            next.insert(m.partition(), m.offset() + 1);
            n += 1;
            if n % 5000 == 0 || n == events {
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &next {
                    tpl.add_partition_offset(topics::USAGE_PRICED, *p, Offset::Offset(*o))?;
                }
                c.commit(&tpl, CommitMode::Sync)?;
            }
        }
    }
    std::hint::black_box(touched);
    Ok(())
}

fn disk_usage(usage: &std::path::Path) -> anyhow::Result<(usize, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for d in std::fs::read_dir(usage)? {
        for f in std::fs::read_dir(d?.path())? {
            let f = f?;
            files += 1;
            bytes += f.metadata()?.len();
        }
    }
    Ok((files, bytes))
}
