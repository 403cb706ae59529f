//! `meterline bench ingest`: in one run on one broker, a bare rdkafka producer sending
//! pre-encoded records of the same size (the raw baseline), then the ingest HTTP path fed by a
//! concurrent load generator with batched native JSON. Prints both rates, their ratio, the
//! ingest process's CPU µs per event and its peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use meterline_ingest::IngestConfig;
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::topics::TopicSpec;
use rand::SeedableRng;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{cpu_micros, peak_rss_kib, post, wait_healthy};
use crate::broker::free_port;
use crate::progress::Progress;

pub(super) async fn run(
    events: usize,
    batch: usize,
    concurrency: usize,
    brokers: Option<String>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::broker(brokers, dir.path())?;
    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        ..Default::default()
    };
    ensure_topics(
        &kafka,
        &meterline_schemas::topics::all(kafka.usage_partitions),
    )
    .await?;
    ensure_topics(
        &kafka,
        &[TopicSpec {
            name: "meterline.bench.baseline",
            partitions: kafka.usage_partitions,
            compacted: false,
            kept_forever: false,
        }],
    )
    .await?;

    // The same events for both sides: JSON bodies for ingest, their Avro encoding for the baseline.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let run = std::process::id();
    let json: Vec<serde_json::Value> = (0..events)
        .map(|i| crate::dev::demo_event(&mut rng, &format!("bench-{run}-{i}")))
        .collect();
    let ctx = meterline_ingest::adapters::Ctx {
        source: "bench".into(),
        received_at: chrono::Utc::now(),
    };
    let raws: Vec<Box<serde_json::value::RawValue>> = json
        .iter()
        .map(|v| serde_json::value::to_raw_value(v).unwrap())
        .collect();
    // The edge's per-event codec work alone, event by event as a request does it (decode then
    // encode while the event is hot in cache); its output is the baseline's input.
    let (mut decode_ns, mut encode_ns) = (0u128, 0u128);
    let mut records: Vec<(String, Vec<u8>)> = Vec::with_capacity(events);
    for raw in &raws {
        let t = Instant::now();
        let e = meterline_ingest::adapters::native::decode(raw, &ctx).expect("demo event is valid");
        let t2 = Instant::now();
        let value = meterline_schemas::AvroRecord::to_avro(&e).unwrap();
        encode_ns += t2.elapsed().as_nanos();
        decode_ns += (t2 - t).as_nanos();
        records.push((e.partition_key().to_string(), value));
    }
    let decode_us = decode_ns as f64 / 1e3 / events as f64;
    let encode_us = encode_ns as f64 / 1e3 / events as f64;
    let avg_bytes = records.iter().map(|r| r.1.len()).sum::<usize>() / events.max(1);
    let bodies: Vec<bytes::Bytes> = json
        .chunks(batch)
        .map(|c| bytes::Bytes::from(serde_json::to_vec(c).unwrap()))
        .collect();

    // 1. baseline: bare producer, same settings as the edge, pre-encoded records
    let ingest_cfg = IngestConfig::default();
    let producer: FutureProducer =
        meterline_ingest::producer_config(&kafka, &ingest_cfg).create()?;
    let me = std::process::id();
    let base_cpu0 = cpu_micros(me)?;
    let t0 = Instant::now();
    let futs: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            producer.send(
                FutureRecord::to("meterline.bench.baseline")
                    .key(k)
                    .payload(v),
                Duration::from_secs(30),
            )
        })
        .collect();
    let failed = join_all(futs)
        .await
        .into_iter()
        .filter(|r| r.is_err())
        .count();
    let base_secs = t0.elapsed().as_secs_f64();
    let base_cpu_us = cpu_micros(me)? - base_cpu0;
    anyhow::ensure!(failed == 0, "baseline: {failed} sends failed");
    let base_rate = events as f64 / base_secs;

    // 2. ingest as its own process, so its CPU and RSS are its own
    let port = free_port();
    let token = "bench-token";
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\nmax_batch_items = {}\n[ingest.spool]\ndir = \"{}\"\n[[ingest.tokens]]\nprincipal = \"bench\"\nsha256 = \"{}\"\nrole = \"edge\"\n",
            batch.max(1),
            dir.path().join("spool").display(),
            meterline_runtime::auth::hash_token(token)
        ),
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--config", cfg_path.to_str().unwrap(), "ingest"])
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await?;
    // warm-up request (connection, producer metadata) outside the measurement
    let warm = serde_json::to_vec(&[crate::dev::demo_event(
        &mut rng,
        &format!("bench-{run}-warmup"),
    )])?;
    post(&client, &base, token, warm.into()).await?;

    let cpu0 = cpu_micros(pid)?;
    let t0 = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let progress = Arc::new(std::sync::Mutex::new(Progress::new(
        "bench ingest: HTTP",
        "events",
        Some(events as u64),
        false,
    )));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (q, client, base) = (queue.clone(), client.clone(), base.clone());
            let progress = progress.clone();
            tokio::spawn(async move {
                loop {
                    let next = q.lock().unwrap().next();
                    let Some(body) = next else {
                        return Ok::<_, anyhow::Error>(());
                    };
                    post(&client, &base, token, body).await?;
                    let mut p = progress.lock().unwrap();
                    let done = (p.position() + batch as u64).min(events as u64);
                    p.update(done, String::new);
                }
            })
        })
        .collect();
    for w in join_all(workers).await {
        w??;
    }
    progress.lock().unwrap().finish("");
    let ingest_secs = t0.elapsed().as_secs_f64();
    let cpu_us = cpu_micros(pid)? - cpu0;
    let rss_mib = peak_rss_kib(pid)? as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let ingest_rate = events as f64 / ingest_secs;

    println!("bench ingest: {events} events, ~{avg_bytes} B Avro each, batch {batch}, {concurrency} concurrent requests, broker {bootstrap}");
    println!(
        "  bare rdkafka producer   {:>10.0} events/s   ({base_secs:.2} s)",
        base_rate
    );
    println!(
        "  ingest HTTP → Kafka     {:>10.0} events/s   ({ingest_secs:.2} s)",
        ingest_rate
    );
    println!(
        "  ratio ingest/bare       {:>10.2}   (target ≥ 0.5)",
        ingest_rate / base_rate
    );
    println!(
        "  bare producer CPU       {:>10.2} µs/event   (librdkafka alone, same settings)",
        base_cpu_us as f64 / events as f64
    );
    println!(
        "  ingest CPU              {:>10.2} µs/event   (target ≤ 5)",
        cpu_us as f64 / events as f64
    );
    println!("  edge codec alone        {decode_us:>10.2} µs/event JSON decode + validation, {encode_us:.2} µs/event Avro encode (one thread)");
    println!(
        "  ingest peak RSS         {:>10.1} MiB   (target ≤ 256)",
        rss_mib
    );
    Ok(())
}
