//! Row filters in the plan. A `team_lead` never gets the ledger table itself, only a
//! [`FilteredTable`] wrapping it, whose scan is the inner scan under a filter on `team`. Every
//! query, view, join, subquery, CTE or UNION over `usage` therefore reads through the filter:
//! it is part of the physical plan, not of the SQL text. The same wrapper keeps rows of a
//! flush still being written out of every query (`ledger_view`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{cast, col, lit, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

/// `inner` restricted to the rows passing `predicate`.
#[derive(Debug)]
pub struct FilteredTable {
    inner: Arc<dyn TableProvider>,
    predicate: Expr,
}

/// Rows whose `column` is one of `allowed` (NULL never matches; no teams: no rows).
pub fn team_predicate(column: &str, allowed: &[String]) -> Expr {
    if allowed.is_empty() {
        return lit(false);
    }
    cast(col(column), DataType::Utf8)
        .in_list(allowed.iter().map(|t| lit(t.clone())).collect(), false)
}

impl FilteredTable {
    pub fn new(inner: Arc<dyn TableProvider>, predicate: Expr) -> Self {
        FilteredTable { inner, predicate }
    }

    /// `inner` as a lead of `teams` may see it.
    pub fn team_scope(inner: Arc<dyn TableProvider>, column: &str, teams: &[String]) -> Self {
        FilteredTable::new(inner, team_predicate(column, teams))
    }

    /// The predicate every row must pass.
    pub fn predicate(&self) -> &Expr {
        &self.predicate
    }
}

#[async_trait]
impl TableProvider for FilteredTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The caller's filters may prune files and row groups below ours; ours is applied
        // regardless. Never `Exact` from here: the filter above ours stays in the plan.
        Ok(self
            .inner
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        // 1. never below our filter: a limit before it would be applied to others' rows
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let full = self.inner.schema();
        // 2. read the predicate's columns too, whatever the query projects
        let mut needed = vec![];
        for c in self.predicate.column_refs() {
            needed.push(full.index_of(&c.name)?);
        }
        let inner_projection = projection.map(|p| {
            let mut v = p.clone();
            for i in &needed {
                if !v.contains(i) {
                    v.push(*i);
                }
            }
            v
        });
        let plan = self
            .inner
            .scan(state, inner_projection.as_ref(), filters, None)
            .await?;
        // 3. the filter, in the physical plan
        let scanned = plan.schema();
        let df_schema = DFSchema::try_from(scanned.as_ref().clone())?;
        let predicate = state.create_physical_expr(self.predicate.clone(), &df_schema)?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, plan)?);
        // 4. back to the columns asked for
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..full.fields().len()).collect(),
        };
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = vec![];
        for i in wanted {
            let name = full.field(i).name().clone();
            let idx = scanned.index_of(&name)?;
            exprs.push((Arc::new(Column::new(&name, idx)), name));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, filtered)?))
    }
}
