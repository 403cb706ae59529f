//! The tables and views a principal's query sees. A session is built per query:
//! - `usage`: the ledger's Delta table at one version — a listing table (Hive partitions
//!   `date=…`) over a store that lists exactly the snapshot's files — wrapped in the
//!   principal's scope;
//! - `anomalies`: the anomalies table at the version read with the ledger's, scoped to the
//!   principal's teams' anomalies;
//! - `budgets`: live budgets with their latest signal, scoped to team budgets of its teams;
//! - the views in [`VIEWS`], defined over those tables — so they are scoped too.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::config::{TableOptions, TableParquetOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileStatisticsCache};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::{SessionConfig, SessionContext};
use meterline_runtime::auth::{Principal, Role};

use crate::config::ApiConfig;
use crate::ledger_view::LedgerState;
use crate::scope::{team_predicate, FilteredTable, PROVENANCE};
use crate::string_views::{with_string_views, StringViewsTable};
use crate::Error;

/// Whose rows a session shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every row (admin, finance, viewer).
    All,
    /// Rows of these teams only (team_lead).
    Teams(Vec<String>),
}

impl Scope {
    pub fn of(p: &Principal) -> Scope {
        match p.role {
            Role::TeamLead => Scope::Teams(p.teams.clone()),
            _ => Scope::All,
        }
    }
}

/// Views, documented in the README (name, SQL).
pub const VIEWS: [(&str, &str); 2] = [
    (
        "daily_spend",
        "SELECT date, org, cost_center, team, project, provider, model, currency, \
         count(*) AS events, sum(input_tokens) AS input_tokens, \
         sum(cache_read_tokens) AS cache_read_tokens, sum(output_tokens) AS output_tokens, \
         sum(cost_total) AS cost \
         FROM usage GROUP BY date, org, cost_center, team, project, provider, model, currency",
    ),
    (
        "monthly_spend",
        "SELECT substr(date, 1, 7) AS month, org, cost_center, team, project, provider, model, \
         currency, count(*) AS events, sum(input_tokens) AS input_tokens, \
         sum(cache_read_tokens) AS cache_read_tokens, sum(output_tokens) AS output_tokens, \
         sum(cost_total) AS cost \
         FROM usage GROUP BY substr(date, 1, 7), org, cost_center, team, project, provider, \
         model, currency",
    ),
];

/// The session's `datafusion.execution.parquet.*` options as a table's Parquet options: a
/// `ParquetFormat::default()` would read with the library defaults instead, whatever the
/// session says (no filter pushdown into the decoder, for one).
fn parquet_options(config: &SessionConfig) -> TableParquetOptions {
    TableOptions::default_from_session_config(config.options()).parquet
}

/// Parquet reading of every session: filters (the scope's `team IN (…)`, the watermark of
/// complete flushes, a caller's own on a non-private table) are applied while decoding, so
/// the other columns of rows they drop are never decoded (late materialization), and the
/// page index skips pages no row of which can pass.
fn set_parquet_options(config: &mut SessionConfig) {
    let parquet = &mut config.options_mut().execution.parquet;
    parquet.pushdown_filters = true;
    parquet.reorder_filters = true;
    parquet.enable_page_index = true;
    parquet.pruning = true;
}

/// A listing table of `url`'s files; their statistics are read once per file and kept in
/// `statistics` (a listing table keeps them only where it is told to).
fn listing(
    url: &str,
    schema: SchemaRef,
    parquet: &TableParquetOptions,
    statistics: &Arc<FileStatisticsCache>,
) -> Result<Arc<dyn TableProvider>, Error> {
    let url = ListingTableUrl::parse(url).map_err(Error::query)?;
    let options = ListingOptions::new(Arc::new(
        ParquetFormat::default().with_options(parquet.clone()),
    ))
    .with_file_extension(".parquet")
    .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(
        ListingTable::try_new(config)
            .map_err(Error::query)?
            .with_cache(Some(statistics.clone())),
    ))
}

/// How the ledger's text columns reach a session's `usage` table. Every principal's query
/// sees text as string views (`Utf8View`), which is what DataFusion's vectorized GROUP BY
/// and comparisons work on; from dictionaries, `CAST(… AS VARCHAR)` would build a view for
/// every row again (a quarter of a chargeback's CPU, by `perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextColumns {
    /// As the files declare them, `Dictionary(Int32, Utf8)`: below a team lead's scope, which
    /// compares `team` in the dictionary (the few values, not every row) and then turns each
    /// dictionary value it keeps into a view once (`scope::dictionary_as_views`).
    Dictionaries,
    /// Decoded straight into string views ([`StringViewsTable`]): for every row (finance,
    /// admin, viewer, the reports' own SQL).
    Views,
}

impl TextColumns {
    fn for_scope(scope: &Scope) -> TextColumns {
        match scope {
            Scope::All => TextColumns::Views,
            Scope::Teams(_) => TextColumns::Dictionaries,
        }
    }
}

/// The ledger table at the version of `ledger`, read with `parquet`'s options. Its files are
/// listed by the snapshot's store (registered in the session's runtime for the table's
/// store, see [`session`]), so the table is exactly that version: no file of a flush not yet
/// committed, none a compaction replaced.
fn ledger_table(
    ledger: &LedgerState,
    parquet: &TableParquetOptions,
    text: TextColumns,
) -> Result<Arc<dyn TableProvider>, Error> {
    let url = ledger.snapshot.table_url().as_str();
    let schema = meterline_schemas::arrow_schema::usage_ledger_schema();
    Ok(match text {
        TextColumns::Dictionaries => listing(url, schema, parquet, &ledger.file_caches.statistics)?,
        // statistics of their own: computed for another table schema, they would replace
        // the dictionary table's entries and be replaced by them
        TextColumns::Views => Arc::new(StringViewsTable::new(listing(
            url,
            with_string_views(&schema),
            parquet,
            &ledger.file_caches.view_statistics,
        )?)),
    })
}

/// A session for the reports' own SQL (chargeback lines): every row.
pub async fn report_session(
    cfg: &ApiConfig,
    ledger: &LedgerState,
) -> Result<SessionContext, Error> {
    let budgets = RecordBatch::new_empty(crate::budgets::schema());
    session(cfg, &Scope::All, ledger, budgets).await
}

/// A fresh session for one query under `scope`, with its memory limit.
pub async fn session(
    cfg: &ApiConfig,
    scope: &Scope,
    ledger: &LedgerState,
    budgets: RecordBatch,
) -> Result<SessionContext, Error> {
    // No spilling: a query past its memory limit fails (422) instead of filling the disk.
    let runtime = RuntimeEnvBuilder::new()
        // footers through the runtime (the Parquet reader looks there); statistics are handed
        // to each listing table (`listing`), which is the only place it looks
        .with_cache_manager(
            CacheManagerConfig::default()
                .with_file_metadata_cache(Some(ledger.file_caches.footers.clone())),
        )
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .with_memory_limit(cfg.query_memory_bytes, 1.0)
        .build_arc()
        .map_err(Error::query)?;
    // the tables' store as the snapshots see it: listing gives exactly their files
    let (store_url, store) =
        meterline_ledger::listing_store(&[ledger.snapshot.listing(), ledger.anomalies.listing()])?
            .expect("two listings");
    runtime.register_object_store(&store_url, store);
    let scoped = matches!(scope, Scope::Teams(_));
    // information_schema lists every table of the catalog: not for scoped principals.
    // Parallel by file groups only: a one-partition source (VALUES, generate_series) is not
    // dealt round robin over threads, so an unordered answer keeps its source's order.
    let mut config = SessionConfig::new()
        .with_information_schema(!scoped)
        .with_target_partitions(cfg.query_partitions)
        .with_round_robin_repartition(false);
    // A recursive CTE can double a value per step without bound; not offered.
    config.options_mut().execution.enable_recursive_ctes = false;
    set_parquet_options(&mut config);
    let parquet = parquet_options(&config);
    let limits = crate::functions::Limits::new(
        runtime.memory_pool.clone(),
        cfg.query_memory_bytes,
        config.batch_size(),
    );
    // partial aggregations by runs of equal keys where they are exact (the ledger is sorted)
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(crate::run_aggregate::RunAggregate::default()))
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::functions::install(&ctx, &limits);
    let usage = ledger_table(ledger, &parquet, TextColumns::for_scope(scope))?;
    let anomalies = listing(
        ledger.anomalies.table_url().as_str(),
        meterline_ledger::anomalies_schema(),
        &parquet,
        &ledger.file_caches.statistics,
    )?;
    let budgets: Arc<dyn TableProvider> =
        Arc::new(MemTable::try_new(budgets.schema(), vec![vec![budgets]]).map_err(Error::query)?);
    let (usage, anomalies, budgets): (
        Arc<dyn TableProvider>,
        Arc<dyn TableProvider>,
        Arc<dyn TableProvider>,
    ) = match scope {
        Scope::All => (usage, anomalies, budgets),
        Scope::Teams(teams) => (
            Arc::new(FilteredTable::team_scope(usage, "team", teams, &PROVENANCE)),
            Arc::new(FilteredTable::private(
                anomalies,
                col("scope_kind")
                    .eq(lit("team"))
                    .and(team_predicate("scope_value", teams)),
                format!("team anomalies of {teams:?}"),
                &[],
            )),
            Arc::new(FilteredTable::team_scope(budgets, "team", teams, &[])),
        ),
    };
    ctx.register_table("usage", usage).map_err(Error::query)?;
    ctx.register_table("anomalies", anomalies)
        .map_err(Error::query)?;
    ctx.register_table("budgets", budgets)
        .map_err(Error::query)?;
    for (name, sql) in VIEWS {
        ctx.sql(&format!("CREATE VIEW {name} AS {sql}"))
            .await
            .map_err(Error::query)?;
    }
    Ok(ctx)
}
