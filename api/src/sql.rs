//! `POST /v1/sql`: one read-only statement, run under the caller's scope, a memory limit, a
//! timeout and a row cap; answered as JSON, CSV or Arrow IPC (`answer`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

use crate::answer::{self, Format};
use crate::{error, Caller, Shared};

/// Body of `POST /v1/sql`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One SQL query (SELECT / WITH / EXPLAIN / DESCRIBE).
    pub sql: String,
}

/// One read-only SQL query over the ledger, in the caller's scope.
#[utoipa::path(post, path = "/v1/sql", request_body = SqlRequest,
    description = "Roles: admin, finance, viewer, team_lead (its teams' rows only, in every table and view). Answer as JSON (default), CSV (Accept: text/csv) or Arrow IPC stream (Accept: application/vnd.apache.arrow.stream); decimals as exact text in JSON and CSV.",
    responses((status = 200), (status = 400), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn post_sql(
    State(s): State<Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"sql\": \"…\"}})"),
            )
        }
    };
    let format = match Format::negotiate(None, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    answer::scoped(&s, &who, &req.sql, format).await
}
