//! `[aggregate]` configuration.

use std::path::PathBuf;

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
        Ok(())
    }
}
