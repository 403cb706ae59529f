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
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: String::new(),
            storage: BTreeMap::new(),
            vacuum_retention_hours: 168,
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
        crate::storage::check_options(&self.url, &self.storage)
    }
}
