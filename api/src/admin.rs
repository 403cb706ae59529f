//! Admin over HTTP: prices, tenant rules and budgets — list, create, change. Every change is
//! published as its reference event (author = the calling principal), exactly as the CLI
//! does, so the configuration's history stays an event log.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use meterline_reference::budgets::{self as budget_defs, BudgetDraft};
use meterline_reference::publish::{self as publish, Publication};
use meterline_runtime::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

use crate::{error, Caller, Shared};

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

/// Query of the reference lists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Every version (by id, then effective_from and version) instead of the latest of each.
    #[serde(default)]
    pub history: bool,
}

/// Runs `f` with the broker's config on a blocking thread and answers its value as JSON with
/// `status`. No broker configured → 503; a refusal from `f` → its own status (Kafka: 502).
async fn with_kafka<T: Serialize + Send + 'static>(
    s: &Shared,
    status: StatusCode,
    f: impl FnOnce(&KafkaConfig) -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Response {
    let Some(kafka) = s.kafka.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API runs without a broker: configuration changes are not possible here",
        );
    };
    match tokio::task::spawn_blocking(move || f(&kafka)).await {
        Ok(Ok(v)) => (status, Json(v)).into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn kafka_error(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("kafka: {e}"))
}

/// Current prices (latest version of each), or with `history=true` every version.
#[utoipa::path(get, path = "/v1/admin/prices", params(ListQuery), description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_prices(State(s): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    with_kafka(&s, StatusCode::OK, move |kafka| {
        let r = publish::load(kafka).map_err(kafka_error)?;
        let book = r.prices.read().expect("price book");
        if q.history {
            return Ok(book
                .every_version()
                .into_iter()
                .cloned()
                .collect::<Vec<_>>());
        }
        let mut latest: Vec<_> = book.latest().cloned().collect();
        latest.sort_by(|a, b| a.price_id.cmp(&b.price_id));
        Ok(latest)
    })
    .await
}

/// Publishes prices from meterline's native price document (JSON: `{"price": [...]}`).
#[utoipa::path(post, path = "/v1/admin/prices", params(PublishQuery),
    request_body(content = Object, content_type = "application/json", description = "meterline native price file as JSON"),
    description = "Roles: admin.",
    responses((status = 200, body = PublicationReport), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_prices(
    State(s): State<Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(q): Query<PublishQuery>,
    body: String,
) -> Response {
    let drafts = match meterline_reference::native::parse(
        &body,
        meterline_reference::native::Syntax::Json,
        Some(Utc::now()),
        &who.name,
        "api",
    ) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("price document: {e}")),
    };
    let reason = q.reason.unwrap_or_else(|| "changed over the API".into());
    with_kafka(&s, StatusCode::OK, move |kafka| {
        publish::publish_prices(kafka, drafts, &reason, q.dry_run)
            .map(|p| PublicationReport::of(p, q.dry_run))
            .map_err(kafka_error)
    })
    .await
}

/// Current tenant rules (latest version of each), or with `history=true` every version.
#[utoipa::path(get, path = "/v1/admin/tenants", params(ListQuery), description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_tenants(State(s): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    with_kafka(&s, StatusCode::OK, move |kafka| {
        let r = publish::load(kafka).map_err(kafka_error)?;
        let dir = r.tenants.read().expect("tenants");
        if q.history {
            return Ok(dir.every_version().into_iter().cloned().collect::<Vec<_>>());
        }
        let mut latest: Vec<_> = dir.latest().cloned().collect();
        latest.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        Ok(latest)
    })
    .await
}

/// Publishes tenant rules (the YAML rule list of `meterline tenants import`; JSON is YAML too).
#[utoipa::path(post, path = "/v1/admin/tenants", params(PublishQuery),
    request_body(content = Object, content_type = "application/yaml", description = "tenant rules, YAML or JSON list"),
    description = "Roles: admin.",
    responses((status = 200, body = PublicationReport), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_tenants(
    State(s): State<Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(q): Query<PublishQuery>,
    body: String,
) -> Response {
    let drafts = match meterline_reference::tenants::parse_yaml(&body, Some(Utc::now()), &who.name)
    {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("tenant rules: {e}")),
    };
    let reason = q.reason.unwrap_or_else(|| "changed over the API".into());
    with_kafka(&s, StatusCode::OK, move |kafka| {
        publish::publish_tenants(kafka, drafts, &reason, q.dry_run)
            .map(|p| PublicationReport::of(p, q.dry_run))
            .map_err(kafka_error)
    })
    .await
}

/// Every budget (latest version, deleted ones included).
#[utoipa::path(get, path = "/v1/admin/budgets", description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 502)), security(("bearer" = [])))]
pub async fn get_budgets(State(s): State<Arc<Shared>>) -> Response {
    with_kafka(&s, StatusCode::OK, |kafka| {
        budget_defs::load(kafka)
            .map(|m| m.into_values().collect::<Vec<_>>())
            .map_err(kafka_error)
    })
    .await
}

/// A budget as the API takes it: the OpenAPI view of `budget_defs::BudgetDraft` (the type the
/// body is parsed into; `meterline_reference` does not depend on utoipa).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
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
    pub webhooks: Vec<String>,
    pub effective_from: Option<chrono::DateTime<Utc>>,
    pub reason: Option<String>,
}

/// Creates a budget or publishes a new version of it.
#[utoipa::path(post, path = "/v1/admin/budgets", request_body = BudgetRequest,
    description = "Roles: admin.",
    responses((status = 201), (status = 400), (status = 401), (status = 403), (status = 502)),
    security(("bearer" = [])))]
pub async fn post_budget(
    State(s): State<Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    // parsed by the same type as the CLI's flags, with the same defaults
    // the error names the field: `budget.limit: 'lots' is not a decimal number …`
    let d: BudgetDraft =
        match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)) {
            Ok(d) => d,
            Err(e) => {
                let at = match e.path().to_string() {
                    p if p == "." => "budget".to_string(),
                    p => format!("budget.{p}"),
                };
                return error(StatusCode::BAD_REQUEST, format!("{at}: {}", e.inner()));
            }
        };
    let b = match budget_defs::draft(d, &who.name, Utc::now()) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    with_kafka(&s, StatusCode::CREATED, move |kafka| {
        budget_defs::publish(kafka, b).map_err(kafka_error)
    })
    .await
}

/// Deletes a budget (publishes a deleted version).
#[utoipa::path(delete, path = "/v1/admin/budgets/{budget_id}",
    params(("budget_id" = String, Path)), description = "Roles: admin.",
    responses((status = 200), (status = 401), (status = 403), (status = 404), (status = 502)),
    security(("bearer" = [])))]
pub async fn delete_budget(
    State(s): State<Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    Path(budget_id): Path<String>,
) -> Response {
    with_kafka(&s, StatusCode::OK, move |kafka| {
        let current = budget_defs::load(kafka).map_err(kafka_error)?;
        let mut b = current
            .get(&budget_id)
            .filter(|b| !b.deleted)
            .cloned()
            .ok_or((StatusCode::NOT_FOUND, format!("no budget {budget_id:?}")))?;
        b.deleted = true;
        b.author = who.name.clone();
        b.reason = "deleted over the API".into();
        budget_defs::publish(kafka, b).map_err(kafka_error)
    })
    .await
}
