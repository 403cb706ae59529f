//! `meterline aggregate`: the priced stream → the Parquet ledger, exactly once.
//!
//! - `files`: the exactly-once rules (names, flush metadata, recovery), pure and unit-tested;
//! - `rows`: priced events → Arrow batches in the ledger schema;
//! - `ledger`: the Parquet files on disk (atomic writes, scan, recovery);
//! - `stage`: the consume → flush loop.

pub mod budget;
pub mod config;
pub mod files;
pub mod ledger;
pub mod rows;
pub mod stage;

use std::net::SocketAddr;
use std::sync::Arc;

use meterline_schemas::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::topics;
use tokio_util::sync::CancellationToken;

pub use config::AggregateConfig;

/// Errors of the aggregate stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Retryable: the write is tried again with the same rows.
    #[error("io: {0}")]
    Io(String),
    /// A ledger file that cannot be read, or a failed cleanup: stop rather than guess.
    #[error("ledger file: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Fatal(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    pub fn io(e: impl std::fmt::Display) -> Error {
        Error::Io(e.to_string())
    }
    pub fn kafka(e: impl std::fmt::Display) -> Error {
        Error::Kafka(e.to_string())
    }
}

/// The aggregate stage: ledger recovered, consumer subscribed, metrics served.
pub struct App {
    stage: stage::Stage,
    local_addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn build(kafka: &KafkaConfig, cfg: AggregateConfig) -> Result<App, Error> {
        cfg.validate()?;
        kafka.validate().map_err(|e| Error::Config(e.to_string()))?;
        if kafka.create_topics {
            ensure_topics(kafka, &topics::all(kafka.usage_partitions))
                .await
                .map_err(Error::kafka)?;
        }
        let stop = CancellationToken::new();
        let metrics = meterline_schemas::telemetry::serve_metrics(&cfg.listen, stop.clone())
            .await
            .map_err(|e| Error::io(e))?;
        let (local_addr, server) = (metrics.local_addr, metrics.task);
        let ledger = Arc::new(ledger::Ledger::open(&cfg.data_dir)?);
        let (kafka2, stop2) = (kafka.clone(), stop.clone());
        let stage =
            tokio::task::spawn_blocking(move || stage::Stage::new(&kafka2, cfg, ledger, stop2))
                .await
                .map_err(Error::io)??;
        Ok(App {
            stage,
            local_addr,
            stop,
            server,
        })
    }

    /// Address of the metrics server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancel to stop: buffered rows are written, then the stage returns.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let stop = self.stop.clone();
        let result = tokio::task::spawn_blocking(move || self.stage.run())
            .await
            .map_err(Error::io)?;
        stop.cancel();
        let _ = self.server.await;
        result
    }
}
