//! What every stage runs on, apart from the contract (`meterline-schemas`): Kafka settings and
//! clients (`kafka`), the one topic follower (`follow`: read to the end, then follow), consumer
//! lag from librdkafka statistics (`lag`), a lease for stages that run as several instances
//! with one active (`lease`), telemetry — metrics endpoint, health, readiness and
//! the stage supervisor (`telemetry`) — and bearer-token roles (`auth`).

pub mod auth;
pub mod follow;
pub mod kafka;
pub mod lag;
pub mod lease;
pub mod telemetry;

use std::time::Duration;

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka call failed; `what` says which.
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// No broker answered the first contact.
    #[error(
        "cannot reach Kafka at {brokers} (set by kafka.brokers in the config file or \
         METERLINE_KAFKA__BROKERS; `meterline dev` starts a local one): {source}"
    )]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Topics could not be created or have no leader yet.
    #[error("topics: {0}")]
    Topics(String),
    /// A topic reader did not reach where the topics ended in time.
    #[error("{topics} not read to their end within {timeout:?}")]
    NotCaughtUp { topics: String, timeout: Duration },
    /// A follower thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Invalid settings.
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    /// Worth retrying after a backoff (the broker may come back); configuration is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka { source, .. } | Error::Unreachable { source, .. } => {
                kafka::retryable(source)
            }
            Error::Topics(_) | Error::NotCaughtUp { .. } | Error::Thread { .. } => true,
            Error::Config(_) => false,
        }
    }
}
