//! `meterline enrich`: prices raw usage with the price in force when it happened, attributes it
//! to the org, drops duplicates, and writes PricedUsage exactly once.
//!
//! - `cost`: the cost rules (pure); `pricing`: one event → priced event or rejection, with the
//!   price book and tenant directory of `meterline-reference`.
//! - `dedup`, `tail`: the dedup window and its rebuild from our own output.
//! - `txn`: the exactly-once protocol and its bookkeeping; `stage`: the consume→produce loop.
//! - `admin`: the CLI's list/replay of rejected events.

pub mod admin;
pub mod config;
pub mod cost;
pub mod dedup;
pub mod pricing;
pub mod stage;
pub mod tail;
pub mod txn;

use std::net::SocketAddr;
use std::time::Duration;

use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_runtime::telemetry::{Readiness, StageHost};
use meterline_schemas::metric_names as m;
use meterline_schemas::topics;
use tokio_util::sync::CancellationToken;

pub use config::EnrichConfig;

/// Errors of the enrich stage. The stage's supervisor branches on [`Error::is_retryable`]:
/// a retryable error restarts the stage's Kafka work after a backoff (exactly-once makes that
/// the same as a process restart), anything else ends the process with the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No rate for a unit the event uses: the event is rejected with this reason, never priced at 0.
    #[error("no {unit} rate (tier {tier}) in price {price_id}")]
    NoRate {
        price_id: String,
        unit: &'static str,
        tier: String,
    },
    #[error("cost of {what} overflows")]
    Overflow { what: &'static str },
    /// A positive quantity at a positive rate came to zero after rounding to 18 decimals:
    /// billing it as free would be wrong, so the event is rejected with this reason.
    #[error("{what}: {qty} at {rate} rounds to a zero cost")]
    ZeroCost {
        what: &'static str,
        qty: String,
        rate: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker did not answer in time, or not what a healthy group answers: retried.
    #[error("{0}")]
    Broker(String),
    /// Topic provisioning, Kafka settings or the topic follower (`meterline-runtime`).
    #[error(transparent)]
    Runtime(#[from] meterline_runtime::Error),
    /// Reading the prices and tenants (`meterline-reference`).
    #[error(transparent)]
    Reference(#[from] meterline_reference::Error),
    #[error("codec: {0}")]
    Codec(#[source] meterline_schemas::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
    #[error("stage task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    pub fn kafka(e: rdkafka::error::KafkaError) -> Error {
        Error::Kafka(e)
    }
    pub fn codec(e: meterline_schemas::Error) -> Error {
        Error::Codec(e)
    }

    /// Whether waiting and trying again can help (a broker that is down, restarting, electing
    /// leaders, loading a coordinator, or slow). Configuration, authorisation, fencing and bugs
    /// cannot be waited out.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => meterline_runtime::kafka::retryable(e),
            Error::Runtime(e) => e.is_retryable(),
            Error::Reference(e) => e.is_retryable(),
            Error::Broker(_) => true,
            _ => false,
        }
    }
}

/// The enrich stage: configuration checked, metrics served; `run_until_stopped` does the rest
/// under a supervisor.
pub struct App {
    kafka: KafkaConfig,
    cfg: EnrichConfig,
    host: StageHost,
}

impl App {
    pub async fn build(kafka: &KafkaConfig, cfg: EnrichConfig) -> Result<App, Error> {
        cfg.validate()?;
        kafka.validate().map_err(|e| Error::Config(e.to_string()))?;
        let host = StageHost::start(&cfg.listen).await?;
        Ok(App {
            kafka: kafka.clone(),
            cfg,
            host,
        })
    }

    /// Address of the metrics server.
    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// Cancel to stop: open transactions are committed, then the stage returns.
    pub fn stop_token(&self) -> CancellationToken {
        self.host.stop_token()
    }

    /// Provisions topics, loads the reference data, and prices until stopped. A retryable
    /// error (the broker down, restarting, slow) restarts that work after a backoff, with
    /// `/healthz` saying why meanwhile; only an error no wait can cure ends it.
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let App { kafka, cfg, host } = self;
        let runtime = tokio::runtime::Handle::current();
        host.run_supervised(
            "enrich",
            m::ENRICH_STAGE_RESTARTS,
            Error::is_retryable,
            move |ready, attempt| run_once(&runtime, &kafka, &cfg, ready, attempt),
        )
        .await?
    }
}

/// One attempt: topics, reference data, the stage loop.
fn run_once(
    runtime: &tokio::runtime::Handle,
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    ready: &Readiness,
    stop: CancellationToken,
) -> Result<(), Error> {
    if kafka.create_topics {
        runtime.block_on(ensure_topics(kafka, &topics::all(kafka.usage_partitions)))?;
    }
    let reference = meterline_reference::loader::load_and_follow(
        kafka,
        Duration::from_millis(cfg.reference_load_timeout_ms),
        stop.clone(),
    )?;
    let stage = stage::Stage::new(kafka.clone(), cfg.clone(), reference, stop)?;
    ready.ready();
    stage.run()
}
