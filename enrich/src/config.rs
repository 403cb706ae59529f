//! `[enrich]` configuration.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The pricing and attribution stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Consumer group on `meterline.usage.raw`; also the prefix of the per-partition
    /// transactional ids (`<group_id>-p<partition>`), so every instance of one deployment must
    /// share it.
    pub group_id: String,
    /// Address of the `/metrics` and `/healthz` HTTP server (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Dedup window in seconds of event time (see `dedup.rs` for the memory it costs).
    pub dedup_window_secs: u64,
    /// A transaction commits after this many input records…
    pub txn_max_records: usize,
    /// …or after this many milliseconds, whichever comes first.
    pub txn_max_ms: u64,
    /// Timeout of transactional calls (init, commit, abort) in milliseconds.
    pub txn_timeout_ms: u64,
    /// Consumer session timeout in milliseconds (a dead instance's partitions move after it).
    pub session_timeout_ms: u64,
    /// Longest time between polls before the consumer leaves the group (also the rebalance
    /// timeout), in milliseconds.
    pub max_poll_interval_ms: u64,
    /// How long to wait at start for the reference topics (prices, tenants) to be read up to
    /// their end, in milliseconds.
    pub reference_load_timeout_ms: u64,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            group_id: "meterline-enrich".into(),
            listen: "127.0.0.1:9091".into(),
            dedup_window_secs: 3600,
            txn_max_records: 5_000,
            txn_max_ms: 200,
            txn_timeout_ms: 30_000,
            session_timeout_ms: 6_000,
            max_poll_interval_ms: 60_000,
            reference_load_timeout_ms: 60_000,
        }
    }
}

impl EnrichConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.group_id.trim().is_empty() {
            return bad("enrich.group_id must not be empty");
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("enrich.listen must be host:port");
        }
        if self.dedup_window_secs == 0 {
            return bad("enrich.dedup_window_secs must be > 0");
        }
        if self.txn_max_records == 0 || self.txn_max_ms == 0 {
            return bad("enrich.txn_max_records and enrich.txn_max_ms must be > 0");
        }
        if self.session_timeout_ms < 1_000 || self.max_poll_interval_ms < self.session_timeout_ms {
            return bad("enrich.session_timeout_ms must be >= 1000 and <= max_poll_interval_ms");
        }
        Ok(())
    }
}
