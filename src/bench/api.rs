//! `meterline bench api`: the monthly chargeback through the API versus the same hand-written
//! DataFusion SQL over the same files, in one run.
//!
//! 1. `events` priced rows for one month are written as the ledger by the real writer
//!    (`Ledger::write_flush`, 4 input partitions, 200k-row flushes in time order — what the
//!    aggregate stage leaves after compaction);
//! 2. raw: a plain DataFusion session (same 2 target partitions, same listing table) runs the
//!    chargeback's GROUP BY and collects it — the floor;
//! 3. API with `rollups = false`: `GET /v1/reports/chargeback?period=…&by=cost_center` over
//!    HTTP on port 0 — the same SQL scan plus session setup, ledger completeness check, cents
//!    allocation and JSON;
//! 4. API with rollups (the default): the first call reads every file once into its rollup,
//!    later calls add up rollups;
//! 5. the same month once closed: served from its snapshot.
//!
//! Raw and SQL sides run 3 times after one warm-up; medians are compared. Peak RSS is read per side
//! (VmHWM, reset between sides through /proc/self/clear_refs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use meterline_ledger::rows::Row;
use meterline_ledger::table::Ledger;
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::{CostLines, Money, PricedUsage, TenantPath, UsageEvent};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use super::{cpu_micros, peak_rss_kib};
use crate::progress::Progress;

const PERIOD: &str = "2026-10";
const PARTITIONS: i32 = 4;
const FLUSH_ROWS: usize = 200_000;
const TOKEN: &str = "bench-finance";

const MODELS: [(&str, &str, i64, i64); 8] = [
    // provider, model, input and output price in 1e-9 USD per token
    ("openai", "gpt-4o", 2_500, 10_000),
    ("openai", "gpt-4o-mini", 150, 600),
    ("openai", "o3", 2_000, 8_000),
    ("anthropic", "claude-sonnet-4", 3_000, 15_000),
    ("anthropic", "claude-haiku-3.5", 800, 4_000),
    ("google", "gemini-2.5-pro", 1_250, 10_000),
    ("bedrock", "llama-3.1-70b", 720, 720),
    ("self-hosted", "qwen-2.5-32b", 100, 100),
];

/// Writes the month's ledger; returns the rows written per second.
fn write_ledger(data: &std::path::Path, events: usize) -> anyhow::Result<f64> {
    let ledger = Ledger::open(data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let start = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")?.to_utc();
    let span_us = 31 * 86_400 * 1_000_000i64;
    let t = Instant::now();
    let per_part = events / PARTITIONS as usize;
    let mut progress = Progress::new(
        "bench api: writing the ledger",
        "rows",
        Some((per_part * PARTITIONS as usize) as u64),
        false,
    );
    for p in 0..PARTITIONS {
        let mut offset = 0i64;
        let mut done = 0usize;
        while done < per_part {
            let n = FLUSH_ROWS.min(per_part - done);
            let mut rows = Vec::with_capacity(n);
            for i in 0..n {
                // time order within the partition, like a topic
                let at_us = (span_us as i128 * (done + i) as i128 / per_part as i128) as i64;
                let (provider, model, pin, pout) = MODELS[rng.random_range(0..MODELS.len())];
                // token counts heavy-tailed (uniform below a random power of two), outputs shorter
                let (in_bits, out_bits) = (rng.random_range(1..13), rng.random_range(1..10));
                let input = rng.random_range(1..=1i64 << in_bits);
                let output = rng.random_range(1..=1i64 << out_bits);
                let cached = if rng.random_bool(0.3) { input / 2 } else { 0 };
                let team = rng.random_range(0..24);
                let mut event = UsageEvent::example();
                event.event_id = format!("b-{p}-{}", offset + i as i64);
                event.occurred_at = start + chrono::Duration::microseconds(at_us);
                event.received_at = event.occurred_at;
                event.provider = provider.into();
                event.model = model.into();
                event.api_key_id = Some(format!("key-{team}-{}", rng.random_range(0..5)));
                event.usage.input_tokens = input;
                event.usage.cache_read_tokens = cached;
                event.usage.output_tokens = output;
                let cin = Money::new(Decimal::new((input - cached) * pin + cached * pin / 10, 9))?;
                let cout = Money::new(Decimal::new(output * pout, 9))?;
                rows.push(Row {
                    priced: PricedUsage {
                        event,
                        tenant: TenantPath {
                            org: if team < 20 { "acme" } else { "acme-labs" }.into(),
                            cost_center: Some(format!("cc-{}", team % 8)),
                            team: Some(format!("team-{team}")),
                            // projects belong to teams (two each), as tenant rules attribute them
                            project: Some(format!("proj-{team}-{}", rng.random_range(0..2))),
                            ..Default::default()
                        },
                        tenant_rule_id: Some("r1".into()),
                        price_id: format!("{provider}/{model}"),
                        price_version: 1,
                        price_resolution: "exact".into(),
                        model: String::new(),
                        currency: "USD".into(),
                        cost: CostLines {
                            input: cin,
                            output: cout,
                            total: cin + cout,
                            ..Default::default()
                        },
                        priced_at: event_time(start, at_us),
                    },
                    partition: p,
                    offset: offset + i as i64,
                });
            }
            ledger.write_flush(p, offset, offset + n as i64 - 1, &rows)?;
            offset += n as i64;
            done += n;
            progress.inc(n as u64);
        }
    }
    progress.finish("");
    Ok(events as f64 / t.elapsed().as_secs_f64())
}

fn event_time(start: chrono::DateTime<chrono::Utc>, at_us: i64) -> chrono::DateTime<chrono::Utc> {
    start + chrono::Duration::microseconds(at_us)
}

const RAW_SQL: &str = "SELECT substr(date, 1, 7) AS charge_period, org, cost_center AS grp, provider, model, currency, \
     count(*) AS events, sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens, \
     sum(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_write_tokens, \
     sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, \
     sum(cost_total) AS list_cost FROM usage WHERE date >= '2026-10-01' AND date < '2026-11-01' \
     GROUP BY substr(date, 1, 7), org, cost_center, provider, model, currency";

async fn raw_once(data: &std::path::Path) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let url = ListingTableUrl::parse(format!("{}/", data.join("usage").canonicalize()?.display()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(meterline_schemas::arrow_schema::usage_ledger_schema());
    ctx.register_table("usage", Arc::new(ListingTable::try_new(config)?))?;
    let batches = ctx.sql(RAW_SQL).await?.collect().await?;
    Ok((t.elapsed(), batches.iter().map(|b| b.num_rows()).sum()))
}

async fn api_once(client: &reqwest::Client, base: &str) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let r = client
        .get(format!(
            "{base}/v1/reports/chargeback?period={PERIOD}&by=cost_center"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "chargeback: {}", r.status());
    let body = r.bytes().await?;
    let elapsed = t.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok((elapsed, v["lines"].as_array().map_or(0, |l| l.len())))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0)
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(super) async fn run(events: usize, keep: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(events >= 1000, "--events must be at least 1000");
    let tmp = tempfile::tempdir()?;
    let data = keep.unwrap_or_else(|| tmp.path().join("data"));
    let me = std::process::id();
    if !data.join("usage").exists() {
        println!("writing {events} priced rows for {PERIOD} through the ledger writer…");
        let rate = write_ledger(&data, events)?;
        println!("  {rate:.0} rows/s written");
    }
    let bytes: u64 = walk_bytes(&data.join("usage"))?;
    println!(
        "ledger: {:.1} MiB ({:.1} B/row)",
        bytes as f64 / 1048576.0,
        bytes as f64 / events as f64
    );

    // raw DataFusion
    reset_peak_rss();
    let _ = raw_once(&data).await?;
    let mut raw = vec![];
    let mut raw_lines = 0;
    for _ in 0..3 {
        let (d, n) = raw_once(&data).await?;
        raw.push(d);
        raw_lines = n;
    }
    let raw_rss = peak_rss_kib(me)?;

    // the API: the chargeback by SQL, then from rollups (first call builds them)
    let client = reqwest::Client::new();
    let (base, stop, server) = serve(&data, false).await?;
    reset_peak_rss();
    let _ = api_once(&client, &base).await?;
    let cpu0 = cpu_micros(me)?;
    let mut api = vec![];
    let mut api_lines = 0;
    for _ in 0..3 {
        let (d, n) = api_once(&client, &base).await?;
        api.push(d);
        api_lines = n;
    }
    let cpu = cpu_micros(me)? - cpu0;
    let api_rss = peak_rss_kib(me)?;
    stop.cancel();
    server.await??;
    anyhow::ensure!(
        api_lines == raw_lines,
        "API {api_lines} lines, raw {raw_lines} groups"
    );

    let (base, stop, server) = serve(&data, true).await?;
    reset_peak_rss();
    let cpu0 = cpu_micros(me)?;
    let (cold, cold_lines) = api_once(&client, &base).await?;
    let cold_cpu = cpu_micros(me)? - cpu0;
    let cold_rss = peak_rss_kib(me)?;
    anyhow::ensure!(cold_lines == raw_lines, "rollups: {cold_lines} lines");
    let mut warm = vec![];
    for _ in 0..9 {
        warm.push(api_once(&client, &base).await?.0);
    }

    // what every open-month request pays before adding up: the ledger listing (footers cached)
    let view = meterline_api::ledger_view::LedgerView::default();
    let files = view.state(&data)?.files.len();
    let t = Instant::now();
    view.state(&data)?;
    let listing = t.elapsed();

    // closed: from the snapshot
    let r = client
        .post(format!("{base}/v1/periods/{PERIOD}/close"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "close: {}", r.text().await?);
    let mut closed = vec![];
    for _ in 0..5 {
        closed.push(api_once(&client, &base).await?.0);
    }
    stop.cancel();
    server.await??;

    let (raw_m, api_m, warm_m, closed_m) = (median(raw), median(api), median(warm), median(closed));
    let ratio = |d: Duration| d.as_secs_f64() / raw_m.as_secs_f64();
    println!("chargeback of {PERIOD} over {events} rows, by cost_center ({raw_lines} lines):");
    println!(
        "  raw DataFusion SQL        {:>9.3} s  (median of 3)   peak RSS {:>5} MiB",
        raw_m.as_secs_f64(),
        raw_rss / 1024
    );
    println!(
        "  API, SQL scan             {:>9.3} s  (median of 3)   peak RSS {:>5} MiB   {:.3} CPU µs/row   ratio {:.2} (target ≤ 1.2)",
        api_m.as_secs_f64(),
        api_rss / 1024,
        cpu as f64 / (3.0 * events as f64),
        ratio(api_m)
    );
    println!(
        "  API, rollups being built  {:>9.3} s  (first call)    peak RSS {:>5} MiB   {:.3} CPU µs/row   ratio {:.2}",
        cold.as_secs_f64(),
        cold_rss / 1024,
        cold_cpu as f64 / events as f64,
        ratio(cold)
    );
    println!(
        "  API, from rollups         {:>9.1} ms (median of 9)                                       ratio {:.4} (target ≤ 50 ms)",
        warm_m.as_secs_f64() * 1000.0,
        ratio(warm_m)
    );
    println!(
        "    of which listing the ledger {:>6.1} ms ({files} files)",
        listing.as_secs_f64() * 1000.0
    );
    println!(
        "  API, closed month         {:>9.1} ms (median of 5, from the snapshot)",
        closed_m.as_secs_f64() * 1000.0
    );
    Ok(())
}

type Server = tokio::task::JoinHandle<Result<(), meterline_api::Error>>;

/// The API over `data` on port 0, with or without rollups.
async fn serve(
    data: &std::path::Path,
    rollups: bool,
) -> anyhow::Result<(String, tokio_util::sync::CancellationToken, Server)> {
    let cfg = meterline_api::ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data.to_path_buf(),
        tokens: vec![TokenConfig {
            principal: "bench".into(),
            sha256: hash_token(TOKEN),
            role: Role::Finance,
            teams: vec![],
        }],
        rollups,
        ..Default::default()
    };
    let app = meterline_api::App::build(None, cfg).await?;
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    Ok((base, stop, tokio::spawn(app.run_until_stopped())))
}

fn walk_bytes(p: &std::path::Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            walk_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}
