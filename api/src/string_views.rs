//! The ledger's text columns read straight into string views (`Utf8View`).
//!
//! The ledger files store text as dictionary-encoded Parquet and say, in their embedded Arrow
//! schema, `Dictionary(Int32, Utf8)`. Read that way, every query paid twice per row and text
//! column: once to build the dictionary array, once more to cast it to the `Utf8View` that
//! DataFusion's vectorized GROUP BY and the chargeback's `CAST(… AS VARCHAR)` need (a quarter of
//! a chargeback's CPU, measured with `perf`: `dictionary_cast`, `make_view`). Parquet can
//! decode those pages into views directly: each dictionary value becomes a view once per page
//! and each row copies 16 bytes. So the table declares its text columns as `Utf8View`, and
//! each file of a scan carries that schema as its physical schema
//! ([`PartitionedFile::arrow_schema`]), which the Parquet reader uses instead of the embedded
//! one. Files are not rewritten; DuckDB, Spark and delta-rs read them as before.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

/// `schema` with its text columns (`Utf8`, `LargeUtf8`, dictionaries of `Utf8`) as `Utf8View`.
pub fn with_string_views(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            }
            DataType::Dictionary(_, v) if **v == DataType::Utf8 => {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A file table (a `ListingTable`) whose files all hold exactly `file_schema`'s columns,
/// read with `file_schema` as their physical schema.
#[derive(Debug)]
pub struct StringViewsTable {
    inner: Arc<dyn TableProvider>,
    file_schema: SchemaRef,
}

impl StringViewsTable {
    /// `inner`'s schema must be `file_schema` plus its partition columns.
    pub fn new(inner: Arc<dyn TableProvider>, file_schema: SchemaRef) -> Self {
        StringViewsTable { inner, file_schema }
    }

    /// `plan` with every file of its file scans read as `file_schema`.
    fn read_as_views(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(config) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
            else {
                return Ok(Transformed::no(node));
            };
            let mut config = config.clone();
            config.file_groups = config
                .file_groups
                .iter()
                .map(|group| {
                    let files = group
                        .iter()
                        .map(|f| f.clone().with_arrow_schema(self.file_schema.clone()))
                        .collect();
                    let regrouped = FileGroup::new(files);
                    match group.file_statistics(None) {
                        Some(s) => regrouped.with_statistics(Arc::new(s.clone())),
                        None => regrouped,
                    }
                })
                .collect();
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }
}

#[async_trait]
impl TableProvider for StringViewsTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        self.read_as_views(plan)
    }
}
