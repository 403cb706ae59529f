//! `[ingest]` configuration.

use std::path::PathBuf;

use meterline_runtime::auth::TokenConfig;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The edge forwarder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// This edge's id, written into every event's `source`.
    pub source_id: String,
    /// Largest accepted request body in bytes (after decompression); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most items in one request; more get 413.
    pub max_batch_items: usize,
    /// How long the broker may take to ack before events go to the spool (librdkafka
    /// `message.timeout.ms`).
    pub produce_timeout_ms: u64,
    /// Producer batching delay (librdkafka `linger.ms`).
    pub linger_ms: u64,
    /// Producer compression codec (none, gzip, snappy, lz4, zstd).
    pub compression: String,
    /// Durable local spool.
    pub spool: SpoolConfig,
    /// Bearer tokens allowed to post events (role `edge` or `admin`).
    pub tokens: Vec<TokenConfig>,
    /// Follow budget signals, budgets and tenants, and answer `/v1/enforcement/*`. Off:
    /// every check answers allow with `ready: false`.
    pub enforcement: bool,
    /// A connection whose client sends nothing for this long while the edge waits for its
    /// request (headers or body) is closed: silent or trickling clients hold no connection.
    pub client_idle_timeout_ms: u64,
}

/// Where events wait while the broker is unreachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the spool segments and cursor.
    pub dir: PathBuf,
    /// Capacity in bytes; when full the edge answers 503 with Retry-After.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// Retry-After seconds sent with 503 when the spool is full.
    pub retry_after_secs: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("data/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            retry_after_secs: 5,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            source_id: "edge-1".into(),
            max_body_bytes: 16 << 20,
            max_batch_items: 10_000,
            produce_timeout_ms: 5_000,
            linger_ms: 5,
            compression: "lz4".into(),
            spool: SpoolConfig::default(),
            tokens: Vec::new(),
            enforcement: true,
            client_idle_timeout_ms: 30_000,
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("ingest.listen must be host:port");
        }
        if self.source_id.trim().is_empty() {
            return bad("ingest.source_id must not be empty");
        }
        if self.client_idle_timeout_ms < 100 {
            return bad("ingest.client_idle_timeout_ms must be at least 100");
        }
        if self.max_body_bytes < 1024 || self.max_batch_items == 0 {
            return bad("ingest.max_body_bytes must be >= 1024 and max_batch_items >= 1");
        }
        if self.produce_timeout_ms < 100 {
            return bad("ingest.produce_timeout_ms must be >= 100");
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return bad("ingest.compression must be none, gzip, snappy, lz4 or zstd");
        }
        if self.spool.max_bytes < self.spool.segment_bytes.min(1 << 20) {
            return bad("ingest.spool.max_bytes is too small");
        }
        if self
            .tokens
            .iter()
            .any(|t| t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return bad("ingest.tokens[].sha256 must be 64 hex characters");
        }
        Ok(())
    }
}
