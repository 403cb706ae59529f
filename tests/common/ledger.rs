//! The usage table as the end-to-end tests read and fill it: every row of its newest snapshot
//! (what every reader of the table sees), and a deterministic series of priced events.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type};
use meterline_ledger::{Ledger, LedgerConfig};
use meterline_schemas::{Money, PricedUsage, UsageEvent};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One row of the usage table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub currency: String,
    /// `cost_total`, unscaled (18 decimals).
    pub cost: i128,
}

/// Every row of the usage table under `data` (the default `[ledger]`), at its newest snapshot.
pub fn ledger_rows(data: &Path) -> Vec<LedgerRow> {
    ledger_rows_of(&LedgerConfig::default(), data)
}

/// [`ledger_rows`] of the table `cfg` names (a bucket), read with our own Parquet reader.
/// Files of flushes killed before their commit are beside the table, not in it.
pub fn ledger_rows_of(cfg: &LedgerConfig, data: &Path) -> Vec<LedgerRow> {
    let snapshot = Ledger::open(cfg, data).unwrap().snapshot().unwrap();
    let mut rows = vec![];
    for f in &snapshot.files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(snapshot.read(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let text = |c: &str| {
                arrow::compute::cast(b.column_by_name(c).unwrap(), &DataType::Utf8).unwrap()
            };
            let (ids, currencies) = (text("event_id"), text("currency"));
            let (ids, currencies) = (ids.as_string::<i32>(), currencies.as_string::<i32>());
            let column = |c: &str| b.column_by_name(c).unwrap().clone();
            let (cost, part, off) = (
                column("cost_total"),
                column("kafka_partition"),
                column("kafka_offset"),
            );
            let cost = cost.as_primitive::<Decimal128Type>();
            let part = part.as_primitive::<Int32Type>();
            let off = off.as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                assert!(
                    !ids.is_null(i) && !cost.is_null(i),
                    "a row without id or cost"
                );
                rows.push(LedgerRow {
                    partition: part.value(i),
                    offset: off.value(i),
                    event_id: ids.value(i).to_string(),
                    currency: currencies.value(i).to_string(),
                    cost: cost.value(i),
                });
            }
        }
    }
    rows
}

/// Event `i` of a deterministic series, priced: event id `ev-<i>`, five keys, four teams,
/// three dates in April 2026, and a USD amount with all 18 decimals in play.
pub fn priced_series(i: usize) -> PricedUsage {
    let mut event = UsageEvent::example();
    event.event_id = format!("ev-{i}");
    event.api_key_id = Some(format!("key-{}", i % 5));
    event.occurred_at = format!("2026-04-0{}T10:00:00Z", 1 + i % 3).parse().unwrap();
    let total: Money = format!(
        "{}.{:018}",
        i % 97,
        (i as u64 * 7919) % 1_000_000_000_000_000_000
    )
    .parse()
    .unwrap();
    PricedUsage::example(event, &format!("team-{}", i % 4), total)
}
