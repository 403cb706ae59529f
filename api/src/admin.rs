//! Admin over HTTP: prices, tenant rules and budgets — list, create, change. Every change is
//! published as its reference event (author = the calling principal), exactly as the CLI
//! does, so the configuration's history stays an event log.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use meterline_aggregate::budget_admin::{self, BudgetDraft};
use meterline_enrich::admin::{self as enrich_admin, Publication};
use meterline_schemas::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

use crate::{error, Shared};

/// What a publication did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicationReport {
    /// `[id, version]` of new entries.
    pub added: Vec<(String, i64)>,
    /// `[id, version]` of changed entries.
    pub changed: Vec<(String, i64)>,
    /// Ids identical to their latest version (nothing published).
    pub unchanged: Vec<String>,
    pub dry_run: bool,
}

impl PublicationReport {
    fn of(p: Publication, dry_run: bool) -> Self {
        PublicationReport {
            added: p.added,
            changed: p.changed,
            unchanged: p.unchanged,
            dry_run,
        }
    }
}

/// Query of the publishing routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// Why (recorded in each event); default `changed over the API`.
    pub reason: Option<String>,
    /// Only report what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// Runs a blocking Kafka call; an error is a 502 (the broker) or a 400 (the input).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err((status, msg))) => Err(error(status, msg)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn kafka_error(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("kafka: {e}"))
}

fn kafka_of(s: &Shared) -> Result<KafkaConfig, Response> {
    s.kafka.clone().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API runs without a broker: configuration changes are not possible here",
        )
    })
}

/// Current prices (latest version of each).
#[utoipa::path(get, path = "/v1/admin/prices", description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_prices(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::authorize_route(&s, &headers, "GET", "/v1/admin/prices") {
        return r;
    }
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match blocking(move || {
        let r = enrich_admin::load(&kafka).map_err(kafka_error)?;
        let book = r.prices.read().expect("price book");
        let mut latest: Vec<_> = book.latest().cloned().collect();
        latest.sort_by(|a, b| a.price_id.cmp(&b.price_id));
        Ok(latest)
    })
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// Publishes prices from meterline's native price document (JSON: `{"price": [...]}`).
#[utoipa::path(post, path = "/v1/admin/prices", params(PublishQuery),
    request_body(content = Object, content_type = "application/json", description = "meterline native price file as JSON"),
    description = "Roles: admin.",
    responses((status = 200, body = PublicationReport), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_prices(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<PublishQuery>,
    body: String,
) -> Response {
    let who = match crate::authorize_route(&s, &headers, "POST", "/v1/admin/prices") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let drafts = match meterline_enrich::native::parse(
        &body,
        meterline_enrich::native::Syntax::Json,
        Some(Utc::now()),
        &who.name,
        "api",
    ) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("price document: {e}")),
    };
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let reason = q.reason.unwrap_or_else(|| "changed over the API".into());
    match blocking(move || {
        enrich_admin::publish_prices(&kafka, drafts, &reason, q.dry_run).map_err(kafka_error)
    })
    .await
    {
        Ok(p) => Json(PublicationReport::of(p, q.dry_run)).into_response(),
        Err(r) => r,
    }
}

/// Current tenant rules (latest version of each).
#[utoipa::path(get, path = "/v1/admin/tenants", description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_tenants(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::authorize_route(&s, &headers, "GET", "/v1/admin/tenants") {
        return r;
    }
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match blocking(move || {
        let r = enrich_admin::load(&kafka).map_err(kafka_error)?;
        let dir = r.tenants.read().expect("tenants");
        let mut latest: Vec<_> = dir.latest().cloned().collect();
        latest.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        Ok(latest)
    })
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// Publishes tenant rules (the YAML rule list of `meterline tenants import`; JSON is YAML too).
#[utoipa::path(post, path = "/v1/admin/tenants", params(PublishQuery),
    request_body(content = Object, content_type = "application/yaml", description = "tenant rules, YAML or JSON list"),
    description = "Roles: admin.",
    responses((status = 200, body = PublicationReport), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_tenants(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<PublishQuery>,
    body: String,
) -> Response {
    let who = match crate::authorize_route(&s, &headers, "POST", "/v1/admin/tenants") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let drafts = match meterline_enrich::tenants::parse_yaml(&body, Some(Utc::now()), &who.name) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("tenant rules: {e}")),
    };
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let reason = q.reason.unwrap_or_else(|| "changed over the API".into());
    match blocking(move || {
        enrich_admin::publish_tenants(&kafka, drafts, &reason, q.dry_run).map_err(kafka_error)
    })
    .await
    {
        Ok(p) => Json(PublicationReport::of(p, q.dry_run)).into_response(),
        Err(r) => r,
    }
}

/// Every budget (latest version, deleted ones included).
#[utoipa::path(get, path = "/v1/admin/budgets", description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_budgets(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::authorize_route(&s, &headers, "GET", "/v1/admin/budgets") {
        return r;
    }
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match blocking(move || {
        budget_admin::load(&kafka)
            .map(|m| m.into_values().collect::<Vec<_>>())
            .map_err(kafka_error)
    })
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// A budget as the API takes it (the fields of `meterline budgets create`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    pub budget_id: String,
    pub name: Option<String>,
    /// `org=…`, `cost_center=…`, `team=…`, `project=…`, `api_key=…`, `user=…`,
    /// `tag=key=value`, `model=provider/model`.
    pub scope: String,
    /// Exact decimal text.
    pub limit: String,
    /// Default USD.
    pub currency: Option<String>,
    /// day | week | month (default) | custom.
    pub period: Option<String>,
    /// IANA zone, default UTC.
    pub timezone: Option<String>,
    pub from: Option<chrono::DateTime<Utc>>,
    pub to: Option<chrono::DateTime<Utc>>,
    /// `percent:action,…`, default `50:notify,80:notify,100:block`.
    pub thresholds: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<String>,
    pub effective_from: Option<chrono::DateTime<Utc>>,
    pub reason: Option<String>,
}

/// Creates a budget or publishes a new version of it.
#[utoipa::path(post, path = "/v1/admin/budgets", request_body = BudgetRequest,
    description = "Roles: admin.",
    responses((status = 201), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_budget(State(s): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let who = match crate::authorize_route(&s, &headers, "POST", "/v1/admin/budgets") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req: BudgetRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("budget: {e}")),
    };
    let limit = match req.limit.parse() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("budget.limit: {e}")),
    };
    let d = BudgetDraft {
        budget_id: req.budget_id,
        name: req.name,
        scope: req.scope,
        limit,
        currency: req.currency.unwrap_or_else(|| "USD".into()),
        period: req.period.unwrap_or_else(|| "month".into()),
        timezone: req.timezone.unwrap_or_else(|| "UTC".into()),
        from: req.from,
        to: req.to,
        thresholds: req
            .thresholds
            .unwrap_or_else(|| "50:notify,80:notify,100:block".into()),
        webhooks: req.webhooks,
        effective_from: req.effective_from,
        reason: req.reason.unwrap_or_else(|| "changed over the API".into()),
    };
    let b = match budget_admin::draft(d, &who.name, Utc::now()) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match blocking(move || budget_admin::publish(&kafka, b).map_err(kafka_error)).await {
        Ok(b) => (StatusCode::CREATED, Json(b)).into_response(),
        Err(r) => r,
    }
}

/// Deletes a budget (publishes a deleted version).
#[utoipa::path(delete, path = "/v1/admin/budgets/{budget_id}",
    params(("budget_id" = String, Path)), description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 404), (status = 502)),
    security(("bearer" = [])))]
pub async fn delete_budget(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(budget_id): Path<String>,
) -> Response {
    let who = match crate::authorize_route(&s, &headers, "DELETE", "/v1/admin/budgets/{budget_id}")
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    let kafka = match kafka_of(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match blocking(move || {
        let current = budget_admin::load(&kafka).map_err(kafka_error)?;
        let mut b = current
            .get(&budget_id)
            .filter(|b| !b.deleted)
            .cloned()
            .ok_or((StatusCode::NOT_FOUND, format!("no budget {budget_id:?}")))?;
        b.deleted = true;
        b.author = who.name.clone();
        b.reason = "deleted over the API".into();
        budget_admin::publish(&kafka, b).map_err(kafka_error)
    })
    .await
    {
        Ok(b) => Json(b).into_response(),
        Err(r) => r,
    }
}
