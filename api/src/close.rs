//! Period close: renders a month's chargeback in every grouping and format and stores it as an
//! immutable, hashed snapshot (`closes.rs`), in order, once the month has ended (reopening is
//! not offered: a correction is an adjustment in the next open month); the routes.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::Utc;

use crate::closes::{CloseRecord, Closes};
use crate::period::Month;
use crate::reports::chargeback::{self, Cut, GroupBy, ReportFormat};
use crate::{error, Caller, Error, Shared};

/// Closes `period` for `author`: refuses what would break the order of closes, then writes
/// the snapshot.
pub async fn close(
    s: &Shared,
    period: Month,
    author: &str,
) -> Result<CloseRecord, (StatusCode, String)> {
    let internal = |e: Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    // one close at a time: two would both pass the order check
    let _guard = s.close_lock.lock().await;
    let closes = Closes::new(&s.cfg.data_dir);
    if closes.record(period).map_err(internal)?.is_some() {
        return Err((StatusCode::CONFLICT, format!("{period} is already closed")));
    }
    if period.end() > Utc::now() {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{period} has not ended yet (it ends {})",
                period.end().to_rfc3339()
            ),
        ));
    }
    let last = closes.last().map_err(internal)?;
    // 1. the ledger as it is now: its complete rows are what the snapshot holds
    let state = s
        .ledger
        .settled_state()
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // 2. the first close: not before the ledger's first usage (a month before it has nothing
    //    to bill, and closing it would make every month up to the first usage close first)
    if last.is_none() {
        let first = state.files.iter().map(|f| f.date.as_str()).min();
        let Some(first) = first
            .and_then(|d| d.get(..7))
            .and_then(|m| m.parse::<Month>().ok())
        else {
            return Err((
                StatusCode::CONFLICT,
                "the ledger has no usage yet: there is no month to close".into(),
            ));
        };
        if period < first {
            return Err((
                StatusCode::CONFLICT,
                format!("the ledger's first usage is in {first}: {period} has nothing to close"),
            ));
        }
    }
    // 3. months close in order, with no gap and nothing earlier left open
    match &last {
        Some(l) if period < l.period => {
            return Err((
                StatusCode::CONFLICT,
                format!("{period} precedes the last closed month {}", l.period),
            ))
        }
        Some(l) if period != l.period.next() => {
            return Err((
                StatusCode::CONFLICT,
                format!("close {} first (months close in order)", l.period.next()),
            ))
        }
        Some(_) => {}
        None => {
            // nothing earlier may stay open: its usage would never be billed
            let (from, _) = period.date_bounds();
            let first = state
                .files
                .iter()
                .map(|f| &f.date)
                .filter(|d| **d < from)
                .min();
            if let Some(first) = first {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "the ledger has usage from {first}: close {} first",
                        &first[..7]
                    ),
                ));
            }
        }
    }
    // 4. every report of the month under the watermark, as it will be served forever
    let closed_at = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let cut = Cut {
        upto: Some(state.watermark.clone()),
        adjustments_after: last.as_ref().map(|l| l.watermark.clone()),
    };
    let mut files = vec![];
    for by in GroupBy::ALL {
        let mut c = if s.cfg.rollups {
            chargeback::compute(&s.rollups, &state, period, by, &cut).await
        } else {
            let ctx = crate::catalog::report_session(&s.cfg, &state)
                .await
                .map_err(internal)?;
            chargeback::compute_sql(&ctx, period, by, &cut).await
        }
        .map_err(internal)?;
        c.status = "closed".into();
        c.closed_at = Some(closed_at.clone());
        c.closed_by = Some(author.to_string());
        for f in ReportFormat::ALL {
            let bytes = chargeback::render(&c, f, &s.cfg.invoice_issuer).map_err(internal)?;
            files.push((f.file_name(by), bytes));
        }
    }
    let rec = CloseRecord {
        period,
        closed_at,
        closed_by: author.to_string(),
        previous: last.map(|l| l.period),
        watermark: state.watermark,
        delta_version: Some(state.version),
        files: vec![],
    };
    // 5. written atomically (see Closes::write)
    let rec = tokio::task::spawn_blocking(move || closes.write(rec, files))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(internal)?;
    tracing::info!(period = %rec.period, by = %rec.closed_by, "period closed");
    Ok(rec)
}

/// Closes a month.
#[utoipa::path(post, path = "/v1/periods/{period}/close",
    params(("period" = String, Path, description = "YYYY-MM")),
    description = "Roles: admin, finance. Writes the month's immutable chargeback snapshot; later usage of it is billed as adjustments in the next month.",
    responses((status = 201, body = CloseRecord), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub async fn post_close(
    State(s): State<std::sync::Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    UrlPath(period): UrlPath<String>,
) -> Response {
    let period: Month = match period.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("period: {e}")),
    };
    // the month's chargebacks are computed on the query runtime, like every query
    let task = {
        let s = s.clone();
        async move { close(&s, period, &who.name).await }
    };
    match s.queries.run(task).await {
        Ok(Ok(rec)) => (StatusCode::CREATED, Json(rec)).into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => e.into_response(),
    }
}

/// Closed months.
#[utoipa::path(get, path = "/v1/periods",
    description = "Roles: admin, finance, viewer.",
    responses((status = 200, body = Vec<CloseRecord>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_periods(State(s): State<std::sync::Arc<Shared>>) -> Response {
    match Closes::new(&s.cfg.data_dir).list() {
        Ok(l) => Json(l).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
