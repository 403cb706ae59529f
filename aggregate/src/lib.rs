//! `meterline aggregate`: the priced stream → the Parquet ledger, exactly once.
//!
//! - `files`: the exactly-once rules (names, flush metadata, recovery), pure and unit-tested;
//! - `rows`: priced events → Arrow batches in the ledger schema;
//! - `ledger`: the Parquet files on disk (atomic writes, scan, recovery);
//! - `stage`: the consume → flush loop.

pub mod alerts;
pub mod anomaly;
pub mod anomaly_watch;
pub mod budget;
pub mod budget_admin;
pub mod compact;
pub mod config;
pub mod files;
pub mod ledger;
pub mod rows;
pub mod spend;
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
    tracker: Option<spend::SpendTracker>,
    kafka: KafkaConfig,
    alerts: Option<config::AlertsConfig>,
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
            .map_err(Error::io)?;
        let (local_addr, server) = (metrics.local_addr, metrics.task);
        let ledger = Arc::new(ledger::Ledger::open(&cfg.data_dir)?);
        let alerts = cfg.alerts.enabled.then(|| cfg.alerts.clone());
        let tracker = if cfg.budgets {
            let (kafka2, ledger2, stop2) = (kafka.clone(), ledger.clone(), stop.clone());
            let data_dir = cfg.data_dir.clone();
            Some(
                tokio::task::spawn_blocking(move || {
                    spend::SpendTracker::new(&kafka2, ledger2, data_dir, stop2)
                })
                .await
                .map_err(Error::io)??,
            )
        } else {
            None
        };
        let (kafka2, stop2) = (kafka.clone(), stop.clone());
        let stage =
            tokio::task::spawn_blocking(move || stage::Stage::new(&kafka2, cfg, ledger, stop2))
                .await
                .map_err(Error::io)??;
        Ok(App {
            stage,
            tracker,
            kafka: kafka.clone(),
            alerts,
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

    /// Runs the Parquet writer, the budget tracker and alert delivery until `stop` (or until
    /// one of them fails, which stops the others).
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let stop = self.stop.clone();
        let tracker = self.tracker.map(|t| {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                let r = t.run();
                if let Err(e) = &r {
                    tracing::error!(error = %e, "budget tracker stopped");
                    stop.cancel();
                }
                r
            })
        });
        let alerts = self.alerts.map(|cfg| {
            let (kafka, stop) = (self.kafka.clone(), stop.clone());
            tokio::spawn(async move {
                let r = alerts::run(kafka, cfg, stop.clone()).await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "alert delivery stopped");
                }
                r
            })
        });
        let stage = self.stage;
        let result = tokio::task::spawn_blocking(move || stage.run())
            .await
            .map_err(Error::io)?;
        stop.cancel();
        let tracked = match tracker {
            Some(t) => t.await.map_err(Error::io)?,
            None => Ok(()),
        };
        if let Some(a) = alerts {
            let _ = a.await;
        }
        let _ = self.server.await;
        result.and(tracked)
    }
}
