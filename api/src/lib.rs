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

pub mod admin;
pub mod answer;
pub mod budgets;
pub mod catalog;
pub mod close;
pub mod config;
pub mod functions;
pub mod ledger_view;
pub mod period;
pub mod queries;
pub mod reports;
pub mod rollup;
pub mod scope;
pub mod sql;
pub mod statement;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use meterline_runtime::auth::{AuthFailure, Principal, Role, TokenTable};
use meterline_runtime::kafka::KafkaConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub use config::ApiConfig;

/// Errors of the API crate.
///
/// What a caller reads is the `Display` text (see [`Error::status`] for the code). Every
/// caller, team leads included, can meet the errors of a query's session (reading the
/// ledger's directories and files): [`Error::LedgerDir`] names no path (`path` is for the
/// log); [`Error::Ledger`] says what `meterline-ledger` says. The variants naming their file
/// (`Io`, `LedgerFile`, `Manifest`, `Corrupt`) are met on finance's routes only (closes,
/// chargeback rollups).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    /// The API could not listen on `[api] listen`.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped on an error.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    /// The query runtime's threads could not be started.
    #[error("query runtime: {0}")]
    QueryRuntime(#[source] std::io::Error),
    /// A file system call on `path` failed (a close's snapshot, a ledger file for a rollup).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listing the ledger's directories failed (permissions, a failing disk). Any caller may
    /// get this message, so it names no path; `path` is for the log.
    #[error("reading the ledger's directory: {source}")]
    LedgerDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A ledger file's flushes could not be read (`meterline-ledger`).
    #[error(transparent)]
    Ledger(#[from] meterline_ledger::Error),
    /// A ledger file whose rows could not be summed into a rollup: what failed in it.
    #[error("{}: {source}", path.display())]
    LedgerFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// Reading Parquet (a ledger file for a rollup; [`Error::LedgerFile`] names it).
    #[error("parquet: {0}")]
    Parquet(#[source] datafusion::parquet::errors::ParquetError),
    /// A ledger file's schema lacks a rollup's column ([`Error::LedgerFile`] names it). Not
    /// `From`: an Arrow error in a query is the caller's (`Query`, 422).
    #[error("arrow: {0}")]
    Arrow(#[source] datafusion::arrow::error::ArrowError),
    /// A close's manifest could not be read or written as JSON.
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A closed snapshot that does not match its manifest: altered, never an answer.
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// Writing a CSV report.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("query: {0}")]
    Query(String),
    /// Reading the budget topics (the follower, `meterline-runtime`).
    #[error(transparent)]
    Kafka(#[from] meterline_runtime::Error),
    /// Budget definitions read from their topic (`meterline-reference`).
    #[error(transparent)]
    Reference(#[from] meterline_reference::Error),
    /// The refresh task itself failed (a panic in it).
    #[error("budget refresh task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The ledger is mid-change (a compaction); retry shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// A bug or a panic; the log has the details.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Query(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Kafka(_) | Error::Reference(_) => StatusCode::BAD_GATEWAY,
            Error::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Config(_)
            | Error::Bind { .. }
            | Error::Serve(_)
            | Error::QueryRuntime(_)
            | Error::Io { .. }
            | Error::LedgerDir { .. }
            | Error::Ledger(_)
            | Error::LedgerFile { .. }
            | Error::Parquet(_)
            | Error::Arrow(_)
            | Error::Manifest { .. }
            | Error::Corrupt { .. }
            | Error::Csv(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn query(e: impl std::fmt::Display) -> Error {
        Error::Query(e.to_string())
    }

    /// `map_err` for a file system call on `path`.
    pub(crate) fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The status and message a caller gets; an internal error is logged in full first (with
    /// the paths its message may leave out).
    pub(crate) fn reply(&self) -> (StatusCode, String) {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self, "request failed");
        }
        (status, self.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, msg) = self.reply();
        error(status, msg)
    }
}

use Role::{Admin, Finance, TeamLead, Viewer};

const QUERY: &[Role] = &[Admin, Finance, Viewer, TeamLead];
const FINANCE_READ: &[Role] = &[Admin, Finance, Viewer];
const FINANCE_WRITE: &[Role] = &[Admin, Finance];
const ADMIN: &[Role] = &[Admin];

/// Every authenticated route: method, path (as in the spec), roles admitted.
pub const ROUTES: &[(&str, &str, &[Role])] = &[
    ("GET", "/v1/me", QUERY),
    ("POST", "/v1/sql", QUERY),
    ("GET", "/v1/reports/showback", QUERY),
    ("GET", "/v1/reports/anomalies", QUERY),
    ("GET", "/v1/reports/budgets", QUERY),
    ("GET", "/v1/reports/chargeback", FINANCE_READ),
    ("GET", "/v1/periods", FINANCE_READ),
    ("POST", "/v1/periods/{period}/close", FINANCE_WRITE),
    ("GET", "/v1/admin/prices", ADMIN),
    ("POST", "/v1/admin/prices", ADMIN),
    ("GET", "/v1/admin/tenants", ADMIN),
    ("POST", "/v1/admin/tenants", ADMIN),
    ("GET", "/v1/admin/budgets", ADMIN),
    ("POST", "/v1/admin/budgets", ADMIN),
    ("DELETE", "/v1/admin/budgets/{budget_id}", ADMIN),
];

pub fn roles_of(method: &str, path: &str) -> &'static [Role] {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|r| r.2)
        .unwrap_or(&[])
}

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
        let state = self.ledger.settled_state(&self.cfg.data_dir).await?;
        catalog::session(&self.cfg, scope, &state, self.budget_batch()).await
    }
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

/// The caller of `method path`, if its token is known and its role admitted there.
fn authorize_route(
    s: &Shared,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    roles: &[Role],
) -> Result<Principal, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.tokens.authorize(h, roles).map_err(|f| match f {
        f @ AuthFailure::Unauthenticated => {
            let mut r = error(StatusCode::UNAUTHORIZED, f.to_string());
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        f @ AuthFailure::Forbidden { .. } => {
            error(StatusCode::FORBIDDEN, format!("{method} {path}: {f}"))
        }
    })
}

/// Who is calling: put in the request by [`authenticate`] before any handler runs, so a
/// handler taking `Extension<Caller>` cannot be reached without admitted credentials.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// Checks the credentials of every routed request against [`ROUTES`] before anything else
/// of it is read: the query string, path parameters and body are parsed by the handler's
/// extractors, which run after this (a malformed query string used to answer 400 to a
/// caller without a token). A route missing from [`ROUTES`] is refused (fail closed).
async fn authenticate(
    State(s): State<Arc<Shared>>,
    path: MatchedPath,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().as_str().to_string();
    let path = path.as_str();
    let roles = roles_of(&method, path);
    if roles.is_empty() {
        return if ROUTES.iter().any(|(_, p, _)| *p == path) {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} {path} is not a route"),
            )
        } else {
            tracing::error!(%method, path, "route missing from ROUTES");
            error(StatusCode::INTERNAL_SERVER_ERROR, "route without roles")
        };
    }
    match authorize_route(&s, req.headers(), &method, path, roles) {
        Ok(who) => {
            req.extensions_mut().insert(Caller(who));
            next.run(req).await
        }
        Err(r) => r,
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "meterline api", description = "SQL, chargeback, showback, period close and admin over the usage ledger."),
    paths(web::get_me, sql::post_sql, reports::chargeback::get_chargeback, reports::showback::get_showback,
          reports::status::get_anomalies, reports::status::get_budgets, close::post_close, close::get_periods,
          admin::get_prices, admin::post_prices, admin::get_tenants, admin::post_tenants,
          admin::get_budgets, admin::post_budget, admin::delete_budget),
    components(schemas(web::Me, sql::SqlRequest, reports::chargeback::Chargeback, reports::chargeback::Line,
          reports::chargeback::Total, reports::chargeback::GroupBy, reports::chargeback::Category,
          close::CloseRecord, close::SnapshotFile, admin::PublicationReport, admin::BudgetRequest)),
    modifiers(&SecurityAndRoles)
)]
pub struct ApiDoc;

/// Adds the bearer scheme and each operation's roles (`x-roles`, from [`ROUTES`]).
struct SecurityAndRoles;
impl utoipa::Modify for SecurityAndRoles {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::extensions::ExtensionsBuilder;
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                ("GET", item.get.as_mut()),
                ("POST", item.post.as_mut()),
                ("DELETE", item.delete.as_mut()),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    let roles: Vec<serde_json::Value> = roles_of(method, path)
                        .iter()
                        .map(|r| serde_json::to_value(r).expect("role"))
                        .collect();
                    let ext = ExtensionsBuilder::new()
                        .add("x-roles", serde_json::Value::Array(roles))
                        .build();
                    match op.extensions.as_mut() {
                        Some(e) => e.merge(ext),
                        None => op.extensions = Some(ext),
                    }
                }
            }
        }
    }
}

async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
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
        .route_layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        // public: the spec and the dashboard's static files (no data in them)
        .route("/openapi.json", get(openapi_json))
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
    pub async fn build(kafka: Option<&KafkaConfig>, cfg: ApiConfig) -> Result<App, Error> {
        cfg.validate()?;
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
            ledger: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::Error;
    use axum::http::StatusCode;

    /// A query's session lists the ledger for every caller, team leads included: a failure
    /// there answers 500 without naming the data directory.
    #[test]
    fn an_unreadable_ledger_directory_names_no_path() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("usage"), b"not a directory").unwrap();
        let e = crate::ledger_view::LedgerView::default()
            .state(dir.path())
            .unwrap_err();
        assert!(matches!(e, Error::LedgerDir { .. }), "{e:?}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let shown = e.to_string();
        let root = dir.path().display().to_string();
        assert!(!shown.contains(&root), "{shown}");
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
    }

    /// A closed snapshot altered on disk is an error naming the file, not an answer.
    #[test]
    fn an_altered_snapshot_is_corrupt() {
        use crate::close::{CloseRecord, Closes};
        let dir = tempfile::tempdir().unwrap();
        let closes = Closes::new(dir.path());
        let rec: CloseRecord = serde_json::from_value(serde_json::json!({
            "period": "2026-01", "closed_at": "2026-02-01T00:00:00Z", "closed_by": "f",
            "previous": null, "watermark": {}, "files": []
        }))
        .unwrap();
        let rec = closes
            .write(rec, vec![("a.json".into(), b"{}".to_vec())])
            .unwrap();
        assert_eq!(closes.read(&rec, "a.json").unwrap(), b"{}");
        let f = dir.path().join("closes/2026-01/a.json");
        let mut perm = std::fs::metadata(&f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&f, perm).unwrap();
        std::fs::write(&f, b"[]").unwrap();
        let e = closes.read(&rec, "a.json").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.to_string().contains("altered"), "{e}");
        let e = closes.read(&rec, "b.json").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
}
