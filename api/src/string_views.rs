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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Int32Type;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    fn dict() -> DataType {
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    }

    #[test]
    fn text_columns_become_views_and_the_rest_stays() {
        let s = Schema::new(vec![
            Field::new("team", dict(), true),
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]);
        let v = with_string_views(&s);
        let types: Vec<_> = v.fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(
            types,
            [DataType::Utf8View, DataType::Utf8View, DataType::Int64]
        );
        assert!(v.field(0).is_nullable() && !v.field(1).is_nullable());
    }

    /// A file whose embedded Arrow schema says `Dictionary(Int32, Utf8)` is scanned with the
    /// view schema as its physical schema, so its text arrives as views (no cast), filters
    /// and all.
    #[tokio::test]
    async fn a_dictionary_file_is_read_as_views() {
        let dir = tempfile::tempdir().unwrap();
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("team", dict(), true),
            Field::new("n", DataType::Int64, false),
        ]));
        let teams: DictionaryArray<Int32Type> = vec![
            Some("search"),
            None,
            Some("ads"),
            Some("search-long-team-name"),
        ]
        .into_iter()
        .collect();
        let batch = RecordBatch::try_new(
            file_schema.clone(),
            vec![
                Arc::new(teams),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(dir.path().join("f.parquet")).unwrap(),
            file_schema.clone(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let views = with_string_views(&file_schema);
        let url = ListingTableUrl::parse(format!("{}/", dir.path().display())).unwrap();
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let files = ListingTable::try_new(
            ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(views.clone()),
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_table(
            "t",
            Arc::new(StringViewsTable::new(Arc::new(files), views.clone())),
        )
        .unwrap();
        let df = ctx
            .sql("SELECT team, n FROM t WHERE team <> 'ads' ORDER BY n")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        // every file of the scan carries the view schema
        let mut scanned = 0;
        plan.apply(|node| {
            if let Some(config) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
            {
                for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                    assert_eq!(f.arrow_schema.as_ref(), Some(&views));
                    scanned += 1;
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(scanned, 1);
        let out = collect(plan, ctx.task_ctx()).await.unwrap();
        let out = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
        assert_eq!(out.column(0).data_type(), &DataType::Utf8View);
        let text = datafusion::arrow::compute::cast(out.column(0), &DataType::Utf8).unwrap();
        let text = text.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<_> = (0..text.len()).map(|i| text.value(i)).collect();
        assert_eq!(got, ["search", "search-long-team-name"]);
    }
}
