//! `[aggregate]` configuration.

use std::path::PathBuf;

use meterline_reference::budgets::WebhookTarget;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The ledger stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Consumer group on `meterline.usage.priced`. Its committed offsets are informational:
    /// the files are the progress.
    pub group_id: String,
    /// Address of the `/metrics` and `/healthz` HTTP server (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Root of the data tree; the ledger is `<data_dir>/usage/date=YYYY-MM-DD/…`.
    pub data_dir: PathBuf,
    /// A partition's buffer is written out at this many rows…
    pub flush_rows: usize,
    /// …or this many bytes of input records…
    pub flush_bytes: usize,
    /// …or when its oldest row is this many milliseconds old, whichever comes first.
    pub flush_ms: u64,
    /// Consumer session timeout in milliseconds.
    pub session_timeout_ms: u64,
    /// Longest time between polls before the consumer leaves the group, in milliseconds
    /// (a flush happens between polls, so this bounds a flush too).
    pub max_poll_interval_ms: u64,
    /// Track budgets in this instance: running spend rebuilt from the ledger and the stream,
    /// crossings published to `meterline.budget.signals`. Exactly one instance of a
    /// deployment should have it on (every tracker reads every partition).
    pub budgets: bool,
    /// Alert delivery (webhooks for budget crossings and anomalies).
    pub alerts: AlertsConfig,
}

/// Webhook delivery of `meterline.budget.signals` and `meterline.anomalies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Deliver alerts from this instance (a consumer group, so several instances share it).
    pub enabled: bool,
    /// Consumer group of the deliverer; its committed offsets mark what was delivered.
    pub group_id: String,
    /// Receivers of every alert, in addition to each budget's own `webhooks`.
    pub webhooks: Vec<WebhookTarget>,
    /// Attempts per receiver before giving up (counted as `failed`).
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubled per attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Longest retry delay in milliseconds.
    pub backoff_max_ms: u64,
    /// Timeout of one HTTP attempt in milliseconds.
    pub timeout_ms: u64,
    /// Alerts older than this many seconds when first read are not delivered (a new group
    /// reading the topics' history would otherwise replay every past alert).
    pub max_age_secs: u64,
    /// Deliveries in flight at once; one slow receiver never holds up the others.
    pub max_in_flight: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            group_id: "meterline-alerts".into(),
            webhooks: vec![],
            max_attempts: 8,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            timeout_ms: 5_000,
            max_age_secs: 24 * 3600,
            max_in_flight: 64,
        }
    }
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            group_id: "meterline-aggregate".into(),
            listen: "127.0.0.1:9095".into(),
            data_dir: PathBuf::from("data"),
            flush_rows: 20_000,
            flush_bytes: 8 * 1024 * 1024,
            flush_ms: 10_000,
            session_timeout_ms: 6_000,
            max_poll_interval_ms: 300_000,
            budgets: true,
            alerts: AlertsConfig::default(),
        }
    }
}

impl AggregateConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.group_id.trim().is_empty() {
            return bad("aggregate.group_id must not be empty");
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("aggregate.listen must be host:port");
        }
        if self.flush_rows == 0 || self.flush_bytes == 0 || self.flush_ms == 0 {
            return bad("aggregate.flush_rows, flush_bytes and flush_ms must be > 0");
        }
        if self.session_timeout_ms < 1_000 {
            return bad("aggregate.session_timeout_ms must be at least 1000");
        }
        let a = &self.alerts;
        for w in &a.webhooks {
            WebhookTarget::parse(&w.url)
                .map_err(|e| Error::Config(format!("aggregate.alerts.webhooks: {e}")))?;
        }
        if a.max_attempts == 0 || a.max_in_flight == 0 || a.timeout_ms == 0 {
            return bad("aggregate.alerts.max_attempts, max_in_flight and timeout_ms must be > 0");
        }
        if a.backoff_initial_ms == 0 || a.backoff_max_ms < a.backoff_initial_ms {
            return bad("aggregate.alerts: 0 < backoff_initial_ms ≤ backoff_max_ms");
        }
        Ok(())
    }
}
