//! docker-compose.yml against the code: no container engine runs here, so the file is checked
//! the way a container engine would read it and the way the program reads what it is given.
//! Every meterline service runs a subcommand the binary has; its environment and mounted config
//! file load through the real config loader (which refuses unknown keys); published ports and
//! healthchecks use the listen address that results; data directories are volumes (one ledger
//! shared by aggregate, watch and the api); Prometheus scrapes every meterline service at that
//! port; Grafana's provisioning points at the folder the dashboards are mounted on and at the
//! Prometheus service. `tests/dashboard_metrics.rs` runs the stages and checks the dashboards'
//! metrics and the healthcheck paths against them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use meterline::config::Config;
use serde_json::Value;

/// The long-running subcommands; each is a service of the compose file.
const STAGES: [&str; 5] = ["ingest", "enrich", "aggregate", "watch", "api"];
/// `METERLINE_*` variables that are the program's, not config keys (src/config.rs).
const PROGRAM_VARIABLES: [&str; 1] = ["METERLINE_CONFIG"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&repo().join("docker-compose.yml"))
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services")
}

/// Services built from this repository (`build: .`): the meterline image.
fn meterline_services(c: &Value) -> BTreeMap<String, Value> {
    services(c)
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("a string").to_string())
            .collect(),
        Value::String(s) => vec![s.clone()],
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// The subcommand a meterline service runs.
fn subcommand(s: &Value) -> String {
    let cmd = strings(&s["command"]);
    assert!(!cmd.is_empty(), "a meterline service names its subcommand");
    cmd[0].clone()
}

fn environment(s: &Value) -> BTreeMap<String, String> {
    match &s["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|kv| {
                let (k, v) = kv.as_str().unwrap().split_once('=').expect("K=V");
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("environment: {other}"),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A path in this repository.
    Bind(PathBuf),
    Volume(String),
}

/// (source, container path) of each short-syntax volume entry.
fn mounts(s: &Value) -> Vec<(Source, String)> {
    strings(&s["volumes"])
        .iter()
        .map(|m| {
            let parts: Vec<&str> = m.split(':').collect();
            assert!(
                (2..=3).contains(&parts.len()),
                "volume entry {m}: source:target[:mode]"
            );
            let src = if parts[0].starts_with('.') || parts[0].starts_with('/') {
                Source::Bind(repo().join(parts[0]))
            } else {
                Source::Volume(parts[0].to_string())
            };
            (src, parts[1].to_string())
        })
        .collect()
}

/// Where a container path comes from: the mount whose target is the path or a directory
/// above it (the longest), with the path's rest below the mount.
fn resolve(s: &Value, container_path: &str) -> Option<(Source, PathBuf)> {
    mounts(s)
        .into_iter()
        .filter_map(|(src, target)| {
            let rest = Path::new(container_path).strip_prefix(&target).ok()?;
            Some((target.len(), src, rest.to_path_buf()))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, src, rest)| (src, rest))
}

/// The host file a container path is bound to.
fn bound_file(s: &Value, container_path: &str) -> PathBuf {
    match resolve(s, container_path) {
        Some((Source::Bind(p), rest)) => {
            let f = if rest.as_os_str().is_empty() {
                p
            } else {
                p.join(rest)
            };
            assert!(
                f.is_file(),
                "{container_path} is bound to {}, which is not a file in the repository",
                f.display()
            );
            f
        }
        other => panic!("{container_path} is not bound to a repository file: {other:?}"),
    }
}

/// The config a meterline service runs with: its mounted METERLINE_CONFIG file and its
/// environment, through `Config::load` (the loader `main.rs` uses).
fn load_config(name: &str, s: &Value, extra: &[(&str, &str)]) -> Result<Config, String> {
    let env = environment(s);
    let file = env
        .get("METERLINE_CONFIG")
        .map(|p| bound_file(s, p))
        .unwrap_or_else(|| panic!("{name}: no METERLINE_CONFIG"));
    let mut result = Err(String::new());
    figment::Jail::expect_with(|jail| {
        for (k, v) in &env {
            if k.starts_with("METERLINE_") && !PROGRAM_VARIABLES.contains(&k.as_str()) {
                jail.set_env(k, v);
            }
        }
        for (k, v) in extra {
            jail.set_env(k, v);
        }
        result = Config::load(Some(&file)).map_err(|e| format!("{e:#}"));
        Ok(())
    });
    result
}

/// A stage's listen address in its effective config.
fn listen(stage: &str, c: &Config) -> SocketAddr {
    let l = match stage {
        "ingest" => &c.ingest.listen,
        "enrich" => &c.enrich.listen,
        "aggregate" => &c.aggregate.listen,
        "watch" => &c.watch.listen,
        "api" => &c.api.listen,
        other => panic!("no stage {other}"),
    };
    l.parse()
        .unwrap_or_else(|e| panic!("{stage}.listen {l}: {e}"))
}

fn configs(c: &Value) -> BTreeMap<String, (String, Config)> {
    meterline_services(c)
        .iter()
        .map(|(name, s)| {
            let stage = subcommand(s);
            let cfg = load_config(name, s, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.clone(), (stage, cfg))
        })
        .collect()
}

#[test]
fn every_meterline_service_runs_a_subcommand_of_the_binary() {
    let c = compose();
    let ours = meterline_services(&c);
    let stages: BTreeSet<String> = ours.values().map(subcommand).collect();
    assert_eq!(
        stages,
        STAGES
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "every stage and the api is a service"
    );
    for (name, s) in &ours {
        assert_eq!(
            s["build"], ".",
            "{name}: the one image, built from this repository"
        );
    }
    // the image's entrypoint is the binary, so `command` is the subcommand
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--bin meterline"), "{dockerfile}");
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["meterline"]"#),
        "{dockerfile}"
    );
    let help = |cmd: &str| {
        Command::new(env!("CARGO_BIN_EXE_meterline"))
            .args([cmd, "--help"])
            .env_remove("METERLINE_CONFIG")
            .output()
            .unwrap()
    };
    for (name, s) in &ours {
        let cmd = strings(&s["command"]);
        let out = help(&cmd[0]);
        assert!(
            out.status.success(),
            "{name}: `meterline {}` is not a subcommand: {}",
            cmd[0],
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            cmd.len(),
            1,
            "{name}: stages take no arguments, only config: {cmd:?}"
        );
    }
    assert!(
        !help("no-such-stage").status.success(),
        "the check can fail"
    );
}

#[test]
fn every_service_config_loads_through_the_real_loader() {
    let c = compose();
    for (name, s) in meterline_services(&c) {
        let env = environment(&s);
        for k in env.keys().filter(|k| k.starts_with("METERLINE_")) {
            assert!(
                k.contains("__") || PROGRAM_VARIABLES.contains(&k.as_str()),
                "{name}: {k} is neither a config key (METERLINE_<SECTION>__<KEY>) nor one of the program's variables"
            );
        }
        let file = bound_file(&s, &env["METERLINE_CONFIG"]);
        assert!(
            file.starts_with(repo().join("deploy")),
            "{name}: the config comes from the repository's deploy/: {}",
            file.display()
        );
        let cfg = load_config(&name, &s, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        // every variable set one of the config's values (none was dropped on the way)
        let values = serde_json::to_value(&cfg).unwrap();
        for (k, v) in env.iter().filter(|(k, _)| k.contains("__")) {
            let path: Vec<String> = k["METERLINE_".len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            let mut at = &values;
            for p in &path {
                at = at
                    .get(p)
                    .unwrap_or_else(|| panic!("{name}: {k}: no config key {}", path.join(".")));
            }
            let got = match at {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(&got, v, "{name}: {k}");
        }
        assert_eq!(cfg.kafka.brokers, "kafka:9092", "{name}: the kafka service");
        // the loader refuses what it does not know, so loading above is a real check
        let stage = subcommand(&s).to_ascii_uppercase();
        let bogus = format!("METERLINE_{stage}__NO_SUCH_KEY");
        assert!(
            load_config(&name, &s, &[(&bogus, "1")]).is_err(),
            "{name}: {bogus} refused"
        );
    }
    let kafka = &services(&c)["kafka"];
    assert_eq!(
        kafka["image"], "apache/kafka:4.1.1",
        "the Apache Kafka version the tests run (DESIGN.md, Broker)"
    );
    let advertised = environment(kafka)["KAFKA_ADVERTISED_LISTENERS"].clone();
    assert!(advertised.contains("kafka:9092"), "{advertised}");
}

#[test]
fn ports_and_healthchecks_use_the_configured_listen_addresses() {
    let c = compose();
    let ours = meterline_services(&c);
    for (name, (stage, cfg)) in configs(&c) {
        let s = &ours[&name];
        let addr = listen(&stage, &cfg);
        assert!(
            addr.ip().is_unspecified(),
            "{name}: listens on {addr}, unreachable from Prometheus and the host"
        );
        for p in strings(&s["ports"]) {
            let container: u16 = p
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("{name}: port {p}: {e}"));
            assert_eq!(
                container,
                addr.port(),
                "{name}: publishes {p}, listens on {addr}"
            );
        }
        let test = strings(&s["healthcheck"]["test"]);
        let url = test
            .iter()
            .find(|a| a.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name}: a healthcheck over HTTP: {test:?}"));
        let (host_port, path) = url["http://".len()..].split_once('/').unwrap();
        let port: u16 = host_port.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(
            port,
            addr.port(),
            "{name}: healthcheck {url}, listens on {addr}"
        );
        // the stages answer /healthz (tests/dashboard_metrics.rs asks the running stages)
        assert_eq!(format!("/{path}"), "/healthz", "{name}: {url}");
        // the image has the program the healthcheck runs
        let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
        let runtime_stage = dockerfile.rsplit("FROM ").next().unwrap();
        let program = test.iter().find(|a| !a.starts_with("CMD")).unwrap();
        assert!(
            runtime_stage.contains(&format!(" {program} "))
                || runtime_stage.contains(&format!(" {program}\n")),
            "{name}: the healthcheck runs {program}, which the runtime image does not install"
        );
    }
}

#[test]
fn data_directories_are_volumes_and_the_ledger_is_shared() {
    let c = compose();
    let ours = meterline_services(&c);
    let cfgs = configs(&c);
    let volume_of = |service: &str, dir: &Path| -> String {
        match resolve(&ours[service], dir.to_str().unwrap()) {
            Some((Source::Volume(v), _)) => v,
            other => panic!(
                "{service}: {} is not on a named volume: {other:?}",
                dir.display()
            ),
        }
    };
    let by_stage = |stage: &str| -> (&String, &Config) {
        cfgs.iter()
            .find(|(_, (s, _))| s == stage)
            .map(|(n, (_, c))| (n, c))
            .unwrap()
    };
    let (n, cfg) = by_stage("ingest");
    volume_of(n, &cfg.ingest.spool.dir);
    let (n, cfg) = by_stage("aggregate");
    let ledger = volume_of(n, &cfg.aggregate.data_dir);
    let (n, cfg) = by_stage("watch");
    assert_eq!(
        volume_of(n, &cfg.watch.data_dir),
        ledger,
        "watch reads the ledger aggregate writes"
    );
    let (n, cfg) = by_stage("api");
    assert_eq!(
        volume_of(n, &cfg.api.data_dir),
        ledger,
        "the api reads the ledger aggregate writes"
    );
    // every named volume is declared, every bind exists, every dependency is a service
    let declared: BTreeSet<&String> = c["volumes"].as_object().unwrap().keys().collect();
    for (name, s) in services(&c) {
        for (src, target) in mounts(s) {
            match src {
                Source::Volume(v) => {
                    assert!(declared.contains(&v), "{name}: volume {v} is not declared")
                }
                Source::Bind(p) => assert!(
                    p.exists(),
                    "{name}: {} (→ {target}) is missing",
                    p.display()
                ),
            }
        }
        let deps: Vec<String> = match &s["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            other => strings(other),
        };
        for d in deps {
            assert!(
                services(&c).contains_key(&d),
                "{name} depends on {d}, which is no service"
            );
        }
    }
}

/// (host, port) of every target in a Prometheus config, with its job.
fn scrape_targets(prom: &Value) -> Vec<(String, String, u16)> {
    let mut out = vec![];
    for job in prom["scrape_configs"].as_array().expect("scrape_configs") {
        let name = job["job_name"].as_str().unwrap().to_string();
        let path = job
            .get("metrics_path")
            .and_then(Value::as_str)
            .unwrap_or("/metrics");
        assert_eq!(path, "/metrics", "job {name}");
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            let port = sd["port"]
                .as_u64()
                .unwrap_or_else(|| panic!("job {name}: dns_sd port")) as u16;
            for host in strings(&sd["names"]) {
                out.push((name.clone(), host, port));
            }
        }
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in strings(&sc["targets"]) {
                let (h, p) = t.rsplit_once(':').unwrap();
                out.push((name.clone(), h.to_string(), p.parse().unwrap()));
            }
        }
    }
    out
}

#[test]
fn prometheus_scrapes_every_meterline_service_at_its_listen_port() {
    let c = compose();
    let prom_service = &services(&c)["prometheus"];
    let config_path = strings(&prom_service["command"])
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    let file = bound_file(prom_service, &config_path);
    let targets = scrape_targets(&yaml(&file));
    for (name, (stage, cfg)) in configs(&c) {
        let port = listen(&stage, &cfg).port();
        let jobs: Vec<&String> = targets
            .iter()
            .filter(|(_, h, p)| *h == name && *p == port)
            .map(|(j, _, _)| j)
            .collect();
        assert_eq!(
            jobs.len(),
            1,
            "{name}:{port} is scraped by one job: {targets:?}"
        );
        assert_eq!(
            jobs[0], &stage,
            "the job is named after the stage (dashboards group by job)"
        );
    }
    for (job, host, port) in &targets {
        assert!(
            meterline_services(&c).contains_key(host),
            "job {job} scrapes {host}:{port}, which is no meterline service"
        );
    }
}

#[test]
fn grafana_provisioning_matches_the_mounted_folders() {
    let c = compose();
    let g = &services(&c)["grafana"];
    let dashboards_dir = repo().join("dashboards");
    let mounted: Vec<String> = mounts(g)
        .into_iter()
        .filter(|(s, _)| *s == Source::Bind(repo().join("./dashboards")))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(mounted.len(), 1, "dashboards/ is mounted once: {mounted:?}");
    let dashboards_at = &mounted[0];
    let provisioned = |kind: &str| -> Vec<Value> {
        let dir = format!("/etc/grafana/provisioning/{kind}/");
        let files: Vec<String> = mounts(g)
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(&dir))
            .collect();
        assert!(!files.is_empty(), "no {kind} provisioning mounted");
        files.iter().map(|t| yaml(&bound_file(g, t))).collect()
    };
    // dashboards: the provider reads the folder dashboards/ is mounted on
    let mut providers = 0;
    for p in provisioned("dashboards") {
        for provider in p["providers"].as_array().unwrap() {
            assert_eq!(provider["type"], "file");
            assert_eq!(
                provider["options"]["path"].as_str(),
                Some(dashboards_at.as_str())
            );
            providers += 1;
        }
    }
    assert!(providers > 0);
    // datasources: uid `prometheus`, at the prometheus service's port
    let mut uids = BTreeSet::new();
    for p in provisioned("datasources") {
        for ds in p["datasources"].as_array().unwrap() {
            uids.insert(ds["uid"].as_str().unwrap().to_string());
            if ds["type"] == "prometheus" {
                let url = ds["url"].as_str().unwrap();
                let host_port = url.strip_prefix("http://").unwrap().trim_end_matches('/');
                let (host, port) = host_port.split_once(':').unwrap();
                let prom = &services(&c)[host];
                let listen = strings(&prom["command"])
                    .iter()
                    .find_map(|a| a.strip_prefix("--web.listen-address=").map(str::to_string))
                    .unwrap_or_else(|| ":9090".into());
                assert_eq!(listen.rsplit(':').next(), Some(port), "{url}");
                assert!(prom["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("prom/prometheus:"));
            }
        }
    }
    assert!(uids.contains("prometheus"), "{uids:?}");
    // every dashboard reads a provisioned datasource; uids are unique
    let mut dash_uids = BTreeSet::new();
    for f in std::fs::read_dir(&dashboards_dir).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "json") {
            let d: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            assert!(
                dash_uids.insert(d["uid"].as_str().unwrap().to_string()),
                "{}",
                f.display()
            );
            for p in d["panels"].as_array().unwrap() {
                let uid = p["datasource"]["uid"].as_str().unwrap_or_default();
                assert!(
                    uids.contains(uid),
                    "{} panel {}: datasource {uid}",
                    f.display(),
                    p["title"]
                );
            }
        }
    }
    assert!(
        dash_uids.len() >= 6,
        "a dashboard per stage and an overview: {dash_uids:?}"
    );
    // the home dashboard is one of them
    if let Some(home) = environment(g).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let rest = Path::new(home).strip_prefix(dashboards_at).unwrap();
        assert!(dashboards_dir.join(rest).is_file(), "{home}");
    }
}

#[test]
fn the_deploy_tokens_are_the_documented_dev_tokens() {
    let path = repo().join("deploy/meterline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // in a jail like the other loads: they set variables the loader reads
    let mut cfg = None;
    figment::Jail::expect_with(|_| {
        cfg = Some(Config::load(Some(&path)).map_err(|e| e.to_string())?);
        Ok(())
    });
    let cfg = cfg.unwrap();
    let dev = [
        meterline::dev::DEV_EDGE_TOKEN,
        meterline::dev::DEV_ADMIN_TOKEN,
        meterline::dev::DEV_FINANCE_TOKEN,
        meterline::dev::DEV_LEAD_TOKEN,
    ];
    let tokens: Vec<_> = cfg.ingest.tokens.iter().chain(&cfg.api.tokens).collect();
    assert!(!tokens.is_empty());
    for t in tokens {
        let plain = dev
            .iter()
            .find(|d| meterline_runtime::auth::hash_token(d) == t.sha256)
            .unwrap_or_else(|| panic!("{}: not a documented dev token", t.principal));
        assert!(
            text.contains(plain),
            "the file names {plain} for {}",
            t.principal
        );
    }
    assert!(
        text.contains("REPLACE"),
        "dev tokens are marked as to be replaced"
    );
}
