//! The ledger's Delta log as an engine nobody here wrote reads it: the `deltalake` Python
//! package (delta-rs's own reader, from PyPI; `scripts/setup-python` installs it into
//! `$METERLINE_DELTA_PY_HOME`). After flushes, after a compaction, and after the two crashes
//! the file protocol survives (a flush written but not committed; a flush cut short), the
//! table it reads holds exactly the ledger's complete view: the same files, rows and Decimal
//! sum, and each partition's `txn` version is its last offset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use meterline_ledger::files::complete_view;
use meterline_ledger::rows::Row;
use meterline_ledger::Ledger;
use meterline_schemas::{CostLines, Money, PricedUsage, TenantPath, UsageEvent};
use rust_decimal::Decimal;
use serde_json::Value;

fn row(partition: i32, offset: i64, day: u32, total: &str) -> Row {
    let mut event = UsageEvent::example();
    event.event_id = format!("e-{partition}-{offset}");
    event.occurred_at = format!("2026-03-{day:02}T12:00:00Z").parse().unwrap();
    let total: Money = total.parse().unwrap();
    Row {
        priced: PricedUsage {
            event,
            tenant: TenantPath {
                org: "acme".into(),
                team: Some("search".into()),
                ..Default::default()
            },
            tenant_rule_id: None,
            price_id: "p".into(),
            price_version: 1,
            price_resolution: "exact".into(),
            model: "gpt-4o".into(),
            currency: "USD".into(),
            cost: CostLines {
                output: total,
                total,
                ..Default::default()
            },
            priced_at: chrono::Utc::now(),
        },
        partition,
        offset,
    }
}

fn python() -> PathBuf {
    let home = std::env::var("METERLINE_DELTA_PY_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cache/meterline/py-delta",
            std::env::var("HOME").unwrap()
        )
    });
    let py = PathBuf::from(home).join("bin/python");
    assert!(
        py.exists(),
        "{} missing: scripts/setup-python installs the deltalake package",
        py.display()
    );
    py
}

/// What the Python reader sees of the table at `usage`.
fn read_with_python(usage: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/delta_summary.py");
    let out = Command::new(python())
        .args([script, usage.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The ledger's own complete view: files (relative), event ids and Decimal sum of cost_total.
fn own_view(dir: &Path) -> (BTreeSet<String>, Vec<String>, Decimal) {
    let ledger = Ledger::open(dir).unwrap();
    let found = ledger.scan().unwrap();
    let (_, complete) = complete_view(&found);
    let usage = std::fs::canonicalize(ledger.usage_dir()).unwrap();
    let mut files = BTreeSet::new();
    let mut events = vec![];
    let mut sum = Decimal::ZERO;
    for f in complete {
        let path = std::fs::canonicalize(&f.path).unwrap();
        files.insert(
            path.strip_prefix(&usage)
                .unwrap()
                .to_string_lossy()
                .to_string(),
        );
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = arrow::compute::cast(
                b.column_by_name("event_id").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let ids = ids
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            let cost = b
                .column_by_name("cost_total")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Decimal128Array>()
                .unwrap()
                .clone();
            for i in 0..b.num_rows() {
                events.push(ids.value(i).to_string());
                sum += Money::from_unscaled(cost.value(i)).unwrap().decimal();
            }
        }
    }
    events.sort();
    (files, events, sum)
}

/// The table as Python reads it equals the ledger's complete view.
fn assert_same(dir: &Path, what: &str) -> Value {
    let seen = read_with_python(&dir.join("usage"));
    let (files, events, sum) = own_view(dir);
    let py_files: BTreeSet<String> = seen["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(py_files, files, "{what}: files");
    let py_events: Vec<String> = seen["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(py_events, events, "{what}: rows");
    let py_sum: Decimal = seen["cost"]
        .as_str()
        .map_or(Decimal::ZERO, |c| c.parse().unwrap());
    assert_eq!(py_sum.normalize(), sum.normalize(), "{what}: Decimal sum");
    seen
}

#[test]
fn other_engines_read_exactly_the_complete_ledger_through_crashes_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = Ledger::open_writer(d).unwrap();
    // 1. flushes of two partitions, over two dates
    w.write_flush(
        0,
        0,
        2,
        &[
            row(0, 0, 1, "0.1"),
            row(0, 1, 2, "0.2"),
            row(0, 2, 1, "0.000000000000000003"),
        ],
    )
    .unwrap();
    w.write_flush(1, 0, 0, &[row(1, 0, 1, "1.5")]).unwrap();
    w.write_flush(0, 3, 4, &[row(0, 3, 1, "0.4"), row(0, 4, 1, "0.5")])
        .unwrap();
    let seen = assert_same(d, "after three flushes");
    assert_eq!(seen["rows"], 6);
    assert_eq!(seen["cost"], "2.700000000000000003");
    assert_eq!(seen["txn"]["0"], 4, "{seen}");
    assert_eq!(seen["txn"]["1"], 0, "{seen}");
    assert_eq!(seen["version"], 3, "create + one commit per flush");

    // 2. compaction of 2026-03-01: p0's two files become one, in one commit, before the
    //    originals are deleted
    let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let done = meterline_ledger::compact::compact_date(d, date).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let seen = assert_same(d, "after compaction");
    assert_eq!(seen["rows"], 6);
    assert_eq!(seen["files"].as_array().unwrap().len(), 3, "{seen}");
    drop(w);

    // 3. crash after a flush's files, before its commit: the files are complete, the log
    //    lacks them (Python does not see them); recovery commits them
    Ledger::open(d)
        .unwrap()
        .write_flush(1, 1, 1, &[row(1, 1, 2, "2")])
        .unwrap();
    let before = read_with_python(&d.join("usage"));
    assert_eq!(before["rows"], 6, "an uncommitted flush is invisible");
    let w = Ledger::open_writer(d).unwrap();
    assert_eq!(w.recover(1).unwrap(), Some(2));
    let seen = assert_same(d, "after recovering an uncommitted flush");
    assert_eq!(seen["rows"], 7);
    assert_eq!(seen["txn"]["1"], 1, "{seen}");
    drop(w);

    // 4. crash in the middle of a flush: one of its two files never got written; recovery
    //    deletes the other and the log never had either
    let files = Ledger::open(d)
        .unwrap()
        .write_flush(0, 5, 6, &[row(0, 5, 1, "9"), row(0, 6, 3, "9")])
        .unwrap();
    assert_eq!(files.len(), 2);
    std::fs::remove_file(&files[1]).unwrap();
    let w = Ledger::open_writer(d).unwrap();
    assert_eq!(w.recover(0).unwrap(), Some(5), "resumes at the cut flush");
    let seen = assert_same(d, "after recovering a cut flush");
    assert_eq!(seen["rows"], 7);
    assert_eq!(seen["txn"]["0"], 4, "{seen}");
    // and the rows come again, once
    w.write_flush(0, 5, 6, &[row(0, 5, 1, "9"), row(0, 6, 3, "9")])
        .unwrap();
    let seen = assert_same(d, "after the retried flush");
    assert_eq!(seen["rows"], 9);
    assert_eq!(seen["cost"], "22.700000000000000003");
    assert_eq!(seen["txn"]["0"], 6, "{seen}");
}

/// Opening the table must not replay every commit since it began: every 100th commit writes a
/// checkpoint (the writer's and any Delta reader's starting point), and a table reopened from
/// it still knows every partition's last offset and every row.
#[test]
fn every_hundredth_commit_writes_a_checkpoint_that_keeps_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = Ledger::open_writer(d).unwrap();
    // version 0 is the table's creation; 205 flushes alternate between two partitions
    for i in 0..205i64 {
        let (p, offset) = ((i % 2) as i32, i / 2);
        w.write_flush(
            p,
            offset,
            offset,
            &[row(p, offset, 1 + (i % 28) as u32, "0.01")],
        )
        .unwrap();
    }
    drop(w);
    let log = d.join("usage/_delta_log");
    let mut checkpoints: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".checkpoint.parquet"))
        .collect();
    checkpoints.sort();
    assert_eq!(
        checkpoints,
        [
            // delta-rs checkpoints when (version + 1) is a multiple of the interval
            "00000000000000000099.checkpoint.parquet",
            "00000000000000000199.checkpoint.parquet"
        ]
    );
    let last: Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 199);
    // the writer reopens the table (from the checkpoint) and resumes after each partition's
    // last offset; its reconciliation finds nothing to add or remove (no new commit)
    let reopened = Ledger::open_writer(d).unwrap();
    assert_eq!(reopened.recover(0).unwrap(), Some(103));
    assert_eq!(reopened.recover(1).unwrap(), Some(102));
    // and a reader nobody here wrote sees every row and both offsets through it
    let seen = assert_same(d, "after 205 flushes");
    assert_eq!(seen["rows"], 205);
    assert_eq!(seen["version"], 205);
    assert_eq!(seen["cost"], "2.050000000000000000");
    assert_eq!(seen["txn"]["0"], 102, "{seen}");
    assert_eq!(seen["txn"]["1"], 101, "{seen}");
}
