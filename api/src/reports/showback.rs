//! Showback: spend over any time range, by any of a fixed set of dimensions, in hour / day /
//! week / month buckets. The SQL is built from the validated parameters only (dimension names
//! from a fixed list, timestamps re-formatted by us), and runs in the caller's scope: a team
//! lead's showback holds its teams' rows only.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use super::Shared;
use crate::answer;
use crate::error;
use crate::Caller;

/// Dimensions showback groups by: (URL name, ledger column).
pub const DIMENSIONS: [(&str, &str); 12] = [
    ("org", "org"),
    ("business_unit", "business_unit"),
    ("cost_center", "cost_center"),
    ("team", "team"),
    ("project", "project"),
    ("environment", "environment"),
    ("provider", "provider"),
    ("model", "model"),
    ("api_key", "api_key_id"),
    ("user", "user_id"),
    ("operation", "operation"),
    ("region", "region"),
];

pub const GRANULARITIES: [&str; 4] = ["hour", "day", "week", "month"];

/// Query of `GET /v1/reports/showback`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ShowbackQuery {
    /// Inclusive start: `YYYY-MM-DD` (00:00 UTC) or RFC 3339.
    pub from: String,
    /// Exclusive end, same forms.
    pub to: String,
    /// Comma-separated dimensions (default `team,model`): org, business_unit, cost_center,
    /// team, project, environment, provider, model, api_key, user, operation, region.
    pub by: Option<String>,
    /// `hour`, `day` (default), `week` (ISO, Monday) or `month`.
    pub granularity: Option<String>,
    /// `json` (default), `csv` or `arrow`; or by `Accept`.
    pub format: Option<String>,
}

pub fn parse_instant(field: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{field}: {s:?} is neither YYYY-MM-DD nor an RFC 3339 time"))
}

/// The showback SQL for validated parameters.
pub fn showback_sql(q: &ShowbackQuery) -> Result<String, String> {
    let from = parse_instant("from", &q.from)?;
    let to = parse_instant("to", &q.to)?;
    if to <= from {
        return Err("to: must be after from".into());
    }
    if to - from > chrono::Duration::days(3660) {
        return Err("to: a showback spans at most 10 years".into());
    }
    let g = q.granularity.as_deref().unwrap_or("day");
    if !GRANULARITIES.contains(&g) {
        return Err(format!(
            "granularity: {g:?} is not one of hour, day, week, month"
        ));
    }
    let mut dims = vec![];
    for name in q.by.as_deref().unwrap_or("team,model").split(',') {
        let name = name.trim();
        let (_, column) = DIMENSIONS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("by: {name:?} is not a showback dimension"))?;
        if !dims.iter().any(|(n, _)| *n == name) {
            dims.push((name, *column));
        }
    }
    let select: Vec<String> = dims.iter().map(|(n, c)| format!("{c} AS {n}")).collect();
    let group: Vec<&str> = dims.iter().map(|(_, c)| *c).collect();
    // date bounds prune partitions; the occurred_at bounds are exact
    let (d0, d1) = (
        from.date_naive().format("%Y-%m-%d"),
        to.date_naive().format("%Y-%m-%d"),
    );
    Ok(format!(
        "SELECT date_trunc('{g}', occurred_at) AS bucket, {sel}, currency, count(*) AS events, \
         sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens, \
         sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, \
         sum(cost_total) AS cost \
         FROM usage WHERE date >= '{d0}' AND date <= '{d1}' \
         AND occurred_at >= TIMESTAMP '{f}' AND occurred_at < TIMESTAMP '{t}' \
         GROUP BY date_trunc('{g}', occurred_at), {grp}, currency \
         ORDER BY bucket, {grp}, currency",
        sel = select.join(", "),
        grp = group.join(", "),
        f = super::sql_timestamp(from),
        t = super::sql_timestamp(to),
    ))
}

/// Spend by dimensions and time bucket.
#[utoipa::path(get, path = "/v1/reports/showback", params(ShowbackQuery),
    description = "Roles: admin, finance, viewer, team_lead (its teams' rows only).",
    responses((status = 200), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_showback(
    State(s): State<Shared>,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<ShowbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (q, format) = match super::begin(&headers, q, |q| q.format.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let sql = match showback_sql(&q) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    answer::scoped(&s, &who, &sql, format).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: &str, to: &str, by: &str, g: &str) -> ShowbackQuery {
        ShowbackQuery {
            from: from.into(),
            to: to.into(),
            by: Some(by.into()),
            granularity: Some(g.into()),
            format: None,
        }
    }

    #[test]
    fn only_known_dimensions_and_granularities_reach_the_sql() {
        let sql =
            showback_sql(&q("2026-11-01", "2026-11-08", "team,api_key,team", "week")).unwrap();
        assert!(sql.contains("date_trunc('week', occurred_at)"));
        assert!(sql.contains("team AS team, api_key_id AS api_key,"));
        assert!(sql.contains("occurred_at >= TIMESTAMP '2026-11-01T00:00:00.000000Z'"));
        for (by, g) in [("team; DROP", "day"), ("team", "minute"), ("secret", "day")] {
            assert!(
                showback_sql(&q("2026-11-01", "2026-11-02", by, g)).is_err(),
                "{by} {g}"
            );
        }
        assert!(showback_sql(&q("2026-11-02", "2026-11-01", "team", "day")).is_err());
        assert!(showback_sql(&q("yesterday", "2026-11-01", "team", "day")).is_err());
        let t = showback_sql(&q(
            "2026-11-01T10:30:00+01:00",
            "2026-11-01T12:00:00Z",
            "model",
            "hour",
        ))
        .unwrap();
        assert!(t.contains("TIMESTAMP '2026-11-01T09:30:00.000000Z'"), "{t}");
    }
}
