//! `meterline bench ledger`: the Delta ledger's own costs, on a local directory (or `--url`).
//! 1. Flushes: `--flushes` flushes of 2,000 rows over 4 partitions and 2 event dates (each two
//!    files and one fenced commit), timed one by one — p50/p99 — against the raw floor measured
//!    in the same run: the same Parquet bytes written and fsynced with no commit.
//! 2. Commits: txn-only commits (a flush of undecodable records: one commit, no file) until the
//!    table has `--commits` versions, timed — p50/p99 — against the floor of a commit: one
//!    fsynced put-if-absent of a file of the same size.
//! 3. Opening the table of that many versions (a process starting: `Ledger::open`, one
//!    snapshot, one resume point) — delta-rs reads the last checkpoint and at most 99 JSON
//!    commits — against reading every JSON commit of the log raw.
//! Also the process's CPU µs per row written and peak RSS.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use meterline_ledger::{Ledger, LedgerConfig, Row};
use meterline_schemas::{PricedUsage, UsageEvent};

use super::{cpu_micros, peak_rss_kib};
use crate::progress::Progress;

const ROWS_PER_FLUSH: i64 = 2_000;
const PARTITIONS: i32 = 4;

fn rows(partition: i32, first: i64) -> Vec<Row> {
    (first..first + ROWS_PER_FLUSH)
        .map(|o| {
            let mut event = UsageEvent::example();
            event.event_id = format!("b-{partition}-{o}");
            event.occurred_at = format!("2026-11-{:02}T12:00:00Z", 1 + o % 2)
                .parse()
                .expect("a time");
            let total =
                meterline_schemas::Money::from_unscaled(1_000_000_000 + o as i128).expect("money");
            Row {
                priced: PricedUsage::example(event, &format!("team-{}", o % 24), total),
                partition,
                offset: o,
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    (percentile(&d, 0.5), percentile(&d, 0.99))
}

/// Writes `bytes` to a new file in `dir` and fsyncs it and the directory: the floor of
/// putting one object durably.
fn raw_put(dir: &std::path::Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(name))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(super) fn run(flushes: usize, commits: u64, url: Option<String>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = match url {
        Some(u) => LedgerConfig::at(u),
        None => LedgerConfig::default(),
    };
    let me = std::process::id();
    let cpu0 = cpu_micros(me)?;
    let ledger = Ledger::open(&cfg, dir.path())?;

    // 1. flushes vs the same bytes written raw
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let mut flush_times = vec![];
    let mut raw_times = vec![];
    let mut after: BTreeMap<i32, Option<i64>> = (0..PARTITIONS).map(|p| (p, None)).collect();
    let mut progress = Progress::new(
        "bench ledger: flushes",
        "flushes",
        Some(flushes as u64),
        false,
    );
    let mut written = 0u64;
    for i in 0..flushes {
        let p = (i % PARTITIONS as usize) as i32;
        let first = after[&p].map_or(0, |a| a + 1);
        let batch = rows(p, first);
        let t = Instant::now();
        let f = ledger.write_flush(p, after[&p], first, first + ROWS_PER_FLUSH - 1, &batch)?;
        flush_times.push(t.elapsed());
        after.insert(p, Some(first + ROWS_PER_FLUSH - 1));
        written += batch.len() as u64;
        // the floor: the same Parquet bytes, fsynced, no commit
        let t = Instant::now();
        for (j, rel) in f.files.iter().enumerate() {
            let bytes = std::fs::read(dir.path().join("usage").join(rel))?;
            raw_put(&raw_dir, &format!("{i}-{j}"), &bytes)?;
        }
        raw_times.push(t.elapsed());
        progress.inc(1);
    }
    progress.finish("");
    let cpu_per_row = (cpu_micros(me)? - cpu0) as f64 / written as f64;
    // does a flush cost more as the table gets more files? the first and the last tenth
    let tenth = (flush_times.len() / 10).max(1);
    let (flush_early, _) = summary(flush_times[..tenth].to_vec());
    let (flush_late, _) = summary(flush_times[flush_times.len() - tenth..].to_vec());
    let (f50, f99) = summary(flush_times);
    let (r50, r99) = summary(raw_times);

    // 2. txn-only commits up to `commits` versions, vs a fsynced put-if-absent of that size
    let version = ledger.snapshot()?.version;
    let todo = commits.saturating_sub(version);
    let mut commit_times = vec![];
    // the commits after which a checkpoint is written (every 100th, the table's default)
    let mut checkpoint_times = vec![];
    let mut floor_times = vec![];
    let sample_commit = std::fs::read(
        dir.path()
            .join(format!("usage/_delta_log/{:020}.json", version)),
    )
    .unwrap_or_default();
    let mut progress = Progress::new("bench ledger: commits", "commits", Some(todo), false);
    for i in 0..todo {
        let p = (i % PARTITIONS as u64) as i32;
        let first = after[&p].map_or(0, |a| a + 1);
        let t = Instant::now();
        let committed = ledger.write_flush(p, after[&p], first, first, &[])?;
        commit_times.push(t.elapsed());
        if committed.version.is_some_and(|v| (v + 1) % 100 == 0) {
            checkpoint_times.push(t.elapsed());
        }
        after.insert(p, Some(first));
        if i % 10 == 0 {
            let t = Instant::now();
            raw_put(&raw_dir, &format!("c{i}"), &sample_commit)?;
            floor_times.push(t.elapsed());
        }
        progress.inc(1);
    }
    progress.finish("");
    drop(ledger);

    // 3. opening the table of `commits` versions, vs reading its JSON commits raw
    let t = Instant::now();
    let reopened = Ledger::open(&cfg, dir.path())?;
    let snap = reopened.snapshot()?;
    let resume = reopened.resume_at(0)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut log_bytes = 0u64;
    for e in std::fs::read_dir(dir.path().join("usage/_delta_log"))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            log_bytes += std::fs::read(&path)?.len() as u64;
        }
    }
    let raw_log_ms = t.elapsed().as_secs_f64() * 1e3;
    let checkpoints = std::fs::read_dir(dir.path().join("usage/_delta_log"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".checkpoint."))
        })
        .count();

    println!(
        "bench ledger: {} ({}), {flushes} flushes of {ROWS_PER_FLUSH} rows over {PARTITIONS} partitions and 2 dates",
        if cfg.url.is_empty() { "local directory" } else { cfg.url.as_str() },
        reopened.url()
    );
    println!("  flush (2 files + commit)   p50 {f50:>8.2} ms   p99 {f99:>8.2} ms");
    println!(
        "  raw: same bytes fsynced    p50 {r50:>8.2} ms   p99 {r99:>8.2} ms   ratio p50 {:.2}",
        f50 / r50
    );
    println!(
        "  flush p50, last tenth ÷ first tenth (files 0 → {}): {flush_early:.2} → {flush_late:.2} ms = {:.2}",
        flushes * 2,
        flush_late / flush_early
    );
    println!("  CPU per row written        {cpu_per_row:>8.2} µs (whole process)");
    if !commit_times.is_empty() {
        // does a commit cost more as the table ages? the first and the last tenth compared
        let tenth = (commit_times.len() / 10).max(1);
        let (early, _) = summary(commit_times[..tenth].to_vec());
        let (late, _) = summary(commit_times[commit_times.len() - tenth..].to_vec());
        let mean =
            commit_times.iter().sum::<Duration>().as_secs_f64() * 1e3 / commit_times.len() as f64;
        let (c50, c99) = summary(commit_times);
        let (b50, b99) = summary(floor_times);
        println!(
            "  commit (txn only)          p50 {c50:>8.2} ms   p99 {c99:>8.2} ms   ({todo} commits)"
        );
        println!("  commit mean {mean:.2} ms (checkpoints included)");
        println!(
            "  commit p50, last tenth ÷ first tenth of the versions: {late:.2} ÷ {early:.2} ms = {:.2}",
            late / early
        );
        if !checkpoint_times.is_empty() {
            let tenth = (checkpoint_times.len() / 10).max(1);
            let (early, _) = summary(checkpoint_times[..tenth].to_vec());
            let (late, _) = summary(checkpoint_times[checkpoint_times.len() - tenth..].to_vec());
            println!(
                "  checkpoint commits ({}): p50 first tenth {early:.1} ms, last tenth {late:.1} ms",
                checkpoint_times.len()
            );
        }
        println!(
            "  raw: one fsynced put       p50 {b50:>8.2} ms   p99 {b99:>8.2} ms   ratio p50 {:.2}",
            c50 / b50
        );
    }
    println!(
        "  open at version {:>7}    {open_ms:>8.1} ms   ({checkpoints} checkpoints; {} files; resume p0 at {resume:?})",
        snap.version,
        snap.files.len()
    );
    println!(
        "  raw: read every JSON commit {raw_log_ms:>7.1} ms   ({:.1} MiB)   ratio {:.2}",
        log_bytes as f64 / (1024.0 * 1024.0),
        open_ms / raw_log_ms
    );
    println!(
        "  peak RSS                   {:>8.1} MiB",
        peak_rss_kib(me)? as f64 / 1024.0
    );
    Ok(())
}
