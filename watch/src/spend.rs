//! The budget ledger's I/O: running spend per budget and period, rebuilt from the Parquet
//! files and kept current from the priced stream; crossings published to the compacted
//! `meterline.budget.signals` topic. The arithmetic and the once-per-threshold rule live in
//! `budget.rs`; this file only feeds it.
//!
//! Consistency with the ledger: a rebuild takes a snapshot of the complete flushes on disk
//! (per partition, the offset they end before), reads the rows of the open periods from those
//! files, then reads the topic from exactly those offsets. Every row is counted once whether
//! it is already in a file or still only in the topic, so spend equals what the ledger holds
//! or will hold.
//!
//! Once across restarts and takeovers: the tracker publishes through the active instance's
//! fenced producer (`fence.rs`), created — fencing any previous holder and aborting its open
//! transaction — before the signals topic is read to its end and every signal already there
//! is restored into the book, before the first row is counted. A crash between a crossing and
//! its publication loses nothing: the rebuild reaches the same crossing again. A publication
//! that fails ends the tracker (its book marked the crossing as signalled): the stage starts
//! over from the topics, which is always correct.
//!
//! Only the active instance tracks budgets (the lease, `lib.rs`); every tracker reads every
//! partition of the priced topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::metric_names as m;
use meterline_schemas::scope::Attribution;
use meterline_schemas::{topics, AvroRecord, BudgetChange, BudgetSignal, Money, PricedUsage};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::anomaly::DetectorConfig;
use crate::anomaly_watch::AnomalyWatch;
use crate::budget::{BudgetBook, SpendRow};
use crate::fence::{FencedProducer, Out};
use crate::Error;
use meterline_ledger::{Ledger, Snapshot, TableFile};

/// Key of a signal on the compacted topic: one live state per budget and scope.
pub fn signal_key(s: &BudgetSignal) -> String {
    format!("{}|{}", s.budget_id, s.scope.label())
}

pub struct SpendTracker {
    ledger: Arc<Ledger>,
    book: BudgetBook,
    consumer: BaseConsumer,
    producer: FencedProducer,
    /// Offset of the next budget change to read (the budgets topic has one partition).
    budgets_next: i64,
    /// Hourly series and the anomaly detector.
    watch: AnomalyWatch,
    /// Per priced partition, the next offset the watch has not yet counted (a budget rebuild
    /// re-reads the stream from where the files end; the watch must not count rows twice).
    watch_next: HashMap<i32, i64>,
    /// The detector's history has been rebuilt from the ledger (once per start).
    history_loaded: bool,
    stop: CancellationToken,
}

/// How long reading one reference topic to its end may take.
const READ_TO_END: Duration = Duration::from_secs(60);

/// The rows of one ledger file that occurred at or after `since`.
/// The files of `usable` that can hold rows at or after `since`: a period in a time zone can
/// start up to a day before its UTC date directory, so one day earlier counts too.
pub fn files_since(files: &[TableFile], since: DateTime<Utc>) -> impl Iterator<Item = &TableFile> {
    let first = (since - chrono::Duration::days(1))
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    files.iter().filter(move |f| f.date >= first)
}

pub fn read_spend_rows(
    snapshot: &Snapshot,
    file: &TableFile,
    since: DateTime<Utc>,
) -> Result<Vec<SpendRow>, Error> {
    let corrupt = |source: Reason| Error::Corrupt {
        path: file.path.clone(),
        source,
    };
    let bytes = snapshot.read(file)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(e.into()))?;
    const COLUMNS: [&str; 16] = [
        "occurred_at",
        "input_tokens",
        "cache_read_tokens",
        "output_tokens",
        "status",
        "org",
        "cost_center",
        "team",
        "project",
        "api_key_id",
        "user_id",
        "tags",
        "provider",
        "model",
        "currency",
        "cost_total",
    ];
    let schema = builder.parquet_schema();
    let indices: Vec<usize> = COLUMNS
        .iter()
        .map(|c| {
            (0..schema.num_columns())
                .find(|i| schema.column(*i).name() == *c)
                .ok_or_else(|| corrupt(format!("no column {c}").into()))
        })
        .collect::<Result<_, _>>()?;
    let mask = ProjectionMask::leaves(schema, indices);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| corrupt(e.into()))?;
    let mut out = vec![];
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.into()))?;
        rows_of(&batch, since, &mut out).map_err(corrupt)?;
    }
    Ok(out)
}

/// Why a ledger file's rows cannot be read: its own error (Parquet, Arrow, an amount out of
/// range) or what is missing.
type Reason = Box<dyn std::error::Error + Send + Sync>;

fn rows_of(b: &RecordBatch, since: DateTime<Utc>, out: &mut Vec<SpendRow>) -> Result<(), Reason> {
    let text = |name: &str| -> Result<Vec<Option<String>>, Reason> {
        let col = b
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))?;
        let col = arrow::compute::cast(col, &DataType::Utf8)?;
        let s = col.as_string::<i32>();
        Ok((0..s.len())
            .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
            .collect())
    };
    let at = b
        .column_by_name("occurred_at")
        .ok_or("no occurred_at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or("occurred_at type")?
        .clone();
    let cost = b
        .column_by_name("cost_total")
        .ok_or("no cost_total")?
        .as_primitive_opt::<Decimal128Type>()
        .ok_or("cost_total type")?
        .clone();
    let (org, cc, team, project) = (
        text("org")?,
        text("cost_center")?,
        text("team")?,
        text("project")?,
    );
    let (key, user, tags) = (text("api_key_id")?, text("user_id")?, text("tags")?);
    let (provider, model, currency) = (text("provider")?, text("model")?, text("currency")?);
    let status = text("status")?;
    let int = |name: &str| -> Result<arrow::array::Int64Array, Reason> {
        Ok(b.column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
            .cloned()
            .ok_or_else(|| format!("column {name}"))?)
    };
    let (input, cache_read, output) = (
        int("input_tokens")?,
        int("cache_read_tokens")?,
        int("output_tokens")?,
    );
    for i in 0..b.num_rows() {
        let occurred_at =
            meterline_schemas::time::from_micros(at.value(i)).ok_or("occurred_at out of range")?;
        if occurred_at < since {
            continue;
        }
        let tags = match &tags[i] {
            Some(t) => serde_json::from_str(t).map_err(|e| format!("tags: {e}"))?,
            None => Default::default(),
        };
        out.push(SpendRow {
            who: Attribution {
                org: org[i].clone(),
                cost_center: cc[i].clone(),
                team: team[i].clone(),
                project: project[i].clone(),
                api_key_id: key[i].clone(),
                user_id: user[i].clone(),
                tags,
                provider: provider[i].clone(),
                model: model[i].clone(),
            },
            occurred_at,
            cost: Money::from_unscaled(cost.value(i))?,
            currency: currency[i].clone().unwrap_or_default(),
            input_tokens: input.value(i),
            cache_read_tokens: cache_read.value(i),
            output_tokens: output.value(i),
            failed: status[i].as_deref() == Some("error"),
        });
    }
    Ok(())
}

impl SpendTracker {
    /// Reads the budgets and the signals already emitted; the first rebuild happens in `run`.
    /// `producer` has taken its transactional id over already: nothing a previous holder
    /// publishes from now on can be committed, so what is read here is all there will be.
    pub fn new(
        kafka: &KafkaConfig,
        ledger: Arc<Ledger>,
        anomaly_table: Arc<meterline_ledger::AnomalyTable>,
        producer: FencedProducer,
        stop: CancellationToken,
    ) -> Result<SpendTracker, Error> {
        let consumer: BaseConsumer = kafka
            .client("aggregate-budgets")
            // Assigned, never subscribed: every partition, no group membership.
            .set("group.id", "meterline-budget-tracker")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // Latency matters more than fetch efficiency here (librdkafka's default waits up
            // to 500 ms for data).
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(Error::kafka)?;
        let mut book = BudgetBook::default();
        // 1. the budgets, so signals can be checked against their current terms
        let (changes, budgets_next) =
            meterline_runtime::follow::read_to_end(&consumer, topics::BUDGETS, READ_TO_END)?;
        for bytes in changes {
            match BudgetChange::from_avro(&bytes) {
                Ok(c) => {
                    book.apply(c);
                }
                Err(e) => warn!(error = %e, "skipping unreadable budget change"),
            }
        }
        // 2. what was already signalled is not signalled again
        let (signals, _) =
            meterline_runtime::follow::read_to_end(&consumer, topics::BUDGET_SIGNALS, READ_TO_END)?;
        for bytes in &signals {
            if let Ok(s) = BudgetSignal::from_avro(bytes) {
                book.restore(&s);
            }
        }
        // 3. anomalies already published are recognised when recomputed
        let (anomalies, _) =
            meterline_runtime::follow::read_to_end(&consumer, topics::ANOMALIES, READ_TO_END)?;
        let published = anomalies
            .iter()
            .filter_map(|b| meterline_schemas::Anomaly::from_avro(b).ok())
            .map(|a| a.anomaly_id)
            .collect();
        let watch = AnomalyWatch::new(
            DetectorConfig::default(),
            anomaly_table,
            published,
            Utc::now() - chrono::Duration::hours(2),
        )?;
        info!(
            budgets = book.budgets().count(),
            signals = signals.len(),
            anomalies = anomalies.len(),
            "budget tracker loaded"
        );
        Ok(SpendTracker {
            watch,
            watch_next: HashMap::new(),
            history_loaded: false,
            ledger,
            book,
            consumer,
            producer,
            budgets_next,
            stop,
        })
    }

    /// Rebuilds spend from the ledger's complete files and repositions the stream after them.
    fn rebuild(&mut self) -> Result<(), Error> {
        let t0 = Instant::now();
        let now = Utc::now();
        self.book.clear_spend();
        // 1. a snapshot of the table: its files, and where each partition's rows end
        let snapshot = self.ledger.snapshot()?;
        let resume = &snapshot.ends;
        // 2. the rows of the open periods in those files (a period in a time zone can start up
        //    to a day before its UTC date directory); at start also the anomaly detector's
        //    weeks of history
        let mut rows = 0usize;
        let budget_since = self.book.open_since(now)?;
        let history_since = (!self.history_loaded).then(|| self.watch.history_since(now));
        if history_since.is_some() {
            self.watch.reset()?; // a retried first rebuild starts the history afresh
        }
        let since = match (budget_since, history_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(since) = since {
            for f in files_since(&snapshot.files, since) {
                for row in read_spend_rows(&snapshot, f, since)? {
                    rows += 1;
                    if history_since.is_some() {
                        self.watch.add(&row);
                    }
                    if budget_since.is_some_and(|b| row.occurred_at >= b) {
                        let signals = self.book.add(&row, now)?;
                        self.publish(&signals)?;
                    }
                }
            }
        }
        if !self.history_loaded {
            self.history_loaded = true;
            self.watch_next = resume.clone().into_iter().collect();
            let found = self.watch.close_due(now)?;
            self.publish_anomalies(&found)?;
        }
        // 3. the stream from where those files end (the beginning where there is no file)
        let mut tpl = TopicPartitionList::new();
        for p in
            0..meterline_runtime::follow::partition_count(&self.consumer, topics::USAGE_PRICED)?
        {
            let at = resume
                .get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(topics::USAGE_PRICED, p, at)
                .map_err(Error::kafka)?;
        }
        tpl.add_partition_offset(topics::BUDGETS, 0, Offset::Offset(self.budgets_next))
            .map_err(Error::kafka)?;
        self.consumer.assign(&tpl).map_err(Error::kafka)?;
        metrics::histogram!(m::AGGREGATE_BUDGET_REBUILD_SECONDS).record(t0.elapsed().as_secs_f64());
        info!(
            rows,
            secs = t0.elapsed().as_secs_f64(),
            "budget spend rebuilt from the ledger"
        );
        Ok(())
    }

    /// Publishes crossings in one transaction: a crossing is only done once that commits (a
    /// crash before re-derives it on restart; a fenced instance's never commits).
    fn publish(&self, signals: &[BudgetSignal]) -> Result<(), Error> {
        let keys: Vec<String> = signals.iter().map(signal_key).collect();
        let records = signals
            .iter()
            .zip(&keys)
            .map(|(s, key)| {
                Ok(Out {
                    topic: topics::BUDGET_SIGNALS,
                    key,
                    payload: s.to_avro()?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.producer.publish(&records)?;
        for s in signals {
            metrics::counter!(m::AGGREGATE_BUDGET_SIGNALS, m::LABEL_STATE => format!("{:?}", s.state).to_lowercase())
                .increment(1);
            info!(budget = %s.budget_id, threshold = ?s.threshold_percent, state = ?s.state, spend = %s.spend, "budget signal");
        }
        Ok(())
    }

    fn publish_anomalies(&self, found: &[meterline_schemas::Anomaly]) -> Result<(), Error> {
        let records = found
            .iter()
            .map(|a| {
                Ok(Out {
                    topic: topics::ANOMALIES,
                    key: &a.anomaly_id,
                    payload: a.to_avro()?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.producer.publish(&records)?;
        for a in found {
            metrics::counter!(m::AGGREGATE_ANOMALIES, m::LABEL_KIND => a.kind.clone()).increment(1);
            info!(id = %a.anomaly_id, observed = %a.observed, expected = %a.expected, score = a.score, "anomaly");
        }
        Ok(())
    }

    fn on_budget_change(&mut self, bytes: &[u8], offset: i64) -> Result<(), Error> {
        self.budgets_next = offset + 1;
        let change = match BudgetChange::from_avro(bytes) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::AGGREGATE_POISON).increment(1);
                warn!(offset, error = %e, "skipping unreadable budget change");
                return Ok(());
            }
        };
        let id = change.budget_id.clone();
        if !self.book.apply(change) {
            return Ok(());
        }
        // New terms: spend of a new budget's open period comes from the ledger, and the state
        // under the new terms is published once.
        self.rebuild()?;
        if let Some(s) = self.book.reevaluate(&id, Utc::now())? {
            self.publish(&[s])?;
        }
        Ok(())
    }

    fn on_priced(&mut self, bytes: &[u8], partition: i32, offset: i64) -> Result<(), Error> {
        let row = match PricedUsage::from_avro(bytes) {
            Ok(r) => r,
            Err(_) => return Ok(()), // counted and logged by the Parquet writer
        };
        let now = Utc::now();
        let spend = SpendRow::of_priced(&row);
        let next = self.watch_next.entry(partition).or_insert(0);
        if offset >= *next {
            *next = offset + 1;
            self.watch.add(&spend);
        }
        let signals = self.book.add(&spend, now)?;
        self.publish(&signals)?;
        // Recorded once the row's crossings are on the topic: the lag is to a state the edge
        // can see, and a count that moved means the row has been fully handled.
        let lag = (now - row.event.received_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e6;
        metrics::histogram!(m::AGGREGATE_BUDGET_LAG_SECONDS).record(lag.max(0.0));
        Ok(())
    }

    /// The loop: priced rows and budget changes until `stop`. Kafka and file errors are
    /// retried after a pause with a fresh rebuild; a corrupt ledger file, an amount or record
    /// the schemas refuse, or a publication that failed (fenced or not) stops it.
    pub fn run(mut self) -> Result<(), Error> {
        let mut pruned = Instant::now();
        let mut healthy = false;
        while !self.stop.is_cancelled() {
            if !healthy {
                match self.rebuild() {
                    Ok(()) => healthy = true,
                    // the same files and records fail the same way again; a failed
                    // publication left the book ahead of the topic
                    Err(e) if e.ends_tracking() => return Err(e),
                    Err(e) => {
                        warn!(error = %e, "budget rebuild failed; retrying in 5 s");
                        self.pause(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let result = match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    let (topic, p, offset) =
                        (msg.topic().to_string(), msg.partition(), msg.offset());
                    let bytes = msg.payload().unwrap_or_default().to_vec();
                    drop(msg);
                    if topic == topics::BUDGETS {
                        self.on_budget_change(&bytes, offset)
                    } else {
                        self.on_priced(&bytes, p, offset)
                    }
                }
                Some(Err(e)) => Err(Error::kafka(e)),
                None => Ok(()),
            }
            .and_then(|()| {
                let found = self.watch.close_due(Utc::now())?;
                self.publish_anomalies(&found)
            });
            match result {
                Ok(()) => {}
                Err(e) if e.ends_tracking() || matches!(e, Error::Fatal(_)) => return Err(e),
                // Retryable (broker away, a file unreadable for a moment): start over from
                // the ledger, which is always correct.
                Err(e) => {
                    warn!(error = %e, "budget tracking interrupted; rebuilding in 5 s");
                    healthy = false;
                    self.pause(Duration::from_secs(5));
                }
            }
            if pruned.elapsed() > Duration::from_secs(60) {
                self.book.prune(Utc::now());
                pruned = Instant::now();
            }
        }
        Ok(())
    }

    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
