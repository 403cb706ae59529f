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
//! 5. the same month once closed: served from its snapshot;
//! 6. a team lead (`team_lead` of one team): `POST /v1/sql` with the chargeback's own GROUP BY
//!    by team, under the scope barrier (`ScopeExec`);
//! 7. DuckDB (PyPI `duckdb`, pinned in `tests/fixtures/delta_reader/constraints.txt`, from the
//!    venv `scripts/setup-python` builds in `$METERLINE_DELTA_PY_HOME`) as a Python subprocess
//!    with `SET threads=2`, reading the same Parquet files (`read_parquet` over the ledger's
//!    glob, Hive `date`): the same chargeback GROUP BY for finance (every team) and for the
//!    lead (`team IN (…)`). Not through the Delta log: DuckDB's `delta` extension is a
//!    download at first use, which a machine without internet access cannot do; the glob
//!    reads the same files (the bench leaves no superseded or temp files).
//!
//! Every side runs 3 times after one warm-up (a lead's query, ~0.2 s, [`LEAD_RUNS`] times: its
//! median of 3 moved by ±30 % from run to run on 2 shared cores); medians are compared (API ÷
//! DuckDB, API ÷ raw DataFusion), with the totals checked equal. Peak RSS is read per side
//! (VmHWM, reset between sides through /proc/self/clear_refs; DuckDB's is its process's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use meterline_ledger::Row;
use meterline_ledger::{Ledger, LedgerConfig};
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
const LEAD_TOKEN: &str = "bench-lead";
/// Timed runs of a lead's query on each side.
const LEAD_RUNS: usize = 9;
/// The lead's one team.
const LEAD_TEAM: &str = "team-3";

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

/// Writes the month's ledger as the sink does (with its Delta log), then compacts each day
/// as `meterline compact` does; returns the rows written per second (compaction excluded).
fn write_ledger(data: &std::path::Path, events: usize) -> anyhow::Result<f64> {
    let ledger = Ledger::open(&LedgerConfig::default(), data)?;
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
            let after = (offset > 0).then_some(offset - 1);
            ledger.write_flush(p, after, offset, offset + n as i64 - 1, &rows)?;
            offset += n as i64;
            done += n;
            progress.inc(n as u64);
        }
    }
    progress.finish("");
    let rate = events as f64 / t.elapsed().as_secs_f64();
    // what the aggregate stage leaves after `meterline compact`: one sorted file per day, of
    // every partition, in large row groups
    let t = Instant::now();
    let (mut merged, mut into) = (0, 0);
    let first = start.date_naive();
    for day in 0..31 {
        for c in ledger.compact_date(first + chrono::Days::new(day), |_, _| {})? {
            merged += c.merged_files;
            into += 1;
        }
    }
    println!(
        "  compacted {merged} files into {into} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // the originals leave the directory (vacuum with no retention: nothing reads older
    // versions here), so DuckDB's `read_parquet` glob sees exactly the table's files
    let gone = ledger.vacuum(std::time::Duration::ZERO, false)?;
    println!("  vacuumed {} replaced files", gone.files.len());
    Ok(rate)
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

/// The lead's chargeback for DuckDB: the same GROUP BY, by team, of the lead's team only.
fn duck_lead_sql() -> String {
    format!(
        "SELECT substr(date, 1, 7) AS charge_period, org, team AS grp, provider, model, currency, \
         count(*) AS events, sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens, \
         sum(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_write_tokens, \
         sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, \
         sum(cost_total) AS list_cost FROM usage WHERE date >= '2026-10-01' AND date < '2026-11-01' \
         AND team IN ('{LEAD_TEAM}') \
         GROUP BY substr(date, 1, 7), org, team, provider, model, currency"
    )
}

/// Runs each query in DuckDB: a warm-up, then its number of timed runs (medians), CPU of the
/// timed runs.
const DUCKDB_PY: &str = r#"
import json, resource, sys, time
from decimal import Decimal
import duckdb
req = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads=2")
# a query over ~2 s draws a progress bar on stdout, which carries the JSON answer
con.execute("SET enable_progress_bar=false")
glob = req["glob"].replace("'", "''")
con.execute("CREATE VIEW usage AS SELECT * FROM read_parquet('" + glob + "', hive_partitioning=true, hive_types={'date': 'VARCHAR'})")
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
out = []
for q, runs in zip(req["queries"], req["runs"]):
    con.execute(q).fetchall()
    times = []
    c0 = cpu()
    for _ in range(runs):
        t = time.perf_counter()
        cur = con.execute(q)
        rows = cur.fetchall()
        times.append(time.perf_counter() - t)
    c1 = cpu()
    i = [d[0] for d in cur.description].index("list_cost")
    total = sum((r[i] for r in rows), Decimal(0))
    out.append({"median_s": sorted(times)[runs // 2], "rows": len(rows), "list_cost": str(total), "cpu_us": (c1 - c0) * 1e6})
print(json.dumps({"version": duckdb.__version__, "results": out,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

/// One query's DuckDB figures.
struct Duck {
    median: Duration,
    rows: usize,
    list_cost: Decimal,
    cpu_us: f64,
}

/// DuckDB over the ledger's files, or why not (no venv, no `duckdb` in it).
fn duckdb(
    data: &std::path::Path,
    queries: &[(String, usize)],
) -> anyhow::Result<Result<(String, Vec<Duck>, u64), String>> {
    let home = std::env::var("METERLINE_DELTA_PY_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/meterline/py-delta")
        });
    let python = home.join("bin/python");
    if !python.is_file() {
        return Ok(Err(format!(
            "no {} (run scripts/setup-python)",
            python.display()
        )));
    }
    let glob = format!(
        "{}/date=*/*.parquet",
        data.join("usage").canonicalize()?.display()
    );
    let (queries, runs): (Vec<&String>, Vec<usize>) = queries.iter().map(|(q, n)| (q, *n)).unzip();
    let req = serde_json::json!({ "glob": glob, "queries": queries, "runs": runs });
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(DUCKDB_PY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(req.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Ok(Err(format!(
            "DuckDB failed ({}): {} (is `duckdb` in the venv? run scripts/setup-python)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut results = vec![];
    for r in v["results"].as_array().into_iter().flatten() {
        results.push(Duck {
            median: Duration::from_secs_f64(r["median_s"].as_f64().unwrap_or(0.0)),
            rows: r["rows"].as_u64().unwrap_or(0) as usize,
            list_cost: r["list_cost"].as_str().unwrap_or("0").parse()?,
            cpu_us: r["cpu_us"].as_f64().unwrap_or(0.0),
        });
    }
    Ok(Ok((
        v["version"].as_str().unwrap_or("?").to_string(),
        results,
        v["peak_rss_kib"].as_u64().unwrap_or(0),
    )))
}

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
    let (d, n, _) = api_once_total(client, base).await?;
    Ok((d, n))
}

/// The finance chargeback: time, lines, the exact total.
async fn api_once_total(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<(Duration, usize, Decimal)> {
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
    let mut total = Decimal::ZERO;
    for t in v["totals"].as_array().into_iter().flatten() {
        total += t["list_cost"].as_str().unwrap_or("0").parse::<Decimal>()?;
    }
    Ok((elapsed, v["lines"].as_array().map_or(0, |l| l.len()), total))
}

/// The lead's chargeback through `POST /v1/sql`: time, lines, the exact total.
async fn lead_once(
    client: &reqwest::Client,
    base: &str,
    sql: &str,
) -> anyhow::Result<(Duration, usize, Decimal)> {
    let t = Instant::now();
    let r = client
        .post(format!("{base}/v1/sql"))
        .bearer_auth(LEAD_TOKEN)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "lead sql: {}",
        r.text().await.unwrap_or_default()
    );
    let body = r.bytes().await?;
    let elapsed = t.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let mut total = Decimal::ZERO;
    for row in &rows {
        total += row["list_cost"]
            .as_str()
            .unwrap_or("0")
            .parse::<Decimal>()?;
    }
    Ok((elapsed, rows.len(), total))
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
    // a kept directory's close from an earlier run (each run closes the month at its end):
    // the month must be open for the scans to be measured
    match std::fs::remove_dir_all(data.join("closes")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let bytes: u64 = walk_bytes(&data.join("usage"))?;
    let (files, row_groups, footers) = layout(&data.join("usage"))?;
    println!(
        "ledger: {:.1} MiB ({:.1} B/row), {files} files, {row_groups} row groups, footers with page indexes {:.1} MiB in memory (the API caches {} MiB)",
        bytes as f64 / 1048576.0,
        bytes as f64 / events as f64,
        footers as f64 / 1048576.0,
        meterline_api::FOOTER_CACHE_BYTES >> 20
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
    let mut api_total = Decimal::ZERO;
    for _ in 0..3 {
        let (d, n, total) = api_once_total(&client, &base).await?;
        api.push(d);
        api_lines = n;
        api_total = total;
    }
    let cpu = cpu_micros(me)? - cpu0;
    let api_rss = peak_rss_kib(me)?;
    anyhow::ensure!(
        api_lines == raw_lines,
        "API {api_lines} lines, raw {raw_lines} groups"
    );

    // a team lead: the chargeback's GROUP BY by team through SQL, under the scope barrier
    let period: meterline_api::Month = PERIOD.parse().map_err(anyhow::Error::msg)?;
    let lead_sql = meterline_api::usage_lines_sql(period, meterline_api::GroupBy::Team);
    reset_peak_rss();
    let _ = lead_once(&client, &base, &lead_sql).await?;
    let cpu0 = cpu_micros(me)?;
    let mut lead = vec![];
    let (mut lead_lines, mut lead_total) = (0, Decimal::ZERO);
    for _ in 0..LEAD_RUNS {
        let (d, n, total) = lead_once(&client, &base, &lead_sql).await?;
        lead.push(d);
        (lead_lines, lead_total) = (n, total);
    }
    let lead_cpu = cpu_micros(me)? - cpu0;
    let lead_rss = peak_rss_kib(me)?;
    stop.cancel();
    server.await??;

    // DuckDB on the same files, same GROUP BYs, 2 threads
    let duck = duckdb(
        &data,
        &[(RAW_SQL.to_string(), 3), (duck_lead_sql(), LEAD_RUNS)],
    )?;
    if let Ok((_, d, _)) = &duck {
        anyhow::ensure!(
            d[0].rows == api_lines && d[0].list_cost.normalize() == api_total.normalize(),
            "finance: DuckDB {} lines {}, API {api_lines} lines {api_total}",
            d[0].rows,
            d[0].list_cost
        );
        anyhow::ensure!(
            d[1].rows == lead_lines && d[1].list_cost.normalize() == lead_total.normalize(),
            "lead: DuckDB {} lines {}, API {lead_lines} lines {lead_total}",
            d[1].rows,
            d[1].list_cost
        );
    }

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
    let view = meterline_api::LedgerView::open(&LedgerConfig::default(), &data)?;
    let files = view.state()?.files.len();
    let t = Instant::now();
    view.state()?;
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

    let lead_m = median(lead);
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
    println!(
        "  API, team lead (SQL)      {:>9.3} s  (median of {LEAD_RUNS})   peak RSS {:>5} MiB   {:.3} CPU µs/row   {lead_lines} lines of {LEAD_TEAM}",
        lead_m.as_secs_f64(),
        lead_rss / 1024,
        lead_cpu as f64 / (LEAD_RUNS as f64 * events as f64),
    );
    match duck {
        Ok((version, d, rss)) => {
            let (f, l) = (&d[0], &d[1]);
            println!(
                "  DuckDB {version}, finance    {:>9.3} s  (median of 3)   peak RSS {:>5} MiB   {:.3} CPU µs/row   (2 threads, read_parquet)",
                f.median.as_secs_f64(),
                rss / 1024,
                f.cpu_us / (3.0 * events as f64)
            );
            println!(
                "  DuckDB {version}, team lead  {:>9.3} s  (median of {LEAD_RUNS})                     {:.3} CPU µs/row",
                l.median.as_secs_f64(),
                l.cpu_us / (LEAD_RUNS as f64 * events as f64)
            );
            println!(
                "  API ÷ DuckDB: finance {:.2}, team lead {:.2} (target ≤ 1.3 each; totals equal)",
                api_m.as_secs_f64() / f.median.as_secs_f64(),
                lead_m.as_secs_f64() / l.median.as_secs_f64()
            );
        }
        Err(why) => println!("  DuckDB: not run: {why}"),
    }
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
        tokens: vec![
            TokenConfig {
                principal: "bench".into(),
                sha256: hash_token(TOKEN),
                role: Role::Finance,
                teams: vec![],
            },
            TokenConfig {
                principal: "bench-lead".into(),
                sha256: hash_token(LEAD_TOKEN),
                role: Role::TeamLead,
                teams: vec![LEAD_TEAM.into()],
            },
        ],
        rollups,
        query_timeout_ms: 600_000,
        client_idle_timeout_ms: 605_000,
        ..Default::default()
    };
    let app = meterline_api::App::build(None, cfg, LedgerConfig::default()).await?;
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    Ok((base, stop, tokio::spawn(app.run_until_stopped())))
}

/// Parquet files under `usage` (the ledger's, not its Delta log) and their row groups.
/// Files, row groups, and the memory their footers take with page indexes (what the API's
/// footer cache holds of them: `ParquetMetaData::memory_size`).
fn layout(usage: &std::path::Path) -> anyhow::Result<(usize, usize, usize)> {
    use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    let (mut files, mut groups, mut footers) = (0, 0, 0);
    for d in std::fs::read_dir(usage)? {
        let d = d?;
        if !d.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        for f in std::fs::read_dir(d.path())? {
            let p = f?.path();
            if p.extension().is_some_and(|e| e == "parquet") {
                files += 1;
                let meta = ParquetMetaDataReader::new()
                    .with_page_index_policy(PageIndexPolicy::Optional)
                    .parse_and_finish(&std::fs::File::open(&p)?)?;
                groups += meta.num_row_groups();
                footers += meta.memory_size();
            }
        }
    }
    Ok((files, groups, footers))
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
