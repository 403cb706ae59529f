//! Harness for end-to-end tests: a real Apache Kafka broker (child process, one per test
//! binary), the ingest stage in-process on port 0, and a reader that drains a topic up to its
//! high watermarks.

#![allow(dead_code)]

pub mod ledger;
pub mod s3;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use meterline::broker::KafkaBroker;
use meterline_ingest::{App, IngestConfig, SpoolConfig};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::{topics, AvroRecord, UsageEvent};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub const EDGE_TOKEN: &str = "edge-secret";
pub const FINANCE_TOKEN: &str = "finance-secret";

pub struct Harness {
    pub dir: tempfile::TempDir,
    /// The binary's broker (see [`SharedBroker`]); this test has it to itself.
    pub broker: SharedBroker,
    pub kafka: KafkaConfig,
    pub base: String,
    pub stop: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub client: reqwest::Client,
    /// Held for the test's life: the tests of one binary run one after another (declared
    /// last, so it is released after everything above has been dropped).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// One Apache Kafka per test binary, started by the first test that needs it and killed when
/// the binary exits (it is also SIGKILLed by the kernel if the binary dies: see
/// `meterline::broker`).
///
/// Sharing it is only correct one test at a time: every stage uses the fixed topic names
/// (`meterline.usage.raw`, …) and fixed consumer groups / transactional ids
/// (`meterline-enrich`, `meterline-enrich-p0`, …), and the tests assert exact topic contents
/// ("every id exactly once", "the raw topic holds exactly these events") and kill or restart
/// the broker (`ingest_spool`). So [`Harness::start`] takes a process-wide turn (an async
/// mutex, held until the `Harness` is dropped) and gives each test a clean broker: every
/// topic and consumer group the previous test left is deleted (Kafka drops a deleted topic's
/// committed offsets with it) and a killed broker is restarted. Transactions cannot be reset
/// that way: a test must not end with a killed stage's transaction still open (the tests here
/// end with their stages stopped, or caught up and committed), or the next test's
/// read_committed consumers of that group wait for it to time out.
pub struct SharedBroker(&'static Mutex<KafkaBroker>);

impl SharedBroker {
    fn lock(&self) -> MutexGuard<'static, KafkaBroker> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bootstrap(&self) -> String {
        self.lock().bootstrap()
    }

    /// SIGKILL, as a crash or outage would.
    pub fn kill(&self) {
        self.lock().kill()
    }

    /// Back on the same port and data; returns once it answers metadata.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.lock().restart()
    }

    pub fn log_path(&self) -> PathBuf {
        self.lock().log_path()
    }
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static BROKER: OnceLock<Mutex<KafkaBroker>> = OnceLock::new();

/// The broker's directory: one per test process, in the temp dir (a leftover of an earlier
/// process with the same pid is wiped).
fn broker_dir() -> PathBuf {
    std::env::temp_dir().join(format!("meterline-kafka-{}", std::process::id()))
}

/// The binary's broker, started on first use (blocking: call from a blocking context).
fn shared_broker() -> &'static Mutex<KafkaBroker> {
    BROKER.get_or_init(|| {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        extern "C" fn at_exit() {
            // Statics are never dropped: kill the broker and remove its files here.
            if let Some(b) = BROKER.get() {
                match b.try_lock() {
                    Ok(mut b) => b.kill(),
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().kill(),
                    Err(_) => {}
                }
            }
            if std::env::var_os("KEEP_KAFKA_TEST_DIR").is_none() {
                let _ = std::fs::remove_dir_all(broker_dir());
            }
        }
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(at_exit);
        });
        let dir = broker_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let t0 = Instant::now();
        let b = KafkaBroker::start(&dir).expect("Apache Kafka starts (scripts/setup fetches it)");
        eprintln!(
            "Apache Kafka on {} ready in {:.1} s (log: {}, kept with KEEP_KAFKA_TEST_DIR=1)",
            b.bootstrap(),
            t0.elapsed().as_secs_f64(),
            b.log_path().display()
        );
        Mutex::new(b)
    })
}

/// Deletes every topic and consumer group (internal topics aside) and waits until the broker
/// no longer lists them; restarts the broker if a test left it killed.
async fn clean_broker() -> String {
    let bootstrap = tokio::task::spawn_blocking(|| {
        let mut b = shared_broker().lock().unwrap_or_else(|e| e.into_inner());
        if !b.is_running() {
            b.restart().expect("Apache Kafka restarts");
        }
        b.bootstrap()
    })
    .await
    .unwrap();
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let (topics, groups) = listing(&bootstrap).await;
    if !topics.is_empty() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        for r in admin.delete_topics(&names, &opts).await.unwrap() {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, e)) => panic!("deleting topic {t}: {e}"),
            }
        }
    }
    // A group whose last member was SIGKILLed stays non-empty until its session times out.
    let mut groups = groups;
    let t0 = Instant::now();
    while !groups.is_empty() {
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        let mut left = Vec::new();
        for r in admin.delete_groups(&names, &opts).await.unwrap() {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((g, RDKafkaErrorCode::NonEmptyGroup)) => left.push(g),
                Err((g, e)) => panic!("deleting group {g}: {e}"),
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "groups still have members: {left:?}"
        );
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        groups = left;
    }
    eventually(Duration::from_secs(30), "deleted topics gone", || async {
        listing(&bootstrap).await.0.is_empty()
    })
    .await;
    bootstrap
}

/// The broker's non-internal topics and its consumer groups.
async fn listing(bootstrap: &str) -> (Vec<String>, Vec<String>) {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let topics = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__"))
            .collect();
        // Right after a (re)start the group coordinator may still be loading its partitions.
        let t0 = Instant::now();
        let groups = loop {
            match c.fetch_group_list(None, Duration::from_secs(10)) {
                Ok(l) => break l.groups().iter().map(|g| g.name().to_string()).collect(),
                Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("listing consumer groups: {e}"),
            }
        };
        (topics, groups)
    })
    .await
    .unwrap()
}

pub fn ingest_config(dir: &std::path::Path) -> IngestConfig {
    IngestConfig {
        listen: "127.0.0.1:0".into(),
        source_id: "test-edge".into(),
        max_body_bytes: 64 * 1024,
        max_batch_items: 50,
        produce_timeout_ms: 1500,
        linger_ms: 5,
        spool: SpoolConfig {
            dir: dir.join("spool"),
            ..Default::default()
        },
        tokens: vec![
            TokenConfig {
                principal: "edge".into(),
                sha256: hash_token(EDGE_TOKEN),
                role: Role::Edge,
                teams: vec![],
            },
            TokenConfig {
                principal: "fin".into(),
                sha256: hash_token(FINANCE_TOKEN),
                role: Role::Finance,
                teams: vec![],
            },
        ],
        ..Default::default()
    }
}

impl Harness {
    /// Waits for this binary's broker (see [`SharedBroker`]), cleans it, starts ingest.
    pub async fn start() -> Harness {
        let turn = TURN.lock().await;
        let bootstrap = clean_broker().await;
        let dir = tempfile::tempdir().unwrap();
        let kafka = KafkaConfig {
            brokers: bootstrap,
            usage_partitions: 2,
            ..Default::default()
        };
        let mut h = Harness {
            dir,
            broker: SharedBroker(shared_broker()),
            kafka,
            base: String::new(),
            stop: CancellationToken::new(),
            task: None,
            client: reqwest::Client::new(),
            _turn: turn,
        };
        h.start_ingest().await;
        h
    }

    pub async fn start_ingest(&mut self) {
        let app = App::build(&self.kafka, ingest_config(self.dir.path()))
            .await
            .expect("ingest builds");
        self.base = format!("http://{}", app.local_addr());
        self.stop = app.stop_token();
        self.task = Some(tokio::spawn(async move {
            app.run_until_stopped().await.expect("ingest runs")
        }));
    }

    pub async fn stop_ingest(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        self.post_as(path, content_type, body, Some(EDGE_TOKEN))
            .await
    }

    pub async fn post_as(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// The Prometheus text of the edge.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }

    /// The value of the first sample whose line starts with `name` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        let line = text.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Every UsageEvent on the raw topic (reads up to the high watermarks taken now).
    pub async fn raw_events(&self) -> Vec<UsageEvent> {
        let brokers = self.kafka.brokers.clone();
        tokio::task::spawn_blocking(move || {
            drain_topic(&brokers, topics::USAGE_RAW)
                .into_iter()
                .map(|b| UsageEvent::from_avro(&b).expect("valid Avro on the raw topic"))
                .collect()
        })
        .await
        .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Ingest stops before the next test's turn cleans the broker.
        self.stop.cancel();
    }
}

/// Reads every record of `topic` from the beginning up to the high watermarks.
pub fn drain_topic(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "meterline-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut high = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let (_, h) = c
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .unwrap();
        if h > 0 {
            high.insert(*p, h);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .unwrap();
        }
    }
    if high.is_empty() {
        return vec![];
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    // Done by position, not by the last record seen: on transactional topics the last offsets
    // are commit markers, which are never delivered.
    let reached = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        high.iter().all(|(p, h)| {
            matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *h)
        })
    };
    while !reached(&c) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out reading {topic}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}

/// Waits until `cond` holds, polling; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !cond().await {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `meterline <stage>` as a child process on the harness's broker, with `settings`
/// (`METERLINE_<SECTION>__<KEY>` pairs) and its output appended to `log` — for tests that kill
/// it with SIGKILL. Its log filter is `$STAGE_RUST_LOG`, else `info,rdkafka=warn`.
/// A stage's process, SIGKILLed when dropped: a failing assertion does not leave it running
/// in the test binary's shared broker (its group would then never empty for the next test).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_stage(
    h: &Harness,
    stage: &str,
    settings: &[(&str, String)],
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_meterline"))
        .arg(stage)
        .env("METERLINE_KAFKA__BROKERS", &h.kafka.brokers)
        .env(
            "METERLINE_KAFKA__USAGE_PARTITIONS",
            h.kafka.usage_partitions.to_string(),
        )
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("STAGE_RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap()
}

/// What the `deltalake` Python package (delta-rs's reader, from PyPI) sees of the ledger's
/// Delta table at `usage` (`scripts/delta_summary.py`: rows, event ids, exact cost sum, files,
/// txn versions). Fails if `scripts/setup-python` has not installed it.
#[allow(dead_code)]
pub fn delta_summary(usage: &std::path::Path) -> serde_json::Value {
    delta_summary_of(usage.to_str().unwrap(), &[])
}

/// [`delta_summary`] of the table at `location` (a path or a URL such as `s3://…`), the
/// reader's process given `env` (an object store's endpoint and credentials).
pub fn delta_summary_of(location: &str, env: &[(String, String)]) -> serde_json::Value {
    let home = std::env::var("METERLINE_DELTA_PY_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cache/meterline/py-delta",
            std::env::var("HOME").unwrap()
        )
    });
    let python = PathBuf::from(home).join("bin/python");
    assert!(
        python.exists(),
        "{} missing: scripts/setup-python installs the deltalake package",
        python.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/delta_summary.py");
    let out = std::process::Command::new(python)
        .args([script, location])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The calls a test's webhook receiver got: each call's `x-meterline-alert-id` header (empty
/// without one) and its JSON body.
#[allow(dead_code)]
pub type WebhookCalls = std::sync::Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A webhook receiver on port 0 (`POST /hook`) that keeps every call; returns its URL.
#[allow(dead_code)]
pub async fn webhook_receiver() -> (String, WebhookCalls) {
    let got: WebhookCalls = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<serde_json::Value>| {
                let g = g.clone();
                async move {
                    let id = headers
                        .get("x-meterline-alert-id")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    g.lock().unwrap().push((id, v));
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

/// Publishes the demo prices (`meterline dev`'s) and the tenant rules of `tenants_yaml`
/// (effective since 2020) to the harness's broker.
#[allow(dead_code)]
pub async fn publish_reference(h: &Harness, tenants_yaml: &'static str) {
    meterline::dev::publish_demo_reference(h.kafka.clone())
        .await
        .unwrap();
    let k = h.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let rules = meterline_reference::tenants::parse_yaml(
            tenants_yaml,
            Some("2020-01-01T00:00:00Z".parse().unwrap()),
            "t",
        )
        .unwrap();
        meterline_reference::publish::publish_tenants(&k, rules, "test", false).unwrap()
    })
    .await
    .unwrap();
}

/// `meterline budgets create <id> --scope <scope> --limit <limit> --thresholds 100:block
/// --webhook <webhook>` against the harness's broker (no config file), asserted to succeed.
#[allow(dead_code)]
pub fn create_blocking_budget(h: &Harness, id: &str, scope: &str, limit: &str, webhook: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meterline"))
        .args(["budgets", "create", id, "--scope", scope, "--limit", limit])
        .args(["--thresholds", "100:block", "--webhook", webhook])
        .env("METERLINE_KAFKA__BROKERS", &h.kafka.brokers)
        .env(
            "METERLINE_KAFKA__USAGE_PARTITIONS",
            h.kafka.usage_partitions.to_string(),
        )
        .env_remove("METERLINE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
