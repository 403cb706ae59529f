//! `meterline aggregate`: the priced stream → the ledger (`meterline-ledger`), exactly once.
//! The budget tracker, anomaly detection and alert delivery are `meterline watch`.
//!
//! - `stage`: the consume → flush loop; `config`: `[aggregate]`.

pub mod config;

pub mod stage;

use std::net::SocketAddr;
use std::sync::Arc;

use meterline_ledger::LedgerConfig;
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_runtime::telemetry::{Readiness, StageHost};
use meterline_schemas::topics;
use tokio_util::sync::CancellationToken;

pub use config::AggregateConfig;

/// Errors of the aggregate stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics server could not listen on `[aggregate] listen` (the address in use, by an
    /// instance still stopping for one).
    #[error("metrics server: {0}")]
    Metrics(#[source] std::io::Error),
    /// The supervisor's blocking task panicked or was cancelled (a bug).
    #[error("aggregate supervisor task: {0}")]
    Supervisor(#[source] tokio::task::JoinError),
    /// A ledger file that cannot be read, or a failed cleanup: stop rather than guess.
    #[error("ledger file: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Fatal(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker did not answer in time, or not what a healthy group answers: retried.
    #[error("{0}")]
    Broker(String),
    /// Topic provisioning, Kafka settings or the topic follower (`meterline-runtime`).
    #[error(transparent)]
    Runtime(#[from] meterline_runtime::Error),
    /// Budget definitions and their periods (`meterline-reference`).
    #[error(transparent)]
    Reference(#[from] meterline_reference::Error),
    /// The ledger's files (`meterline-ledger`).
    #[error(transparent)]
    Ledger(#[from] meterline_ledger::Error),
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    pub fn kafka(e: rdkafka::error::KafkaError) -> Error {
        Error::Kafka(e)
    }

    /// Whether waiting and trying again can help: broker faults, a failing disk write (a
    /// ledger `Io` error: the write is tried again with the same rows), a metrics address
    /// still held. A corrupt ledger file, configuration, fatal Kafka errors and a panicked
    /// task cannot be waited out.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => meterline_runtime::kafka::retryable(e),
            Error::Runtime(e) => e.is_retryable(),
            Error::Reference(e) => e.is_retryable(),
            Error::Ledger(e) => e.is_retryable(),
            Error::Broker(_) | Error::Metrics(_) => true,
            Error::Corrupt(_) | Error::Fatal(_) | Error::Config(_) | Error::Supervisor(_) => false,
        }
    }
}

/// The aggregate stage: configuration checked, metrics served; `run_until_stopped` recovers the
/// ledger and runs the sink under a supervisor.
pub struct App {
    cfg: AggregateConfig,
    ledger: LedgerConfig,
    kafka: KafkaConfig,
    host: StageHost,
}

impl App {
    pub async fn build(
        kafka: &KafkaConfig,
        cfg: AggregateConfig,
        ledger: LedgerConfig,
    ) -> Result<App, Error> {
        cfg.validate()?;
        ledger.validate()?;
        kafka.validate().map_err(|e| Error::Config(e.to_string()))?;
        let host = StageHost::start(&cfg.listen)
            .await
            .map_err(Error::Metrics)?;
        // Counted from zero: on `/metrics` (and in `rate()`) before the first failure.
        metrics::counter!(meterline_schemas::metric_names::AGGREGATE_WRITE_ERRORS).increment(0);
        metrics::counter!(meterline_schemas::metric_names::AGGREGATE_POISON).increment(0);
        metrics::counter!(meterline_schemas::metric_names::AGGREGATE_FENCED).increment(0);
        Ok(App {
            cfg,
            ledger,
            kafka: kafka.clone(),
            host,
        })
    }

    /// Address of the metrics server.
    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// Cancel to stop: buffered rows are written, then the stage returns.
    pub fn stop_token(&self) -> CancellationToken {
        self.host.stop_token()
    }

    /// Runs the ledger writer until `stop`. A retryable error (broker faults, a failing write)
    /// restarts it after a backoff, from the ledger and the topic as they are (it resumes
    /// exactly where the files end); `/healthz` says why meanwhile. Other errors end it.
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let App {
            cfg,
            ledger,
            kafka,
            host,
        } = self;
        let runtime = tokio::runtime::Handle::current();
        host.run_supervised(
            "aggregate",
            meterline_schemas::metric_names::AGGREGATE_STAGE_RESTARTS,
            Error::is_retryable,
            move |ready, attempt| run_once(&runtime, &kafka, &cfg, &ledger, ready, attempt),
        )
        .await
        .map_err(Error::Supervisor)?
    }
}

/// One attempt: topics, the table, then the sink until `stop` or an error.
fn run_once(
    runtime: &tokio::runtime::Handle,
    kafka: &KafkaConfig,
    cfg: &AggregateConfig,
    ledger: &LedgerConfig,
    ready: &Readiness,
    stop: CancellationToken,
) -> Result<(), Error> {
    if kafka.create_topics {
        runtime.block_on(ensure_topics(kafka, &topics::all(kafka.usage_partitions)))?;
    }
    let ledger = Arc::new(meterline_ledger::Ledger::open(ledger, &cfg.data_dir)?);
    let stage = stage::Stage::new(kafka, cfg.clone(), ledger, stop)?;
    ready.ready();
    stage.run()
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_failing_disk_write_is_retried_a_broken_file_is_not() {
        let disk = Error::Ledger(meterline_ledger::Error::Io {
            path: "data/usage/x.parquet".into(),
            source: std::io::Error::other("disk full"),
        });
        assert!(disk.is_retryable());
        assert!(std::error::Error::source(&disk).is_some());
        let corrupt = Error::Ledger(meterline_ledger::Error::Corrupt {
            path: "data/usage/x.parquet".into(),
            reason: "bad footer".into(),
        });
        assert!(!corrupt.is_retryable());
        let metrics = Error::Metrics(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert!(metrics.is_retryable());
        assert!(std::error::Error::source(&metrics).is_some());
    }
}
