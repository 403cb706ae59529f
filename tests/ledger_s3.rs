//! The ledger on object storage: the usage table at `s3://…` on a real S3-protocol server
//! (moto, started here; see `tests/common/s3.rs` for why moto). Two writers commit to one
//! table at once (different partitions: concurrent blind appends; delta-rs's commit is a
//! put-if-absent of the next version, `If-None-Match: *`), a third is fenced off a partition
//! another moved on, a compaction runs, and then:
//! - our snapshot reader, delta-rs's Python package (an engine nobody here wrote) and the
//!   query API over `s3://` all read the same rows and the same Decimal sum;
//! - files of the refused flush and the compacted originals are on the bucket, outside the
//!   table, until vacuum deletes exactly them.

mod common;

use std::collections::BTreeMap;

use meterline_api::App;
use meterline_ledger::{Error, Ledger, LedgerConfig, Row};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::{Anomaly, PricedUsage, Scope, ScopeKind, UsageEvent};

fn row(partition: i32, offset: i64, day: u32, total: &str) -> Row {
    let mut event = UsageEvent::example();
    event.event_id = format!("e-{partition}-{offset}");
    event.occurred_at = format!("2026-03-{day:02}T12:00:00Z").parse().unwrap();
    let team = format!("team-{}", offset % 3);
    Row {
        priced: PricedUsage::example(event, &team, total.parse().unwrap()),
        partition,
        offset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_on_s3_is_exact_for_every_reader() {
    let s3 = common::s3::S3Server::start().unwrap();
    let bucket = s3.create_bucket("meterline-ledger").unwrap();
    let cfg = LedgerConfig {
        url: format!("{bucket}/prod"),
        storage: s3.storage_options(),
        ..Default::default()
    };
    let scratch = tempfile::tempdir().unwrap();
    let (cfg2, dir) = (cfg.clone(), scratch.path().to_path_buf());
    let expected = tokio::task::spawn_blocking(move || {
        let cfg = cfg2;
        let open = || Ledger::open(&cfg, &dir).unwrap();
        // two writers at once, two partitions each, 8 flushes of 25 rows over two dates
        let sums: Vec<i128> = std::thread::scope(|s| {
            let writers: Vec<_> = [(0, 1), (2, 3)]
                .into_iter()
                .map(|parts| {
                    let l = open();
                    s.spawn(move || {
                        let mut sum = 0i128;
                        for p in [parts.0, parts.1] {
                            let mut after = None;
                            for flush in 0..8i64 {
                                let first = flush * 25;
                                let rows: Vec<Row> = (first..first + 25)
                                    .map(|o| row(p, o, 1 + (o % 2) as u32, "0.000000000000000123"))
                                    .collect();
                                sum += rows
                                    .iter()
                                    .map(|r| r.priced.cost.total.to_unscaled())
                                    .sum::<i128>();
                                l.write_flush(p, after, first, first + 24, &rows).unwrap();
                                after = Some(first + 24);
                            }
                        }
                        sum
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let l = open();
        // a zombie continuing partition 0 from offset 100 is fenced: its file stays outside
        let refused = l.write_flush(0, Some(99), 100, 104, &[row(0, 100, 1, "1000")]);
        assert!(
            matches!(refused, Err(Error::Fenced { partition: 0, .. })),
            "{refused:?}"
        );
        let before = l.snapshot().unwrap();
        assert_eq!(before.files.len(), 4 * 8 * 2);
        assert_eq!(
            before.ends,
            (0..4).map(|p| (p, 200)).collect::<BTreeMap<_, _>>()
        );
        let done = l
            .compact_date(
                chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
                |_, _| {},
            )
            .unwrap();
        assert_eq!(done.len(), 1, "one merged file for the day");
        assert_eq!(done[0].partitions, [0, 1, 2, 3]);
        let t = meterline_ledger::totals::totals(&l, |_, _| {}).unwrap();
        assert_eq!(t.rows(), 800);
        assert_eq!(t.files, 1 + 4 * 8);
        // its spans, in its add action's tag, read back from the bucket by a new process
        let merged = open()
            .snapshot()
            .unwrap()
            .files
            .into_iter()
            .find(|f| f.path == done[0].into)
            .unwrap();
        assert_eq!(
            merged.spans.iter().map(|s| s.partition).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(t.cost["USD"], sums.iter().sum::<i128>());
        // vacuum: the 32 compacted originals and the fenced flush's file, nothing else
        let v = l.vacuum(std::time::Duration::ZERO, false).unwrap();
        assert_eq!(v.files.len(), 32 + 1, "{:?}", v.files);
        let t2 = meterline_ledger::totals::totals(&l, |_, _| {}).unwrap();
        assert_eq!((t2.rows(), t2.cost.clone()), (800, t.cost.clone()));
        t
    })
    .await
    .unwrap();
    let sum = expected.cost["USD"];

    // delta-rs's Python package reads the table from the bucket
    let seen = common::delta_summary_of(&format!("{bucket}/prod/usage"), &s3.env());
    assert_eq!(seen["rows"], 800);
    let cost: rust_decimal::Decimal = seen["cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        cost.normalize(),
        rust_decimal::Decimal::from_i128_with_scale(sum, 18).normalize()
    );
    for p in 0..4 {
        assert_eq!(seen["txn"][p.to_string()], 199, "txn of partition {p}");
    }

    // the anomalies table beside it: an hour written, then recomputed (replaced in one commit)
    let anomalies = meterline_ledger::AnomalyTable::open(&cfg, scratch.path()).unwrap();
    let hour: chrono::DateTime<chrono::Utc> = "2026-03-02T10:00:00Z".parse().unwrap();
    let finding = |kind: ScopeKind, value: &str| Anomaly {
        anomaly_id: format!("spend_spike/{value}/{hour}"),
        scope: Scope {
            kind,
            value: value.into(),
        },
        model: None,
        kind: "spend_spike".into(),
        window_start: hour,
        window_end: hour + chrono::Duration::hours(1),
        observed: "12.5".parse().unwrap(),
        expected: "1".parse().unwrap(),
        score: 8.0,
        method: "robust_z".into(),
        top_contributors: vec![],
        at: hour + chrono::Duration::hours(1),
    };
    anomalies
        .replace_hour(hour, &[finding(ScopeKind::Team, "team-1")])
        .unwrap();
    anomalies
        .replace_hour(
            hour,
            &[
                finding(ScopeKind::Team, "team-1"),
                finding(ScopeKind::Team, "team-2"),
                finding(ScopeKind::Org, "acme"),
            ],
        )
        .unwrap();
    assert_eq!(
        anomalies.snapshot().unwrap().files.len(),
        1,
        "the hour replaced"
    );

    // the query API over s3://, as finance and as a team lead
    let api_cfg = meterline_api::ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: scratch.path().join("api"),
        tokens: vec![
            TokenConfig {
                principal: "finance".into(),
                sha256: hash_token("fin"),
                role: Role::Finance,
                teams: vec![],
            },
            TokenConfig {
                principal: "lead".into(),
                sha256: hash_token("lead"),
                role: Role::TeamLead,
                teams: vec!["team-1".into()],
            },
        ],
        ..Default::default()
    };
    let app = App::build(None, api_cfg, cfg).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    let served = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let query = |token: &'static str, sql: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/sql"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let sql = |token| {
        query(
            token,
            "SELECT count(*) AS n, CAST(sum(cost_total) AS VARCHAR) AS cost FROM usage",
        )
    };
    let all = sql("fin").await;
    assert_eq!(all["rows"][0]["n"], 800, "{all}");
    let api_cost: rust_decimal::Decimal = all["rows"][0]["cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(api_cost.normalize(), cost.normalize());
    let lead = sql("lead").await;
    let team_1 = (0..200).filter(|o| o % 3 == 1).count() * 4;
    assert_eq!(lead["rows"][0]["n"], team_1, "only its team: {lead}");
    let found = "SELECT scope_value FROM anomalies ORDER BY scope_value";
    let all = query("fin", found).await;
    assert_eq!(
        all["rows"],
        serde_json::json!([{"scope_value": "acme"}, {"scope_value": "team-1"}, {"scope_value": "team-2"}])
    );
    let lead = query("lead", found).await;
    assert_eq!(lead["rows"], serde_json::json!([{"scope_value": "team-1"}]));
    stop.cancel();
    served.await.unwrap().unwrap();
}
