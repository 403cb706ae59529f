//! The second half of `meterline bench aggregate`: latency from ingest accepting an event to
//! the budget state including it, at a steady rate, through the real pipeline — ingest,
//! enrich and aggregate as their own processes on a fresh broker, one org-wide budget that
//! every demo event counts against.
//!
//! The latency is measured where it ends: the budget tracker records `now − received_at`
//! (received_at is stamped by ingest when it accepts the event) once the event's crossings
//! are on the signals topic, into `meterline_aggregate_budget_lag_seconds` (fine buckets
//! around the 2 s target). p50/p99 are read from those buckets, interpolated within one.
//! Alongside, the enforcement check is called in a loop and its HTTP round trip timed, and
//! the in-memory lookup alone is timed on a synthetic state of 1,000 budgets.

use std::time::{Duration, Instant};

use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::metric_names as m;
use meterline_schemas::topics;

use super::{post, wait_healthy};
use crate::broker::free_port;
use crate::progress::Progress;

/// Quantile `q` from Prometheus cumulative buckets `(le, count)`, linear within a bucket.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// The cumulative buckets of histogram `name` in a Prometheus text page.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn scrape(client: &reqwest::Client, port: u16) -> String {
    match client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub(super) async fn run(rate: u32, secs: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::broker(None, dir.path())?;
    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        ..Default::default()
    };
    ensure_topics(&kafka, &topics::all(kafka.usage_partitions)).await?;
    crate::dev::publish_demo_reference(kafka.clone()).await?;
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let mut b = meterline_schemas::BudgetChange {
            budget_id: "bench-acme".into(),
            version: 0,
            name: "bench".into(),
            scope: meterline_reference::budgets::parse_scope("org=acme")?,
            limit: "1000000000".parse()?,
            currency: "USD".into(),
            period: meterline_schemas::PeriodKind::Month,
            timezone: "UTC".into(),
            custom_from: None,
            custom_to: None,
            thresholds: meterline_reference::budgets::parse_thresholds("50:notify,100:block")?,
            webhooks: vec![],
            effective_from: now,
            effective_to: None,
            deleted: false,
            author: "bench".into(),
            reason: "bench".into(),
            changed_at: now,
        };
        b.effective_from = meterline_reference::budgets::current_period_start(&b, now)?;
        meterline_reference::budgets::publish(&k, b)?;
        Ok(())
    })
    .await??;

    let token = "bench-token";
    let (ingest_port, enrich_port, agg_port, watch_port) =
        (free_port(), free_port(), free_port(), free_port());
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{ingest_port}\"\n\
             [ingest.spool]\ndir = \"{spool}\"\n\
             [[ingest.tokens]]\nprincipal = \"bench\"\nsha256 = \"{hash}\"\nrole = \"edge\"\n\
             [enrich]\nlisten = \"127.0.0.1:{enrich_port}\"\n\
             [aggregate]\nlisten = \"127.0.0.1:{agg_port}\"\ndata_dir = \"{data}\"\n\
             [watch]\nlisten = \"127.0.0.1:{watch_port}\"\ndata_dir = \"{data}\"\n\
             [watch.alerts]\nenabled = false\n",
            spool = dir.path().join("spool").display(),
            hash = meterline_runtime::auth::hash_token(token),
            data = dir.path().join("data").display(),
        ),
    )?;
    let spawn = |stage: &str| {
        std::process::Command::new(std::env::current_exe()?)
            .args(["--config", cfg_path.to_str().unwrap(), stage])
            .env("RUST_LOG", "warn")
            .spawn()
    };
    let mut children = vec![
        spawn("ingest")?,
        spawn("enrich")?,
        spawn("aggregate")?,
        spawn("watch")?,
    ];
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{ingest_port}");
    wait_healthy(&client, &base).await?;

    // steady load: a batch every 10 ms
    let per_tick = (rate / 100).max(1) as usize;
    let total = per_tick * 100 * secs as usize;
    let run = std::process::id();
    let mut bodies = Vec::with_capacity(total / per_tick);
    {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for b in 0..total / per_tick {
            let batch: Vec<_> = (0..per_tick)
                .map(|i| crate::dev::demo_event(&mut rng, &format!("lat-{run}-{b}-{i}")))
                .collect();
            bodies.push(batch);
        }
    }
    // The edge's check, timed from outside while the load runs.
    let check_client = client.clone();
    let check_base = base.clone();
    let checking = tokio_util::sync::CancellationToken::new();
    let stop_checks = checking.clone();
    let checker = tokio::spawn(async move {
        let mut took = vec![];
        while !stop_checks.is_cancelled() {
            let t0 = Instant::now();
            let r = check_client
                .post(format!("{check_base}/v1/enforcement/check"))
                .bearer_auth(token)
                .json(&serde_json::json!({"api_key_id": "key-search-1"}))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                took.push(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let mut posts = vec![];
    let mut progress = Progress::new("bench budget: sending", "events", Some(total as u64), false);
    for batch in bodies {
        tick.tick().await;
        progress.inc(batch.len() as u64);
        // Fresh `occurred_at`: the events are "now" when sent.
        let batch: Vec<_> = batch
            .into_iter()
            .map(|mut e| {
                e["occurred_at"] = chrono::Utc::now().to_rfc3339().into();
                e
            })
            .collect();
        let body = bytes::Bytes::from(serde_json::to_vec(&batch)?);
        let (c, b) = (client.clone(), base.clone());
        posts.push(tokio::spawn(async move { post(&c, &b, token, body).await }));
    }
    for p in posts {
        p.await??;
    }
    progress.finish("");
    let sent_secs = t0.elapsed().as_secs_f64();
    // all counted by the tracker
    let name = m::AGGREGATE_BUDGET_LAG_SECONDS;
    let deadline = Instant::now() + Duration::from_secs(120);
    let text = loop {
        let text = scrape(&client, watch_port).await;
        let counted = buckets(&text, name).last().map_or(0.0, |b| b.1);
        if counted as usize >= total {
            break text;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "budget tracker counted {counted} of {total} events in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    checking.cancel();
    let mut checks = checker.await?;
    checks.sort();
    let agg_rss = super::peak_rss_kib(children[3].id())? as f64 / 1024.0;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let b = buckets(&text, name);
    let (p50, p99) = (quantile(&b, 0.5), quantile(&b, 0.99));
    let lookup = lookup_micros();
    println!(
        "bench budget latency: {total} demo events at {rate}/s for {secs} s (sent in {sent_secs:.1} s) through ingest → enrich → aggregate, one org-wide budget"
    );
    println!(
        "  ingest accepted → budget state   p50 {:>6.3} s   p99 {:>6.3} s   (target p99 ≤ 2 s; from the tracker's histogram)",
        p50.unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN)
    );
    println!(
        "  enforcement check over HTTP      p50 {:>6.3} ms  p99 {:>6.3} ms  ({} calls during the load)",
        percentile(&checks, 0.5).as_secs_f64() * 1e3,
        percentile(&checks, 0.99).as_secs_f64() * 1e3,
        checks.len()
    );
    println!(
        "  enforcement lookup in memory     p50 {:>6.1} µs  p99 {:>6.1} µs  (1,000 budgets, 1,000 tenant rules; target p99 ≤ 1 ms)",
        lookup.0, lookup.1
    );
    println!("  watch peak RSS                   {agg_rss:>6.1} MiB (budget tracker + anomaly detection)");
    Ok(())
}

/// p50/p99 of `EnforcementState::check` on a state with 1,000 budgets (each with a live
/// signal) and 1,000 tenant rules, in µs.
fn lookup_micros() -> (f64, f64) {
    use meterline_ingest::enforcement::{CheckRequest, EnforcementState};
    use meterline_schemas::*;
    let now = chrono::Utc::now();
    let mut s = EnforcementState::default();
    for i in 0..1000 {
        s.apply_tenant(TenantChange {
            rule_id: format!("r{i}"),
            version: 1,
            matches: TenantMatch {
                api_key_id: Some(format!("key-{i}")),
                ..Default::default()
            },
            priority: 0,
            tenant: TenantPath {
                org: "acme".into(),
                team: Some(format!("team-{}", i % 100)),
                ..Default::default()
            },
            effective_from: now - chrono::Duration::days(1),
            effective_to: None,
            deleted: false,
            author: "b".into(),
            reason: "b".into(),
            changed_at: now,
        });
        let b = BudgetChange {
            budget_id: format!("b{i}"),
            version: 1,
            name: "b".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: format!("team-{}", i % 100),
            },
            limit: "10".parse().expect("limit"),
            currency: "USD".into(),
            period: PeriodKind::Month,
            timezone: "UTC".into(),
            custom_from: None,
            custom_to: None,
            thresholds: vec![],
            webhooks: vec![],
            effective_from: now,
            effective_to: None,
            deleted: false,
            author: "b".into(),
            reason: "b".into(),
            changed_at: now,
        };
        s.apply_signal(BudgetSignal {
            budget_id: b.budget_id.clone(),
            scope: b.scope.clone(),
            period_start: now - chrono::Duration::days(1),
            period_end: now + chrono::Duration::days(1),
            state: BudgetState::Warning,
            spend: "9".parse().expect("spend"),
            limit: b.limit,
            currency: "USD".into(),
            threshold_percent: Some(80),
            action: BudgetAction::Throttle,
            at: now,
        });
        s.apply_budget(b);
    }
    s.set_ready();
    let mut took = vec![];
    for i in 0..10_000 {
        let r = CheckRequest {
            api_key_id: Some(format!("key-{}", i % 1000)),
            ..Default::default()
        };
        let t0 = Instant::now();
        std::hint::black_box(s.check(&r, now));
        took.push(t0.elapsed());
    }
    took.sort();
    (
        percentile(&took, 0.5).as_secs_f64() * 1e6,
        percentile(&took, 0.99).as_secs_f64() * 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let text = "x_bucket{le=\"0.1\"} 50\nx_bucket{le=\"0.2\"} 90\nx_bucket{le=\"+Inf\"} 100\nx_sum 1\n";
        let b = buckets(text, "x");
        assert_eq!(b.len(), 3);
        assert!((quantile(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&b, 0.7).unwrap() - 0.15).abs() < 1e-9);
        // in the +Inf bucket: the last finite bound is all we know
        assert_eq!(quantile(&b, 0.99), Some(0.2));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
