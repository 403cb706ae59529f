//! The whole configuration: one TOML file (sections `[kafka]`, `[ingest]`, …) overridden by
//! `METERLINE_*` environment variables, `__` separating levels
//! (`METERLINE_KAFKA__BROKERS=host:9092`, `METERLINE_INGEST__LISTEN=0.0.0.0:8080`).
//! Validated at start; unknown keys are errors.
//!
//! Only `METERLINE_<SECTION>__<KEY>` variables are configuration. A few `METERLINE_*` names
//! without `__` belong to the program itself ([`PROGRAM_VARIABLES`]: the config file's path,
//! the built-in broker's location); any other such name is refused as a likely typo.

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

/// `METERLINE_*` variables that are not configuration keys.
pub const PROGRAM_VARIABLES: [&str; 3] = [
    "METERLINE_CONFIG",          // the config file (same as --config)
    "METERLINE_KAFKA_HOME",      // where scripts/setup put the Apache Kafka jars
    "METERLINE_KAFKA_JAVA_OPTS", // JVM options of the built-in broker
];

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        for (name, _) in std::env::vars() {
            if name.starts_with("METERLINE_")
                && !name.contains("__")
                && !PROGRAM_VARIABLES.contains(&name.as_str())
            {
                anyhow::bail!(
                    "environment variable {name} is neither a config key (METERLINE_<SECTION>__<KEY>, e.g. METERLINE_KAFKA__BROKERS) nor one of {}",
                    PROGRAM_VARIABLES.join(", ")
                );
            }
        }
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = file {
            anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
            f = f.merge(Toml::file(p));
        }
        let env = Env::prefixed("METERLINE_")
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let cfg: Config = f.merge(env).extract()?;
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
    fn program_variables_are_not_config_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[kafka]\nbrokers = \"a:1\"\n")?;
            jail.set_env("METERLINE_CONFIG", "m.toml");
            jail.set_env("METERLINE_KAFKA_HOME", "/opt/kafka");
            let c = Config::load(Some(Path::new("m.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "a:1");
            jail.set_env("METERLINE_KAFKA_BROKERS", "typo:1");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.contains("METERLINE_KAFKA_BROKERS"), "{e}");
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
