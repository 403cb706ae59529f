//! Harness for end-to-end tests: a real tansu broker (child process), the ingest stage
//! in-process on port 0, and a reader that drains a topic up to its high watermarks.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meterline::broker::{Storage, TansuBroker};
use meterline_ingest::{App, IngestConfig, SpoolConfig};
use meterline_schemas::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::kafka::KafkaConfig;
use meterline_schemas::{topics, AvroRecord, UsageEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub const EDGE_TOKEN: &str = "edge-secret";
pub const FINANCE_TOKEN: &str = "finance-secret";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub broker: TansuBroker,
    pub kafka: KafkaConfig,
    pub base: String,
    pub stop: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub client: reqwest::Client,
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
    pub async fn start(storage_sqlite: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        // sqlite: durable across broker restarts (memory:// needs tansu built with `dynostore`).
        let _ = storage_sqlite;
        let storage = Storage::Sqlite(dir.path().join("broker.db"));
        let broker = TansuBroker::start(storage, dir.path()).expect("tansu starts");
        let kafka = KafkaConfig {
            brokers: broker.bootstrap(),
            usage_partitions: 2,
            ..Default::default()
        };
        let mut h = Harness {
            dir,
            broker,
            kafka,
            base: String::new(),
            stop: CancellationToken::new(),
            task: None,
            client: reqwest::Client::new(),
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
/// it with SIGKILL.
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
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap()
}
