//! Kafka connection settings shared by every stage, and topic provisioning.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::Error;
use meterline_schemas::topics::TopicSpec;

/// How to reach the Kafka-compatible cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// Client id prefix; each stage appends its name.
    pub client_id: String,
    /// Partitions of the usage topics when meterline creates them.
    pub usage_partitions: i32,
    /// Replication factor when meterline creates topics (1 for a single broker).
    pub replication_factor: i32,
    /// Create missing topics at start (dev and tests; production may provision them).
    pub create_topics: bool,
    /// Extra librdkafka properties applied to every client (security.protocol, sasl.*, …).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "meterline".into(),
            usage_partitions: 4,
            replication_factor: 1,
            create_topics: true,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.brokers.trim().is_empty() {
            return Err(Error::Config("kafka.brokers must not be empty".into()));
        }
        if self.usage_partitions < 1 {
            return Err(Error::Config("kafka.usage_partitions must be >= 1".into()));
        }
        if self.replication_factor < 1 {
            return Err(Error::Config(
                "kafka.replication_factor must be >= 1".into(),
            ));
        }
        Ok(())
    }

    /// A librdkafka client config with the bootstrap servers, client id and extra properties.
    pub fn client(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", format!("{}-{}", self.client_id, role));
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A stage's group consumer: offsets committed only by the stage (in a transaction, or to
    /// inform lag tooling), `read_committed`, a new group starting at the earliest offset,
    /// heartbeats at a quarter of the session timeout, fetches answered within 100 ms, and
    /// librdkafka statistics every 5 s
    /// (consumer lag, see `lag.rs`).
    pub fn stage_consumer(
        &self,
        role: &str,
        group_id: &str,
        session_timeout_ms: u64,
        max_poll_interval_ms: u64,
    ) -> ClientConfig {
        let mut c = self.client(role);
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_timeout_ms / 4).max(250).to_string(),
            )
            .set("max.poll.interval.ms", max_poll_interval_ms.to_string())
            // An idle partition's fetch returns after 100 ms, not librdkafka's 500: the
            // pipeline's end-to-end latency is the sum of these waits.
            .set("fetch.wait.max.ms", "100")
            .set("statistics.interval.ms", "5000");
        c
    }
}

/// Creates the topics that do not exist yet (existing ones are left alone).
pub async fn ensure_topics(cfg: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.client("admin")
            .create()
            .map_err(|source| Error::Kafka {
                what: "create the admin client".into(),
                source,
            })?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            let t = NewTopic::new(
                s.name,
                s.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            );
            let t = if s.kept_forever {
                t.set("retention.ms", "-1")
            } else {
                t
            };
            if s.compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    // First contact: a broker that cannot be reached is named with the setting that chose it,
    // not left to a create-topics timeout 30 s later.
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|source| Error::Unreachable {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|source| Error::Kafka {
            what: "create topics".into(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Topics(format!("create topic {topic}: {code}")))
            }
        }
    }
    // Apache Kafka answers CreateTopics before every partition has a leader: a client that
    // reads or writes right away gets NotLeaderForPartition / LeaderNotAvailable. Ready means
    // every partition of every topic has a leader.
    let names: Vec<&'static str> = specs.iter().map(|s| s.name).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|source| Error::Kafka {
                what: "fetch metadata".into(),
                source,
            })?;
        let led = |name: &str| {
            md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            })
        };
        // A leader in the metadata is not yet a partition that answers: right after a topic is
        // (re)created its broker may still refuse ListOffsets with NotLeaderForPartition.
        let answers = || {
            md.topics()
                .iter()
                .filter(|t| names.contains(&t.name()))
                .all(|t| {
                    t.partitions().iter().all(|p| {
                        admin
                            .inner()
                            .fetch_watermarks(t.name(), p.id(), Duration::from_secs(2))
                            .is_ok()
                    })
                })
        };
        if names.iter().all(|n| led(n)) && answers() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<&&str> = names.iter().filter(|n| !led(n)).collect();
            return Err(Error::Topics(format!(
                "topics without a leader after 30 s: {missing:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// librdkafka's verdict on an error, for the stage supervisors: only a few kinds are fatal.
pub fn retryable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError as K;
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        K::ClientConfig(..) | K::ClientCreation(_) | K::Subscription(_) => false,
        K::Transaction(r) => !r.is_fatal(),
        _ => !matches!(
            e.rdkafka_error_code(),
            Some(
                C::Fatal
                    | C::Fenced
                    | C::ProducerFenced
                    | C::InvalidProducerEpoch
                    | C::InvalidConfig
                    | C::TopicAuthorizationFailed
                    | C::GroupAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::TransactionalIdAuthorizationFailed
                    | C::SaslAuthenticationFailed
                    | C::UnsupportedVersion
            )
        ),
    }
}
