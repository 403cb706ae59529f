//! The `budgets` table: every live budget (from `meterline.budgets`) with its latest signal
//! (from `meterline.budget.signals`). Both topics are compacted and small; a background task
//! re-reads them every `budget_refresh_ms` into memory, and each query gets a copy as a table.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use meterline_reference::BudgetView;
use meterline_runtime::follow;
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::arrow_schema::money_type;
use meterline_schemas::{topics, AvroRecord, BudgetChange, BudgetSignal};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What the last refresh read.
#[derive(Debug, Default, Clone)]
pub struct BudgetSnapshot {
    /// Budgets and the signal in force for each: the same view the edge enforces from.
    pub view: BudgetView,
    /// When the topics were last read completely (`None`: never).
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed, if it did.
    pub last_error: Option<String>,
}

impl BudgetSnapshot {
    /// `budgets`: the latest version of each (as `budget_defs::load` reads them); signals as
    /// read from their topic.
    pub fn new(budgets: BTreeMap<String, BudgetChange>, signal_records: &[Vec<u8>]) -> Self {
        let mut view = BudgetView::default();
        for b in budgets.into_values() {
            view.apply_budget(b);
        }
        for r in signal_records {
            if let Ok(s) = BudgetSignal::from_avro(r) {
                view.apply_signal(s);
            }
        }
        BudgetSnapshot {
            view,
            refreshed_at: Some(Utc::now()),
            last_error: None,
        }
    }
}

/// The table's schema. `team` is the scope value of team-scoped budgets (what a team lead's
/// filter applies to), NULL otherwise.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("budget_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::Int32, false),
        Field::new("scope_kind", DataType::Utf8, false),
        Field::new("scope_value", DataType::Utf8, false),
        Field::new("team", DataType::Utf8, true),
        Field::new("period", DataType::Utf8, false),
        Field::new("timezone", DataType::Utf8, false),
        Field::new("limit_amount", money_type(), false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("thresholds", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("signal_spend", money_type(), true),
        Field::new("signal_threshold_percent", DataType::Int32, true),
        Field::new("signal_action", DataType::Utf8, true),
        Field::new("signal_period_start", ts(), true),
        Field::new("signal_period_end", ts(), true),
        Field::new("signal_at", ts(), true),
    ]))
}

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The snapshot as one batch. A budget without a signal in force (none yet, one of an earlier
/// period, or one decided on terms since changed) is `ok` for now — as the edge sees it.
pub fn to_batch(s: &BudgetSnapshot, now: DateTime<Utc>) -> Result<RecordBatch, Error> {
    let bs: Vec<&BudgetChange> = s.view.budgets().collect();
    let sig: Vec<Option<&BudgetSignal>> = bs
        .iter()
        .map(|b| s.view.signal_in_force(&b.budget_id, now))
        .collect();
    let text = |f: &dyn Fn(&BudgetChange) -> String| -> ArrayRef {
        Arc::new(StringArray::from(
            bs.iter().map(|b| f(b)).collect::<Vec<_>>(),
        ))
    };
    let ts = |f: &dyn Fn(&BudgetSignal) -> DateTime<Utc>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(
                sig.iter()
                    .map(|x| x.map(|x| f(x).timestamp_micros()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|b| b.budget_id.clone()),
        text(&|b| b.name.clone()),
        Arc::new(Int32Array::from(
            bs.iter().map(|b| b.version as i32).collect::<Vec<_>>(),
        )),
        text(&|b| label(&b.scope.kind)),
        text(&|b| b.scope.value.clone()),
        Arc::new(StringArray::from(
            bs.iter()
                .map(|b| {
                    (b.scope.kind == meterline_schemas::ScopeKind::Team)
                        .then(|| b.scope.value.clone())
                })
                .collect::<Vec<_>>(),
        )),
        text(&|b| label(&b.period)),
        text(&|b| b.timezone.clone()),
        Arc::new(
            Decimal128Array::from(bs.iter().map(|b| b.limit.to_unscaled()).collect::<Vec<_>>())
                .with_data_type(money_type()),
        ),
        text(&|b| b.currency.clone()),
        text(&|b| serde_json::to_string(&b.thresholds).unwrap_or_default()),
        Arc::new(StringArray::from(
            sig.iter()
                .map(|x| x.map_or("ok".to_string(), |x| label(&x.state)))
                .collect::<Vec<_>>(),
        )),
        Arc::new(
            Decimal128Array::from(
                sig.iter()
                    .map(|x| x.map(|x| x.spend.to_unscaled()))
                    .collect::<Vec<_>>(),
            )
            .with_data_type(money_type()),
        ),
        Arc::new(Int32Array::from(
            sig.iter()
                .map(|x| x.and_then(|x| x.threshold_percent))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            sig.iter()
                .map(|x| x.map(|x| label(&x.action)))
                .collect::<Vec<_>>(),
        )),
        ts(&|x| x.period_start),
        ts(&|x| x.period_end),
        ts(&|x| x.at),
    ];
    RecordBatch::try_new(schema(), columns).map_err(Error::query)
}

/// The shared snapshot and the task that refreshes it.
#[derive(Default)]
pub struct BudgetCache {
    snapshot: RwLock<BudgetSnapshot>,
}

impl BudgetCache {
    pub fn get(&self) -> BudgetSnapshot {
        self.snapshot.read().expect("budget cache").clone()
    }

    /// Replaces the snapshot (what `refresh` does after reading the topics; tests without a
    /// broker use it directly).
    pub fn set(&self, snapshot: BudgetSnapshot) {
        *self.snapshot.write().expect("budget cache") = snapshot;
    }

    /// Reads both topics to their end once (blocking).
    pub fn refresh(&self, kafka: &KafkaConfig) -> Result<(), Error> {
        let budgets = meterline_reference::budgets::load(kafka)?;
        let c = follow::reader(kafka, "api-budgets")?;
        let (signals, _) = follow::read_to_end(
            &c,
            topics::BUDGET_SIGNALS,
            std::time::Duration::from_secs(60),
        )?;
        *self.snapshot.write().expect("budget cache") = BudgetSnapshot::new(budgets, &signals);
        Ok(())
    }

    /// Refreshes every `every` until `stop`; a failure is kept (and logged) with the last
    /// good snapshot, which the budget report shows as stale.
    pub async fn run(
        self: Arc<Self>,
        kafka: KafkaConfig,
        every: Duration,
        stop: CancellationToken,
    ) {
        loop {
            let me = self.clone();
            let k = kafka.clone();
            let r = tokio::task::spawn_blocking(move || me.refresh(&k)).await;
            if let Ok(Err(e)) | Err(e) = r.map_err(Error::Task) {
                tracing::warn!(error = %e, "budgets not refreshed");
                self.snapshot.write().expect("budget cache").last_error = Some(e.to_string());
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
