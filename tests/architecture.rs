//! Who may import whom, checked from the manifests (a guard, so the crate cut cannot erode):
//!
//! ```text
//! schemas    the contract only                        → no Kafka/HTTP/async runtime crate
//! runtime    Kafka clients, follower, telemetry, auth → schemas
//! reference  prices, tenants, budgets, budget view    → schemas, runtime
//! ledger     the ledger files                         → schemas (no Kafka)
//! ingest, enrich, aggregate, watch, api (stages)     → the four above, never each other
//! ```
//! Dev-dependencies count too: a test that needs two stages belongs in the root `tests/`.

use std::collections::BTreeSet;

const BASE: [&str; 4] = [
    "meterline-schemas",
    "meterline-runtime",
    "meterline-reference",
    "meterline-ledger",
];
const STAGES: [&str; 5] = [
    "meterline-ingest",
    "meterline-enrich",
    "meterline-aggregate",
    "meterline-watch",
    "meterline-api",
];

/// Every dependency name of `dir/Cargo.toml` (normal and dev).
fn deps(dir: &str) -> BTreeSet<String> {
    let path = format!("{}/{dir}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("{path}: {e}"));
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| manifest.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

fn meterline(d: &BTreeSet<String>) -> BTreeSet<&str> {
    d.iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("meterline-"))
        .collect()
}

#[test]
fn base_crates_depend_only_downwards() {
    let allowed: [(&str, &[&str]); 4] = [
        ("schemas", &[]),
        ("runtime", &["meterline-schemas"]),
        ("reference", &["meterline-schemas", "meterline-runtime"]),
        ("ledger", &["meterline-schemas"]),
    ];
    for (dir, ok) in allowed {
        let d = deps(dir);
        let extra: Vec<&str> = meterline(&d)
            .into_iter()
            .filter(|n| !ok.contains(n))
            .collect();
        assert!(extra.is_empty(), "{dir} must not depend on {extra:?}");
    }
    let io = ["rdkafka", "axum", "tokio", "tokio-util", "reqwest", "tower"];
    for (dir, banned) in [("schemas", &io[..]), ("ledger", &io[..2])] {
        let d = deps(dir);
        let bad: Vec<&&str> = banned.iter().filter(|b| d.contains(**b)).collect();
        assert!(bad.is_empty(), "{dir} must not depend on {bad:?}");
    }
}

#[test]
fn stage_crates_never_import_each_other() {
    for stage in STAGES {
        let dir = stage.trim_start_matches("meterline-");
        let d = deps(dir);
        let bad: Vec<&str> = meterline(&d)
            .into_iter()
            .filter(|n| !BASE.contains(n))
            .collect();
        assert!(bad.is_empty(), "{stage} must not depend on {bad:?}");
    }
}

/// The manifests are what the compiler enforces; the sources are checked too, so a path
/// dependency sneaked in through a re-export or a `#[path]` shows up.
#[test]
fn no_source_names_another_stage() {
    for stage in STAGES {
        let dir = stage.trim_start_matches("meterline-");
        let root = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![std::path::PathBuf::from(&root)];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for other in STAGES.iter().filter(|o| **o != stage) {
                        let krate = other.replace('-', "_");
                        assert!(
                            !text.contains(&format!("{krate}::")),
                            "{} names {krate}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}
