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
    /// Root of the data tree the ledger's tables are in when `[ledger] url` is empty
    /// (`<data_dir>/usage`, written by `meterline aggregate`): the tracker rebuilds running
    /// spend from the usage table on start, and writes the anomalies table beside it.
    pub data_dir: PathBuf,
    /// Track budgets and detect anomalies: running spend rebuilt from the ledger and the
    /// priced stream, crossings published to `meterline.budget.signals`, anomalies to
    /// `meterline.anomalies`. Done by the active instance only (see `lease`).
    pub budgets: bool,
    /// Alert delivery (webhooks for budget crossings and anomalies), by the active instance.
    pub alerts: AlertsConfig,
    /// Which instance is active: any number of instances with the same `[watch]` may run,
    /// exactly one of them tracks and delivers, a standby takes over when it dies or stops.
    pub lease: LeaseConfig,
}

/// The lease that makes one `meterline watch` instance of a deployment the active one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Names the deployment's instances share: the lease is consumer group `<group_id>-lease`
    /// on `meterline.watch.lease`, and the active instance writes with transactional ids
    /// `<group_id>-signals` and `<group_id>-alerts` (taking over fences the previous
    /// holder's writes). Two deployments on one cluster need two names.
    pub group_id: String,
    /// How long an instance that stopped heartbeating (killed, hung, cut off) stays active in
    /// the broker's eyes, in milliseconds: a standby takes over this long after the active
    /// one dies, plus up to a sixth of it (its next heartbeat). A clean stop hands over at
    /// once. Brokers refuse values below their `group.min.session.timeout.ms` (6000 by
    /// default); `meterline dev`'s broker accepts from 1000.
    pub session_timeout_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            group_id: "meterline-watch".into(),
            session_timeout_ms: 6_000,
        }
    }
}

impl LeaseConfig {
    /// The consumer group whose holder of partition 0 is active.
    pub fn lease_group(&self) -> String {
        format!("{}-lease", self.group_id)
    }

    /// The transactional id of the tracker's writes (signals, anomalies).
    pub fn signals_transactional_id(&self) -> String {
        format!("{}-signals", self.group_id)
    }

    /// The transactional id of the alert deliverer's progress (its offsets).
    pub fn alerts_transactional_id(&self) -> String {
        format!("{}-alerts", self.group_id)
    }

    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.session_timeout_ms)
    }
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
            lease: LeaseConfig::default(),
        }
    }
}

impl WatchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("watch.listen must be host:port");
        }
        let l = &self.lease;
        if l.group_id.trim().is_empty() {
            return bad("watch.lease.group_id must not be empty");
        }
        // Kafka's own bounds of a classic group session (a broker may narrow them).
        if !(1_000..=1_800_000).contains(&l.session_timeout_ms) {
            return bad("watch.lease.session_timeout_ms must be within 1000 ..= 1800000 (Kafka's bounds; brokers default to at least 6000)");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_has_working_defaults_and_refuses_what_kafka_would() {
        let cfg = WatchConfig::default();
        cfg.validate().unwrap();
        let l = &cfg.lease;
        assert_eq!(l.session_timeout_ms, 6_000, "a stock broker's floor");
        assert_eq!(l.lease_group(), "meterline-watch-lease");
        assert_eq!(l.signals_transactional_id(), "meterline-watch-signals");
        assert_eq!(l.alerts_transactional_id(), "meterline-watch-alerts");
        for (ms, ok) in [
            (999, false),
            (1_000, true),
            (1_800_000, true),
            (1_800_001, false),
        ] {
            let mut c = cfg.clone();
            c.lease.session_timeout_ms = ms;
            assert_eq!(c.validate().is_ok(), ok, "{ms}");
        }
        let mut c = cfg.clone();
        c.lease.group_id = " ".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("watch.lease.group_id"), "{e}");
    }

    #[test]
    fn unknown_lease_keys_are_refused() {
        let r: Result<WatchConfig, _> =
            serde_json::from_value(serde_json::json!({"lease": {"session_timeout": 3}}));
        assert!(r.unwrap_err().to_string().contains("unknown field"));
        let c: WatchConfig =
            serde_json::from_value(serde_json::json!({"lease": {"session_timeout_ms": 3000}}))
                .unwrap();
        assert_eq!(c.lease.session_timeout_ms, 3000);
        assert_eq!(c.lease.group_id, "meterline-watch");
    }
}
