//! The ledger's text columns read straight into string views (`Utf8View`).
//!
//! The ledger files store text as dictionary-encoded Parquet and say, in their embedded Arrow
//! schema, `Dictionary(Int32, Utf8)`. Read that way, every query paid twice per row and text
//! column: once to build the dictionary array, once more to cast it to the `Utf8View` that
//! DataFusion's vectorized GROUP BY and the chargeback's `CAST(… AS VARCHAR)` need (a quarter of
//! a chargeback's CPU, measured with `perf`: `dictionary_cast`, `make_view`). Parquet can
//! decode those pages into views directly: each dictionary value becomes a view once per page
//! and each row copies 16 bytes. So the table declares its text columns as `Utf8View`, and
//! each file of a scan carries its own schema with text as views as its physical schema
//! (`PartitionedFile::arrow_schema`), which the Parquet reader uses instead of the embedded
//! one. Files are not rewritten; DuckDB, Spark and delta-rs read them as before.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::physical_plan::ExecutionPlan;

/// `schema` with its text columns (`Utf8`, `LargeUtf8`, dictionaries of `Utf8`) as `Utf8View`.
pub fn with_string_views(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let text = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 => true,
                DataType::Dictionary(_, v) => **v == DataType::Utf8,
                _ => false,
            };
            let f = f.as_ref().clone();
            if text {
                f.with_data_type(DataType::Utf8View)
            } else {
                f
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A Parquet file table (a `ListingTable` whose schema is [`with_string_views`] of the files'
/// schema) whose files are read with their own schema, text as views.
#[derive(Debug)]
pub struct StringViewsTable {
    inner: Arc<dyn TableProvider>,
}

impl StringViewsTable {
    pub fn new(inner: Arc<dyn TableProvider>) -> Self {
        StringViewsTable { inner }
    }
}

/// Each file's own Arrow schema (from its footer, through the session's footer cache) with
/// text as views. A file's own, not the table's: a file written before a column was added
/// lacks it (the scan fills it with NULL), and a supplied schema must match the file exactly.
async fn view_schemas(
    state: &dyn Session,
    plan: &Arc<dyn ExecutionPlan>,
) -> Result<HashMap<String, SchemaRef>> {
    let mut files = vec![];
    plan.apply(|node| {
        if let Some(config) = file_scan(node) {
            for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                files.push((config.object_store_url.clone(), f.object_meta.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
    let mut schemas = HashMap::new();
    for (url, meta) in files {
        if schemas.contains_key(meta.location.as_ref()) {
            continue;
        }
        let store = state.runtime_env().object_store(&url)?;
        let footer = DFParquetMetadata::new(store.as_ref(), &meta)
            .with_file_metadata_cache(Some(footers.clone()))
            .fetch_metadata()
            .await?;
        let own = parquet_to_arrow_schema(
            footer.file_metadata().schema_descr(),
            footer.file_metadata().key_value_metadata(),
        )?;
        schemas.insert(meta.location.to_string(), with_string_views(&own));
    }
    Ok(schemas)
}

fn file_scan(node: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    node.downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
}

/// `plan` with every file of its file scans read as `schemas` says.
fn read_as(
    plan: Arc<dyn ExecutionPlan>,
    schemas: &HashMap<String, SchemaRef>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(config) = file_scan(&node) else {
            return Ok(Transformed::no(node));
        };
        let mut config = config.clone();
        config.file_groups = config
            .file_groups
            .iter()
            .map(|group| {
                let files = group
                    .iter()
                    .map(|f| match schemas.get(f.object_meta.location.as_ref()) {
                        Some(s) => f.clone().with_arrow_schema(s.clone()),
                        None => f.clone(),
                    })
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
        let schemas = view_schemas(state, &plan).await?;
        read_as(plan, &schemas)
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

    fn write(path: &std::path::Path, batch: &RecordBatch) {
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None)
                .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// Files whose embedded Arrow schema says `Dictionary(Int32, Utf8)` are scanned with their
    /// own schema, text as views, as their physical schema: text arrives as views (no cast),
    /// filters and all, and a file written before a column existed reads it as NULL.
    #[tokio::test]
    async fn dictionary_files_are_read_as_views_each_with_its_own_columns() {
        let dir = tempfile::tempdir().unwrap();
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("team", dict(), true),
            Field::new("n", DataType::Int64, true),
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
        write(&dir.path().join("b-new.parquet"), &batch);
        // written before `n` was added
        let old_schema = Arc::new(Schema::new(vec![Field::new("team", dict(), true)]));
        let old_teams: DictionaryArray<Int32Type> = vec![Some("search-old")].into_iter().collect();
        let old = RecordBatch::try_new(old_schema.clone(), vec![Arc::new(old_teams)]).unwrap();
        write(&dir.path().join("a-old.parquet"), &old);

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
        ctx.register_table("t", Arc::new(StringViewsTable::new(Arc::new(files))))
            .unwrap();
        let df = ctx
            .sql("SELECT team, n FROM t WHERE team <> 'ads' ORDER BY team")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        // every file of the scan carries its own schema, text as views
        let mut scanned = vec![];
        plan.apply(|node| {
            if let Some(config) = file_scan(node) {
                for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                    let name = f.object_meta.location.filename().unwrap().to_string();
                    scanned.push((name, f.arrow_schema.clone()));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        scanned.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            scanned,
            [
                (
                    "a-old.parquet".to_string(),
                    Some(with_string_views(&old_schema))
                ),
                ("b-new.parquet".to_string(), Some(views.clone())),
            ]
        );
        let out = collect(plan, ctx.task_ctx()).await.unwrap();
        let out = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
        assert_eq!(out.column(0).data_type(), &DataType::Utf8View);
        let text = datafusion::arrow::compute::cast(out.column(0), &DataType::Utf8).unwrap();
        let text = text.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<_> = (0..text.len()).map(|i| text.value(i)).collect();
        assert_eq!(got, ["search", "search-long-team-name", "search-old"]);
        let n = out.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            (0..n.len())
                .map(|i| n.is_valid(i).then(|| n.value(i)))
                .collect::<Vec<_>>(),
            [Some(1), Some(4), None]
        );
    }
}
