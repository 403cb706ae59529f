//! The ledger is exact through crashes, on a real broker and real files: `meterline aggregate`
//! as a subprocess is killed with SIGKILL at random moments while priced records keep arriving
//! (events over three dates, so flushes write several files). Afterwards the Delta table holds
//! every priced record exactly once — same count, same (partition, offset) set, same Decimal
//! sum — read by our reader and by delta-rs's Python package. `meterline compact` runs beside
//! the stage in half of the rounds (and is SIGKILLed itself in half of those). Two sinks in
//! one consumer group share the table, one of them killed.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{spawn_stage, Harness, KillOnDrop};
use meterline_schemas::{topics, AvroRecord};
use rand::Rng;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Produces priced records `from..from + n`; returns the exact sum of their totals (unscaled).
fn produce_priced(brokers: &str, from: usize, n: usize) -> i128 {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut sum = 0i128;
    for i in from..from + n {
        let priced = common::ledger::priced_series(i);
        sum += priced.cost.total.to_unscaled();
        let v = priced.to_avro().unwrap();
        let key = priced.event.partition_key().to_string();
        loop {
            match p.send(BaseRecord::to(topics::USAGE_PRICED).key(&key).payload(&v)) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    sum
}

struct Ledger {
    rows: usize,
    sum: i128,
    positions: HashSet<(i32, i64)>,
    duplicates: usize,
}

/// The table's rows as every reader sees them: its newest snapshot (files of flushes killed
/// before their commit are on disk, outside the table).
fn read_ledger(data: &Path) -> Ledger {
    read_table(&meterline_ledger::LedgerConfig::default(), data)
}

/// [`read_ledger`] of the table `cfg` says (a bucket).
fn read_table(cfg: &meterline_ledger::LedgerConfig, data: &Path) -> Ledger {
    let mut l = Ledger {
        rows: 0,
        sum: 0,
        positions: HashSet::new(),
        duplicates: 0,
    };
    for r in common::ledger::ledger_rows_of(cfg, data) {
        l.rows += 1;
        l.sum += r.cost;
        if !l.positions.insert((r.partition, r.offset)) {
            l.duplicates += 1;
        }
    }
    l
}

fn spawn_aggregate(h: &Harness, data: &Path, log: &Path) -> Child {
    spawn_aggregate_with(h, data, log, &[])
}

fn spawn_aggregate_with(
    h: &Harness,
    data: &Path,
    log: &Path,
    more: &[(&'static str, String)],
) -> Child {
    let s = |k, v: &str| (k, v.to_string());
    let mut settings = vec![
        s("METERLINE_AGGREGATE__LISTEN", "127.0.0.1:0"),
        s("METERLINE_AGGREGATE__DATA_DIR", &data.display().to_string()),
        s("METERLINE_AGGREGATE__FLUSH_ROWS", "150"),
        s("METERLINE_AGGREGATE__FLUSH_MS", "100"),
        s("METERLINE_AGGREGATE__SESSION_TIMEOUT_MS", "2000"),
    ];
    settings.extend(more.iter().cloned());
    spawn_stage(h, "aggregate", &settings, log)
}

fn file_count(data: &Path) -> usize {
    std::fs::read_dir(data.join("usage"))
        .map(|ds| {
            ds.map(|d| {
                std::fs::read_dir(d.unwrap().path())
                    .map(|f| f.count())
                    .unwrap_or(0)
            })
            .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_the_ledger_equals_the_topic_exactly() {
    let h = Harness::start().await;
    tokio::task::spawn_blocking(move || {
        let data = h.dir.path().join("data");
        let log = h.dir.path().join("aggregate.log");
        let brokers = h.kafka.brokers.clone();
        let mut expected_sum = produce_priced(&brokers, 0, 2000);
        let mut produced = 2000;
        let mut rng = rand::rng();
        for round in 0..12 {
            // a round needs something to write: the sink may have caught up before its kill
            if read_ledger(&data).positions.len() >= produced {
                expected_sum += produce_priced(&brokers, produced, 300);
                produced += 300;
            }
            let mut child = KillOnDrop(spawn_aggregate(&h, &data, &log));
            // Kill once it has written something since it started, plus a random extra moment
            // (mid-flush, mid-rename, between files of one flush, or while idle).
            let before = file_count(&data);
            let t0 = Instant::now();
            while file_count(&data) == before {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "no progress in round {round}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            // Every other round a compaction runs beside the stage, and is itself killed at
            // a random moment half of those times.
            let compactor = (round % 2 == 1).then(|| {
                std::process::Command::new(env!("CARGO_BIN_EXE_meterline"))
                    .args(["compact", "--date", &format!("2026-04-0{}", 1 + round % 3)])
                    .env("METERLINE_AGGREGATE__DATA_DIR", data.display().to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            });
            std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
            if let Some(mut c) = compactor {
                if round % 4 == 1 {
                    let _ = c.kill();
                }
                c.wait().unwrap();
            }
            child.0.kill().unwrap(); // SIGKILL
            child.0.wait().unwrap();
            // more input arrives while it is down, every other round
            if round % 2 == 0 {
                expected_sum += produce_priced(&brokers, produced, 300);
                produced += 300;
            }
        }
        // A last run catches up; then a graceful stop.
        let mut child = KillOnDrop(spawn_aggregate(&h, &data, &log));
        let t0 = Instant::now();
        loop {
            let l = read_ledger(&data);
            if l.positions.len() >= produced && l.duplicates == 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "ledger has {} of {produced} rows; log:\n{}",
                l.rows,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        child.0.wait().unwrap();

        let l = read_ledger(&data);
        assert_eq!(l.duplicates, 0, "rows written twice");
        assert_eq!(l.rows, produced, "every priced record once");
        assert_eq!(l.positions.len(), produced);
        assert_eq!(
            l.sum, expected_sum,
            "the Decimal sum equals the topic's exactly"
        );
        // The Delta log, read by delta-rs's Python package, holds the same rows and money:
        // through 12 kills of the stage and killed compactions beside it.
        let seen = common::delta_summary(&data.join("usage"));
        assert_eq!(seen["rows"], produced as u64, "rows in the Delta table");
        let cost: rust_decimal::Decimal = seen["cost"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            cost.normalize(),
            rust_decimal::Decimal::from_i128_with_scale(expected_sum, 18).normalize(),
            "the Delta table's Decimal sum"
        );
        // each partition's txn version is its last offset in the ledger
        let mut last: std::collections::BTreeMap<i32, i64> = Default::default();
        for (p, o) in &l.positions {
            let e = last.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        for (p, o) in last {
            assert_eq!(
                seen["txn"][p.to_string()],
                o,
                "txn of partition {p}: {}",
                seen["txn"]
            );
        }
    })
    .await
    .unwrap();
}

/// Two sinks in one consumer group write one table (each its own partitions, concurrent
/// blind appends); one is SIGKILLed, the other takes its partitions over from their txn
/// versions; the table stays exact. No partition is written by both: a flush of a partition
/// someone else moved on is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_share_the_table_and_one_takes_over_when_the_other_is_killed() {
    let h = Harness::start().await;
    tokio::task::spawn_blocking(move || {
        let data = h.dir.path().join("data");
        let (log_a, log_b) = (h.dir.path().join("a.log"), h.dir.path().join("b.log"));
        let brokers = h.kafka.brokers.clone();
        let mut expected_sum = produce_priced(&brokers, 0, 600);
        // killed on the way out, also when an assertion fails
        let mut a = KillOnDrop(spawn_aggregate(&h, &data, &log_a));
        let mut b = KillOnDrop(spawn_aggregate(&h, &data, &log_b));
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let t0 = Instant::now();
            while !done() {
                assert!(
                    t0.elapsed() < Duration::from_secs(90),
                    "{what}; logs:\n{}\n---\n{}",
                    std::fs::read_to_string(&log_a).unwrap_or_default(),
                    std::fs::read_to_string(&log_b).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let took_over = |log: &Path| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("took over partition")
                .count()
        };
        wait_for("the first records are written", &|| {
            read_ledger(&data).positions.len() >= 600
        });
        // traffic until both write: a sink takes a partition over when a record of it
        // arrives after the group gave it the partition (the second joins a moment later)
        let mut produced = 600;
        let t0 = Instant::now();
        while took_over(&log_a) == 0 || took_over(&log_b) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "both sinks never wrote:\n{}\n---\n{}",
                std::fs::read_to_string(&log_a).unwrap_or_default(),
                std::fs::read_to_string(&log_b).unwrap_or_default()
            );
            expected_sum += produce_priced(&brokers, produced, 50);
            produced += 50;
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_for("both keep writing", &|| {
            read_ledger(&data).positions.len() >= produced
        });
        let before = took_over(&log_b);
        a.0.kill().unwrap(); // SIGKILL, mid-whatever
        a.0.wait().unwrap();
        let killed = Instant::now();
        expected_sum += produce_priced(&brokers, produced, 300);
        produced += 300;
        wait_for("the survivor takes the killed one's partitions", &|| {
            took_over(&log_b) > before
        });
        let takeover = killed.elapsed();
        wait_for("the survivor catches up", &|| {
            read_ledger(&data).positions.len() >= produced
        });
        unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
        b.0.wait().unwrap();
        let l = read_ledger(&data);
        assert_eq!((l.rows, l.duplicates), (produced, 0), "every record once");
        assert_eq!(l.sum, expected_sum, "the Decimal sum equals the topic's");
        let seen = common::delta_summary(&data.join("usage"));
        assert_eq!(seen["rows"], produced as u64, "rows in the Delta table");
        println!(
            "the survivor took over {} ms after the kill",
            takeover.as_millis()
        );
    })
    .await
    .unwrap();
}

/// The kill -9 loop on object storage: two sinks in one group write one table on an S3 server
/// (moto, `tests/common/s3.rs`); eight times one of them, at random, is SIGKILLed at a random
/// moment while records arrive, and restarted. The table then holds every priced record
/// exactly once — row count, (partition, offset) set, Decimal sum — read by us and by
/// delta-rs's Python package from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_on_s3_killed_in_turns_leave_the_table_exact() {
    let h = Harness::start().await;
    tokio::task::spawn_blocking(move || {
        let s3 = common::s3::S3Server::start().unwrap();
        let url = format!("{}/ledger", s3.create_bucket("meterline-sinks").unwrap());
        let cfg = meterline_ledger::LedgerConfig {
            url: url.clone(),
            storage: s3.storage_options(),
            ..Default::default()
        };
        let env: Vec<(&'static str, String)> = vec![
            ("METERLINE_LEDGER__URL", url.clone()),
            ("AWS_ENDPOINT_URL", s3.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "meterline".into()),
            ("AWS_SECRET_ACCESS_KEY", "meterline".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ];
        let data = h.dir.path().join("data");
        let logs = [h.dir.path().join("a.log"), h.dir.path().join("b.log")];
        let brokers = h.kafka.brokers.clone();
        let mut expected_sum = produce_priced(&brokers, 0, 1500);
        let mut produced = 1500;
        let spawn = |i: usize| KillOnDrop(spawn_aggregate_with(&h, &data, &logs[i], &env));
        let mut sinks = [spawn(0), spawn(1)];
        let logs_text = || {
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        let mut rng = rand::rng();
        for round in 0..8 {
            // once the table has moved since this round began, kill one at a random moment
            let before = read_table(&cfg, &data).rows;
            let t0 = Instant::now();
            while read_table(&cfg, &data).rows == before && before < produced {
                assert!(
                    t0.elapsed() < Duration::from_secs(90),
                    "no progress in round {round}:\n{}",
                    logs_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
            let victim = rng.random_range(0..2);
            sinks[victim].0.kill().unwrap(); // SIGKILL
            sinks[victim].0.wait().unwrap();
            if round % 2 == 0 {
                expected_sum += produce_priced(&brokers, produced, 300);
                produced += 300;
            }
            sinks[victim] = spawn(victim);
        }
        let t0 = Instant::now();
        loop {
            let l = read_table(&cfg, &data);
            assert_eq!(l.duplicates, 0, "a row twice:\n{}", logs_text());
            if l.positions.len() >= produced {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "table has {} of {produced} rows:\n{}",
                l.rows,
                logs_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for s in &sinks {
            unsafe { libc::kill(s.0.id() as i32, libc::SIGTERM) };
        }
        for s in &mut sinks {
            s.0.wait().unwrap();
        }
        let l = read_table(&cfg, &data);
        assert_eq!((l.rows, l.duplicates), (produced, 0), "every record once");
        assert_eq!(l.positions.len(), produced);
        assert_eq!(
            l.sum, expected_sum,
            "the Decimal sum equals the topic's exactly"
        );
        let seen = common::delta_summary_of(&format!("{url}/usage"), &s3.env());
        assert_eq!(
            seen["rows"], produced as u64,
            "rows in the Delta table on the bucket"
        );
        let cost: rust_decimal::Decimal = seen["cost"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            cost.normalize(),
            rust_decimal::Decimal::from_i128_with_scale(expected_sum, 18).normalize()
        );
        let fenced: usize = logs_text().matches("flush fenced").count();
        println!("8 kills over two sinks on S3: {produced} rows exact; {fenced} flushes fenced");
    })
    .await
    .unwrap();
}
