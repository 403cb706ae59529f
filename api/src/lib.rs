//! `meterline api`: SQL over the Parquet ledger for finance and team leads.
//!
//! - `catalog`: the tables and views of a query's session;
//! - `scope`: the row-level scope of a `team_lead`, in the physical plan;
//! - `sql`: `POST /v1/sql`.

pub mod catalog;
pub mod config;
pub mod scope;
pub mod sql;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meterline_schemas::auth::{AuthFailure, Principal, Role, TokenTable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ApiConfig;

/// Errors of the API crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(String),
    #[error("query: {0}")]
    Query(String),
}

impl Error {
    pub fn io(e: impl std::fmt::Display) -> Error {
        Error::Io(e.to_string())
    }
    pub fn query(e: impl std::fmt::Display) -> Error {
        Error::Query(e.to_string())
    }
}

pub struct Shared {
    pub cfg: ApiConfig,
    pub tokens: TokenTable,
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

pub(crate) fn authorize(
    s: &Shared,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<Principal, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.tokens.authorize(h, roles).map_err(|f| match f {
        AuthFailure::Unauthenticated => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        AuthFailure::Forbidden => error(
            StatusCode::FORBIDDEN,
            "this token's role may not use this route",
        ),
    })
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/sql", post(sql::post_sql))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// A built, not yet serving, API.
pub struct App {
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl App {
    pub async fn build(cfg: ApiConfig) -> Result<App, Error> {
        cfg.validate()?;
        let listener = TcpListener::bind(&cfg.listen).await.map_err(Error::io)?;
        let shared = Arc::new(Shared {
            tokens: TokenTable::new(&cfg.tokens),
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

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let stop = self.stop.clone();
        axum::serve(self.listener, router(self.shared))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(Error::io)
    }
}
