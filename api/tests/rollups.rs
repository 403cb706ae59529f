//! The chargeback from per-file daily rollups equals the one SQL scan of the same files, for
//! every month, grouping and cut (a close's watermark, adjustments after an earlier close),
//! also after a compaction merged flushes into files that straddle those watermarks, and
//! with rows of a flush still being written on disk.

use std::path::Path;
use std::sync::Arc;

use meterline_api::{
    budgets_schema, compute_chargeback, compute_chargeback_sql, coverage, query_session,
    report_session, ApiConfig, Coverage, Cut, GroupBy, LedgerState, LedgerView, Month, OffsetRange,
    QueryScope, Rollups, Watermark,
};
use meterline_ledger::Row;
use meterline_ledger::{Ledger, LedgerConfig};
use meterline_schemas::{CostLines, Money, PricedUsage, TenantPath, UsageEvent};

/// xorshift: reproducible rows without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const FLUSH: i64 = 40;
const FLUSHES: i64 = 6;
const PARTITIONS: i32 = 3;

fn row(rng: &mut Rng, partition: i32, offset: i64) -> Row {
    let mut event = UsageEvent::example();
    event.event_id = format!("e-{partition}-{offset}");
    event.model = ["gpt-4o", "claude-sonnet-4", "o3"][rng.next(3) as usize].into();
    // 2026-09-29 .. 2026-11-02, in offset order within the partition
    let start: chrono::DateTime<chrono::Utc> = "2026-09-29T00:00:00Z".parse().unwrap();
    let span = 35 * 86_400 * 1_000_000i64;
    let at = span * offset / (FLUSH * FLUSHES) + rng.next(1_000_000) as i64;
    event.occurred_at = start + chrono::Duration::microseconds(at);
    event.usage.input_tokens = rng.next(5000) as i64;
    event.usage.cache_read_tokens = rng.next(100) as i64;
    event.usage.cache_write_5m_tokens = rng.next(10) as i64;
    event.usage.cache_write_1h_tokens = rng.next(10) as i64;
    event.usage.output_tokens = rng.next(900) as i64;
    event.usage.reasoning_tokens = rng.next(50) as i64;
    let team = ["search", "ads", "infra"]
        .get(rng.next(4) as usize)
        .copied();
    let cost: Money = format!("0.{:018}", rng.next(10u64.pow(18)))
        .parse()
        .unwrap();
    Row {
        priced: PricedUsage {
            tenant: TenantPath {
                org: if rng.next(5) == 0 {
                    "acme-labs"
                } else {
                    "acme"
                }
                .into(),
                cost_center: team.map(|t| format!("cc-{}", t.len())),
                team: team.map(str::to_string),
                project: team.map(|t| format!("{t}-{}", rng.next(2))),
                ..Default::default()
            },
            currency: if rng.next(4) == 0 { "EUR" } else { "USD" }.into(),
            cost: CostLines {
                input: cost,
                total: cost,
                ..Default::default()
            },
            ..PricedUsage::example(event, "", cost)
        },
        partition,
        offset,
    }
}

fn write_ledger(dir: &Path) {
    let ledger = Ledger::open(&LedgerConfig::default(), dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for p in 0..PARTITIONS {
        for f in 0..FLUSHES {
            let first = f * FLUSH;
            let rows: Vec<Row> = (first..first + FLUSH)
                .map(|o| row(&mut rng, p, o))
                .collect();
            ledger.append(p, first, first + FLUSH - 1, &rows).unwrap();
        }
    }
}

fn cfg(dir: &Path) -> ApiConfig {
    ApiConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

/// Watermarks cutting through flushes: partition 0 mid-flush, 1 at a flush boundary, 2 absent.
fn cuts() -> Vec<Cut> {
    let upto = Watermark([(0, 3 * FLUSH + 17), (1, 4 * FLUSH)].into_iter().collect());
    let after = Watermark(
        [(0, FLUSH + 5), (1, 2 * FLUSH), (2, 3)]
            .into_iter()
            .collect(),
    );
    vec![
        Cut::default(),
        Cut {
            upto: Some(upto.clone()),
            adjustments_after: None,
        },
        Cut {
            upto: None,
            adjustments_after: Some(after.clone()),
        },
        Cut {
            upto: Some(upto),
            adjustments_after: Some(after),
        },
    ]
}

async fn assert_same(dir: &Path, state: &LedgerState, rollups: &Arc<Rollups>) -> usize {
    let ctx = query_session(
        &cfg(dir),
        &QueryScope::All,
        state,
        datafusion::arrow::array::RecordBatch::new_empty(budgets_schema()),
    )
    .await
    .unwrap();
    // the reports' own session: the same files, text decoded as string views
    let views = report_session(&cfg(dir), state).await.unwrap();
    let mut lines = 0;
    for month in ["2026-09", "2026-10", "2026-11"] {
        let m: Month = month.parse().unwrap();
        for by in GroupBy::ALL {
            for (i, cut) in cuts().iter().enumerate() {
                let sql = compute_chargeback_sql(&ctx, m, by, cut).await.unwrap();
                let fast = compute_chargeback(rollups, state, m, by, cut)
                    .await
                    .unwrap();
                assert_eq!(fast, sql, "{month} by {by:?}, cut {i}");
                let by_views = compute_chargeback_sql(&views, m, by, cut).await.unwrap();
                assert_eq!(by_views, sql, "views: {month} by {by:?}, cut {i}");
                lines += sql.lines.len();
            }
        }
    }
    lines
}

fn straddling(state: &LedgerState) -> usize {
    let upto = &cuts()[1].upto.clone().unwrap();
    state
        .files
        .iter()
        .filter(|f| {
            let r = |p| OffsetRange {
                lo: None,
                hi: Some(upto.end(p)),
            };
            coverage(&f.spans, r) == Coverage::Part
        })
        .count()
}

#[tokio::test]
async fn rollup_chargeback_equals_the_sql_scan_before_and_after_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ledger(dir);
    let view = LedgerView::open(&LedgerConfig::default(), dir).unwrap();
    let rollups = Arc::new(Rollups::default());

    let before = view.state().unwrap();
    let lines = assert_same(dir, &before, &rollups).await;
    assert!(lines > 300, "only {lines} lines compared");
    let kept = rollups.len();
    assert_eq!(kept, before.files.len(), "one rollup per file");
    // a mid-flush watermark straddles the files of that flush (one per date it covers)
    assert!(straddling(&before) >= 1);

    // compaction: each date's files, of every partition, merged into one spanning several flushes
    let dates: std::collections::BTreeSet<String> =
        before.files.iter().map(|f| f.date.clone()).collect();
    for d in &dates {
        view.ledger()
            .compact_date(d.parse().unwrap(), |_, _| {})
            .unwrap();
    }
    let after = view.state().unwrap();
    assert!(after.files.len() < before.files.len(), "compaction merged");
    assert!(
        after
            .files
            .iter()
            .any(|f| f.spans.len() == PARTITIONS as usize),
        "a day's files of every partition in one"
    );
    assert!(
        straddling(&after) > straddling(&before),
        "merged files straddle the close's watermark"
    );
    assert_same(dir, &after, &rollups).await;
    assert_eq!(
        rollups.len(),
        after.files.len(),
        "rollups of merged-away files dropped"
    );
}

/// A flush whose commit never happened (a crash between the files and the commit, or a
/// writer fenced off) leaves its files on storage, in the table's directories: neither the
/// rollups nor SQL over the snapshot count them.
#[tokio::test]
async fn rows_of_an_uncommitted_flush_are_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ledger(dir);
    let m: Month = "2026-10".parse().unwrap();
    let rollups = Arc::new(Rollups::default());
    let view = LedgerView::open(&LedgerConfig::default(), dir).unwrap();
    let committed = view.state().unwrap();
    let before = compute_chargeback(&rollups, &committed, m, GroupBy::Team, &Cut::default())
        .await
        .unwrap();

    // a flush of partition 0 over two dates whose commit is refused
    let ledger = view.ledger();
    let mut rng = Rng(7);
    let first = FLUSHES * FLUSH;
    let rows: Vec<Row> = (first..first + FLUSH)
        .map(|o| {
            let mut r = row(&mut rng, 0, o);
            r.priced.event.occurred_at = if o < first + 10 {
                "2026-10-30T12:00:00Z"
            } else {
                "2026-10-31T12:00:00Z"
            }
            .parse()
            .unwrap();
            r
        })
        .collect();
    let refused = ledger.write_flush(0, Some(-7), first, first + FLUSH - 1, &rows);
    assert!(matches!(
        refused,
        Err(meterline_ledger::Error::Fenced { .. })
    ));
    let on_disk = std::fs::read_dir(dir.join("usage/date=2026-10-31"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy()
                .starts_with(&format!("part-0-{first}-"))
        })
        .count();
    assert_eq!(on_disk, 1, "its files are written, next to the table's");

    let state = view.state().unwrap();
    assert_eq!(state.version, committed.version);
    let during = compute_chargeback(&rollups, &state, m, GroupBy::Team, &Cut::default())
        .await
        .unwrap();
    assert_eq!(during, before, "the uncommitted files are not counted");
    assert_same(dir, &state, &rollups).await;
}

/// Footers and statistics are read once per file and kept for the next query (files are
/// immutable); a new version's new files are added, and a query still reads its own version.
#[tokio::test]
async fn footers_and_statistics_are_read_once_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ledger(dir);
    let view = LedgerView::open(&LedgerConfig::default(), dir).unwrap();
    let state = view.state().unwrap();
    assert_eq!(state.file_caches.entries(), (0, 0));
    let count = |state: LedgerState| async move {
        let ctx = query_session(
            &cfg(dir),
            &QueryScope::All,
            &state,
            datafusion::arrow::array::RecordBatch::new_empty(budgets_schema()),
        )
        .await
        .unwrap();
        let b = ctx
            .sql("SELECT count(*) AS n FROM usage WHERE input_tokens >= 0")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = b[0].column(0).as_any();
        n.downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    let files = state.files.len();
    assert!(files > 1);
    let rows = (PARTITIONS as i64) * FLUSH * FLUSHES;
    assert_eq!(count(state.clone()).await, rows);
    assert_eq!(view.state().unwrap().file_caches.entries(), (files, files));
    // a second query reads no footer again
    assert_eq!(count(view.state().unwrap()).await, rows);
    assert_eq!(view.state().unwrap().file_caches.entries(), (files, files));
    // a new flush: one more file in each cache; the new version counts it
    let ledger = Ledger::open(&LedgerConfig::default(), dir).unwrap();
    let mut rng = Rng(7);
    let first = FLUSH * FLUSHES;
    let extra: Vec<Row> = (first..first + 3).map(|o| row(&mut rng, 0, o)).collect();
    ledger.append(0, first, first + 2, &extra).unwrap();
    let newer = view.state().unwrap();
    assert_eq!(newer.files.len(), files + 1);
    assert_eq!(count(newer).await, rows + 3);
    assert_eq!(
        view.state().unwrap().file_caches.entries(),
        (files + 1, files + 1)
    );
    // the old version still counts its own rows
    assert_eq!(count(state).await, rows);
}
