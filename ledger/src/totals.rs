//! What the ledger holds, counted as a reader sees it (a snapshot: the files the Delta log
//! lists): rows and offsets per Kafka partition, and the exact sum of `cost_total` per
//! currency. `meterline rebuild` reconciles a rebuilt ledger with the topic it was read from
//! through this.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::{Error, Ledger};

/// One Kafka partition's rows in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTotals {
    pub rows: u64,
    /// Smallest and largest `kafka_offset` of its rows.
    pub first_offset: i64,
    pub last_offset: i64,
    /// Where a sink using this ledger resumes the partition: its txn version + 1.
    pub resume_at: i64,
}

/// The ledger, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// The Delta version counted.
    pub version: u64,
    pub files: usize,
    pub partitions: BTreeMap<i32, PartitionTotals>,
    /// Sum of `cost_total` per currency, unscaled at the money scale (exact; i128 holds any
    /// realistic sum of Decimal(38, 18) amounts).
    pub cost: BTreeMap<String, i128>,
}

impl Totals {
    pub fn rows(&self) -> u64 {
        self.partitions.values().map(|p| p.rows).sum()
    }
}

const COLUMNS: [&str; 4] = ["kafka_partition", "kafka_offset", "currency", "cost_total"];

fn corrupt(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// Counts the newest snapshot of `ledger`; `on_file(done, total)` after each file read.
pub fn totals(ledger: &Ledger, mut on_file: impl FnMut(usize, usize)) -> Result<Totals, Error> {
    let snapshot = ledger.snapshot()?;
    let resume = &snapshot.ends;
    let usable = &snapshot.files;
    let mut out = Totals {
        version: snapshot.version,
        files: usable.len(),
        ..Default::default()
    };
    for (i, f) in usable.iter().enumerate() {
        let path = f.path.as_str();
        let builder = ParquetRecordBatchReaderBuilder::try_new(snapshot.read(f)?)
            .map_err(|e| corrupt(path, e))?;
        let schema = builder.parquet_schema();
        let indices = COLUMNS
            .iter()
            .map(|c| {
                (0..schema.num_columns())
                    .find(|i| schema.column(*i).name() == *c)
                    .ok_or_else(|| corrupt(path, format!("no column {c}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mask = ProjectionMask::leaves(schema, indices);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| corrupt(path, e))?;
        for batch in reader {
            let b = batch.map_err(|e| corrupt(path, e))?;
            let column = |name: &str| {
                b.column_by_name(name)
                    .ok_or_else(|| corrupt(path, format!("no column {name}")))
            };
            let partition = column("kafka_partition")?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| corrupt(path, "kafka_partition is not Int32"))?;
            let offset = column("kafka_offset")?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| corrupt(path, "kafka_offset is not Int64"))?;
            let cost = column("cost_total")?
                .as_primitive_opt::<Decimal128Type>()
                .ok_or_else(|| corrupt(path, "cost_total is not Decimal128"))?;
            let currency = arrow::compute::cast(column("currency")?, &DataType::Utf8)?;
            let currency = currency.as_string::<i32>();
            for r in 0..b.num_rows() {
                let (p, o) = (partition.value(r), offset.value(r));
                let t = out.partitions.entry(p).or_insert(PartitionTotals {
                    rows: 0,
                    first_offset: o,
                    last_offset: o,
                    resume_at: resume.get(&p).copied().unwrap_or(0),
                });
                t.rows += 1;
                t.first_offset = t.first_offset.min(o);
                t.last_offset = t.last_offset.max(o);
                let c = if currency.is_null(r) {
                    ""
                } else {
                    currency.value(r)
                };
                let sum = match out.cost.get_mut(c) {
                    Some(s) => s,
                    None => out.cost.entry(c.to_string()).or_default(),
                };
                *sum = sum
                    .checked_add(cost.value(r))
                    .ok_or_else(|| Error::Fatal(format!("sum of cost_total in {c} overflows")))?;
            }
        }
        on_file(i + 1, usable.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::example_row as row;
    use meterline_schemas::Money;

    #[test]
    fn counts_rows_offsets_and_exact_sums_per_currency_of_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&crate::LedgerConfig::default(), dir.path()).unwrap();
        l.write_flush(
            0,
            None,
            0,
            9,
            &[
                row(0, 3, 1, "0.000000000000000001", "USD"),
                row(0, 7, 2, "12345678.5", "USD"),
                row(0, 8, 2, "1.25", "EUR"),
            ],
        )
        .unwrap();
        l.write_flush(1, None, 4, 4, &[row(1, 4, 1, "2", "USD")])
            .unwrap();
        // a flush whose commit is fenced (partition 1 is not at 3) is not in the table
        let fenced = l.write_flush(1, Some(3), 5, 6, &[row(1, 5, 1, "100", "USD")]);
        assert!(matches!(fenced, Err(Error::Fenced { partition: 1, .. })));

        let mut seen = vec![];
        let t = totals(&l, |done, total| seen.push((done, total))).unwrap();
        assert_eq!(t.files, 3);
        assert_eq!(seen.last(), Some(&(3, 3)));
        assert_eq!(t.rows(), 4);
        assert_eq!(
            t.partitions[&0],
            PartitionTotals {
                rows: 3,
                first_offset: 3,
                last_offset: 8,
                resume_at: 10
            }
        );
        assert_eq!(t.partitions[&1].resume_at, 5);
        assert_eq!(
            t.cost["USD"],
            "12345680.500000000000000001"
                .parse::<Money>()
                .unwrap()
                .to_unscaled()
        );
        assert_eq!(
            t.cost["EUR"],
            "1.25".parse::<Money>().unwrap().to_unscaled()
        );
    }
}
