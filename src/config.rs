//! The whole configuration: one TOML file (sections `[kafka]`, `[ingest]`, …) overridden by
//! `METERLINE_*` environment variables, `__` separating levels
//! (`METERLINE_KAFKA__BROKERS=host:9092`, `METERLINE_INGEST__LISTEN=0.0.0.0:8080`).
//! Validated at start; unknown keys are errors.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use meterline_aggregate::AggregateConfig;
use meterline_enrich::EnrichConfig;
use meterline_ingest::IngestConfig;
use meterline_schemas::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Kafka-compatible cluster.
    pub kafka: KafkaConfig,
    /// The edge forwarder.
    pub ingest: IngestConfig,
    /// Pricing and attribution.
    pub enrich: EnrichConfig,
    /// The Parquet ledger.
    pub aggregate: AggregateConfig,
    /// The query API.
    pub api: meterline_api::ApiConfig,
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = file {
            anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
            f = f.merge(Toml::file(p));
        }
        let cfg: Config = f.merge(Env::prefixed("METERLINE_").split("__")).extract()?;
        cfg.kafka.validate()?;
        cfg.ingest.validate()?;
        cfg.enrich.validate()?;
        cfg.aggregate.validate()?;
        cfg.api.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_overrides() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[kafka]\nbrokers = \"a:1\"\n[ingest]\nlisten = \"127.0.0.1:9\"\nmax_batch_items = 7\n")?;
            jail.set_env("METERLINE_INGEST__MAX_BATCH_ITEMS", "9");
            let c = Config::load(Some(Path::new("m.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "a:1");
            assert_eq!(c.ingest.max_batch_items, 9);
            assert_eq!(c.ingest.listen, "127.0.0.1:9");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[ingest]\nlisten_addr = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("m.toml"))).is_err());
            jail.create_file("n.toml", "[ingest]\ncompression = \"brotli\"\n")?;
            assert!(Config::load(Some(Path::new("n.toml"))).is_err());
            Ok(())
        });
    }
}
