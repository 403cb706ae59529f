//! `meterline dev`: a local Apache Kafka (a child process, data kept in the dev data dir) unless
//! `kafka.brokers` names a cluster, every stage in-process, dev tokens and demo traffic, until
//! Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::broker::KafkaBroker;
use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Data directory (the local broker's files in `kafka/`, spool, ledger).
    #[arg(long, default_value = "data/dev")]
    pub data_dir: PathBuf,
    /// Client port of the local broker, when free (else a free one is taken).
    #[arg(long, default_value_t = 9092)]
    pub kafka_port: u16,
    /// HTTP address of the ingest edge.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Events per second of `meterline loadgen` traffic against the edge, in every ingest
    /// format (0 = none).
    #[arg(long, default_value_t = 20)]
    pub demo_rate: u32,
    /// Also backfill 30 quiet hours of one team's spend and a spike in the last closed hour,
    /// before the watch stage starts, so the dashboard's anomalies page has a finding.
    #[arg(long)]
    pub demo_anomaly: bool,
}

/// The bearer token `meterline dev` accepts from edges.
pub const DEV_EDGE_TOKEN: &str = crate::loadgen::DEFAULT_TOKEN;
pub const DEV_FINANCE_TOKEN: &str = "dev-finance-token";
pub const DEV_LEAD_TOKEN: &str = "dev-lead-search-token";
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
const DEV_PRICES: &str = include_str!("dev_prices.toml");
const DEV_TENANTS: &str = include_str!("dev_tenants.yaml");

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn stop_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("stopping");
        token.cancel();
    });
}

/// Whether `kafka.brokers` is set by the config file or `METERLINE_KAFKA__BROKERS` (then dev
/// uses that cluster and starts no broker of its own).
pub fn brokers_configured(config_file: Option<&Path>) -> bool {
    use figment::providers::{Format, Toml};
    std::env::var_os("METERLINE_KAFKA__BROKERS").is_some()
        || config_file.is_some_and(|p| {
            figment::Figment::from(Toml::file(p))
                .find_value("kafka.brokers")
                .is_ok()
        })
}

/// Runs everything until Ctrl-C; on the configured cluster when `brokers_configured` (see
/// [`brokers_configured`]), else on a local Apache Kafka stopped cleanly at the end.
pub async fn run(mut cfg: Config, brokers_configured: bool, args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let broker = if brokers_configured {
        None
    } else {
        let (dir, port) = (args.data_dir.join("kafka"), args.kafka_port);
        let b =
            tokio::task::spawn_blocking(move || KafkaBroker::start_on(&dir, Some(port))).await??;
        cfg.kafka.brokers = b.bootstrap();
        Some(b)
    };
    cfg.ingest.listen = args.listen.clone();
    cfg.ingest.spool.dir = args.data_dir.join("spool");
    cfg.ingest.tokens.push(TokenConfig {
        principal: "dev-edge".into(),
        sha256: hash_token(DEV_EDGE_TOKEN),
        role: Role::Edge,
        teams: vec![],
    });
    let app = meterline_ingest::App::build(&cfg.kafka, cfg.ingest.clone()).await?;
    let addr = app.local_addr();
    let stop = app.stop_token();
    stop_on_signal(stop.clone());
    let ingest_task = tokio::spawn(app.run_until_stopped());
    // Demo reference data, as events (re-publishing unchanged entries is a no-op).
    let (prices, tenants) = publish_demo_reference(cfg.kafka.clone()).await?;
    let budget = publish_demo_budget(cfg.kafka.clone()).await?;
    cfg.enrich.listen = "127.0.0.1:0".into();
    let enrich = meterline_enrich::App::build(&cfg.kafka, cfg.enrich.clone()).await?;
    let enrich_addr = enrich.local_addr();
    let enrich_stop = enrich.stop_token();
    let enrich_task = tokio::spawn(enrich.run_until_stopped());
    cfg.aggregate.listen = "127.0.0.1:0".into();
    cfg.aggregate.data_dir = args.data_dir.clone();
    cfg.aggregate.flush_ms = 5_000;
    let aggregate =
        meterline_aggregate::App::build(&cfg.kafka, cfg.aggregate.clone(), cfg.ledger.clone())
            .await?;
    let aggregate_addr = aggregate.local_addr();
    let aggregate_stop = aggregate.stop_token();
    let aggregate_task = tokio::spawn(aggregate.run_until_stopped());
    cfg.api.data_dir = args.data_dir.clone();
    for (principal, token, role, teams) in [
        ("dev-admin", DEV_ADMIN_TOKEN, Role::Admin, vec![]),
        ("dev-finance", DEV_FINANCE_TOKEN, Role::Finance, vec![]),
        (
            "dev-lead-search",
            DEV_LEAD_TOKEN,
            Role::TeamLead,
            vec!["search".to_string()],
        ),
    ] {
        cfg.api.tokens.push(TokenConfig {
            principal: principal.into(),
            sha256: hash_token(token),
            role,
            teams,
        });
    }
    let api =
        meterline_api::App::build(Some(&cfg.kafka), cfg.api.clone(), cfg.ledger.clone()).await?;
    let api_addr = api.local_addr();
    let api_stop = api.stop_token();
    let api_task = tokio::spawn(api.run_until_stopped());
    // The anomaly demo needs its history in the ledger before the watch stage reads it at
    // start (findings about hours closed before a start are published only if recent).
    let anomaly = if args.demo_anomaly {
        Some(demo_anomaly(&format!("http://{addr}"), &format!("http://{api_addr}")).await?)
    } else {
        None
    };
    cfg.watch.listen = "127.0.0.1:0".into();
    cfg.watch.data_dir = args.data_dir.clone();
    let watch =
        meterline_watch::App::build(&cfg.kafka, cfg.watch.clone(), cfg.ledger.clone()).await?;
    let watch_addr = watch.local_addr();
    let watch_stop = watch.stop_token();
    let watch_task = tokio::spawn(watch.run_until_stopped());
    println!("meterline dev");
    match &broker {
        Some(b) => println!(
            "  broker   {} (Apache Kafka {}, child process; data and broker.log in {})",
            b.bootstrap(),
            crate::broker::KAFKA_VERSION,
            b.dir().display()
        ),
        None => println!("  broker   {} (kafka.brokers)", cfg.kafka.brokers),
    }
    println!("  ingest   http://{addr}  (token: {DEV_EDGE_TOKEN})   metrics http://{addr}/metrics   spec http://{addr}/openapi.json");
    println!("  try      curl -H 'Authorization: Bearer {DEV_EDGE_TOKEN}' -H 'Content-Type: application/json' http://{addr}/v1/events -d '{{\"event_id\":\"hello-1\",\"occurred_at\":\"{}\",\"provider\":\"openai\",\"model\":\"gpt-4o\",\"operation\":\"chat\",\"team_id\":\"search\",\"usage\":{{\"input_tokens\":1000,\"output_tokens\":200}}}}'", Utc::now().to_rfc3339());
    println!(
        "  enrich   metrics http://{enrich_addr}/metrics   prices: {} new   tenant rules: {} new (meterline prices list, meterline rejected list)",
        prices.added.len(),
        tenants.added.len()
    );
    println!(
        "  ledger   {}  (Delta table, a commit every {} s)   metrics http://{aggregate_addr}/metrics",
        args.data_dir.join("usage").display(),
        cfg.aggregate.flush_ms / 1000
    );
    println!(
        "  api      http://{api_addr}/v1/sql  (finance: {DEV_FINANCE_TOKEN}, team lead of search: {DEV_LEAD_TOKEN})   try: curl -H 'Authorization: Bearer {DEV_LEAD_TOKEN}' http://{api_addr}/v1/sql -d '{{\"sql\":\"SELECT * FROM daily_spend\"}}'"
    );
    println!(
        "  dashboard http://{api_addr}/  (paste a token: {DEV_FINANCE_TOKEN}, {DEV_LEAD_TOKEN} or {DEV_ADMIN_TOKEN})"
    );
    println!(
        "  reports  curl -H 'Authorization: Bearer {DEV_FINANCE_TOKEN}' 'http://{api_addr}/v1/reports/chargeback?period={}&by=team&format=focus'   spec http://{api_addr}/openapi.json",
        chrono::Utc::now().format("%Y-%m")
    );
    println!("  watch    budgets, anomalies, alerts   metrics http://{watch_addr}/metrics");
    println!(
        "  budgets  {budget}   check: curl -H 'Authorization: Bearer {DEV_EDGE_TOKEN}' http://{addr}/v1/enforcement/check -d '{{\"team_id\":\"search\"}}'"
    );
    if let Some(a) = anomaly {
        println!("  anomaly  {a}");
    }
    if args.demo_rate > 0 {
        println!(
            "  traffic  meterline loadgen --rate {} --spike (native, LiteLLM, CloudEvents, OTLP)",
            args.demo_rate
        );
        tokio::spawn(demo_traffic(
            format!("http://{addr}"),
            args.demo_rate,
            stop.clone(),
        ));
    }
    println!(
        "\n  open     http://{api_addr}/#token={DEV_FINANCE_TOKEN}   (a team lead: http://{api_addr}/#token={DEV_LEAD_TOKEN})\n"
    );
    ingest_task.await??;
    enrich_stop.cancel();
    enrich_task.await??;
    watch_stop.cancel();
    watch_task.await??;
    aggregate_stop.cancel();
    aggregate_task.await??;
    api_stop.cancel();
    api_task.await??;
    if let Some(mut b) = broker {
        tokio::task::spawn_blocking(move || b.stop(Duration::from_secs(30))).await?;
    }
    Ok(())
}

/// Publishes the demo price book and tenant rules (unchanged entries publish nothing).
/// A demo budget: team search, $10 a day, notify at 25 % and 50 %, throttle at 80 %, block at
/// 100 % (at the demo traffic's rate the first crossing comes within a minute or two). Published
/// when missing or different; returns what `budgets list` would print for it.
async fn publish_demo_budget(
    kafka: meterline_runtime::kafka::KafkaConfig,
) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        use meterline_reference::budgets as budget_defs;
        let now = Utc::now();
        let limit: meterline_schemas::Money = "10".parse()?;
        let thresholds = meterline_reference::budgets::parse_thresholds(
            "25:notify,50:notify,80:throttle,100:block",
        )?;
        let mut b = meterline_schemas::BudgetChange {
            budget_id: "demo-search-daily".into(),
            version: 0,
            name: "Search team, daily".into(),
            scope: meterline_reference::budgets::parse_scope("team=search")?,
            limit,
            currency: "USD".into(),
            period: meterline_schemas::PeriodKind::Day,
            timezone: "UTC".into(),
            custom_from: None,
            custom_to: None,
            thresholds,
            webhooks: vec![],
            effective_from: now,
            effective_to: None,
            deleted: false,
            author: "meterline dev".into(),
            reason: "demo budget".into(),
            changed_at: now,
        };
        if let Some(old) = budget_defs::load(&kafka)?.get(&b.budget_id) {
            if old.limit == b.limit && old.thresholds == b.thresholds && !old.deleted {
                return Ok(format!("{} v{} (exists)", old.budget_id, old.version));
            }
        }
        b.effective_from = budget_defs::current_period_start(&b, now)?;
        let b = budget_defs::publish(&kafka, b)?;
        Ok(format!(
            "{} v{}: {} {} per day, team search",
            b.budget_id, b.version, b.limit, b.currency
        ))
    })
    .await?
}

pub async fn publish_demo_reference(
    kafka: meterline_runtime::kafka::KafkaConfig,
) -> anyhow::Result<(
    meterline_reference::publish::Publication,
    meterline_reference::publish::Publication,
)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let p = meterline_reference::native::parse(
            DEV_PRICES,
            meterline_reference::native::Syntax::Toml,
            None,
            "meterline dev",
            "dev_prices.toml",
        )?;
        let t = meterline_reference::tenants::parse_yaml(
            DEV_TENANTS,
            Some("2024-01-01T00:00:00Z".parse()?),
            "meterline dev",
        )?;
        Ok((
            meterline_reference::publish::publish_prices(&kafka, p, "demo prices", false)?,
            meterline_reference::publish::publish_tenants(&kafka, t, "demo tenants", false)?,
        ))
    })
    .await?
}

const DEMO_MODELS: [(&str, &str); 4] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("openai", "text-embedding-3-small"),
];
const DEMO_TEAMS: [&str; 4] = ["search", "support-bot", "data-science", "platform"];

/// One demo event in native JSON with plausible token counts.
pub fn demo_event(rng: &mut impl Rng, id: &str) -> serde_json::Value {
    let (provider, model) = DEMO_MODELS[rng.random_range(0..DEMO_MODELS.len())];
    let team = DEMO_TEAMS[rng.random_range(0..DEMO_TEAMS.len())];
    let embedding = model.contains("embedding");
    serde_json::json!({
        "event_id": id,
        "occurred_at": Utc::now().to_rfc3339(),
        "provider": provider,
        "model": model,
        "operation": if embedding { "embedding" } else { "chat" },
        "api_key_id": format!("key-{team}-{}", rng.random_range(1..4)),
        "team_id": team,
        "org_id": "acme",
        "tags": {"env": "prod"},
        "usage": {
            "input_tokens": rng.random_range(50..4000),
            "cache_read_tokens": if embedding { 0 } else { rng.random_range(0..2000) },
            "output_tokens": if embedding { 0 } else { rng.random_range(10..800) },
        },
        "latency_ms": rng.random_range(200..4000),
    })
}

/// `meterline loadgen` against the edge until `stop`, a day's run after another.
async fn demo_traffic(target: String, rate: u32, stop: CancellationToken) {
    let mut args =
        crate::loadgen::LoadgenArgs::new(target, f64::from(rate), Duration::from_secs(24 * 3600));
    args.spike = true;
    args.quiet = true;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = crate::loadgen::run(args.clone()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "demo traffic stopped; again in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

/// The anomaly demo's team and model.
const ANOMALY_TEAM: &str = "data-science";

/// Sends 30 quiet hours of [`ANOMALY_TEAM`]'s gpt-4o spend and a spike in the last hour the
/// detector closes (ended at least its close delay ago), then waits until the ledger holds them
/// (the API counts them). Event ids are fixed per hour, so a restart re-sends duplicates the
/// edge and enrich drop, never new spend.
async fn demo_anomaly(edge: &str, api: &str) -> anyhow::Result<String> {
    use chrono::{DurationRound, TimeDelta};
    let now = Utc::now();
    let spike_hour = (now - TimeDelta::minutes(65)).duration_trunc(TimeDelta::hours(1))?;
    let client = reqwest::Client::new();
    let mut sent = 0usize;
    for h in (0..=30).rev() {
        let hour = spike_hour - TimeDelta::hours(h);
        let spike = h == 0;
        let (n, input, output) = if spike {
            (200, 20_000, 2_000)
        } else {
            (25, 2_000, 300)
        };
        let batch: Vec<_> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "event_id": format!("demo-anomaly-{}-{i}", hour.format("%Y%m%d%H")),
                    "occurred_at": (hour + TimeDelta::seconds(i64::from(i) * 3600 / i64::from(n))).to_rfc3339(),
                    "provider": "openai",
                    "model": "gpt-4o",
                    "operation": "chat",
                    "api_key_id": format!("key-{ANOMALY_TEAM}-{}", if spike { 9 } else { 1 + i % 3 }),
                    "team_id": ANOMALY_TEAM,
                    "org_id": "acme",
                    "usage": {"input_tokens": input, "output_tokens": output},
                })
            })
            .collect();
        client
            .post(format!("{edge}/v1/events"))
            .bearer_auth(DEV_EDGE_TOKEN)
            .json(&batch)
            .send()
            .await?
            .error_for_status()?;
        sent += batch.len();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let counted = client
            .post(format!("{api}/v1/sql"))
            .bearer_auth(DEV_ADMIN_TOKEN)
            .json(&serde_json::json!({"sql": "SELECT count(*) AS n FROM usage WHERE event_id LIKE 'demo-anomaly-%'"}))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        let n = match counted {
            Some(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["rows"][0]["n"].as_u64()),
            None => None,
        };
        if n.is_some_and(|n| n as usize >= sent) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the anomaly demo's {sent} events did not reach the ledger within 90 s (counted {n:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(format!(
        "team {ANOMALY_TEAM}, gpt-4o: 30 quiet hours and a spike at {} UTC ({sent} events); see the anomalies page",
        spike_hour.format("%Y-%m-%d %H:00")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_cluster_means_no_local_broker() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("with.toml", "[kafka]\nbrokers = \"kafka:9092\"\n")?;
            jail.create_file("without.toml", "[kafka]\nusage_partitions = 2\n")?;
            if std::env::var_os("METERLINE_KAFKA__BROKERS").is_none() {
                assert!(!brokers_configured(None));
                assert!(!brokers_configured(Some(Path::new("without.toml"))));
            }
            assert!(brokers_configured(Some(Path::new("with.toml"))));
            jail.set_env("METERLINE_KAFKA__BROKERS", "kafka:9092");
            assert!(brokers_configured(Some(Path::new("without.toml"))));
            assert!(brokers_configured(None));
            Ok(())
        });
    }
}
