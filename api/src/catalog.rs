//! The tables and views a principal's query sees. A session is built per query: the ledger as
//! a listing table over `<data_dir>/usage` (Hive partitions `date=…`), wrapped in the
//! principal's scope, and the views defined over it — so the views are scoped too.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use meterline_schemas::auth::{Principal, Role};

use crate::config::ApiConfig;
use crate::scope::TeamScopedTable;
use crate::Error;

/// Views over `usage`, documented in the README (name, SQL).
pub const VIEWS: [(&str, &str); 1] = [(
    "daily_spend",
    "SELECT date, org, cost_center, team, project, provider, model, currency, \
     count(*) AS events, sum(input_tokens) AS input_tokens, \
     sum(cache_read_tokens) AS cache_read_tokens, sum(output_tokens) AS output_tokens, \
     sum(cost_total) AS cost \
     FROM usage GROUP BY date, org, cost_center, team, project, provider, model, currency",
)];

/// The ledger schema plus the `date` partition column.
fn ledger_table(cfg: &ApiConfig) -> Result<Arc<dyn TableProvider>, Error> {
    let dir = cfg.data_dir.join("usage");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
    let url = ListingTableUrl::parse(format!(
        "{}/",
        dir.canonicalize().map_err(Error::io)?.display()
    ))
    .map_err(Error::query)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
    let schema = meterline_schemas::arrow_schema::usage_ledger_schema();
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(
        ListingTable::try_new(config).map_err(Error::query)?,
    ))
}

/// A fresh session for one query of `who`, with its memory limit.
pub async fn session(cfg: &ApiConfig, who: &Principal) -> Result<SessionContext, Error> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.query_memory_bytes, 1.0)
        .build_arc()
        .map_err(Error::query)?;
    let scoped = who.role == Role::TeamLead;
    // information_schema lists every table of the catalog: not for scoped principals.
    let config = SessionConfig::new()
        .with_information_schema(!scoped)
        .with_target_partitions(2);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let usage = ledger_table(cfg)?;
    let usage: Arc<dyn TableProvider> = if scoped {
        Arc::new(TeamScopedTable::new(usage, "team", &who.teams))
    } else {
        usage
    };
    ctx.register_table("usage", usage).map_err(Error::query)?;
    for (name, sql) in VIEWS {
        ctx.sql(&format!("CREATE VIEW {name} AS {sql}"))
            .await
            .map_err(Error::query)?;
    }
    Ok(ctx)
}

/// Schema of `usage` as the API shows it (for docs and tests).
pub fn usage_schema() -> Schema {
    let s = meterline_schemas::arrow_schema::usage_ledger_schema();
    let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    Schema::new(fields)
}
