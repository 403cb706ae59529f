//! `[watch]` configuration.

use std::path::PathBuf;

use meterline_reference::budgets::WebhookTarget;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The watch stage: budgets against spend, spend anomalies, alert delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Address of the `/metrics` and `/healthz` HTTP server (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Root of the data tree the ledger is in (`<data_dir>/usage/…`, written by `meterline
    /// aggregate`): the tracker rebuilds running spend from it on start, and writes the
    /// anomalies table (`<data_dir>/anomalies/…`).
    pub data_dir: PathBuf,
    /// Track budgets and detect anomalies in this instance: running spend rebuilt from the
    /// ledger and the priced stream, crossings published to `meterline.budget.signals`,
    /// anomalies to `meterline.anomalies`. Exactly one instance of a deployment should have
    /// it on (every tracker reads every partition).
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

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            listen: "127.0.0.1:9096".into(),
            data_dir: PathBuf::from("data"),
            budgets: true,
            alerts: AlertsConfig::default(),
        }
    }
}

impl WatchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("watch.listen must be host:port");
        }
        let a = &self.alerts;
        for w in &a.webhooks {
            WebhookTarget::parse(&w.url)
                .map_err(|e| Error::Config(format!("watch.alerts.webhooks: {e}")))?;
        }
        if a.max_attempts == 0 || a.max_in_flight == 0 || a.timeout_ms == 0 {
            return bad("watch.alerts.max_attempts, max_in_flight and timeout_ms must be > 0");
        }
        if a.backoff_initial_ms == 0 || a.backoff_max_ms < a.backoff_initial_ms {
            return bad("watch.alerts: 0 < backoff_initial_ms ≤ backoff_max_ms");
        }
        Ok(())
    }
}
