//! `meterline ingest`: the edge forwarder. Gateways POST usage (native JSON, CloudEvents,
//! LiteLLM, OTLP traces); every valid item becomes an Avro `UsageEvent` on
//! `meterline.usage.raw`, acknowledged only once the broker acked it or it is fsynced in the
//! local spool.

pub mod adapters;
pub mod config;
pub mod enforcement;
pub mod forwarder;
pub mod http;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meterline_runtime::auth::TokenTable;
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::topics;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{IngestConfig, SpoolConfig};

/// Errors of the ingest stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Contract(#[from] meterline_schemas::Error),
    /// Kafka settings, topic provisioning or the budget follower (`meterline-runtime`).
    #[error(transparent)]
    Runtime(#[from] meterline_runtime::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// A built, not yet running, ingest stage.
pub struct App {
    listener: TcpListener,
    shared: Arc<http::Shared>,
    stop: CancellationToken,
}

/// The librdkafka producer settings of the edge.
pub fn producer_config(kafka: &KafkaConfig, cfg: &IngestConfig) -> rdkafka::ClientConfig {
    let mut c = kafka.client("ingest");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("compression.type", &cfg.compression)
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        // After this, librdkafka gives the message up and reports it failed: only then is it spooled.
        .set("message.timeout.ms", cfg.produce_timeout_ms.to_string())
        // Below the message timeout, so librdkafka can retry an in-flight request once before it
        // gives the message up. A message given up while possibly persisted is then spooled and
        // may arrive twice; enrich drops such duplicates by event id.
        .set(
            "request.timeout.ms",
            (cfg.produce_timeout_ms / 2).clamp(500, 30_000).to_string(),
        );
    // Applied again after the edge's defaults: an operator's `kafka.properties` wins.
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

impl App {
    /// Validates the config, opens the spool, creates the producer and binds the listener.
    pub async fn build(kafka: &KafkaConfig, cfg: IngestConfig) -> Result<App, Error> {
        kafka.validate()?;
        cfg.validate()?;
        if kafka.create_topics {
            // The edge must start even when the broker is down (that is what the spool is for).
            match tokio::time::timeout(
                Duration::from_secs(10),
                ensure_topics(kafka, &topics::all(kafka.usage_partitions)),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not create topics; continuing"),
                Err(_) => tracing::warn!("broker not answering topic creation; continuing"),
            }
        }
        let producer: FutureProducer = producer_config(kafka, &cfg).create()?;
        let spool =
            spool::Spool::open(&cfg.spool.dir, cfg.spool.max_bytes, cfg.spool.segment_bytes)?;
        let forwarder = forwarder::Forwarder::new(
            producer,
            topics::USAGE_RAW,
            spool,
            cfg.spool.dir.join("dead-letter"),
        );
        let listener = TcpListener::bind(&cfg.listen).await?;
        let stop = CancellationToken::new();
        let enforcement = if cfg.enforcement {
            enforcement::follow(kafka, stop.clone())?
        } else {
            Default::default()
        };
        let shared = Arc::new(http::Shared {
            enforcement,
            tokens: TokenTable::new(&cfg.tokens),
            cfg,
            forwarder,
            metrics: meterline_runtime::telemetry::prometheus(),
        });
        Ok(App {
            listener,
            shared,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Cancelling this token stops the stage gracefully.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until the stop token is cancelled, then flushes the producer.
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let App {
            listener,
            shared,
            stop,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "ingest listening");
        let drainer = tokio::spawn(shared.forwarder.clone().run_drainer(stop.clone()));
        let forwarder = shared.forwarder.clone();
        let s = stop.clone();
        let idle = Duration::from_millis(shared.cfg.client_idle_timeout_ms);
        let listener = meterline_runtime::telemetry::IdleTimeoutListener::new(listener, idle);
        axum::serve(listener, http::router(shared))
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await?;
        stop.cancel();
        let _ = drainer.await;
        // 1. HTTP is closed: no new events.  2. Wait for in-flight produce acks.
        let f = forwarder.clone();
        tokio::task::spawn_blocking(move || f.flush(Duration::from_secs(10)))
            .await
            .ok();
        Ok(())
    }
}
