//! `meterline rebuild` on a real Apache Kafka: priced records (plain, in a committed
//! transaction, in an aborted one, and one undecodable record) over three dates and two
//! currencies; `meterline aggregate` writes its ledger as usual; then `meterline rebuild --into`
//! re-derives a ledger from the topic. Read back here with our own Parquet reader, the rebuilt
//! ledger holds exactly the records produced (aborted ones and the poison record excluded): the
//! same (partition, offset, event id, cost) rows and Decimal sums per currency as the sink's
//! ledger; delta-rs's Python reader sees the same rows and sum in its Delta log; its summary
//! says RECONCILED and derives the budget's spend. A second rebuild into the same directory is
//! refused and leaves it untouched; the sink, pointed at the rebuilt ledger, continues exactly
//! where the rebuild ended. A topic whose oldest records were deleted is refused unless
//! `--allow-truncated`.
//!
//! Measuring: `REBUILD_TEST_EVENTS=200000` (events produced), `REBUILD_TEST_FLUSH_ROWS` (the
//! rebuild's `--flush-rows`, default 1000 so that the small run flushes several times) and
//! `REBUILD_TEST_BIN` (the `meterline` that rebuilds, e.g. a release build) — the summary with
//! its events/s is printed with `--nocapture`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{spawn_stage, Harness};
use meterline_runtime::kafka::ensure_topics;
use meterline_schemas::{topics, AvroRecord, Money, PricedUsage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A ledger row as this test reads it: (partition, offset) → (event id, currency, cost).
type Rows = BTreeMap<(i32, i64), (String, String, i128)>;

fn priced(i: usize) -> PricedUsage {
    PricedUsage {
        currency: if i % 10 == 9 { "EUR" } else { "USD" }.into(),
        ..common::ledger::priced_series(i)
    }
}

fn send(p: &BaseProducer, key: &str, value: &[u8]) {
    loop {
        match p.send(BaseRecord::to(topics::USAGE_PRICED).key(key).payload(value)) {
            Ok(()) => break,
            Err(_) => {
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Produces events `from..from + n` (idempotent, no transaction); returns them by event id.
fn produce(brokers: &str, from: usize, n: usize) -> BTreeMap<String, PricedUsage> {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut out = BTreeMap::new();
    for i in from..from + n {
        let e = priced(i);
        send(&p, e.event.partition_key(), &e.to_avro().unwrap());
        out.insert(e.event.event_id.clone(), e);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    out
}

/// Events `from..from + n` in one transaction, committed or aborted (as enrich writes them).
fn produce_in_transaction(
    brokers: &str,
    from: usize,
    n: usize,
    commit: bool,
) -> BTreeMap<String, PricedUsage> {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("rebuild-test-{commit}"))
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    let mut out = BTreeMap::new();
    for i in from..from + n {
        let e = priced(i);
        send(&p, e.event.partition_key(), &e.to_avro().unwrap());
        out.insert(e.event.event_id.clone(), e);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    if commit {
        p.commit_transaction(Duration::from_secs(30)).unwrap();
    } else {
        p.abort_transaction(Duration::from_secs(30)).unwrap();
    }
    out
}

/// Every row of the ledger under `data` (its newest snapshot, as readers see it), with our
/// own Parquet reader; panics on a (partition, offset) seen twice.
fn read_rows(data: &Path) -> Rows {
    let mut rows = Rows::new();
    for r in common::ledger::ledger_rows(data) {
        let at = (r.partition, r.offset);
        let old = rows.insert(at, (r.event_id, r.currency, r.cost));
        assert!(old.is_none(), "a row twice at {at:?}");
    }
    rows
}

/// Sum of cost per currency.
fn sums(rows: &Rows) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for (_, c, v) in rows.values() {
        *out.entry(c.clone()).or_default() += v;
    }
    out
}

fn expected_sums(events: &BTreeMap<String, PricedUsage>) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for e in events.values() {
        *out.entry(e.currency.clone()).or_default() += e.cost.total.to_unscaled();
    }
    out
}

fn meterline(h: &Harness, args: &[&str]) -> Output {
    let bin = std::env::var("REBUILD_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_meterline").to_string());
    Command::new(bin)
        .args(args)
        .env("METERLINE_KAFKA__BROKERS", &h.kafka.brokers)
        .env(
            "METERLINE_KAFKA__USAGE_PARTITIONS",
            h.kafka.usage_partitions.to_string(),
        )
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `meterline aggregate` on `data` until its ledger holds `n` rows, then stops it.
fn aggregate_until(h: &Harness, data: &Path, n: usize, log: &Path) {
    let s = |k, v: &str| (k, v.to_string());
    let mut child = spawn_stage(
        h,
        "aggregate",
        &[
            s("METERLINE_AGGREGATE__LISTEN", "127.0.0.1:0"),
            s("METERLINE_AGGREGATE__DATA_DIR", &data.display().to_string()),
            s("METERLINE_AGGREGATE__FLUSH_MS", "200"),
        ],
        log,
    );
    let t0 = Instant::now();
    while read_rows(data).len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "aggregate wrote {} of {n} rows; log:\n{}",
            read_rows(data).len(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuilt_ledger_equals_the_topic_and_the_sinks_ledger() {
    let h = Harness::start().await;
    ensure_topics(&h.kafka, &topics::all(h.kafka.usage_partitions))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let n: usize = std::env::var("REBUILD_TEST_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000);
        let brokers = h.kafka.brokers.clone();
        let t0 = Instant::now();
        let mut expected = produce(&brokers, 0, n);
        expected.extend(produce_in_transaction(&brokers, n, 200, true));
        let aborted = produce_in_transaction(&brokers, n + 200, 100, false);
        // an undecodable record: the sink skips it, and so does the rebuild
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        send(&p, "poison", b"not avro");
        p.flush(Duration::from_secs(10)).unwrap();
        expected.extend(produce(&brokers, n + 300, 100));
        eprintln!(
            "produced {} priced records in {:.1} s",
            expected.len() + 101,
            t0.elapsed().as_secs_f64()
        );
        // a budget over team-0's USD spend, at all times: 50 % crossed, 100 % not
        let team0: i128 = expected
            .values()
            .filter(|e| e.tenant.team.as_deref() == Some("team-0") && e.currency == "USD")
            .map(|e| e.cost.total.to_unscaled())
            .sum();
        let limit = Money::from_unscaled(team0 / 10 * 15).unwrap(); // spend ≈ 67 %
        let out = meterline(
            &h,
            &[
                "budgets",
                "create",
                "team0-all",
                "--scope",
                "team=team-0",
                "--limit",
                &limit.to_string(),
                "--period",
                "custom",
                "--from",
                "2020-01-01T00:00:00Z",
                "--to",
                "2100-01-01T00:00:00Z",
                "--thresholds",
                "50:notify,100:block",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));

        // the sink's ledger, as usual
        let sink_data = h.dir.path().join("sink");
        let log = h.dir.path().join("aggregate.log");
        aggregate_until(&h, &sink_data, expected.len(), &log);
        let sink = read_rows(&sink_data);

        // the rebuild
        let into = h.dir.path().join("rebuilt");
        let t0 = Instant::now();
        let flush_rows = std::env::var("REBUILD_TEST_FLUSH_ROWS").unwrap_or_else(|_| "1000".into());
        let out = meterline(
            &h,
            &[
                "rebuild",
                "--into",
                into.to_str().unwrap(),
                "--flush-rows",
                &flush_rows,
            ],
        );
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!(
            "meterline rebuild took {secs:.2} s (process, {} events)",
            expected.len()
        );
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("RECONCILED: every event"), "{stdout}");
        let rebuilt = read_rows(&into);

        // exactly what was produced: no aborted record, no poison, each event once
        let ids: BTreeMap<&str, (&str, i128)> = rebuilt
            .values()
            .map(|(id, c, v)| (id.as_str(), (c.as_str(), *v)))
            .collect();
        assert_eq!(ids.len(), rebuilt.len(), "an event id twice");
        assert_eq!(rebuilt.len(), expected.len(), "every committed event once");
        for (id, e) in &expected {
            assert_eq!(
                ids.get(id.as_str()),
                Some(&(e.currency.as_str(), e.cost.total.to_unscaled())),
                "{id}"
            );
        }
        assert!(
            aborted.keys().all(|id| !ids.contains_key(id.as_str())),
            "an aborted record"
        );
        assert_eq!(
            sums(&rebuilt),
            expected_sums(&expected),
            "Decimal sums per currency"
        );
        assert_eq!(sums(&rebuilt).len(), 2);
        // and what the sink wrote: the same rows at the same offsets
        assert_eq!(rebuilt, sink, "the rebuilt ledger equals the sink's");

        // delta-rs reads the same from the rebuilt table's log
        let seen = common::delta_summary(&into.join("usage"));
        assert_eq!(seen["rows"], expected.len() as u64);
        let cost: rust_decimal::Decimal = seen["cost"].as_str().unwrap().parse().unwrap();
        let total: i128 = expected_sums(&expected).values().sum();
        assert_eq!(
            cost.normalize(),
            rust_decimal::Decimal::from_i128_with_scale(total, 18).normalize()
        );

        // the summary: one poison record, and the budget's spend as watch derives it
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("total")
                    && l.split_whitespace().nth(3) == Some("1")),
            "one poison record in the totals line: {stdout}"
        );
        let spend = Money::from_unscaled(team0).unwrap();
        assert!(
            stdout.contains(&format!("budget team0-all: {spend} of {limit} USD")),
            "budget spend {spend}: {stdout}"
        );
        assert!(
            stdout.contains("1 crossing(s) not on meterline.budget.signals yet"),
            "{stdout}"
        );

        // a second rebuild into the same directory is refused, and changes nothing
        let before = read_rows(&into);
        let listing = |d: &Path| {
            let mut v: Vec<String> = walk(d);
            v.sort();
            v
        };
        let files_before = listing(&into);
        let out = meterline(&h, &["rebuild", "--into", into.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not empty"),
            "{}",
            text(&out)
        );
        assert_eq!(listing(&into), files_before);
        assert_eq!(read_rows(&into), before);

        // the sink, pointed at the rebuilt ledger, goes on exactly where the rebuild ended
        let more = produce(&brokers, n + 1000, 300);
        expected.extend(more);
        aggregate_until(&h, &into, expected.len(), &log);
        let after = read_rows(&into);
        assert_eq!(after.len(), expected.len(), "nothing twice, nothing lost");
        assert_eq!(sums(&after), expected_sums(&expected));
    })
    .await
    .unwrap();
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(format!("{} {}", e.path().display(), m.len()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_lost_records_to_retention_is_refused_unless_allowed() {
    let h = Harness::start().await;
    ensure_topics(&h.kafka, &topics::all(h.kafka.usage_partitions))
        .await
        .unwrap();
    let brokers = h.kafka.brokers.clone();
    let events = tokio::task::spawn_blocking(move || produce(&brokers, 0, 200))
        .await
        .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &h.kafka.brokers)
            .create()
            .unwrap();
    // the priced log is created to be kept (retention by time would delete what a rebuild
    // needs after the broker's default 7 days); the raw topic keeps the broker's default
    let retention = |topic: &'static str| {
        let admin = &admin;
        async move {
            let r = admin
                .describe_configs(
                    &[rdkafka::admin::ResourceSpecifier::Topic(topic)],
                    &rdkafka::admin::AdminOptions::new(),
                )
                .await
                .unwrap();
            let cfg = r.into_iter().next().unwrap().unwrap();
            cfg.get("retention.ms").and_then(|e| e.value.clone())
        }
    };
    assert_eq!(retention(topics::USAGE_PRICED).await.as_deref(), Some("-1"));
    assert_eq!(
        retention(topics::USAGE_RAW).await.as_deref(),
        Some("604800000")
    );
    // what retention does: the oldest records of partition 0 are deleted
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topics::USAGE_PRICED, 0, rdkafka::Offset::Offset(10))
        .unwrap();
    admin
        .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let into = h.dir.path().join("rebuilt");
        let out = meterline(&h, &["rebuild", "--into", into.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("partition 0 starts at offset 10"), "{err}");
        assert!(err.contains("--allow-truncated"), "{err}");
        assert!(!into.join("usage").exists(), "nothing written");

        let out = meterline(
            &h,
            &[
                "rebuild",
                "--into",
                into.to_str().unwrap(),
                "--allow-truncated",
                "--no-watch",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let rows = read_rows(&into);
        assert_eq!(rows.len(), events.len() - 10, "what is left, once");
        assert!(rows.keys().all(|(p, o)| *p != 0 || *o >= 10));
    })
    .await
    .unwrap();
}
