//! `[ledger]`: where the tables live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where the ledger's Delta tables live, read by every stage that writes or reads them
/// (aggregate, watch, api, `meterline compact|vacuum|rebuild`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Root of the tables (`<url>/usage`): empty for the stage's `data_dir` (the default), a
    /// local directory, or an object store URL — `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`. Credentials come from the environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`, as the `object_store` crate reads them).
    pub url: String,
    /// Options of the object store (`object_store` config keys, e.g. `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`), added to what the environment says. On S3 the commit
    /// needs conditional writes (`If-None-Match: *`, which S3 and most S3-compatible stores
    /// have): `aws_conditional_put` must stay `etag` (the default).
    pub storage: BTreeMap<String, String>,
    /// Files a compaction replaced, and files of flushes that never committed, are deleted by
    /// `meterline vacuum` once they are this many hours old. Longer than any query runs and
    /// than any reader keeps an old snapshot.
    pub vacuum_retention_hours: u64,
    /// At most this many rows of a date's files are merged into one file by compaction
    /// (`meterline compact`). The merge holds them decoded in memory, about
    /// 850 bytes a row at its peak (100M rows a month, ~3.2M a day: 2.6 GiB sampled peak RSS
    /// at the default); a day with more rows becomes several files, each sorted. Lower it
    /// to bound a compaction's memory, at the price of more files for a query to open.
    pub compact_max_rows: u64,
}

/// The least [`LedgerConfig::compact_max_rows`] accepted: below it, a day's files would be
/// merged into files hardly larger than its flushes.
const MIN_COMPACT_ROWS: u64 = 10_000;

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: String::new(),
            storage: BTreeMap::new(),
            vacuum_retention_hours: 168,
            compact_max_rows: crate::compact::COMPACT_ROWS,
        }
    }
}

impl LedgerConfig {
    /// The same config with its tables under `url` (for a test or `meterline dev`).
    pub fn at(url: impl Into<String>) -> LedgerConfig {
        LedgerConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if let Some((scheme, _)) = self.url.split_once("://") {
            if !matches!(
                scheme,
                "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss"
            ) {
                return Err(Error::Config(format!(
                    "ledger.url: scheme {scheme}:// is not one of file, s3, gs, az, abfss"
                )));
            }
        }
        if self.vacuum_retention_hours < 1 {
            return Err(Error::Config(
                "ledger.vacuum_retention_hours must be at least 1".into(),
            ));
        }
        if self.compact_max_rows < MIN_COMPACT_ROWS {
            return Err(Error::Config(format!(
                "ledger.compact_max_rows must be at least {MIN_COMPACT_ROWS} (it is {})",
                self.compact_max_rows
            )));
        }
        crate::storage::check_options(&self.url, &self.storage)
    }
}
