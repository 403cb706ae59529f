//! Daily rollups: each ledger file's rows summed per (org, cost center, team, project,
//! provider, model, currency). A ledger file is written once and never changed (a compaction
//! writes a new file and deletes the old ones), so its rollup is computed once, kept in memory
//! under its path and size, and dropped when the file goes. A chargeback then adds up a few
//! hundred rollup rows per file instead of scanning every event; only the files a chargeback
//! has not seen yet are read (all of them once after a start).
//!
//! A report may want only part of a file's rows — a close counts rows below its watermark,
//! adjustments the rows at or past the last close's, each per input partition. A file whose
//! offset spans lie wholly inside the wanted ranges is taken from its rollup, one wholly
//! outside is skipped, and one that straddles a bound (a compacted file spanning a close) is
//! read again with the per-partition offset filter, without caching.
//!
//! Sums are exact: integers, and money as the unscaled `Decimal128(38, 18)` in an `i128`
//! (checked: an overflow is an error, never a wrapped total).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use futures::StreamExt;

use crate::ledger_view::{LedgerFile, LedgerState};
use crate::Error;
use meterline_ledger::{OffsetSpan, Snapshot};

/// The dimensions a rollup keeps, in key order.
pub const DIMENSIONS: [&str; 7] = [
    "org",
    "cost_center",
    "team",
    "project",
    "provider",
    "model",
    "currency",
];
/// Index of a dimension in [`DIMENSIONS`] (and in a key).
pub fn dimension(name: &str) -> usize {
    DIMENSIONS
        .iter()
        .position(|d| *d == name)
        .expect("a rollup dimension")
}

const MEASURES: [&str; 7] = [
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_total",
];

/// Where a row came from: read only for a file a report wants part of.
const POSITION: [&str; 2] = ["kafka_partition", "kafka_offset"];

/// What a group of rows adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub events: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    /// 5-minute and 1-hour cache writes together.
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// `cost_total`, unscaled at the money scale (18).
    pub cost: i128,
}

impl Sums {
    pub fn add(&mut self, o: &Sums) -> Result<(), Error> {
        let overflow = || Error::Query("a rollup sum overflowed".into());
        let add = |a: &mut i64, b: i64| -> Result<(), Error> {
            *a = a.checked_add(b).ok_or_else(overflow)?;
            Ok(())
        };
        add(&mut self.events, o.events)?;
        add(&mut self.input_tokens, o.input_tokens)?;
        add(&mut self.cache_read_tokens, o.cache_read_tokens)?;
        add(&mut self.cache_write_tokens, o.cache_write_tokens)?;
        add(&mut self.output_tokens, o.output_tokens)?;
        add(&mut self.reasoning_tokens, o.reasoning_tokens)?;
        self.cost = self.cost.checked_add(o.cost).ok_or_else(overflow)?;
        Ok(())
    }
}

/// Which offsets of a partition a report wants: `lo..hi` (`None`: unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

impl OffsetRange {
    pub const ALL: OffsetRange = OffsetRange { lo: None, hi: None };

    fn contains(&self, o: i64) -> bool {
        self.lo.is_none_or(|lo| o >= lo) && self.hi.is_none_or(|hi| o < hi)
    }
}

/// How much of a file a range takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Whole,
    Nothing,
    Part,
}

/// Which of a span's offsets lie in `r`. Pure.
fn span_coverage(s: &OffsetSpan, r: OffsetRange) -> Coverage {
    let below = r.hi.is_some_and(|hi| s.first >= hi);
    let above = r.lo.is_some_and(|lo| s.last < lo);
    if below || above {
        Coverage::Nothing
    } else if r.contains(s.first) && r.contains(s.last) {
        Coverage::Whole
    } else {
        Coverage::Part
    }
}

/// How much of a file with offset `spans` the ranges `range(partition)` take: whole when
/// every span is inside its partition's range, nothing when every span is outside. Pure.
pub fn coverage(spans: &[OffsetSpan], range: impl Fn(i32) -> OffsetRange) -> Coverage {
    let mut seen = None;
    for s in spans {
        match (seen, span_coverage(s, range(s.partition))) {
            (_, Coverage::Part) => return Coverage::Part,
            (None, c) => seen = Some(c),
            (Some(a), c) if a != c => return Coverage::Part,
            _ => {}
        }
    }
    seen.unwrap_or(Coverage::Nothing)
}

/// Per partition of a file, the offsets a report wants of it (`None`: all of them).
type Ranges = Option<Arc<Vec<(i32, OffsetRange)>>>;

/// Dimension values as small integers; 0 is NULL.
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Option<Arc<str>>>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            names: vec![None],
        }
    }
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        let s: Arc<str> = s.into();
        self.names.push(Some(s.clone()));
        self.ids.insert(s, id);
        id
    }
}

type Key = [u32; 7];

/// Hashing for maps keyed by small integers (not exposed to untrusted keys).
pub type FastHash = foldhash::fast::RandomState;

/// One file's rows, summed per key.
struct FileRollup {
    groups: Vec<(Key, Sums)>,
}

/// The rollups of the ledger files seen so far.
#[derive(Default)]
pub struct Rollups {
    interner: Mutex<Interner>,
    files: Mutex<HashMap<(String, u64), Arc<FileRollup>>>,
    /// One builder at a time: a second chargeback waits and then finds the rollups made.
    building: tokio::sync::Mutex<()>,
}

impl Rollups {
    /// How many files have a rollup kept.
    pub fn len(&self) -> usize {
        self.files.lock().expect("rollups").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of an interned dimension id (`None`: NULL).
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.interner.lock().expect("interner").names[id as usize].clone()
    }

    /// The rows of the files `wanted` picks whose offsets lie in `range(partition)`, summed
    /// per `group(file, key)` — a key holds interned ids of [`DIMENSIONS`] (see
    /// [`Self::name`]). `files` is the ledger as a reader may use it now; rollups of files no
    /// longer in it are dropped.
    pub async fn sum_by<'a, G: std::hash::Hash + Eq>(
        self: &Arc<Self>,
        ledger: &'a LedgerState,
        wanted: impl Fn(&LedgerFile) -> bool,
        range: impl Fn(i32) -> OffsetRange,
        group: impl Fn(&'a LedgerFile, &[u32; 7]) -> G,
    ) -> Result<HashMap<G, Sums, FastHash>, Error> {
        let _one = self.building.lock().await;
        let files = &ledger.files;
        let snapshot = &ledger.snapshot;
        let mut whole = vec![];
        let mut part = vec![];
        for f in files.iter().filter(|f| wanted(f)) {
            match coverage(&f.spans, &range) {
                Coverage::Nothing => {}
                Coverage::Whole => whole.push(f),
                Coverage::Part => {
                    let ranges = f.spans.iter().map(|s| (s.partition, range(s.partition)));
                    part.push((f, Some(Arc::new(ranges.collect()))));
                }
            }
        }
        // 1. forget files that are gone (a compaction replaced them)
        let missing: Vec<LedgerFile> = {
            let mut cache = self.files.lock().expect("rollups");
            let live: std::collections::HashSet<(&String, u64)> =
                files.iter().map(|f| (&f.path, f.bytes)).collect();
            cache.retain(|(p, b), _| live.contains(&(p, *b)));
            whole
                .iter()
                .filter(|f| !cache.contains_key(&(f.path.clone(), f.bytes)))
                .map(|f| (*f).clone())
                .collect()
        };
        // 2. read the files not seen yet, as many at once as there are cores
        let built = self.build_all(snapshot, missing).await?;
        {
            let mut cache = self.files.lock().expect("rollups");
            for (f, r) in built {
                cache.insert((f.path, f.bytes), r);
            }
        }
        // 3. straddling files: read with their offset filter, not kept
        let mut partial = vec![];
        for (f, r) in part {
            partial.push((f, self.build_one(snapshot, f.clone(), r).await?));
        }
        // 4. add up
        let mut sums: HashMap<G, Sums, FastHash> = HashMap::default();
        let cache = self.files.lock().expect("rollups");
        for f in whole {
            let r = cache
                .get(&(f.path.clone(), f.bytes))
                .ok_or_else(|| Error::Query(format!("no rollup of {}", f.path)))?;
            for (k, s) in &r.groups {
                sums.entry(group(f, k)).or_default().add(s)?;
            }
        }
        for (f, r) in &partial {
            for (k, s) in &r.groups {
                sums.entry(group(f, k)).or_default().add(s)?;
            }
        }
        Ok(sums)
    }

    async fn build_one(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        f: LedgerFile,
        ranges: Ranges,
    ) -> Result<Arc<FileRollup>, Error> {
        let me = self.clone();
        let snapshot = snapshot.clone();
        tokio::task::spawn_blocking(move || me.rollup_file(&snapshot, &f, ranges).map(Arc::new))
            .await
            .map_err(Error::query)?
    }

    async fn build_all(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        files: Vec<LedgerFile>,
    ) -> Result<Vec<(LedgerFile, Arc<FileRollup>)>, Error> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        futures::stream::iter(files)
            .map(|f| async move {
                let r = self.build_one(snapshot, f.clone(), None).await?;
                Ok::<_, Error>((f, r))
            })
            .buffer_unordered(cores)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Reads one ledger file's rows in `ranges` and sums them per key.
    fn rollup_file(
        &self,
        snapshot: &Snapshot,
        f: &LedgerFile,
        ranges: Ranges,
    ) -> Result<FileRollup, Error> {
        let at = |e: Error| Error::LedgerFile {
            path: f.path.clone(),
            source: Box::new(e),
        };
        let file = snapshot.read(f)?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| at(Error::Parquet(e)))?;
        let schema = builder.schema().clone();
        let mut roots = vec![];
        let position = ranges.as_ref().map_or(&[][..], |_| &POSITION[..]);
        for name in DIMENSIONS.iter().chain(&MEASURES).chain(position) {
            roots.push(schema.index_of(name).map_err(|e| at(Error::Arrow(e)))?);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| at(Error::Parquet(e)))?;
        let mut groups: HashMap<Key, Sums, FastHash> = HashMap::default();
        for batch in reader {
            let b = batch.map_err(|e| at(Error::Arrow(e)))?;
            self.add_batch(&b, ranges.as_deref().map(Vec::as_slice), &mut groups)
                .map_err(at)?;
        }
        Ok(FileRollup {
            groups: groups.into_iter().collect(),
        })
    }

    // one index walks parallel columns
    #[allow(clippy::needless_range_loop)]
    fn add_batch(
        &self,
        b: &RecordBatch,
        ranges: Option<&[(i32, OffsetRange)]>,
        groups: &mut HashMap<Key, Sums, FastHash>,
    ) -> Result<(), Error> {
        let ids: Vec<Vec<u32>> = DIMENSIONS
            .iter()
            .map(|d| self.ids_of(&column(b, d)?))
            .collect::<Result<_, _>>()?;
        let int = |name: &str| -> Result<ArrayRef, Error> {
            cast(&column(b, name)?, &DataType::Int64).map_err(Error::query)
        };
        let (inp, cr, cw5, cw1, out, rs) = (
            int("input_tokens")?,
            int("cache_read_tokens")?,
            int("cache_write_5m_tokens")?,
            int("cache_write_1h_tokens")?,
            int("output_tokens")?,
            int("reasoning_tokens")?,
        );
        let position = match ranges {
            Some(ranges) => Some((ranges, int(POSITION[0])?, int(POSITION[1])?)),
            None => None,
        };
        let v = |a: &ArrayRef, i: usize| {
            let a = a.as_primitive::<Int64Type>();
            if a.is_null(i) {
                0
            } else {
                a.value(i)
            }
        };
        let cost = column(b, "cost_total")?;
        let cost = cost
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(|| Error::Query("cost_total is not a decimal".into()))?;
        for i in 0..b.num_rows() {
            if let Some((ranges, part, off)) = &position {
                let p = v(part, i);
                let range = ranges
                    .iter()
                    .find(|(q, _)| i64::from(*q) == p)
                    .map(|(_, r)| r)
                    .ok_or_else(|| {
                        Error::Query(format!("a row of partition {p} outside the file's spans"))
                    })?;
                if !range.contains(v(off, i)) {
                    continue;
                }
            }
            let key: Key = std::array::from_fn(|d| ids[d][i]);
            let cw = v(&cw5, i)
                .checked_add(v(&cw1, i))
                .ok_or_else(|| Error::Query("cache write tokens overflow".into()))?;
            groups.entry(key).or_default().add(&Sums {
                events: 1,
                input_tokens: v(&inp, i),
                cache_read_tokens: v(&cr, i),
                cache_write_tokens: cw,
                output_tokens: v(&out, i),
                reasoning_tokens: v(&rs, i),
                cost: if cost.is_null(i) { 0 } else { cost.value(i) },
            })?;
        }
        Ok(())
    }

    /// Per row, the interned id of a text column's value (dictionary columns: one lookup per
    /// distinct value).
    fn ids_of(&self, a: &ArrayRef) -> Result<Vec<u32>, Error> {
        let dict = match a.data_type() {
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                a.clone()
            }
            _ => cast(
                a,
                &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            )
            .map_err(Error::query)?,
        };
        let dict = dict.as_dictionary::<Int32Type>();
        let values = dict.values().as_string::<i32>();
        let value_ids: Vec<u32> = {
            let mut interner = self.interner.lock().expect("interner");
            (0..values.len())
                .map(|i| {
                    if values.is_null(i) {
                        0
                    } else {
                        interner.id(values.value(i))
                    }
                })
                .collect()
        };
        let keys = dict.keys();
        Ok((0..keys.len())
            .map(|i| {
                if keys.is_null(i) {
                    0
                } else {
                    value_ids[keys.value(i) as usize]
                }
            })
            .collect())
    }
}

fn column(b: &RecordBatch, name: &str) -> Result<ArrayRef, Error> {
    b.column_by_name(name)
        .cloned()
        .ok_or_else(|| Error::Query(format!("ledger file has no column {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: Option<i64>, hi: Option<i64>) -> OffsetRange {
        OffsetRange { lo, hi }
    }

    fn span(partition: i32, first: i64, last: i64) -> OffsetSpan {
        OffsetSpan {
            partition,
            first,
            last,
        }
    }

    /// One span against one range.
    fn one(first: i64, last: i64, r: OffsetRange) -> Coverage {
        coverage(&[span(0, first, last)], |_| r)
    }

    #[test]
    fn a_compacted_file_is_whole_only_when_every_partition_is() {
        let spans = [span(0, 0, 9), span(1, 500, 900), span(4, 10, 19)];
        // a close's watermarks, per partition
        let upto = |ends: [i64; 3]| {
            move |p: i32| {
                r(
                    None,
                    Some(ends[[0, 1, 4].iter().position(|q| *q == p).unwrap()]),
                )
            }
        };
        assert_eq!(coverage(&spans, upto([10, 901, 20])), Coverage::Whole);
        assert_eq!(coverage(&spans, upto([0, 500, 10])), Coverage::Nothing);
        assert_eq!(
            coverage(&spans, upto([10, 500, 20])),
            Coverage::Part,
            "one outside"
        );
        assert_eq!(
            coverage(&spans, upto([10, 901, 15])),
            Coverage::Part,
            "one straddles"
        );
        assert_eq!(coverage(&spans, |_| OffsetRange::ALL), Coverage::Whole);
    }

    #[test]
    fn a_file_is_whole_outside_or_straddling_a_range() {
        let coverage = one;
        assert_eq!(coverage(10, 19, OffsetRange::ALL), Coverage::Whole);
        // a close's watermark: offsets below 20
        assert_eq!(coverage(10, 19, r(None, Some(20))), Coverage::Whole);
        assert_eq!(coverage(20, 29, r(None, Some(20))), Coverage::Nothing);
        assert_eq!(coverage(15, 25, r(None, Some(20))), Coverage::Part);
        // adjustments: offsets at or past the last close's watermark
        assert_eq!(coverage(20, 29, r(Some(20), None)), Coverage::Whole);
        assert_eq!(coverage(10, 19, r(Some(20), None)), Coverage::Nothing);
        assert_eq!(coverage(19, 20, r(Some(20), None)), Coverage::Part);
        // both bounds
        assert_eq!(coverage(20, 29, r(Some(20), Some(30))), Coverage::Whole);
        assert_eq!(coverage(25, 35, r(Some(20), Some(30))), Coverage::Part);
        // a partition a close never saw: hi = MIN takes nothing
        assert_eq!(coverage(0, 5, r(None, Some(i64::MIN))), Coverage::Nothing);
    }

    #[test]
    fn sums_add_exactly_and_refuse_to_wrap() {
        let mut a = Sums {
            events: 1,
            cost: 1,
            ..Default::default()
        };
        a.add(&Sums {
            events: 2,
            cost: 10_i128.pow(30),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((a.events, a.cost), (3, 10_i128.pow(30) + 1));
        let mut big = Sums {
            input_tokens: i64::MAX,
            ..Default::default()
        };
        assert!(big
            .add(&Sums {
                input_tokens: 1,
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn interner_keeps_zero_for_null() {
        let mut i = Interner::default();
        let a = i.id("acme");
        assert_eq!((a, i.id("acme"), i.id("beta")), (1, 1, 2));
        assert_eq!(i.names[0], None);
    }
}
