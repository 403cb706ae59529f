//! Partial aggregation by runs of equal keys.
//!
//! The ledger's files are sorted by the tenant path, then model (`ledger/src/compact.rs`), so
//! consecutive rows mostly share a chargeback's GROUP BY keys: a 645k-row day holds a few
//! hundred runs. DataFusion's partial aggregation hashes every row's keys, compares them with
//! the group found and adds each value to its group's sum (45 % of finance's chargeback CPU,
//! `EXPLAIN ANALYZE` over 20M rows). [`RunAggregate`] replaces a partial `AggregateExec` of
//! sums and counts by a [`RunAggregateExec`]: it finds where any key changes from one row to
//! the next (arrow's `partition`), and emits one row per run: the run's keys and its partial
//! states (a count, a sum), in the very schema the partial aggregation had. The final
//! aggregation above merges runs of one group as it merged partial groups, so the answer is
//! the same whatever the order of the rows (unsorted input only makes more runs).
//!
//! Exactly the same answer, by construction:
//! 1. only `count` and `sum` of integers and decimals (wrapping adds, as DataFusion's own
//!    sums: the same total in any order), no DISTINCT, FILTER, ORDER BY, grouping sets or
//!    limits; anything else keeps DataFusion's operator;
//! 2. keys whose equality is their bytes' (integers, text, decimals, dates, times, booleans),
//!    so a run never joins rows GROUP BY would keep apart (floats are left alone: -0.0 and
//!    0.0, NaNs); NULL keys are equal to each other, as in GROUP BY;
//! 3. a sum of a run with no non-NULL value is NULL, as a group's.
//!
//! It runs above a lead's `ScopeExec`, on the rows the scope let through only, with the
//! caller's own expressions (the ones the partial aggregation would have evaluated).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, PrimitiveArray, RecordBatch,
    UInt32Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{partition, take};
use datafusion::arrow::datatypes::{
    ArrowNativeTypeOp, DataType, Decimal128Type, Int64Type, SchemaRef, UInt64Type,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;

/// The rule: every partial aggregation it can take over becomes a [`RunAggregateExec`].
#[derive(Debug, Default)]
pub struct RunAggregate {
    pub fallback: Fallback,
}

/// When a partition's rows are not in runs (keys that change from row to row: `GROUP BY
/// status` over the ledger), one row per run would hand nearly every row to the final
/// aggregation; past this share of runs the rest of the partition goes to DataFusion's
/// partial aggregation instead (the runs already emitted stay: the final aggregation merges
/// both kinds of partial state alike).
#[derive(Debug, Clone, Copy)]
pub struct Fallback {
    /// Rows a partition reads before its share of runs is judged.
    pub after_rows: usize,
    /// It falls back when its rows so far average fewer than this many per run.
    pub rows_per_run: usize,
}

impl Default for Fallback {
    /// After a batch (8,192 rows), at fewer than 8 rows per run. The hash partial
    /// aggregation took ~30 ns a row in finance's chargeback (619 ms for 20M rows); each run
    /// costs a row in the repartition and final aggregation above (estimated ~100 ns), a row
    /// within a run a few ns. Measured: `GROUP BY kafka_partition` (1–2 rows a run) 293 ms
    /// without the rule, 587 ms by runs alone, 300 ms with this fallback.
    fn default() -> Self {
        Fallback {
            after_rows: 8192,
            rows_per_run: 8,
        }
    }
}

impl PhysicalOptimizerRule for RunAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            let run = p
                .downcast_ref::<AggregateExec>()
                .map(|agg| RunAggregateExec::of_partial(agg, &p, self.fallback))
                .transpose()?
                .flatten();
            Ok(match run {
                Some(run) => Transformed::yes(Arc::new(run) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(p),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "run_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One partial state a run gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Rows whose arguments are all non-NULL (`count(*)` is `count(1)`).
    Count,
    /// The sum of the non-NULL values (NULL if none), in the state's type.
    Sum,
}

/// A partial aggregation of sums and counts, by runs of equal keys (see the module doc).
#[derive(Debug)]
pub struct RunAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    /// The partial aggregation replaced: what a partition falls back to.
    original: Arc<dyn ExecutionPlan>,
    fallback: Fallback,
    /// The GROUP BY expressions, with their names (for plans).
    keys: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// Each aggregate's state, arguments and name.
    states: Vec<(State, Vec<Arc<dyn PhysicalExpr>>, String)>,
    /// The partial aggregation's own output schema.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// Key types whose GROUP BY equality is their values' equality (no floats).
fn is_exact_key(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Boolean
                | DataType::Decimal128(_, _)
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
        )
}

impl RunAggregateExec {
    /// `agg` by runs, when it is a partial aggregation this can compute exactly (`None`
    /// otherwise).
    fn of_partial(
        agg: &AggregateExec,
        original: &Arc<dyn ExecutionPlan>,
        fallback: Fallback,
    ) -> Result<Option<RunAggregateExec>> {
        let group = agg.group_expr();
        if *agg.mode() != AggregateMode::Partial
            || group.has_grouping_set()
            || agg.filter_expr().iter().any(Option::is_some)
            || agg.limit_options().is_some()
            || !agg.dynamic_expressions_produced().is_empty()
            || *agg.input_order_mode() != InputOrderMode::Linear
        {
            return Ok(None);
        }
        let input = agg.input_schema();
        let schema = agg.schema();
        for (k, _) in group.expr() {
            if !is_exact_key(&k.data_type(&input)?) {
                return Ok(None);
            }
        }
        let mut states = vec![];
        let mut at = group.expr().len();
        for a in agg.aggr_expr() {
            let fields = a.state_fields()?;
            let args = a.expressions();
            if a.is_distinct() || !a.order_bys().is_empty() || fields.len() != 1 {
                return Ok(None);
            }
            let state = match a.fun().name() {
                "count" if *fields[0].data_type() == DataType::Int64 => State::Count,
                "sum" if args.len() == 1 => {
                    let arg = args[0].data_type(&input)?;
                    let out = fields[0].data_type();
                    match (&arg, out) {
                        (DataType::Int64, DataType::Int64)
                        | (DataType::UInt64, DataType::UInt64) => State::Sum,
                        (DataType::Decimal128(_, s), DataType::Decimal128(_, t)) if s == t => {
                            State::Sum
                        }
                        _ => return Ok(None),
                    }
                }
                _ => return Ok(None),
            };
            // the state is where the partial aggregation put it, of the type it had
            if schema.field(at).data_type() != fields[0].data_type() {
                return Ok(None);
            }
            at += 1;
            states.push((state, args, a.name().to_string()));
        }
        if at != schema.fields().len() {
            return Ok(None);
        }
        let properties = PlanProperties::new(
            agg.properties().equivalence_properties().clone(),
            agg.properties().output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Some(RunAggregateExec {
            input: agg.input().clone(),
            original: original.clone(),
            fallback,
            keys: group.expr().to_vec(),
            states,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// The same aggregation over `input`, counting into `metrics`.
    fn over(
        &self,
        input: Arc<dyn ExecutionPlan>,
        metrics: ExecutionPlanMetricsSet,
    ) -> RunAggregateExec {
        RunAggregateExec {
            input,
            original: self.original.clone(),
            fallback: self.fallback,
            keys: self.keys.clone(),
            states: self.states.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            metrics,
        }
    }

    /// One row per run of equal keys in `batch`: the keys and the run's states.
    fn runs_of(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let keys = self
            .keys
            .iter()
            .map(|(k, _)| k.evaluate(batch)?.into_array(n))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let runs: Vec<Range<usize>> = match n {
            0 => vec![],
            _ if keys.is_empty() => vec![0..n],
            _ => partition(&keys)?.ranges(),
        };
        let starts = UInt32Array::from_iter_values(runs.iter().map(|r| r.start as u32));
        let mut columns = keys
            .iter()
            .map(|k| Ok(take(k.as_ref(), &starts, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        for ((state, args, _), field) in self
            .states
            .iter()
            .zip(self.schema.fields().iter().skip(self.keys.len()))
        {
            let args = args
                .iter()
                .map(|a| a.evaluate(batch)?.into_array(n))
                .collect::<Result<Vec<ArrayRef>>>()?;
            columns.push(match state {
                State::Count => Arc::new(count_runs(&args, &runs)),
                State::Sum => match field.data_type() {
                    DataType::Int64 => {
                        Arc::new(sum_runs(args[0].as_primitive::<Int64Type>(), &runs))
                    }
                    DataType::UInt64 => {
                        Arc::new(sum_runs(args[0].as_primitive::<UInt64Type>(), &runs))
                    }
                    t @ DataType::Decimal128(_, _) => Arc::new(
                        sum_runs(args[0].as_primitive::<Decimal128Type>(), &runs)
                            .with_data_type(t.clone()),
                    ),
                    t => {
                        return Err(DataFusionError::Internal(format!(
                            "RunAggregateExec: no sum of {t}"
                        )))
                    }
                },
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Where a partition of a [`RunAggregateExec`] is.
enum Phase {
    /// Emitting runs; rows and runs so far.
    Runs {
        input: SendableRecordBatchStream,
        rows: usize,
        runs: usize,
    },
    /// Fallen back: the partial aggregation over the rest of the input.
    Hashing(SendableRecordBatchStream),
    Done,
}

impl RunAggregateExec {
    /// The replaced partial aggregation over the rest of `input`.
    fn hash_rest(
        &self,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rest = Rest {
            schema: input.schema(),
            input: std::sync::Mutex::new(Some(input)),
        };
        let rest: Arc<dyn ExecutionPlan> = Arc::new(StreamingTableExec::try_new(
            rest.schema.clone(),
            vec![Arc::new(rest)],
            None,
            vec![],
            false,
            None,
        )?);
        let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
        self.original
            .clone()
            .replace_children(vec![rest], options)?
            .execute(0, context)
    }
}

/// The rest of one partition's input, as a stream a plan of one partition reads once.
struct Rest {
    schema: SchemaRef,
    input: std::sync::Mutex<Option<SendableRecordBatchStream>>,
}

impl fmt::Debug for Rest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Rest")
    }
}

impl PartitionStream for Rest {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.input.lock().ok().and_then(|mut i| i.take());
        taken.unwrap_or_else(|| {
            let again = DataFusionError::Internal("RunAggregateExec: the rest is read once".into());
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async { Err(again) }),
            ))
        })
    }
}

/// Per run, the rows whose arguments are all non-NULL.
fn count_runs(args: &[ArrayRef], runs: &[Range<usize>]) -> Int64Array {
    let valid = args.iter().fold(None, |acc: Option<NullBuffer>, a| {
        NullBuffer::union(acc.as_ref(), a.logical_nulls().as_ref())
    });
    Int64Array::from_iter_values(runs.iter().map(|r| {
        let len = r.end - r.start;
        let nulls = valid
            .as_ref()
            .map_or(0, |v| v.slice(r.start, len).null_count());
        (len - nulls) as i64
    }))
}

/// Per run, the wrapping sum of its non-NULL values; NULL where it has none.
fn sum_runs<T: ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    runs: &[Range<usize>],
) -> PrimitiveArray<T> {
    let values = a.values();
    let nulls = a.logical_nulls();
    runs.iter()
        .map(|r| match &nulls {
            None => Some(
                values[r.clone()]
                    .iter()
                    .fold(T::Native::ZERO, |s, v| s.add_wrapping(*v)),
            ),
            Some(nulls) => {
                let mut valid = r.clone().filter(|i| nulls.is_valid(*i)).peekable();
                valid
                    .peek()
                    .is_some()
                    .then(|| valid.fold(T::Native::ZERO, |s, i| s.add_wrapping(values[i])))
            }
        })
        .collect()
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|(_, n)| n.as_str()).collect();
        let states: Vec<&str> = self.states.iter().map(|(_, _, n)| n.as_str()).collect();
        write!(
            f,
            "RunAggregateExec: mode=Partial, gby=[{}], aggr=[{}]",
            keys.join(", "),
            states.join(", ")
        )
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self
            .keys
            .iter()
            .map(|(k, _)| k)
            .chain(self.states.iter().flat_map(|(_, a, _)| a))
        {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| {
            DataFusionError::Internal("RunAggregateExec: one child expected".into())
        })?;
        Ok(Arc::new(self.over(input, ExecutionPlanMetricsSet::new())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let me = Arc::new(self.over(self.input.clone(), self.metrics.clone()));
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let input = self.input.execute(partition, context.clone())?;
        let start = Phase::Runs {
            input,
            rows: 0,
            runs: 0,
        };
        let out = futures::stream::unfold(start, move |phase| {
            let (me, baseline, context) = (me.clone(), baseline.clone(), context.clone());
            async move {
                match phase {
                    Phase::Runs {
                        mut input,
                        rows,
                        runs,
                    } => {
                        let batch = match input.next().await? {
                            Ok(b) => b,
                            Err(e) => return Some((Err(e), Phase::Done)),
                        };
                        let timer = baseline.elapsed_compute().timer();
                        let out = match me.runs_of(&batch) {
                            Ok(out) => out,
                            Err(e) => return Some((Err(e), Phase::Done)),
                        };
                        timer.done();
                        baseline.record_output(out.num_rows());
                        let (rows, runs) = (rows + batch.num_rows(), runs + out.num_rows());
                        let f = me.fallback;
                        if rows >= f.after_rows && runs.saturating_mul(f.rows_per_run) > rows {
                            // 1. this batch's runs are out; 2. the rest of the partition
                            //    goes through the partial aggregation this replaced
                            let hashed = me.hash_rest(input, context);
                            return Some(match hashed {
                                Ok(s) => (Ok(out), Phase::Hashing(s)),
                                Err(e) => (Err(e), Phase::Done),
                            });
                        }
                        Some((Ok(out), Phase::Runs { input, rows, runs }))
                    }
                    Phase::Hashing(mut s) => s.next().await.map(|b| (b, Phase::Hashing(s))),
                    Phase::Done => None,
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Decimal128Array, Float64Array, Int32Array, Int64Array, StringViewArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;

    /// Queries the rule takes over (`true`) or leaves alone.
    const QUERIES: [(&str, bool); 9] = [
        ("SELECT team, model, count(*) AS n, sum(tokens) AS t, sum(cost) AS c FROM t GROUP BY team, model", true),
        ("SELECT team, count(tokens) AS n, count(tokens, cost) AS m, sum(tokens + other) AS s FROM t GROUP BY team", true),
        ("SELECT count(*) AS n, sum(cost) AS c, sum(other) AS o FROM t", true),
        ("SELECT CAST(model AS VARCHAR) AS m, day, sum(cost) AS c, sum(CAST(day AS BIGINT)) AS d FROM t GROUP BY 1, 2", true),
        ("SELECT team, sum(cost) AS c FROM t WHERE other > 0 GROUP BY team HAVING count(*) > 1", true),
        ("SELECT score, sum(tokens) AS t FROM t GROUP BY score", false),
        ("SELECT team, sum(DISTINCT tokens) AS t, count(*) AS n FROM t GROUP BY team", false),
        ("SELECT team, sum(tokens) FILTER (WHERE other > 0) AS t FROM t GROUP BY team", false),
        ("SELECT team, min(tokens) AS lo, sum(tokens) AS t FROM t GROUP BY team", false),
    ];

    type Row = (
        Option<&'static str>,
        &'static str,
        Option<i64>,
        i64,
        Option<i128>,
        f64,
        i32,
    );

    fn row() -> impl Strategy<Value = Row> {
        (
            prop::sample::select(vec![
                None,
                Some("a"),
                Some("b"),
                Some("a-team-with-a-long-name"),
            ]),
            prop::sample::select(vec!["m1", "m2"]),
            prop_oneof![
                Just(None),
                (-1000i64..1000).prop_map(Some),
                Just(Some(i64::MAX - 5_000)),
            ],
            -100i64..100,
            prop_oneof![Just(None), (-10i128.pow(20)..10i128.pow(20)).prop_map(Some)],
            prop::sample::select(vec![0.0, -0.0, 1.5, f64::NAN]),
            0i32..3,
        )
    }

    fn batch(rows: &[Row]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("team", DataType::Utf8View, true),
            Field::new("model", DataType::Utf8View, false),
            Field::new("tokens", DataType::Int64, true),
            Field::new("other", DataType::Int64, false),
            Field::new("cost", DataType::Decimal128(38, 18), true),
            Field::new("score", DataType::Float64, false),
            Field::new("day", DataType::Int32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(rows.iter().map(|r| r.0).collect::<StringViewArray>()),
                Arc::new(rows.iter().map(|r| Some(r.1)).collect::<StringViewArray>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
                Arc::new(rows.iter().map(|r| Some(r.3)).collect::<Int64Array>()),
                Arc::new(
                    rows.iter()
                        .map(|r| r.4)
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(38, 18)
                        .unwrap(),
                ),
                Arc::new(rows.iter().map(|r| Some(r.5)).collect::<Float64Array>()),
                Arc::new(rows.iter().map(|r| Some(r.6)).collect::<Int32Array>()),
            ],
        )
        .unwrap()
    }

    /// `rows` in two partitions of batches of `size` rows, with the rule (falling back as
    /// `fallback` says) or without it.
    fn session(rows: &[Row], size: usize, runs: Option<Fallback>) -> SessionContext {
        let parts: Vec<Vec<RecordBatch>> = [0, 1]
            .iter()
            .map(|p| {
                let half: Vec<Row> = rows.iter().skip(*p).step_by(2).copied().collect();
                half.chunks(size).map(batch).collect()
            })
            .collect();
        let schema = batch(&[]).schema();
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        if let Some(fallback) = runs {
            state = state.with_physical_optimizer_rule(Arc::new(RunAggregate { fallback }));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, parts).unwrap()))
            .unwrap();
        ctx
    }

    /// The answer's lines in a fixed order, or its error.
    async fn answer(ctx: &SessionContext, sql: &str) -> String {
        match ctx.sql(sql).await.unwrap().collect().await {
            Ok(b) => {
                let text = pretty_format_batches(&b).unwrap().to_string();
                let mut lines: Vec<&str> = text.lines().collect();
                lines.sort();
                lines.join("\n")
            }
            Err(e) => format!("error: {e}"),
        }
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> String {
        let b = ctx
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&b).unwrap().to_string()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every query answers exactly as without the rule, over rows in any order (sorted
        /// into runs or not), NULL keys and values, sums that wrap, batch boundaries
        /// anywhere, and a fallback to the hash aggregation at any point or never; the rule
        /// takes over exactly the partial aggregations it can compute.
        #[test]
        fn runs_answer_exactly_as_the_hash_aggregation(
            mut rows in prop::collection::vec(row(), 0..200),
            size in 1usize..40,
            sorted in any::<bool>(),
            after_rows in prop_oneof![Just(0usize), 1usize..100, Just(usize::MAX)],
            rows_per_run in 1usize..4,
        ) {
            if sorted {
                rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let fallback = Fallback { after_rows, rows_per_run };
                let (with, without) = (session(&rows, size, Some(fallback)), session(&rows, size, None));
                for (sql, taken) in QUERIES {
                    prop_assert_eq!(answer(&with, sql).await, answer(&without, sql).await, "{}", sql);
                    prop_assert_eq!(plan(&with, sql).await.contains("RunAggregateExec"), taken, "{}", sql);
                    prop_assert!(!plan(&without, sql).await.contains("RunAggregateExec"));
                }
                Ok(())
            })?;
        }
    }

    /// Runs are found across every key, NULLs equal: 7 rows, 4 runs.
    #[test]
    fn one_row_per_run_of_equal_keys() {
        let keys: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("a"),
            Some("a"),
            None,
            None,
            Some("a"),
            Some("b"),
            Some("b"),
        ]));
        let runs = partition(&[keys]).unwrap().ranges();
        assert_eq!(runs, vec![0..2, 2..4, 4..5, 5..7]);
        let v = Int64Array::from(vec![
            Some(1),
            None,
            None,
            None,
            Some(i64::MAX),
            Some(2),
            Some(3),
        ]);
        let sums = sum_runs(&v, &runs);
        assert_eq!(
            sums,
            Int64Array::from(vec![Some(1), None, Some(i64::MAX), Some(5)])
        );
        let counts = count_runs(&[Arc::new(v) as ArrayRef], &runs);
        assert_eq!(counts, Int64Array::from(vec![1, 0, 1, 2]));
    }
}
