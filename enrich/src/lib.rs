//! `meterline enrich`: prices raw usage with the price in force when it happened, attributes it
//! to the org, drops duplicates, and writes PricedUsage exactly once.
//!
//! - `cost`: the cost rules (pure); `litellm`, `native`: price importers; `price_book`: the
//!   effective-dated price book; `tenants`: the tenant directory; `pricing`: one event → priced
//!   event or rejection.
//! - `dedup`, `tail`: the dedup window and its rebuild from our own output.
//! - `txn`: the exactly-once protocol and its bookkeeping; `stage`: the consume→produce loop.
//! - `reference`: reading the prices and tenants topics; `admin`: the CLI's publish/list/replay.

pub mod admin;
pub mod config;
pub mod cost;
pub mod dedup;
pub mod history;
pub mod litellm;
pub mod native;
pub mod price_book;
pub mod pricing;
pub mod reference;
pub mod stage;
pub mod tail;
pub mod tenants;
pub mod txn;

use std::net::SocketAddr;
use std::time::Duration;

use meterline_schemas::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::topics;
use tokio_util::sync::CancellationToken;

pub use config::EnrichConfig;

/// Errors of the enrich stage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    Kafka(String),
    #[error("codec: {0}")]
    Codec(String),
    #[error("config: {0}")]
    Config(String),
    #[error("reference data: {0}")]
    Reference(String),
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub fn kafka(e: impl std::fmt::Display) -> Error {
        Error::Kafka(e.to_string())
    }
    pub fn codec(e: impl std::fmt::Display) -> Error {
        Error::Codec(e.to_string())
    }
}

/// The enrich stage: reference data loaded, consumer subscribed, metrics served.
pub struct App {
    stage: stage::Stage,
    local_addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn build(kafka: &KafkaConfig, cfg: EnrichConfig) -> Result<App, Error> {
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
            .map_err(|e| Error::Io(e.to_string()))?;
        let (local_addr, server) = (metrics.local_addr, metrics.task);
        let (kafka2, cfg2, stop2) = (kafka.clone(), cfg.clone(), stop.clone());
        let stage = tokio::task::spawn_blocking(move || {
            let reference = reference::load_and_follow(
                &kafka2,
                Duration::from_millis(cfg2.reference_load_timeout_ms),
                stop2.clone(),
            )?;
            stage::Stage::new(kafka2, cfg2, reference, stop2)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))??;
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

    /// Cancel to stop: open transactions are committed, then the stage returns.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let stop = self.stop.clone();
        let result = tokio::task::spawn_blocking(move || self.stage.run())
            .await
            .map_err(|e| Error::Io(e.to_string()))?;
        stop.cancel();
        let _ = self.server.await;
        result
    }
}
