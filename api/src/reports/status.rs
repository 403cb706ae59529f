//! Anomaly and budget-status reports: SQL over the `anomalies` and `budgets` tables in the
//! caller's scope.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

use super::showback::parse_instant;
use super::Shared;
use crate::answer;
use crate::error;
use crate::Caller;

/// Query of `GET /v1/reports/anomalies`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnomaliesQuery {
    /// Windows starting at or after (`YYYY-MM-DD` or RFC 3339; default 7 days ago).
    pub from: Option<String>,
    /// Windows starting before (default now).
    pub to: Option<String>,
    /// `json` (default), `csv` or `arrow`.
    pub format: Option<String>,
}

/// Anomalies detected in a range, highest score first.
#[utoipa::path(get, path = "/v1/reports/anomalies", params(AnomaliesQuery),
    description = "Roles: admin, finance, viewer, team_lead (its teams' anomalies only).",
    responses((status = 200), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_anomalies(
    State(s): State<Shared>,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<AnomaliesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (q, format) = match super::begin(&headers, q, |q| q.format.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = chrono::Utc::now();
    let from = match q.from.as_deref().map(|f| parse_instant("from", f)) {
        None => now - chrono::Duration::days(7),
        Some(Ok(t)) => t,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let to = match q.to.as_deref().map(|t| parse_instant("to", t)) {
        None => now,
        Some(Ok(t)) => t,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let sql = format!(
        "SELECT window_start, window_end, scope_kind, scope_value, model, kind, observed, \
         expected, score, method, top_contributors, detected_at, anomaly_id FROM anomalies \
         WHERE window_start >= TIMESTAMP '{}' AND window_start < TIMESTAMP '{}' \
         ORDER BY score DESC, window_start, anomaly_id",
        super::sql_timestamp(from),
        super::sql_timestamp(to)
    );
    answer::scoped(&s, &who, &sql, format).await
}

/// Query of `GET /v1/reports/budgets`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BudgetsQuery {
    /// `json` (default), `csv` or `arrow`.
    pub format: Option<String>,
}

/// Every live budget with its state in the current period (from the latest signal).
#[utoipa::path(get, path = "/v1/reports/budgets", params(BudgetsQuery),
    description = "Roles: admin, finance, viewer, team_lead (its teams' budgets only). Header x-meterline-budgets-as-of: when the budget topics were last read.",
    responses((status = 200), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_budgets(
    State(s): State<Shared>,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<BudgetsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (_, format) = match super::begin(&headers, q, |q| q.format.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let sql = "SELECT * FROM budgets ORDER BY CASE state WHEN 'exceeded' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, budget_id";
    let mut r = answer::scoped(&s, &who, sql, format).await;
    if !r.status().is_success() {
        return r;
    }
    let as_of = s
        .budgets
        .get()
        .refreshed_at
        .map_or("never".to_string(), |t| t.to_rfc3339());
    if let Ok(v) = HeaderValue::from_str(&as_of) {
        r.headers_mut().insert("x-meterline-budgets-as-of", v);
    }
    r
}
