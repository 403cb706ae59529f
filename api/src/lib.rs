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
pub mod admin;
pub mod answer;
pub mod budgets;
pub mod catalog;
pub mod close;
pub mod closes;
pub mod config;
mod error;
pub mod functions;
pub mod ledger_view;
mod openapi;
pub mod period;
pub mod queries;
pub mod reports;
pub mod rollup;
pub mod scope;
pub mod sql;
pub mod statement;
pub mod web;

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

pub use access::{roles_of, Caller, ROUTES};
pub use config::ApiConfig;
pub(crate) use error::error;
pub use error::Error;
pub use openapi::ApiDoc;

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
