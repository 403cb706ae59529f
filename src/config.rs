//! The whole configuration: one TOML file (sections `[kafka]`, `[ingest]`, …) overridden by
//! `METERLINE_*` environment variables, `__` separating levels
//! (`METERLINE_KAFKA__BROKERS=host:9092`, `METERLINE_INGEST__LISTEN=0.0.0.0:8080`).
//! Validated at start; unknown keys are errors.
//!
//! Only `METERLINE_<SECTION>__<KEY>` variables are configuration; `METERLINE_*` names without
//! `__` belong to the program (`METERLINE_CONFIG`, the file's path; `METERLINE_KAFKA_HOME`, the
//! built-in broker's jars; …). One with a single `_` where a config key's `__` belongs
//! (`METERLINE_KAFKA_BROKERS`) is refused, naming the variable it should be.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use meterline_aggregate::AggregateConfig;
use meterline_enrich::EnrichConfig;
use meterline_ingest::IngestConfig;
use meterline_runtime::kafka::KafkaConfig;
use meterline_watch::WatchConfig;
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
    /// Where the ledger's Delta tables live (local directory or bucket), for every stage.
    pub ledger: meterline_ledger::LedgerConfig,
    /// The ledger's writer (the sink).
    pub aggregate: AggregateConfig,
    /// Budgets, anomalies and alerts.
    pub watch: WatchConfig,
    /// The query API.
    pub api: meterline_api::ApiConfig,
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        refuse_misspelt_variables(std::env::vars().map(|(k, _)| k))?;
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
        cfg.ledger.validate()?;
        cfg.aggregate.validate()?;
        cfg.watch.validate()?;
        cfg.api.validate()?;
        Ok(cfg)
    }
}

/// Refuses `METERLINE_<SECTION>_<KEY>` when `<SECTION>.<KEY>` is a config key: it would be
/// ignored, silently (the key needs `__`).
fn refuse_misspelt_variables(names: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let defaults = serde_json::to_value(Config::default())?;
    let sections = defaults.as_object().cloned().unwrap_or_default();
    for name in names {
        let Some(rest) = name.strip_prefix("METERLINE_") else {
            continue;
        };
        if rest.contains("__") {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        for (section, keys) in &sections {
            let Some(key) = rest.strip_prefix(&format!("{section}_")) else {
                continue;
            };
            if keys.get(key).is_some() {
                anyhow::bail!(
                    "environment variable {name} is not a config key and would be ignored: did you mean METERLINE_{}__{}?",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                );
            }
        }
    }
    Ok(())
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
            assert!(
                e.contains("METERLINE_KAFKA_BROKERS") && e.contains("METERLINE_KAFKA__BROKERS"),
                "{e}"
            );
            jail.clear_env();
            // the program's own variables, whatever they are, pass
            jail.set_env("METERLINE_PY_HOME", "/x");
            jail.set_env("METERLINE_SOMETHING_NEW", "1");
            assert!(Config::load(None).is_ok());
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
