//! The command line: a subcommand per stage and per admin task, and their dispatch.

use std::path::PathBuf;

use crate::admin_cli::{self, BudgetsCmd, PricesCmd, RejectedCmd, TenantsCmd};
use crate::progress::Progress;
use crate::{bench, config::Config, dev, loadgen, rebuild};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meterline",
    version,
    about = "Metering and FinOps pipeline for AI inference"
)]
pub struct Cli {
    /// TOML config file (overridden by METERLINE_* environment variables).
    #[arg(long, short, global = true, env = "METERLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Everything on one machine: a local broker, the stages and demo traffic.
    Dev(dev::DevArgs),
    /// The edge forwarder (HTTP → Kafka, with spool).
    Ingest,
    /// Pricing and attribution (raw → priced, exactly once).
    Enrich,
    /// The sink: priced usage into the Delta ledger (exactly once).
    Aggregate,
    /// Budgets against spend (signals), spend anomalies and alert delivery.
    Watch,
    /// The query API (SQL over the ledger, scoped per principal).
    Api,
    /// The price book: import, diff, list, show.
    #[command(subcommand)]
    Prices(PricesCmd),
    /// The tenant directory: import, list.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Budgets: create (or change), list, delete.
    #[command(subcommand)]
    Budgets(BudgetsCmd),
    /// Events that could not be priced: list, replay.
    #[command(subcommand)]
    Rejected(RejectedCmd),
    /// Merges each partition's ledger files of one date into one, in one Delta commit (safe
    /// while aggregate runs; the replaced files stay for readers until `vacuum`).
    Compact {
        /// The event date (UTC) whose files are compacted, e.g. 2026-11-22.
        #[arg(long)]
        date: chrono::NaiveDate,
    },
    /// Deletes ledger files no recent version of the table needs: files a compaction replaced
    /// and files of flushes that never committed, once older than
    /// `ledger.vacuum_retention_hours`.
    Vacuum {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-derives the ledger (and watch's state from it) from meterline.usage.priced into a new
    /// directory, and reconciles it with the topic: a known-good ledger after a disaster.
    Rebuild(rebuild::RebuildArgs),
    /// Prints the SHA-256 digest of a bearer token, for the `tokens` config. The token is read
    /// from standard input (`meterline hash-token < token.txt`, or typed): an argument would
    /// be visible to other users in `ps` and kept in shell history.
    HashToken {
        /// Deprecated: the token as an argument (visible in `ps`); prefer standard input.
        token: Option<String>,
    },
    /// Benchmarks against a raw baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Realistic usage traffic against an ingest edge, in all four formats, with a summary.
    Loadgen(loadgen::LoadgenArgs),
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = || Config::load(cli.config.as_deref());
    match cli.cmd {
        Cmd::Prices(c) => admin_cli::prices(cfg()?.kafka, c).await,
        Cmd::Tenants(c) => admin_cli::tenants(cfg()?.kafka, c).await,
        Cmd::Budgets(c) => admin_cli::budgets(cfg()?.kafka, c).await,
        Cmd::Rejected(c) => admin_cli::rejected(cfg()?.kafka, c).await,
        Cmd::Enrich => {
            let cfg = cfg()?;
            let app = meterline_enrich::App::build(&cfg.kafka, cfg.enrich).await?;
            dev::stop_on_signal(app.stop_token());
            Ok(app.run_until_stopped().await?)
        }
        Cmd::Aggregate => {
            let cfg = cfg()?;
            let app =
                meterline_aggregate::App::build(&cfg.kafka, cfg.aggregate, cfg.ledger).await?;
            dev::stop_on_signal(app.stop_token());
            Ok(app.run_until_stopped().await?)
        }
        Cmd::Watch => {
            let cfg = cfg()?;
            let app = meterline_watch::App::build(&cfg.kafka, cfg.watch, cfg.ledger).await?;
            dev::stop_on_signal(app.stop_token());
            Ok(app.run_until_stopped().await?)
        }
        Cmd::Rebuild(args) => rebuild::cli(cfg()?.kafka, args).await,
        Cmd::Compact { date } => compact(cfg()?, date).await,
        Cmd::Vacuum { dry_run } => vacuum(cfg()?, dry_run).await,
        Cmd::Api => {
            let cfg = cfg()?;
            let app = meterline_api::App::build(Some(&cfg.kafka), cfg.api, cfg.ledger).await?;
            tracing::info!(addr = %app.local_addr(), "api listening");
            dev::stop_on_signal(app.stop_token());
            Ok(app.run_until_stopped().await?)
        }
        Cmd::HashToken { token } => hash_token(token),
        Cmd::Dev(args) => {
            let external = dev::brokers_configured(cli.config.as_deref());
            dev::run(cfg()?, external, args).await
        }
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Loadgen(args) => loadgen::cli(args).await,
        Cmd::Ingest => {
            let cfg = cfg()?;
            let app = meterline_ingest::App::build(&cfg.kafka, cfg.ingest).await?;
            dev::stop_on_signal(app.stop_token());
            Ok(app.run_until_stopped().await?)
        }
    }
}

/// `meterline compact --date D`.
async fn compact(cfg: Config, date: chrono::NaiveDate) -> anyhow::Result<()> {
    let done = tokio::task::spawn_blocking(move || {
        let ledger = meterline_ledger::Ledger::open(&cfg.ledger, &cfg.aggregate.data_dir)?;
        let mut progress = Progress::new(format!("compact {date}"), "files", None, false);
        let done = ledger.compact_date(date, |read, to_merge| {
            progress.set_total(to_merge as u64);
            progress.update(read as u64, String::new);
        });
        progress.finish("");
        Ok::<_, meterline_ledger::Error>(done?)
    })
    .await??;
    for c in &done {
        println!(
            "{} files of partitions {:?} → {} ({} rows, version {})",
            c.merged_files, c.partitions, c.into, c.rows, c.version
        );
    }
    let merged: usize = done.iter().map(|c| c.merged_files).sum();
    println!("{date}: {merged} files merged into {}", done.len());
    Ok(())
}

/// `meterline vacuum`.
async fn vacuum(cfg: Config, dry_run: bool) -> anyhow::Result<()> {
    let retention = std::time::Duration::from_secs(cfg.ledger.vacuum_retention_hours * 3600);
    let (ledger, dir) = (cfg.ledger, cfg.aggregate.data_dir);
    let done = tokio::task::spawn_blocking(move || {
        let usage = meterline_ledger::Ledger::open(&ledger, &dir)?;
        let anomalies = meterline_ledger::AnomalyTable::open(&ledger, &dir)?;
        anyhow::Ok([
            ("usage", usage.vacuum(retention, dry_run)?),
            ("anomalies", anomalies.vacuum(retention, dry_run)?),
        ])
    })
    .await??;
    for (table, vacuumed) in &done {
        for f in &vacuumed.files {
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!("{verb} {table}/{f}");
        }
    }
    println!(
        "{} files",
        done.iter().map(|d| d.1.files.len()).sum::<usize>()
    );
    Ok(())
}

/// `meterline hash-token`.
fn hash_token(token: Option<String>) -> anyhow::Result<()> {
    let token = match token {
        Some(t) => {
            eprintln!("warning: a token given as an argument is visible in `ps` and shell history; pipe it on standard input instead");
            t
        }
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(!token.is_empty(), "no token on standard input");
    Ok(println!("{}", meterline_runtime::auth::hash_token(&token)))
}
