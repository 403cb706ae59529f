//! The monthly chargeback: per group (cost center, team or project) and model, what each
//! owes, rounded to cents so the lines sum exactly to the total.
//!
//! Which rows a month's chargeback holds (`Cut`):
//! - usage: rows that occurred in the month; for a close, only those below the close's
//!   watermark (what the ledger held completely at that moment);
//! - adjustments, in the first month after the last closed one only: rows that occurred
//!   before it and arrived after the last close (at or past its watermark) — late usage of a
//!   closed month is billed here, never by rewriting the closed month.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Deserialize;

pub use super::render::{render, ReportFormat};
pub use super::statement::{assemble, Category, Chargeback, GroupBy, Line, Total};
use super::{collect, ints, strings, unscaled_money, Shared};
use crate::closes::{CloseRecord, Closes};
use crate::ledger_view::{LedgerFile, LedgerState, Watermark};
use crate::period::Month;
use crate::rollup::{self, OffsetRange, Rollups, Sums};
use crate::{error, Error};

/// Which rows go in (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// Only rows below this watermark (a close); `None`: every complete row.
    pub upto: Option<Watermark>,
    /// Bill late rows of earlier months as adjustments: those at or past this watermark.
    pub adjustments_after: Option<Watermark>,
}

/// The SQL of one category's lines. Its keys are text as DataFusion groups text fastest:
/// `VARCHAR` (`Utf8View`; the ledger's text already reads as views, so the casts cost
/// nothing and keep the SQL right over any table), so the GROUP BY runs on DataFusion's
/// column-wise group values; dictionary keys send it to the row-format fallback, which
/// encodes every key of every row. The month is no key: usage lines all have the report's
/// month (the WHERE says so), and adjustments are grouped by `date` — the partition value, one per
/// file — and folded into months by [`compute_sql`], instead of `substr(date, 1, 7)` on
/// every row.
fn lines_sql(period: Month, by: GroupBy, cut: &Cut, category: Category) -> Option<String> {
    let (from, to) = period.date_bounds();
    let (mut filter, day) = match category {
        Category::Usage => (format!("date >= '{from}' AND date < '{to}'"), ""),
        Category::Adjustment => {
            let after = cut.adjustments_after.as_ref()?;
            (
                format!("date < '{from}' AND ({})", after.sql(true)),
                "date AS charge_date, ",
            )
        }
    };
    if let Some(upto) = &cut.upto {
        filter.push_str(&format!(" AND ({})", upto.sql(false)));
    }
    let keys = [
        ("org", "org"),
        (by.column(), "grp"),
        ("provider", "provider"),
        ("model", "model"),
        ("currency", "currency"),
    ]
    .map(|(c, name)| (format!("CAST({c} AS VARCHAR)"), name));
    let select: Vec<String> = keys.iter().map(|(e, n)| format!("{e} AS {n}")).collect();
    let mut group: Vec<String> = keys.into_iter().map(|(e, _)| e).collect();
    if category == Category::Adjustment {
        group.insert(0, "date".into());
    }
    Some(format!(
        "SELECT {day}{}, \
         count(*) AS events, sum(input_tokens) AS input_tokens, \
         sum(cache_read_tokens) AS cache_read_tokens, \
         sum(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_write_tokens, \
         sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, \
         sum(cost_total) AS list_cost \
         FROM usage WHERE {filter} \
         GROUP BY {}",
        select.join(", "),
        group.join(", ")
    ))
}

/// The SQL a month's usage lines are computed with (no close, no adjustments): what
/// `meterline bench api` also sends as a team lead's query.
pub fn usage_lines_sql(period: Month, by: GroupBy) -> String {
    lines_sql(period, by, &Cut::default(), Category::Usage).expect("usage lines always have SQL")
}

/// Computes a chargeback from the daily rollups (status `open`; a close sets its own). The
/// same lines as [`compute_sql`], without scanning every event each time.
pub async fn compute(
    rollups: &std::sync::Arc<Rollups>,
    ledger: &LedgerState,
    period: Month,
    by: GroupBy,
    cut: &Cut,
) -> Result<Chargeback, Error> {
    let bounds = period.date_bounds();
    let (from, to) = (bounds.0.as_str(), bounds.1.as_str());
    let upto = |p: i32| cut.upto.as_ref().map(|w| w.end(p));
    let grp = rollup::dimension(by.column());
    let [org, provider, model, currency] =
        ["org", "provider", "model", "currency"].map(rollup::dimension);
    // summed in interned ids, per month (`YYYY-MM` as bytes); names looked up once per line
    let month_key = |f: &LedgerFile, k: &[u32; 7]| {
        let mut month = [0u8; 7];
        month.copy_from_slice(&f.date.as_bytes()[..7]);
        (month, [k[org], k[grp], k[provider], k[model], k[currency]])
    };
    let mut sums: BTreeMap<(Category, String, [u32; 5]), Sums> = BTreeMap::new();
    for category in [Category::Usage, Category::Adjustment] {
        // which files by date, and which offsets of each partition
        type Range<'r> = Box<dyn Fn(i32) -> OffsetRange + Send + Sync + 'r>;
        let (in_period, range): (fn(&str, &str, &str) -> bool, Range) =
            match (category, &cut.adjustments_after) {
                (Category::Usage, _) => (
                    |d, from, to| d >= from && d < to,
                    Box::new(|p| OffsetRange {
                        lo: None,
                        hi: upto(p),
                    }),
                ),
                (Category::Adjustment, Some(after)) => (
                    |d, from, _| d < from,
                    Box::new(move |p| OffsetRange {
                        lo: after.0.get(&p).copied(),
                        hi: upto(p),
                    }),
                ),
                (Category::Adjustment, None) => continue,
            };
        let wanted = |f: &LedgerFile| in_period(&f.date, from, to);
        let by_month = rollups.sum_by(ledger, wanted, range, month_key).await?;
        for ((month, ids), s) in by_month {
            sums.entry((category, String::from_utf8_lossy(&month).into_owned(), ids))
                .or_default()
                .add(&s)?;
        }
    }
    let text = |id: u32| rollups.name(id).as_deref().unwrap_or_default().to_string();
    let mut lines = vec![];
    for ((category, charge_period, [o, g, p, m, c]), s) in sums {
        let cost = meterline_schemas::Money::from_unscaled(s.cost)
            .map_err(|e| Error::Query(format!("list_cost: {e}")))?;
        lines.push(Line {
            category,
            charge_period,
            org: text(o),
            group: rollups.name(g).as_deref().map(str::to_string),
            provider: text(p),
            model: text(m),
            currency: text(c),
            events: s.events,
            input_tokens: s.input_tokens,
            cache_read_tokens: s.cache_read_tokens,
            cache_write_tokens: s.cache_write_tokens,
            output_tokens: s.output_tokens,
            reasoning_tokens: s.reasoning_tokens,
            list_cost: cost.decimal().normalize(),
            billed_cost: Decimal::ZERO,
        });
    }
    Ok(assemble(period, by, lines))
}

/// Computes a chargeback with one SQL scan of the ledger (`[api] rollups = false`; tests hold
/// [`compute`] to the same answer).
pub async fn compute_sql(
    ctx: &datafusion::prelude::SessionContext,
    period: Month,
    by: GroupBy,
    cut: &Cut,
) -> Result<Chargeback, Error> {
    // a line per (category, month, org, group, provider, model, currency); adjustments come
    // per day and are folded into their month here
    type Key = (
        Category,
        String,
        String,
        Option<String>,
        String,
        String,
        String,
    );
    // money summed unscaled (`Decimal128(38, 18)` as i128, checked), made a decimal once
    let mut lines: BTreeMap<Key, (Line, i128)> = BTreeMap::new();
    let overflow = || Error::Query("a chargeback sum overflowed".into());
    let add = |a: &mut i64, b: i64| -> Result<(), Error> {
        *a = a.checked_add(b).ok_or_else(overflow)?;
        Ok(())
    };
    let usage_period = period.to_string();
    for category in [Category::Usage, Category::Adjustment] {
        let Some(sql) = lines_sql(period, by, cut, category) else {
            continue;
        };
        for b in collect(ctx, &sql).await? {
            let days = match category {
                Category::Usage => None,
                Category::Adjustment => Some(strings(&b, "charge_date")?),
            };
            let (org, grp) = (strings(&b, "org")?, strings(&b, "grp")?);
            let (prov, model, cur) = (
                strings(&b, "provider")?,
                strings(&b, "model")?,
                strings(&b, "currency")?,
            );
            let (ev, inp, cr, cw, out, rs) = (
                ints(&b, "events")?,
                ints(&b, "input_tokens")?,
                ints(&b, "cache_read_tokens")?,
                ints(&b, "cache_write_tokens")?,
                ints(&b, "output_tokens")?,
                ints(&b, "reasoning_tokens")?,
            );
            let cost = unscaled_money(&b, "list_cost")?;
            for i in 0..b.num_rows() {
                let charge_period = match &days {
                    None => usage_period.clone(),
                    // `YYYY-MM-DD`: its month
                    Some(d) => d[i]
                        .as_deref()
                        .unwrap_or_default()
                        .chars()
                        .take(7)
                        .collect(),
                };
                let key = (
                    category,
                    charge_period.clone(),
                    org[i].clone().unwrap_or_default(),
                    grp[i].clone(),
                    prov[i].clone().unwrap_or_default(),
                    model[i].clone().unwrap_or_default(),
                    cur[i].clone().unwrap_or_default(),
                );
                let (line, sum) = lines.entry(key).or_insert_with_key(|k| {
                    let line = Line {
                        category,
                        charge_period,
                        org: k.2.clone(),
                        group: k.3.clone(),
                        provider: k.4.clone(),
                        model: k.5.clone(),
                        currency: k.6.clone(),
                        events: 0,
                        input_tokens: 0,
                        cache_read_tokens: 0,
                        cache_write_tokens: 0,
                        output_tokens: 0,
                        reasoning_tokens: 0,
                        list_cost: Decimal::ZERO,
                        billed_cost: Decimal::ZERO,
                    };
                    (line, 0)
                });
                add(&mut line.events, ev[i])?;
                add(&mut line.input_tokens, inp[i])?;
                add(&mut line.cache_read_tokens, cr[i])?;
                add(&mut line.cache_write_tokens, cw[i])?;
                add(&mut line.output_tokens, out[i])?;
                add(&mut line.reasoning_tokens, rs[i])?;
                *sum = sum.checked_add(cost[i]).ok_or_else(overflow)?;
            }
        }
    }
    let lines = lines
        .into_values()
        .map(|(mut line, sum)| {
            line.list_cost = meterline_schemas::Money::from_unscaled(sum)
                .map_err(|e| Error::Query(format!("list_cost: {e}")))?
                .decimal()
                .normalize();
            Ok(line)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(assemble(period, by, lines))
}

/// Query of `GET /v1/reports/chargeback`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChargebackQuery {
    /// `YYYY-MM` (UTC calendar month of `occurred_at`).
    pub period: String,
    /// `cost_center` (default), `team` or `project`.
    pub by: Option<String>,
    /// `json` (default), `csv` or `focus` (FOCUS 1.2 CSV); `Accept: text/csv` means `csv`.
    pub format: Option<String>,
}

/// What a month's chargeback is made of, given the closes so far.
pub enum Source {
    /// Closed: served from its snapshot.
    Closed(CloseRecord),
    /// Open: computed now with this cut.
    Open(Cut),
}

/// Decides how `period` is answered: closed months from their snapshot; the first month after
/// the last close carries the adjustments; a month before the first close has none of its own
/// (its late usage is billed as adjustments), so it is refused.
pub fn source(closes: &Closes, period: Month) -> Result<Source, (StatusCode, String)> {
    if let Some(rec) = closes.record(period).map_err(internal)? {
        return Ok(Source::Closed(rec));
    }
    match closes.last().map_err(internal)? {
        None => Ok(Source::Open(Cut::default())),
        Some(last) if period < last.period => Err((
            StatusCode::CONFLICT,
            format!(
                "{period} precedes the first closed month {}; its usage is billed as adjustments in {}",
                last.period,
                last.period.next()
            ),
        )),
        Some(last) => Ok(Source::Open(Cut {
            upto: None,
            adjustments_after: (period == last.period.next()).then_some(last.watermark),
        })),
    }
}

fn internal(e: Error) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The chargeback of a month.
#[utoipa::path(get, path = "/v1/reports/chargeback", params(ChargebackQuery),
    description = "Roles: admin, finance, viewer. A closed month answers its snapshot's bytes.",
    responses((status = 200, body = Chargeback), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub async fn get_chargeback(
    State(s): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<ChargebackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match super::params(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let period: Month = match q.period.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("period: {e}")),
    };
    let by = match GroupBy::parse(q.by.as_deref().unwrap_or("cost_center")) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let format = match ReportFormat::negotiate(q.format.as_deref(), &headers) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let closes = Closes::new(&s.cfg.data_dir);
    let bytes = match source(&closes, period) {
        Err((status, msg)) => return error(status, msg),
        Ok(Source::Closed(rec)) => match closes.read(&rec, &format.file_name(by)) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok(Source::Open(cut)) => {
            // computed on the query runtime, like every query
            let task = {
                let s = s.clone();
                async move { open_chargeback(&s, period, by, &cut).await }
            };
            let c = match s.queries.run(task).await {
                Ok(Ok(c)) => c,
                Ok(Err(r)) => return r,
                Err(e) => return e.into_response(),
            };
            match render(&c, format, &s.cfg.invoice_issuer) {
                Ok(b) => b,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    };
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// An open month's chargeback from the ledger as it is now: from the rollups, or by SQL if
/// they are switched off.
pub async fn open_chargeback(
    s: &crate::Shared,
    period: Month,
    by: GroupBy,
    cut: &Cut,
) -> Result<Chargeback, Response> {
    let failed = |e: Error| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    if s.cfg.rollups {
        let state = s
            .ledger
            .settled_state()
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        compute(&s.rollups, &state, period, by, cut)
            .await
            .map_err(failed)
    } else {
        let ctx = s
            .report_session()
            .await
            .map_err(IntoResponse::into_response)?;
        compute_sql(&ctx, period, by, cut).await.map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sql_is_built_from_validated_parts_only() {
        let m: Month = "2026-11".parse().unwrap();
        let cut = Cut {
            upto: Some(Watermark([(0, 10)].into_iter().collect())),
            adjustments_after: Some(Watermark([(0, 4)].into_iter().collect())),
        };
        let usage = lines_sql(m, GroupBy::Project, &cut, Category::Usage).unwrap();
        assert!(usage.contains("date >= '2026-11-01' AND date < '2026-12-01'"));
        assert!(usage.contains("kafka_offset < 10"));
        // no per-row month: usage lines have the report's, adjustments are grouped by day
        assert!(!usage.contains("substr") && !usage.contains("GROUP BY date"));
        let adj = lines_sql(m, GroupBy::Project, &cut, Category::Adjustment).unwrap();
        assert!(adj.contains("date < '2026-11-01'") && adj.contains("kafka_offset >= 4"));
        assert!(!adj.contains("substr") && adj.contains("GROUP BY date, "));
        assert!(lines_sql(m, GroupBy::Team, &Cut::default(), Category::Adjustment).is_none());
    }
}
