//! `meterline api`: SQL, reports, period close and admin for finance and team leads.
//!
//! - `catalog`: the tables and views of a query's session; `scope`: row filters in the plan;
//!   `ledger_view`: only rows of complete flushes; `budgets`: the `budgets` table's cache;
//! - `answer`: running a query and writing JSON / CSV / Arrow IPC; `sql`: `POST /v1/sql`;
//! - `reports`: chargeback (+ FOCUS), showback, anomalies, budget status;
//! - `close`: period close snapshots; `period`: months;
//! - `admin`: prices, tenants and budgets over HTTP, published as reference events;
//! - `web`: the dashboard's static page at `/` and `/v1/me` (who the token is).
//!
//! Every route and the roles it admits are in [`ROUTES`]; handlers authorize through it and
//! the OpenAPI spec states it (`x-roles`), so the two cannot drift apart.

mod access;
mod admin;
mod answer;
mod budgets;
mod catalog;
mod close;
mod closes;
mod config;
mod error;
mod functions;
mod ledger_view;
mod openapi;
mod period;
mod queries;
mod reports;
mod rollup;
mod run_aggregate;
mod scope;
mod sql;
mod statement;
mod string_views;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use axum::routing::{delete, get, post};
use axum::Router;
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use meterline_runtime::auth::TokenTable;
use meterline_runtime::kafka::KafkaConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use access::{roles_of, Caller};
pub(crate) use error::error;

// The public API. The modules are private; these are the items the binary, the benches,
// the integration tests and the fuzz targets use, and nothing else.
// serving: configure, build and run the API (`meterline api`, `meterline dev`, benches)
pub use config::ApiConfig;
pub use error::Error;
// authorization: every route and the roles it admits (tests hold the spec and server to it)
pub use access::ROUTES;
// the state handlers share (`Shared`'s fields), e.g. for a fuzz target that builds it directly
pub use budgets::{BudgetCache, BudgetSnapshot};
pub use ledger_view::{FileCaches, LedgerState, LedgerView, Watermark, FOOTER_CACHE_BYTES};
pub use queries::QueryRuntime;
pub use rollup::Rollups;
// queries: a scoped session and a query answered as `POST /v1/sql` answers it (fuzzing)
pub use answer::{run as run_sql, Format};
pub use catalog::{report_session, session as query_session, Scope as QueryScope};
// the `budgets` table as SQL sees it (tests hold it to the edge's enforcement)
pub use budgets::{schema as budgets_schema, to_batch as budgets_batch};
// chargeback: from rollups and by one SQL scan, which tests compare; the lines' SQL (benches)
pub use period::Month;
pub use reports::chargeback::{
    compute as compute_chargeback, compute_sql as compute_chargeback_sql, usage_lines_sql, Cut,
    GroupBy,
};
pub use rollup::{coverage, Coverage, OffsetRange};
// period close: the stored snapshots (tests store a month closed by an older version)
pub use closes::{CloseRecord, Closes};
// dashboard: the static page's size (tests compare it with what is served)
pub use web::page_weight;

pub struct Shared {
    pub cfg: ApiConfig,
    /// `None`: run without a broker (admin routes answer 503, `budgets` is empty).
    pub kafka: Option<KafkaConfig>,
    pub tokens: TokenTable,
    pub ledger: ledger_view::LedgerView,
    /// Per-file daily rollups the chargeback adds up.
    pub rollups: Arc<rollup::Rollups>,
    pub budgets: Arc<budgets::BudgetCache>,
    /// Closes run one at a time.
    pub close_lock: tokio::sync::Mutex<()>,
    /// Where queries run (apart from the HTTP server).
    pub queries: queries::QueryRuntime,
}

impl Shared {
    pub fn budget_batch(&self) -> RecordBatch {
        budgets::to_batch(&self.budgets.get(), chrono::Utc::now())
            .unwrap_or_else(|_| RecordBatch::new_empty(budgets::schema()))
    }

    /// A query session of `scope` over the ledger as it is now.
    pub async fn session(&self, scope: &catalog::Scope) -> Result<SessionContext, Error> {
        let state = self.ledger.settled_state().await?;
        catalog::session(&self.cfg, scope, &state, self.budget_batch()).await
    }

    /// A session for the reports' own SQL over the ledger as it is now (see
    /// [`catalog::report_session`]).
    pub async fn report_session(&self) -> Result<SessionContext, Error> {
        let state = self.ledger.settled_state().await?;
        catalog::report_session(&self.cfg, &state).await
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/me", get(web::get_me))
        .route("/v1/sql", post(sql::post_sql))
        .route(
            "/v1/reports/chargeback",
            get(reports::chargeback::get_chargeback),
        )
        .route("/v1/reports/showback", get(reports::showback::get_showback))
        .route("/v1/reports/anomalies", get(reports::status::get_anomalies))
        .route("/v1/reports/budgets", get(reports::status::get_budgets))
        .route("/v1/periods", get(close::get_periods))
        .route("/v1/periods/{period}/close", post(close::post_close))
        .route(
            "/v1/admin/prices",
            get(admin::get_prices).post(admin::post_prices),
        )
        .route(
            "/v1/admin/tenants",
            get(admin::get_tenants).post(admin::post_tenants),
        )
        .route(
            "/v1/admin/budgets",
            get(admin::get_budgets).post(admin::post_budget),
        )
        .route(
            "/v1/admin/budgets/{budget_id}",
            delete(admin::delete_budget),
        )
        // every route above: credentials first
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            access::authenticate,
        ))
        // public: the spec and the dashboard's static files (no data in them)
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(web::index))
        .route("/assets/{name}", get(web::asset))
        .route("/healthz", get(|| async { "ok" }))
        // Prometheus text, like every stage's `/metrics` (process metrics only, no data)
        .route(
            "/metrics",
            get(|| async { meterline_runtime::telemetry::prometheus().render() }),
        )
        .with_state(shared)
}

/// A built, not yet serving, API.
pub struct App {
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl App {
    /// Binds. With a broker, the budget topics are read in the background once serving and
    /// the admin routes publish to it; without one (`None`, e.g. over a copied data
    /// directory) reports and SQL work, admin routes answer 503 and `budgets` is empty.
    pub async fn build(
        kafka: Option<&KafkaConfig>,
        cfg: ApiConfig,
        ledger: meterline_ledger::LedgerConfig,
    ) -> Result<App, Error> {
        cfg.validate()?;
        ledger.validate()?;
        if let Some(k) = kafka {
            k.validate().map_err(|e| Error::Config(e.to_string()))?;
        }
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        // the process's metrics recorder, before the first query is counted
        let _ = meterline_runtime::telemetry::prometheus();
        let shared = Arc::new(Shared {
            tokens: TokenTable::new(&cfg.tokens),
            kafka: kafka.cloned(),
            ledger: ledger_view::LedgerView::open(&ledger, &cfg.data_dir)?,
            rollups: Default::default(),
            budgets: Default::default(),
            close_lock: Default::default(),
            queries: queries::QueryRuntime::new(0)?,
            cfg,
        });
        Ok(App {
            listener,
            shared,
            stop: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// How many queries are running (a task on the query runtime, not yet ended or aborted).
    pub fn running_queries(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.shared.queries.running()
    }

    /// The cache the `budgets` table is read from (filled from Kafka when there is a broker).
    pub fn budgets(&self) -> Arc<budgets::BudgetCache> {
        self.shared.budgets.clone()
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let stop = self.stop.clone();
        let refresh = self.shared.kafka.clone().map(|k| {
            tokio::spawn(self.shared.budgets.clone().run(
                k,
                Duration::from_millis(self.shared.cfg.budget_refresh_ms),
                stop.clone(),
            ))
        });
        let idle = Duration::from_millis(self.shared.cfg.client_idle_timeout_ms);
        let listener = meterline_runtime::telemetry::IdleTimeoutListener::new(self.listener, idle);
        let served = axum::serve(listener, router(self.shared))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(Error::Serve);
        if let Some(r) = refresh {
            r.abort();
        }
        served
    }
}
