//! Row filters in the plan, as a barrier no optimizer rule can cross.
//!
//! A `team_lead` never gets the ledger table itself, only a private [`FilteredTable`] wrapping
//! it. Its scan is a [`ScopeExec`]: a leaf of the physical plan that reads the inner scan
//! itself, evaluates *our* predicate on every row and emits only the rows passing it. Because
//! the inner scan is not a child in the plan tree, no optimizer rule sees it: the caller's
//! filters, projections, limits and join filters can only sit above the scope, so the
//! caller's expressions run on its own rows only (an error or a division by zero can quote or
//! reveal nothing else). Of a private table:
//! - the caller's filters are not pushed into the scan, except comparisons of the `date`
//!   partition with text literals (they cannot fail and only skip whole days, so the ledger
//!   is not scanned in full for a week's showback);
//! - statistics are unknown (row counts, min/max of other teams' values never reach a plan);
//! - plans show `ScopeExec` and what it keeps, never the files or paths below it;
//! - errors of the scan below are replaced by a generic message (the log has the original);
//! - text the table holds as dictionaries reads as string views, of the values its rows
//!   reference only;
//! - provenance columns (`kafka_partition`, `kafka_offset`) read as NULL: offsets are
//!   consecutive over every team's rows, so the gaps between a lead's own offsets would
//!   count the other teams' events.

use std::fmt;
use std::sync::Arc;

use arrow_select::dictionary::garbage_collect_any_dictionary;
use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::array::{Array, StringViewBuilder};
use datafusion::arrow::compute::{filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    cast, col, lit, BinaryExpr, Expr, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PhysicalExpr, PlanProperties,
};
use futures::StreamExt;

/// Columns a private table answers as NULL: where each row came from in Kafka.
pub const PROVENANCE: [&str; 2] = ["kafka_partition", "kafka_offset"];

/// The Hive partition column whose literal comparisons may prune a private scan.
const DATE: &str = "date";

/// `inner` restricted to the rows passing `predicate`.
#[derive(Debug)]
pub struct FilteredTable {
    inner: Arc<dyn TableProvider>,
    predicate: Expr,
    /// What the filter keeps, as plans show it.
    label: String,
    /// Answered as NULL.
    hidden: Vec<String>,
    schema: SchemaRef,
}

/// Rows whose `column` is one of `allowed` (NULL never matches; no teams: no rows), for a
/// column of text (`Utf8`); see [`team_predicate_for`] for the others.
pub fn team_predicate(column: &str, allowed: &[String]) -> Expr {
    team_predicate_for(column, &DataType::Utf8, allowed)
}

/// Rows whose `column`, of type `data_type`, is one of `allowed` (NULL never matches; no
/// teams: no rows). The names are compared in the column's own type — a dictionary column
/// (the ledger's `team`) against dictionary literals, so the kernel compares the few
/// dictionary values and maps the keys, instead of decoding every row to text first (what
/// `CAST(team AS Utf8) IN (…)` did); the parquet reader can also apply it while decoding
/// and prune pages with it. Any other type is compared as text, as before.
pub fn team_predicate_for(column: &str, data_type: &DataType, allowed: &[String]) -> Expr {
    if allowed.is_empty() {
        return lit(false);
    }
    let literal = |t: &String| -> Option<ScalarValue> {
        Some(match data_type {
            DataType::Utf8 => ScalarValue::Utf8(Some(t.clone())),
            DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(t.clone())),
            DataType::Utf8View => ScalarValue::Utf8View(Some(t.clone())),
            DataType::Dictionary(key, value)
                if key.is_dictionary_key_type() && **value == DataType::Utf8 =>
            {
                ScalarValue::Dictionary(key.clone(), Box::new(ScalarValue::Utf8(Some(t.clone()))))
            }
            _ => return None,
        })
    };
    match allowed.iter().map(literal).collect::<Option<Vec<_>>>() {
        Some(values) => col(column).in_list(values.into_iter().map(lit).collect(), false),
        None => cast(col(column), DataType::Utf8)
            .in_list(allowed.iter().map(|t| lit(t.clone())).collect(), false),
    }
}

impl FilteredTable {
    /// `inner` as a principal restricted to `label` may see it: a barrier in the plan, with
    /// `hidden` columns answered as NULL.
    pub fn private(
        inner: Arc<dyn TableProvider>,
        predicate: Expr,
        label: String,
        hidden: &[&str],
    ) -> Self {
        let full = inner.schema();
        let hidden: Vec<String> = hidden
            .iter()
            .filter(|h| full.index_of(h).is_ok())
            .map(|h| h.to_string())
            .collect();
        let fields: Vec<Field> = full
            .fields()
            .iter()
            .map(|f| {
                let mut f = f.as_ref().clone();
                if is_text_dictionary(f.data_type()) {
                    f = f.with_data_type(DataType::Utf8View);
                }
                if hidden.contains(f.name()) {
                    f.with_nullable(true)
                } else {
                    f
                }
            })
            .collect();
        FilteredTable {
            inner,
            predicate,
            label,
            hidden,
            schema: Arc::new(Schema::new_with_metadata(fields, full.metadata().clone())),
        }
    }

    /// `inner` as a lead of `teams` may see it (rows whose `column` is one of them).
    pub fn team_scope(
        inner: Arc<dyn TableProvider>,
        column: &str,
        teams: &[String],
        hidden: &[&str],
    ) -> Self {
        let label = format!("{column} in {teams:?}");
        let schema = inner.schema();
        let predicate = match schema.field_with_name(column) {
            Ok(f) => team_predicate_for(column, f.data_type(), teams),
            Err(_) => team_predicate(column, teams),
        };
        FilteredTable::private(inner, predicate, label, hidden)
    }
}

/// A dictionary of text (`Dictionary(_, Utf8)`): shown to a private table's caller as string
/// views (see [`dictionary_as_views`]).
fn is_text_dictionary(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(k, v) if k.is_dictionary_key_type() && **v == DataType::Utf8)
}

/// A text literal that is never NULL.
fn is_text(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Literal(
            ScalarValue::Utf8(Some(_))
                | ScalarValue::LargeUtf8(Some(_))
                | ScalarValue::Utf8View(Some(_)),
            _
        )
    )
}

fn is_date(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == DATE)
}

/// `date <op> 'text'`, `date IN ('text', …)`, `date BETWEEN 'a' AND 'b'` and their AND / OR:
/// evaluating these on any partition value cannot fail, and they only select whole days.
pub fn is_safe_date_filter(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => is_safe_date_filter(left) && is_safe_date_filter(right),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                (is_date(left) && is_text(right)) || (is_text(left) && is_date(right))
            }
            _ => false,
        },
        Expr::Between(b) => is_date(&b.expr) && is_text(&b.low) && is_text(&b.high),
        Expr::InList(l) => is_date(&l.expr) && l.list.iter().all(is_text),
        _ => false,
    }
}

#[async_trait]
impl TableProvider for FilteredTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The caller's filters stay above the scope; only date literals may prune days below
        // it. Those are `Exact` where the table below applies them exactly (a listing table
        // selects whole `date=` partitions by them): the filter above would compare every
        // row's date again for nothing (6 % of a lead's chargeback by `perf`).
        let safe: Vec<&Expr> = filters
            .iter()
            .copied()
            .filter(|f| is_safe_date_filter(f))
            .collect();
        let mut below = self.inner.supports_filters_pushdown(&safe)?.into_iter();
        Ok(filters
            .iter()
            .map(|f| {
                if !is_safe_date_filter(f) {
                    TableProviderFilterPushDown::Unsupported
                } else if below.next() == Some(TableProviderFilterPushDown::Exact) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        // never below our filter: a limit before it would be applied to others' rows
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let full = self.inner.schema();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..full.fields().len()).collect(),
        };
        let hidden = |i: usize| self.hidden.contains(full.field(i).name());
        // 1. read the wanted columns that are shown, and the predicate's
        let mut read: Vec<usize> = wanted.iter().copied().filter(|i| !hidden(*i)).collect();
        for c in self.predicate.column_refs() {
            let i = full.index_of(&c.name)?;
            if !read.contains(&i) {
                read.push(i);
            }
        }
        // 2. our predicate may prune files below us; of the caller's filters only those
        //    `supports_filters_pushdown` let through arrive here
        let mut below = vec![self.predicate.clone()];
        below.extend(filters.iter().cloned());
        let inner = self.inner.scan(state, Some(&read), &below, None).await?;
        let scanned = inner.schema();
        let df_schema = DFSchema::try_from(scanned.as_ref().clone())?;
        let predicate = state.create_physical_expr(self.predicate.clone(), &df_schema)?;
        // 3. our predicate, and only ours, into the scan below: a listing table prunes by
        //    partition values only, the rest is left to the physical optimizer, which never
        //    sees below a ScopeExec. Pushed here, the Parquet reader skips row groups and
        //    pages by their statistics and, with `pushdown_filters`, decodes the other
        //    columns only for rows passing it (a lead's team is a few pages of each sorted
        //    file). The ScopeExec still evaluates it on every row it emits.
        let inner = push_into_scan(inner, predicate.clone(), state.config_options())?;
        // 4. the columns asked for: from the scan, or NULL
        let mut outputs = vec![];
        let mut fields = vec![];
        for i in wanted {
            let field = self.schema.field(i).clone();
            outputs.push(if hidden(i) {
                Output::Null(field.data_type().clone())
            } else {
                let at = scanned.index_of(field.name())?;
                if is_text_dictionary(scanned.field(at).data_type()) {
                    Output::DictionaryAsViews(at)
                } else {
                    Output::Column(at)
                }
            });
            fields.push(field);
        }
        let schema = Arc::new(Schema::new(fields));
        // a private scan has as many partitions as the session's target, however many files
        // the ledger holds: the plan's shape (and what DataFusion does with it) must not tell
        // whether other teams' rows fill other files
        let partitions = state.config().target_partitions();
        Ok(Arc::new(ScopeExec::new(
            inner,
            predicate,
            outputs,
            schema,
            self.label.clone(),
            partitions,
        )))
    }
}

/// `inner` with `predicate` pushed into its data source where the source takes it (a
/// `FilterExec` is left above it where the source does not apply it row by row). The
/// subtree holds our predicate and the inner scan only, never a caller's expression.
fn push_into_scan(
    inner: Arc<dyn ExecutionPlan>,
    predicate: Arc<dyn PhysicalExpr>,
    config: &ConfigOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, inner)?);
    FilterPushdown::new().optimize(filtered, config)
}

/// Where an output column of a [`ScopeExec`] comes from.
#[derive(Debug, Clone)]
enum Output {
    Column(usize),
    /// A dictionary of text, as string views.
    DictionaryAsViews(usize),
    Null(DataType),
}

/// The scan of a [`FilteredTable`]: a leaf that runs `inner` itself and emits the rows
/// passing `predicate` (see the module doc for why `inner` is not a child).
#[derive(Debug)]
pub struct ScopeExec {
    inner: Arc<dyn ExecutionPlan>,
    predicate: Arc<dyn PhysicalExpr>,
    outputs: Vec<Output>,
    schema: SchemaRef,
    label: String,
    properties: Arc<PlanProperties>,
}

impl ScopeExec {
    fn new(
        inner: Arc<dyn ExecutionPlan>,
        predicate: Arc<dyn PhysicalExpr>,
        outputs: Vec<Output>,
        schema: SchemaRef,
        label: String,
        partitions: usize,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        ScopeExec {
            inner,
            predicate,
            outputs,
            schema,
            label,
            properties: Arc::new(properties),
        }
    }

    fn apply(&self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let keep = self
            .predicate
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        let kept = filter_record_batch(&batch, keep.as_boolean())?;
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = self
            .outputs
            .iter()
            .map(|o| match o {
                Output::Column(i) => compact(kept.column(*i)),
                Output::DictionaryAsViews(i) => dictionary_as_views(kept.column(*i)),
                Output::Null(t) => Ok(new_null_array(t, kept.num_rows())),
            })
            .collect::<Result<_>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(kept.num_rows()));
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?))
    }
}

/// `a` holding only what its rows reference. A filtered dictionary array keeps the whole
/// dictionary, and a filtered view array the whole buffers, other teams' values included: a
/// kernel working on the dictionary (a cast of `model` to INT) would read and quote them.
/// (The ledger's text dictionaries go through [`dictionary_as_views`]; these cases are for any
/// other dictionary or view column a private table's source gives.)
fn compact(a: &ArrayRef) -> Result<ArrayRef> {
    Ok(match a.data_type() {
        DataType::Dictionary(..) => garbage_collect_any_dictionary(a.as_any_dictionary())?,
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        _ => a.clone(),
    })
}

/// A dictionary of text as string views holding only the values its rows reference (see
/// [`compact`]). Why views: a caller's query groups and compares text (`CAST(team AS VARCHAR)`
/// in every chargeback), and a view of each row is what DataFusion's vectorized GROUP BY
/// works on; cast from the dictionary above the scope, each row's view is built from its
/// value's bytes again (a tenth of a lead's chargeback by `perf`). Here each *value* becomes
/// a view once, and each row copies its value's 16-byte view by its key. (Not through
/// [`garbage_collect_any_dictionary`], a cast and a take: that remaps every key and copies the
/// kept values first, and cost a lead's chargeback 5–10 % more CPU, 20M-row bench ledger.)
fn dictionary_as_views(a: &ArrayRef) -> Result<ArrayRef> {
    let d = a.as_any_dictionary();
    if d.values().is_empty() {
        // no value to point at: every key is NULL (Parquet's reader gives a column NULL in
        // every row of a batch an empty dictionary)
        return Ok(new_null_array(&DataType::Utf8View, d.len()));
    }
    // 1. which values the rows reference; the others become "" (keys keep their meaning,
    //    and no other team's value is in the views' buffers)
    let keys = d.normalized_keys();
    let mut used = vec![false; d.values().len()];
    match d.keys().logical_nulls() {
        Some(nulls) => keys
            .iter()
            .zip(nulls.iter())
            .filter(|(_, valid)| *valid)
            .for_each(|(k, _)| used[*k] = true),
        None => keys.iter().for_each(|k| used[*k] = true),
    }
    let values = d.values().as_string::<i32>();
    let mut views = StringViewBuilder::with_capacity(values.len());
    for (i, used) in used.into_iter().enumerate() {
        if !used {
            views.append_value("");
        } else if values.is_valid(i) {
            views.append_value(values.value(i));
        } else {
            views.append_null();
        }
    }
    // 2. each row's view by its key (NULL keys give NULL)
    Ok(take(&views.finish(), d.keys(), None)?)
}

impl DisplayAs for ScopeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        // the inner scan (files, paths, statistics) is deliberately not shown
        write!(f, "ScopeExec: {}", self.label)
    }
}

/// What a private scan's failure says (its cause may name files or values of other teams).
const SCAN_FAILED: &str = "reading the ledger failed (the server log has the details)";

impl ExecutionPlan for ScopeExec {
    fn name(&self) -> &str {
        "ScopeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let me = ScopeExec {
            inner: self.inner.clone(),
            predicate: self.predicate.clone(),
            outputs: self.outputs.clone(),
            schema: self.schema.clone(),
            label: self.label.clone(),
            properties: self.properties.clone(),
        };
        // output partition `p` reads the inner partitions `p`, `p + n`, `p + 2n`, … in turn
        let n = self.properties.partitioning.partition_count();
        let inner = self.inner.output_partitioning().partition_count();
        let parts = (partition..inner)
            .step_by(n.max(1))
            .map(|i| self.inner.execute(i, context.clone()))
            .collect::<Result<Vec<_>>>()?;
        let input = futures::stream::iter(parts).flatten();
        let rows = input.filter_map(move |b| {
            let out = match b {
                Ok(b) => me.apply(b).transpose(),
                Err(DataFusionError::ResourcesExhausted(m)) => {
                    Some(Err(DataFusionError::ResourcesExhausted(m)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "scoped scan failed");
                    Some(Err(DataFusionError::Execution(SCAN_FAILED.into())))
                }
            };
            futures::future::ready(out)
        });
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            RecordBatchStreamAdapter::new(self.schema.clone(), rows),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, DictionaryArray, Int32Array, StringArray};
    use datafusion::prelude::SessionContext;

    /// The predicate for `allowed` on a `team` column of type `t` (as shown), and which rows
    /// of `column` pass it.
    fn kept(t: &DataType, column: ArrayRef, allowed: &[&str]) -> (String, Vec<bool>) {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        let p = team_predicate_for("team", t, &allowed);
        let schema = Schema::new(vec![Field::new("team", t.clone(), true)]);
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![column]).unwrap();
        let df = DFSchema::try_from(schema).unwrap();
        // as a scan plans it (coerced and simplified)
        let e = SessionContext::new()
            .state()
            .create_physical_expr(p.clone(), &df)
            .unwrap();
        let out = e.evaluate(&batch).unwrap();
        let out = out.into_array(batch.num_rows()).unwrap();
        let out = out.as_boolean();
        let kept = (0..out.len())
            .map(|i| out.is_valid(i) && out.value(i))
            .collect();
        (p.to_string(), kept)
    }

    #[test]
    fn a_dictionary_team_is_compared_in_its_own_type_with_the_same_answer() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let keys = Int32Array::from(vec![Some(0), Some(1), None, Some(2), Some(0)]);
        let values = StringArray::from(vec!["a", "b", "c"]);
        let column: ArrayRef = Arc::new(DictionaryArray::try_new(keys, Arc::new(values)).unwrap());
        let (shown, rows) = kept(&dict, column.clone(), &["a", "c"]);
        assert!(!shown.to_uppercase().contains("CAST"), "{shown}");
        assert_eq!(rows, [true, false, false, true, true], "NULL never matches");
        // text as text; the same rows as the cast of the dictionary
        let text = datafusion::arrow::compute::cast(&column, &DataType::Utf8).unwrap();
        assert_eq!(kept(&DataType::Utf8, text, &["a", "c"]).1, rows);
        // no teams: no rows
        assert_eq!(kept(&dict, column, &[]).1, [false; 5]);
    }

    #[test]
    fn a_dictionary_becomes_views_of_only_the_values_its_rows_reference() {
        let keys = Int32Array::from(vec![Some(2), None, Some(0), Some(2), Some(3)]);
        let values = StringArray::from(vec![
            Some("team-search-with-a-long-name"),
            Some("other-teams-long-secret-name"),
            Some("gpt-4o"),
            None,
        ]);
        let dict: ArrayRef = Arc::new(DictionaryArray::try_new(keys, Arc::new(values)).unwrap());
        let views = dictionary_as_views(&dict).unwrap();
        let views = views.as_string_view();
        let got: Vec<Option<&str>> = views.iter().collect();
        assert_eq!(
            got,
            [
                Some("gpt-4o"),
                None,
                Some("team-search-with-a-long-name"),
                Some("gpt-4o"),
                None
            ]
        );
        // the unreferenced value is in no buffer (a long value is stored out of line)
        let bytes: Vec<u8> = views
            .data_buffers()
            .iter()
            .flat_map(|b| b.to_vec())
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("team-search-with-a-long-name"), "{text}");
        assert!(!text.contains("other-teams"), "{text}");
        // the rows of the dictionary decoded as text (a key of a NULL value is NULL; arrow's
        // cast to views straight from a dictionary answers "" there)
        let text = datafusion::arrow::compute::cast(&dict, &DataType::Utf8).unwrap();
        assert_eq!(text.as_string::<i32>().iter().collect::<Vec<_>>(), got);
    }

    #[test]
    fn an_empty_dictionary_other_key_types_and_slices_become_views() {
        use datafusion::arrow::array::{Int64Array, UInt8Array};
        // a column NULL in every row: no values at all
        let keys = Int32Array::from(vec![None, None, None]);
        let empty = StringArray::from(Vec::<Option<&str>>::new());
        let dict: ArrayRef = Arc::new(DictionaryArray::try_new(keys, Arc::new(empty)).unwrap());
        let views = dictionary_as_views(&dict).unwrap();
        assert_eq!((views.len(), views.null_count()), (3, 3));
        assert_eq!(views.data_type(), &DataType::Utf8View);
        // other key types, and a slice of a longer dictionary array
        let values = Arc::new(StringArray::from(vec!["a-long-value-here", "b", "c"]));
        let small: ArrayRef = Arc::new(
            DictionaryArray::try_new(UInt8Array::from(vec![2, 0, 1, 0]), values.clone()).unwrap(),
        );
        let wide: ArrayRef =
            Arc::new(DictionaryArray::try_new(Int64Array::from(vec![1, 2, 2, 0]), values).unwrap());
        let texts = |a: &ArrayRef| -> Vec<Option<String>> {
            let v = dictionary_as_views(a).unwrap();
            v.as_string_view()
                .iter()
                .map(|s| s.map(String::from))
                .collect()
        };
        let some = |xs: &[&str]| xs.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(
            texts(&small),
            some(&["c", "a-long-value-here", "b", "a-long-value-here"])
        );
        assert_eq!(texts(&small.slice(1, 2)), some(&["a-long-value-here", "b"]));
        assert_eq!(texts(&wide.slice(1, 2)), some(&["c", "c"]));
    }
}
