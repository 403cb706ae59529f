//! `[api]` configuration.

use std::path::PathBuf;

use meterline_runtime::auth::TokenConfig;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Root of the data tree written by `meterline aggregate` (`<data_dir>/usage/…`).
    pub data_dir: PathBuf,
    /// Most rows one `/v1/sql` answer carries; more are cut off and `truncated` is set.
    pub max_rows: usize,
    /// Memory one query may use, in bytes; beyond it the query fails (the server stays up).
    pub query_memory_bytes: usize,
    /// Longest a query may run, in milliseconds.
    pub query_timeout_ms: u64,
    /// Bearer tokens (stored as SHA-256 digests) and their roles.
    pub tokens: Vec<TokenConfig>,
    /// FOCUS `InvoiceIssuerName` and `ProviderName` of chargeback rows: the internal platform
    /// that provides the models and issues the internal invoice (the vendor is `PublisherName`).
    pub invoice_issuer: String,
    /// How often the `budgets` table re-reads the budget topics, in milliseconds.
    pub budget_refresh_ms: u64,
    /// Chargebacks add up per-file daily rollups kept in memory (each ledger file is read
    /// once); `false`: every chargeback scans the ledger with SQL.
    pub rollups: bool,
    /// A connection whose client keeps the server waiting to read for this long (headers or
    /// body not arriving, or nothing sent while an answer is prepared) is closed: a silent or
    /// trickling client holds no connection. At least `query_timeout_ms` + 5 s, since a query
    /// and its whole answer take at most `query_timeout_ms`.
    pub client_idle_timeout_ms: u64,
    /// How many partitions one query's scans are split into (DataFusion's
    /// `target_partitions`): that many threads' worth of work. Queries of several callers share
    /// the query threads; 1 also makes whatever SQL leaves to the engine (which of tied rows a
    /// `LIMIT` keeps, which failing row an error names) the same from run to run.
    pub query_partitions: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8090".into(),
            data_dir: PathBuf::from("data"),
            max_rows: 100_000,
            query_memory_bytes: 512 << 20,
            query_timeout_ms: 30_000,
            tokens: vec![],
            invoice_issuer: "meterline".into(),
            budget_refresh_ms: 5_000,
            rollups: true,
            client_idle_timeout_ms: 60_000,
            query_partitions: 2,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("api.listen must be host:port");
        }
        if self.max_rows == 0 || self.query_memory_bytes < (1 << 20) || self.query_timeout_ms == 0 {
            return bad(
                "api.max_rows and query_timeout_ms must be > 0, query_memory_bytes ≥ 1 MiB",
            );
        }
        if self.invoice_issuer.trim().is_empty() || self.budget_refresh_ms == 0 {
            return bad("api.invoice_issuer must not be empty, budget_refresh_ms must be > 0");
        }
        if self.client_idle_timeout_ms < self.query_timeout_ms.saturating_add(5_000) {
            return bad("api.client_idle_timeout_ms must be at least query_timeout_ms + 5000");
        }
        if !(1..=256).contains(&self.query_partitions) {
            return bad("api.query_partitions must be 1 to 256");
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return bad("api.tokens: sha256 must be 64 hex digits (meterline hash-token)");
            }
        }
        Ok(())
    }
}
