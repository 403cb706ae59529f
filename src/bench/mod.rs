//! Benchmarks (not tests): each runs a raw baseline and the stage on the same broker and the
//! same records in one run, and prints both rates, their ratio, the stage's CPU µs per event
//! and peak RSS. Ratios, not absolute numbers, are what compare across (noisy, 2-core) machines.
//! Long phases show progress on standard error (`crate::progress`); results go to standard output.

mod aggregate;
mod api;
mod budget;
mod enrich;
mod ingest;
mod ledger;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use meterline_runtime::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::KafkaBroker;
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Edge forwarder vs. a bare producer.
    Ingest {
        /// Events per side.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events per HTTP request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent HTTP requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Use this cluster instead of a local Apache Kafka.
        #[arg(long)]
        brokers: Option<String>,
    },
    /// The Parquet sink vs. a bare consumer of the priced topic; then the latency from ingest
    /// to the budget state at a steady rate through the whole pipeline.
    Aggregate {
        /// Priced events (a million: the sink's last flush waits for its age limit, 2 s,
        /// which a short run would count as throughput).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Events per second of the latency run (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        latency_rate: u32,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 20)]
        latency_secs: u64,
        /// Use this cluster instead of a local Apache Kafka.
        #[arg(long)]
        brokers: Option<String>,
    },
    /// The monthly chargeback through the API (finance, and a team lead by SQL) vs. the same
    /// hand-written DataFusion SQL and vs. DuckDB on the same Parquet files (no broker
    /// involved).
    Api {
        /// Priced rows written for the month.
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        /// Keep (or reuse, if it holds a ledger) the data directory here.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// The Delta ledger: flush and commit latency (p50/p99) against fsynced writes of the same
    /// bytes, and the time to open a table of many commits (no broker involved).
    Ledger {
        /// Flushes of 2,000 rows timed.
        #[arg(long, default_value_t = 400)]
        flushes: usize,
        /// Versions of the table before it is opened again (txn-only commits fill it up).
        #[arg(long, default_value_t = 100_000)]
        commits: u64,
        /// The table's root (`s3://…`, a directory); default a temp directory.
        #[arg(long)]
        url: Option<String>,
    },
    /// The enrich stage vs. a bare transactional consume→produce passthrough.
    Enrich {
        /// Events (all inside the dedup window, so it ends up holding every id).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Use this cluster instead of a local Apache Kafka.
        #[arg(long)]
        brokers: Option<String>,
        /// Records per transaction, both sides (default: enrich's default).
        #[arg(long)]
        txn_max_records: Option<usize>,
        /// Transaction age limit in ms, both sides (default: enrich's default).
        #[arg(long)]
        txn_max_ms: Option<u64>,
    },
}

/// The cluster to run on: `brokers`, else a local Apache Kafka with its data in `dir/kafka`
/// (Kafka has no in-memory mode; a temp dir is the closest), kept alive by the returned handle.
fn broker(brokers: Option<String>, dir: &Path) -> anyhow::Result<(Option<KafkaBroker>, String)> {
    if let Some(b) = brokers {
        return Ok((None, b));
    }
    let b = KafkaBroker::start(&dir.join("kafka"))?;
    let bootstrap = b.bootstrap();
    Ok((Some(b), bootstrap))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Ingest {
            events,
            batch,
            concurrency,
            brokers,
        } => ingest::run(events, batch, concurrency, brokers).await,
        BenchWhat::Aggregate {
            events,
            latency_rate,
            latency_secs,
            brokers,
        } => {
            aggregate::run(events, brokers).await?;
            if latency_rate > 0 {
                budget::run(latency_rate, latency_secs).await?;
            }
            Ok(())
        }
        BenchWhat::Api { events, data_dir } => api::run(events, data_dir).await,
        BenchWhat::Ledger {
            flushes,
            commits,
            url,
        } => tokio::task::spawn_blocking(move || ledger::run(flushes, commits, url)).await?,
        BenchWhat::Enrich {
            events,
            brokers,
            txn_max_records,
            txn_max_ms,
        } => {
            let d = meterline_enrich::config::EnrichConfig::default();
            let policy = meterline_enrich::txn::BatchPolicy {
                max_records: txn_max_records.unwrap_or(d.txn_max_records),
                max_age: Duration::from_millis(txn_max_ms.unwrap_or(d.txn_max_ms)),
            };
            enrich::run(events, brokers, policy).await
        }
    }
}

/// CPU time (user + system) of a process, in microseconds, from /proc.
pub(crate) fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(ticks * 1_000_000 / hz)
}

/// Peak resident set size (VmHWM) in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

pub(crate) async fn wait_healthy(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("ingest did not become healthy")
}

pub(crate) async fn post(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: bytes::Bytes,
) -> anyhow::Result<()> {
    let r = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "ingest answered {}: {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

pub(crate) struct Measured {
    pub rate: f64,
    pub cpu_us_per_event: f64,
}

/// Polls `group`'s committed offsets on `topic` until they cover `events` records (the topic
/// starts empty and is written without transactions, so offsets count records); the rate and
/// `pid`'s CPU are taken between 10 % and 100 %.
pub(crate) async fn watch(
    kafka: &KafkaConfig,
    topic: &'static str,
    group: &str,
    events: usize,
    pid: u32,
) -> anyhow::Result<Measured> {
    let (kafka, group) = (kafka.clone(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = kafka
            .client("bench-watch")
            .set("group.id", &group)
            .create()?;
        let partitions = kafka.usage_partitions;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition(topic, p);
        }
        let started = Instant::now();
        let tenth = events / 10;
        let mut at_tenth: Option<(Instant, u64)> = None;
        let mut progress = Progress::new(group.clone(), "records", Some(events as u64), false);
        let mut last_error = None;
        loop {
            // a fresh broker answers "coordinator load in progress" / "not coordinator" for a
            // while: asked again until the deadline below
            let offsets = match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(offsets) => offsets,
                Err(e) => {
                    anyhow::ensure!(
                        started.elapsed() < Duration::from_secs(600),
                        "{group}: committed offsets unreadable for 10 min: {e}"
                    );
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let committed: i64 = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum();
            let done = committed as usize;
            progress.update(done.min(events) as u64, String::new);
            if at_tenth.is_none() && done >= tenth {
                at_tenth = Some((Instant::now(), cpu_micros(pid)?));
            }
            if done >= events {
                progress.finish("");
                let (t0, cpu0) = at_tenth.expect("set at 10 %");
                let n = (events - tenth) as f64;
                return Ok(Measured {
                    rate: n / t0.elapsed().as_secs_f64(),
                    cpu_us_per_event: (cpu_micros(pid)? - cpu0) as f64 / n,
                });
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{group}: only {done} of {events} committed after 10 min (last error: {last_error:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await?
}

/// The value of an unlabelled (or the sum of a labelled) metric in Prometheus text.
pub(crate) fn scrape(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends every (key, value) to `topic` with an idempotent producer and waits for all acks.
pub(crate) async fn produce_all(
    kafka: &KafkaConfig,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka
        .client("bench-input")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let sends: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            producer.send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(30),
            )
        })
        .collect();
    let failed = futures::future::join_all(sends)
        .await
        .iter()
        .filter(|r| r.is_err())
        .count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} records not produced to {topic}",
        records.len()
    );
    Ok(())
}
