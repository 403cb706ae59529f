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
use serde::{Deserialize, Serialize};

use super::{cents, collect, ints, strings, unscaled_money, Shared};
use crate::catalog::Scope;
use crate::closes::{CloseRecord, Closes};
use crate::ledger_view::{LedgerFile, LedgerState, Watermark};
use crate::period::Month;
use crate::rollup::{self, OffsetRange, Rollups, Sums};
use crate::{error, Error};

/// What chargeback lines are grouped by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    CostCenter,
    Team,
    Project,
}

impl GroupBy {
    pub const ALL: [GroupBy; 3] = [GroupBy::CostCenter, GroupBy::Team, GroupBy::Project];

    /// The ledger column (also the name used in URLs and files).
    pub fn column(&self) -> &'static str {
        match self {
            GroupBy::CostCenter => "cost_center",
            GroupBy::Team => "team",
            GroupBy::Project => "project",
        }
    }

    pub fn parse(s: &str) -> Result<GroupBy, String> {
        GroupBy::ALL
            .into_iter()
            .find(|g| g.column() == s)
            .ok_or_else(|| format!("by: {s:?} is not one of cost_center, team, project"))
    }
}

/// FOCUS ChargeCategory of a line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Category {
    Usage,
    Adjustment,
}

/// One line: a group's use of one model in one currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    pub category: Category,
    /// Month the usage occurred in (`YYYY-MM`): the report's month for usage, an earlier
    /// (closed) month for adjustments.
    pub charge_period: String,
    pub org: String,
    /// Cost center / team / project; null for usage no rule attributed to one.
    pub group: Option<String>,
    pub provider: String,
    pub model: String,
    pub currency: String,
    pub events: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// Exact cost at list prices (sum of the events' costs, full precision).
    #[schema(value_type = String)]
    pub list_cost: Decimal,
    /// What is charged: cents, allocated so that the lines of a billing account × category ×
    /// currency sum to that block's exact cost rounded to cents, whatever the grouping.
    #[schema(value_type = String)]
    pub billed_cost: Decimal,
}

/// Per currency: the exact and the billed total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Total {
    pub currency: String,
    #[schema(value_type = String)]
    pub list_cost: Decimal,
    /// The sum of the lines' `billed_cost`: per billing account (`org`) × category, the exact
    /// cost rounded half away from zero to cents (see [`assemble`]).
    #[schema(value_type = String)]
    pub billed_cost: Decimal,
    #[schema(value_type = String)]
    pub adjustments_billed_cost: Decimal,
    pub lines: usize,
}

/// A month's chargeback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Chargeback {
    /// `YYYY-MM`.
    pub period: String,
    pub by: GroupBy,
    /// `open` (computed now; may still change) or `closed` (a snapshot; never changes).
    pub status: String,
    pub closed_at: Option<String>,
    pub closed_by: Option<String>,
    pub totals: Vec<Total>,
    pub lines: Vec<Line>,
}

/// Which rows go in (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// Only rows below this watermark (a close); `None`: every complete row.
    pub upto: Option<Watermark>,
    /// Bill late rows of earlier months as adjustments: those at or past this watermark.
    pub adjustments_after: Option<Watermark>,
}

/// The SQL of one category's lines. Its keys are text as DataFusion groups text fastest: the
/// ledger's dictionary columns cast to `VARCHAR` (`Utf8View`, built from each batch's few
/// dictionary values and gathered by key), so the GROUP BY runs on DataFusion's column-wise
/// group values; dictionary keys send it to the row-format fallback, which encodes every
/// key of every row. The month is no key: usage lines all have the report's month (the
/// WHERE says so), and adjustments are grouped by `date` — the partition value, one per
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
        let wanted: Box<dyn Fn(&LedgerFile) -> Option<OffsetRange> + Send + Sync> =
            match (category, &cut.adjustments_after) {
                (Category::Usage, _) => Box::new(|f: &LedgerFile| {
                    (f.date.as_str() >= from && f.date.as_str() < to).then_some(OffsetRange {
                        lo: None,
                        hi: upto(f.partition),
                    })
                }),
                (Category::Adjustment, Some(after)) => Box::new(move |f: &LedgerFile| {
                    (f.date.as_str() < from).then_some(OffsetRange {
                        lo: after.0.get(&f.partition).copied(),
                        hi: upto(f.partition),
                    })
                }),
                (Category::Adjustment, None) => continue,
            };
        let by_month = rollups.sum_by(&ledger.files, wanted, month_key).await?;
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

/// Orders the lines, allocates cents and totals them. Pure.
///
/// Cents are allocated per billing account (`org`) × category × currency, the block an
/// internal invoice is made of: the block's exact total is rounded half away from zero to
/// cents, then spread over its lines by largest remainder ([`cents::allocate`]). A block holds
/// the same rows whatever the grouping, so what each account owes per category and currency
/// does not move with `by=`; only how it splits into lines does. A currency's billed total is
/// the sum of its blocks' totals (which may differ from its exact total rounded once by a cent
/// per block).
pub fn assemble(period: Month, by: GroupBy, mut lines: Vec<Line>) -> Chargeback {
    lines.sort_by(|a, b| {
        (
            &a.currency,
            a.category,
            &a.charge_period,
            &a.org,
            &a.group,
            &a.provider,
            &a.model,
        )
            .cmp(&(
                &b.currency,
                b.category,
                &b.charge_period,
                &b.org,
                &b.group,
                &b.provider,
                &b.model,
            ))
    });
    let mut blocks: BTreeMap<(&str, &str, Category), Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        blocks
            .entry((&l.currency, &l.org, l.category))
            .or_default()
            .push(i);
    }
    let mut billed = vec![Decimal::ZERO; lines.len()];
    for idx in blocks.values() {
        let exact: Vec<Decimal> = idx.iter().map(|&i| lines[i].list_cost).collect();
        for (&i, c) in idx.iter().zip(cents::allocate(&exact)) {
            billed[i] = c;
        }
    }
    for (l, c) in lines.iter_mut().zip(billed) {
        l.billed_cost = c;
    }
    let mut by_currency: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        by_currency.entry(l.currency.clone()).or_default().push(i);
    }
    let cents_sum = |it: &mut dyn Iterator<Item = &Line>| {
        let mut d: Decimal = it.map(|l| l.billed_cost).sum();
        d.rescale(cents::BILLED_SCALE);
        d
    };
    let totals = by_currency
        .into_iter()
        .map(|(currency, idx)| {
            let list_cost: Decimal = idx.iter().map(|&i| lines[i].list_cost).sum();
            Total {
                currency,
                list_cost: list_cost.normalize(),
                billed_cost: cents_sum(&mut idx.iter().map(|&i| &lines[i])),
                adjustments_billed_cost: cents_sum(
                    &mut idx
                        .iter()
                        .map(|&i| &lines[i])
                        .filter(|l| l.category == Category::Adjustment),
                ),
                lines: idx.len(),
            }
        })
        .collect();
    Chargeback {
        period: period.to_string(),
        by,
        status: "open".into(),
        closed_at: None,
        closed_by: None,
        totals,
        lines,
    }
}

/// Report formats: the JSON document, flat CSV, FOCUS 1.2 CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
    Focus,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 3] = [ReportFormat::Json, ReportFormat::Csv, ReportFormat::Focus];

    pub fn negotiate(param: Option<&str>, headers: &HeaderMap) -> Result<ReportFormat, String> {
        match param {
            Some("json") => Ok(ReportFormat::Json),
            Some("csv") => Ok(ReportFormat::Csv),
            Some("focus") => Ok(ReportFormat::Focus),
            Some(o) => Err(format!("format: {o:?} is not one of json, csv, focus")),
            None => {
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Ok(if accept.contains("text/csv") {
                    ReportFormat::Csv
                } else {
                    ReportFormat::Json
                })
            }
        }
    }

    /// Name of this format's file in a close snapshot.
    pub fn file_name(&self, by: GroupBy) -> String {
        let ext = match self {
            ReportFormat::Json => "json",
            ReportFormat::Csv => "csv",
            ReportFormat::Focus => "focus.csv",
        };
        format!("chargeback-{}.{ext}", by.column())
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            ReportFormat::Json => "application/json",
            ReportFormat::Csv | ReportFormat::Focus => "text/csv",
        }
    }
}

/// The bytes of `c` in `format`.
pub fn render(c: &Chargeback, format: ReportFormat, issuer: &str) -> Result<Vec<u8>, Error> {
    match format {
        ReportFormat::Json => serde_json::to_vec_pretty(c).map_err(Error::query),
        ReportFormat::Csv => to_csv(c),
        ReportFormat::Focus => super::focus::to_csv(c, issuer),
    }
}

fn to_csv(c: &Chargeback) -> Result<Vec<u8>, Error> {
    let header = [
        "period",
        "category",
        "charge_period",
        "org",
        c.by.column(),
        "provider",
        "model",
        "currency",
        "events",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "list_cost",
        "billed_cost",
    ];
    let rows = c.lines.iter().map(|l| {
        Ok(vec![
            c.period.clone(),
            format!("{:?}", l.category),
            l.charge_period.clone(),
            l.org.clone(),
            l.group.clone().unwrap_or_default(),
            l.provider.clone(),
            l.model.clone(),
            l.currency.clone(),
            l.events.to_string(),
            l.input_tokens.to_string(),
            l.cache_read_tokens.to_string(),
            l.cache_write_tokens.to_string(),
            l.output_tokens.to_string(),
            l.reasoning_tokens.to_string(),
            l.list_cost.to_string(),
            l.billed_cost.to_string(),
        ])
    });
    super::csv_bytes(header, rows)
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
            .settled_state(&s.cfg.data_dir)
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        compute(&s.rollups, &state, period, by, cut)
            .await
            .map_err(failed)
    } else {
        let ctx = s
            .session(&Scope::All)
            .await
            .map_err(IntoResponse::into_response)?;
        compute_sql(&ctx, period, by, cut).await.map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn line(cat: Category, group: &str, model: &str, cur: &str, cost: &str) -> Line {
        Line {
            category: cat,
            charge_period: "2026-10".into(),
            org: "acme".into(),
            group: Some(group.into()),
            provider: "openai".into(),
            model: model.into(),
            currency: cur.into(),
            events: 1,
            input_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            list_cost: Decimal::from_str(cost).unwrap(),
            billed_cost: Decimal::ZERO,
        }
    }

    #[test]
    fn totals_per_currency_and_lines_sum_to_them() {
        let m: Month = "2026-11".parse().unwrap();
        let c = assemble(
            m,
            GroupBy::Team,
            vec![
                line(Category::Usage, "b", "gpt-4o", "USD", "0.335"),
                line(Category::Adjustment, "a", "gpt-4o", "USD", "0.335"),
                line(Category::Usage, "a", "gpt-4o", "USD", "0.335"),
                line(Category::Usage, "a", "claude", "EUR", "10.004"),
            ],
        );
        // EUR before USD; within USD usage before adjustment, then by group
        let order: Vec<(&str, Category, &str)> = c
            .lines
            .iter()
            .map(|l| (l.currency.as_str(), l.category, l.group.as_deref().unwrap()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("EUR", Category::Usage, "a"),
                ("USD", Category::Usage, "a"),
                ("USD", Category::Usage, "b"),
                ("USD", Category::Adjustment, "a"),
            ]
        );
        for t in &c.totals {
            let sum: Decimal = c
                .lines
                .iter()
                .filter(|l| l.currency == t.currency)
                .map(|l| l.billed_cost)
                .sum();
            assert_eq!(sum, t.billed_cost, "{}", t.currency);
        }
        let usd = c.totals.iter().find(|t| t.currency == "USD").unwrap();
        assert_eq!(usd.list_cost, Decimal::from_str("1.005").unwrap());
        // usage 0.67 (exactly) + the adjustment's 0.335 rounded on its own to 0.34
        assert_eq!(usd.billed_cost, Decimal::from_str("1.01").unwrap());
        assert_eq!(
            usd.adjustments_billed_cost,
            Decimal::from_str("0.34").unwrap()
        );
        let billed: Vec<String> = c.lines.iter().map(|l| l.billed_cost.to_string()).collect();
        // ties within the usage block go to the earlier line (a)
        assert_eq!(billed, ["10.00", "0.34", "0.33", "0.34"]);
    }

    mod grouping {
        //! The cents of every billing account × category × currency do not depend on the
        //! grouping (property test over random ledgers, all three groupings).
        use super::*;
        use proptest::prelude::*;

        /// One ledger row, as its tenant and cost.
        #[derive(Debug, Clone)]
        struct Row {
            org: &'static str,
            cost_center: Option<&'static str>,
            team: Option<&'static str>,
            project: Option<&'static str>,
            provider: &'static str,
            model: &'static str,
            currency: &'static str,
            category: Category,
            charge_period: &'static str,
            /// Cost in units of 10^-18 (the ledger's scale).
            atto: i64,
        }

        fn row() -> impl Strategy<Value = Row> {
            (
                (
                    prop::sample::select(vec!["acme", "globex", "unattributed"]),
                    prop::option::of(prop::sample::select(vec!["cc-1", "cc-2", "cc-3"])),
                    prop::option::of(prop::sample::select(vec!["search", "ads", "risk", "ml"])),
                    prop::option::of(prop::sample::select(vec!["web", "api", "batch"])),
                ),
                (
                    prop::sample::select(vec![
                        ("openai", "gpt-4o"),
                        ("openai", "gpt-4o-mini"),
                        ("anthropic", "claude"),
                    ]),
                    prop::sample::select(vec!["USD", "EUR"]),
                    prop::sample::select(vec![
                        (Category::Usage, "2026-11"),
                        (Category::Adjustment, "2026-10"),
                        (Category::Adjustment, "2026-09"),
                    ]),
                    // up to 0.05: a few cents, with 18-decimal fractions
                    0i64..50_000_000_000_000_000,
                ),
            )
                .prop_map(
                    |(
                        (org, cost_center, team, project),
                        ((provider, model), currency, (category, charge_period), atto),
                    )| Row {
                        org,
                        cost_center,
                        team,
                        project,
                        provider,
                        model,
                        currency,
                        category,
                        charge_period,
                        atto,
                    },
                )
        }

        /// The chargeback's lines for `by`, summed from the rows as the ledger query does.
        fn lines(rows: &[Row], by: GroupBy) -> Vec<Line> {
            let mut sums: BTreeMap<_, (i64, Decimal)> = BTreeMap::new();
            for r in rows {
                let g = match by {
                    GroupBy::CostCenter => r.cost_center,
                    GroupBy::Team => r.team,
                    GroupBy::Project => r.project,
                };
                let e = sums
                    .entry((
                        r.category,
                        r.charge_period,
                        r.org,
                        g,
                        r.provider,
                        r.model,
                        r.currency,
                    ))
                    .or_default();
                e.0 += 1;
                e.1 += Decimal::new(r.atto, 18);
            }
            sums.into_iter()
                .map(
                    |((category, cp, org, g, provider, model, currency), (events, cost))| Line {
                        category,
                        charge_period: cp.into(),
                        org: org.into(),
                        group: g.map(str::to_string),
                        provider: provider.into(),
                        model: model.into(),
                        currency: currency.into(),
                        events,
                        input_tokens: 0,
                        cache_read_tokens: 0,
                        cache_write_tokens: 0,
                        output_tokens: 0,
                        reasoning_tokens: 0,
                        list_cost: cost.normalize(),
                        billed_cost: Decimal::ZERO,
                    },
                )
                .collect()
        }

        type Block = (String, String, Category);

        fn blocks(c: &Chargeback) -> BTreeMap<Block, (Decimal, Decimal)> {
            let mut out: BTreeMap<Block, (Decimal, Decimal)> = BTreeMap::new();
            for l in &c.lines {
                let e = out
                    .entry((l.org.clone(), l.currency.clone(), l.category))
                    .or_default();
                e.0 += l.billed_cost;
                e.1 += l.list_cost;
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn billed_per_account_category_currency_is_the_same_for_every_grouping(
                rows in prop::collection::vec(row(), 1..80)
            ) {
                let m: Month = "2026-11".parse().unwrap();
                let all: Vec<Chargeback> = GroupBy::ALL
                    .into_iter()
                    .map(|by| assemble(m, by, lines(&rows, by)))
                    .collect();
                let first = blocks(&all[0]);
                for c in &all {
                    let b = blocks(c);
                    prop_assert_eq!(&b, &first, "by {:?}", c.by);
                    for ((org, cur, cat), (billed, exact)) in &b {
                        // the block's exact total rounded half away from zero
                        prop_assert_eq!(*billed, cents::round_total(*exact), "{} {} {:?}", org, cur, cat);
                    }
                    for l in &c.lines {
                        prop_assert!((l.billed_cost - l.list_cost).abs() < Decimal::new(1, 2));
                        prop_assert_eq!(l.billed_cost.scale(), 2);
                    }
                    for t in &c.totals {
                        let lines: Decimal = c.lines.iter().filter(|l| l.currency == t.currency).map(|l| l.billed_cost).sum();
                        prop_assert_eq!(lines, t.billed_cost);
                        let adj: Decimal = c.lines.iter().filter(|l| l.currency == t.currency && l.category == Category::Adjustment).map(|l| l.billed_cost).sum();
                        prop_assert_eq!(adj, t.adjustments_billed_cost);
                    }
                    // the currency totals too are the same for every grouping
                    prop_assert_eq!(&c.totals.iter().map(|t| (&t.currency, t.billed_cost, t.adjustments_billed_cost, t.list_cost)).collect::<Vec<_>>(),
                        &all[0].totals.iter().map(|t| (&t.currency, t.billed_cost, t.adjustments_billed_cost, t.list_cost)).collect::<Vec<_>>());
                }
            }
        }
    }

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
