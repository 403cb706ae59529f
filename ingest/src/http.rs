//! The HTTP surface of the edge.
//!
//! Batch semantics (every event endpoint): the body is one object, a JSON array or NDJSON.
//! Items are validated one by one; valid ones are made durable (broker ack or fsynced spool)
//! before the answer, invalid ones are reported with their index, field path and reason:
//! - 200 `{accepted, rejected: []}` — every item accepted;
//! - 207 `{accepted, rejected: [...]}` — some accepted, the listed ones refused (do not retry them);
//! - 400 — nothing accepted: the body is malformed, empty, or every item is invalid;
//! - 401 / 403 — missing/unknown token / token without the `edge` or `admin` role;
//! - 413 — body larger than `max_body_bytes` or more than `max_batch_items` items;
//! - 415 — unsupported Content-Type;
//! - 503 + Retry-After — broker unreachable and the spool full: nothing was accepted, retry.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use chrono::Utc;
use meterline_runtime::auth::{AuthFailure, Role, TokenTable};
use meterline_schemas::metric_names as m;
use meterline_schemas::{AvroRecord, UsageEvent};
use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::OpenApi;

use crate::adapters::{self, Ctx, FieldError, ItemError};
use crate::config::IngestConfig;
use crate::enforcement::{CheckRequest, CheckResponse, Decision, ResponsibleBudget};
use crate::forwarder::Forwarder;
use crate::spool::{Record, SpoolError};

pub struct Shared {
    pub cfg: IngestConfig,
    /// Budgets, signals and tenants followed from Kafka (the enforcement read path).
    pub enforcement: crate::enforcement::Shared,
    pub tokens: TokenTable,
    pub forwarder: Arc<Forwarder>,
    pub metrics: PrometheusHandle,
}

type S = State<Arc<Shared>>;

/// Answer of the event endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// Items made durable.
    pub accepted: usize,
    /// Items refused, with the reason.
    pub rejected: Vec<ItemError>,
}

/// Answer when nothing could be accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<ItemError>,
}

fn error(status: StatusCode, msg: impl Into<String>, rejected: Vec<ItemError>) -> Response {
    (
        status,
        Json(ErrorResponse {
            error: msg.into(),
            rejected,
        }),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "meterline ingest", description = "Edge forwarder: usage events in, Kafka out."),
    paths(post_native, post_cloudevents, post_litellm, post_traces, enforcement_check, enforcement_ext_authz, healthz, readyz),
    components(schemas(IngestResponse, ErrorResponse, ItemError, FieldError, adapters::native::NativeEvent, adapters::native::NativeUsage, CheckRequest, CheckResponse, ResponsibleBudget, Decision)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.cfg.max_body_bytes;
    Router::new()
        .route("/v1/events", post(post_native))
        .route("/v1/events/cloudevents", post(post_cloudevents))
        .route("/v1/events/litellm", post(post_litellm))
        .route("/v1/traces", post(post_traces))
        .route("/v1/enforcement/check", post(enforcement_check))
        .route("/v1/enforcement/ext_authz", any(enforcement_ext_authz))
        .route(
            "/v1/enforcement/ext_authz/{*path}",
            any(enforcement_ext_authz),
        )
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .with_state(shared)
}

fn authorize(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.tokens
        .authorize(h, &[Role::Edge, Role::Admin])
        .map(|_| ())
        .map_err(|f| match f {
            AuthFailure::Unauthenticated => {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or unknown bearer token",
                    vec![],
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            f @ AuthFailure::Forbidden { .. } => {
                error(StatusCode::FORBIDDEN, f.to_string(), vec![])
            }
        })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Native,
    CloudEvents,
    LiteLlm,
}

impl Format {
    fn label(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::CloudEvents => "cloudevents",
            Format::LiteLlm => "litellm",
        }
    }

    /// Content types the endpoint takes, and whether the body is NDJSON.
    fn ndjson(self, ct: &str) -> Option<bool> {
        match (self, ct) {
            (_, "application/json") => Some(false),
            (
                Format::Native | Format::LiteLlm,
                "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/x-jsonlines",
            ) => Some(true),
            (
                Format::CloudEvents,
                "application/cloudevents+json" | "application/cloudevents-batch+json",
            ) => Some(false),
            _ => None,
        }
    }

    fn accepted_types(self) -> &'static str {
        match self {
            Format::CloudEvents => {
                "application/cloudevents+json, application/cloudevents-batch+json, application/json"
            }
            _ => "application/json, application/x-ndjson",
        }
    }

    fn decode(self, raw: &RawValue, ctx: &Ctx) -> Result<UsageEvent, FieldError> {
        match self {
            Format::Native => adapters::native::decode(raw, ctx),
            Format::CloudEvents => adapters::cloudevents::decode(raw, ctx),
            Format::LiteLlm => adapters::litellm::decode(raw, ctx),
        }
    }
}

fn reject_metric(format: &str, reason: &str, n: usize) {
    metrics::counter!(m::INGEST_EVENTS_REJECTED, m::LABEL_FORMAT => format.to_string(), m::LABEL_REASON => reason.to_string()).increment(n as u64);
}

fn ctx(s: &Shared) -> Ctx {
    Ctx {
        source: s.cfg.source_id.clone(),
        // µs: what the wire (Avro timestamp-micros) and the ledger hold.
        received_at: meterline_schemas::time::from_micros(Utc::now().timestamp_micros())
            .unwrap_or_else(Utc::now),
    }
}

/// Encodes, forwards and answers for already-decoded items.
/// Ok = at least one item made durable (with the refused ones listed); Err = the response
/// when nothing was accepted (400 all invalid, 503 spool full).
async fn accept(
    s: &Shared,
    format: &str,
    results: Vec<(usize, Result<UsageEvent, FieldError>)>,
) -> Result<IngestResponse, Response> {
    let mut rejected = Vec::new();
    let mut records = Vec::with_capacity(results.len());
    for (index, r) in results {
        match r.and_then(|e| {
            e.to_avro()
                .map(|value| Record {
                    key: e.partition_key().as_bytes().to_vec(),
                    value,
                })
                .map_err(|err| FieldError::new("", err.to_string()))
        }) {
            Ok(rec) => records.push(rec),
            Err(FieldError { field, reason }) => rejected.push(ItemError {
                index,
                field,
                reason,
            }),
        }
    }
    if !rejected.is_empty() {
        reject_metric(format, "invalid", rejected.len());
    }
    if records.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no valid item in the request",
            rejected,
        ));
    }
    let accepted = records.len();
    match s.forwarder.forward(records).await {
        Ok(()) => {
            metrics::counter!(m::INGEST_EVENTS_ACCEPTED, m::LABEL_FORMAT => format.to_string())
                .increment(accepted as u64);
            Ok(IngestResponse { accepted, rejected })
        }
        Err(e) => {
            reject_metric(
                format,
                if matches!(e, SpoolError::Full { .. }) {
                    "spool_full"
                } else {
                    "spool_error"
                },
                accepted,
            );
            tracing::error!(error = %e, "cannot make events durable");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("broker unreachable and {e}; nothing accepted, retry later"),
                vec![],
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(s.cfg.spool.retry_after_secs),
            );
            Err(r)
        }
    }
}

async fn ingest_json(s: &Shared, headers: &HeaderMap, body: &[u8], format: Format) -> Response {
    metrics::counter!(m::INGEST_REQUESTS, m::LABEL_FORMAT => format.label()).increment(1);
    if let Err(r) = authorize(s, headers) {
        return r;
    }
    let ct = content_type(headers);
    let Some(ndjson) = format.ndjson(&ct) else {
        reject_metric(format.label(), "content_type", 1);
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type '{ct}'; use {}",
                format.accepted_types()
            ),
            vec![],
        );
    };
    let items = match adapters::split_items(body, ndjson) {
        Ok(items) => items,
        Err(e) => {
            reject_metric(format.label(), "malformed", 1);
            return error(StatusCode::BAD_REQUEST, e.reason, vec![]);
        }
    };
    if items.len() > s.cfg.max_batch_items {
        reject_metric(format.label(), "batch_too_large", items.len());
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} items exceed the limit of {} per request",
                items.len(),
                s.cfg.max_batch_items
            ),
            vec![],
        );
    }
    let ctx = ctx(s);
    let results = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| (i, item.and_then(|raw| format.decode(raw, &ctx))))
        .collect();
    match accept(s, format.label(), results).await {
        Ok(r) if r.rejected.is_empty() => (StatusCode::OK, Json(r)).into_response(),
        Ok(r) => (StatusCode::MULTI_STATUS, Json(r)).into_response(),
        Err(r) => r,
    }
}

/// Native UsageEvent JSON: one object, an array, or NDJSON.
#[utoipa::path(post, path = "/v1/events", request_body(content = adapters::native::NativeEvent, content_type = "application/json"),
    responses((status = 200, body = IngestResponse), (status = 207, body = IngestResponse), (status = 400, body = ErrorResponse),
              (status = 401), (status = 403), (status = 413), (status = 415), (status = 503)),
    security(("bearer" = [])))]
async fn post_native(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    ingest_json(&s, &headers, &body, Format::Native).await
}

/// CloudEvents 1.0, structured or batch mode (OpenMeter compatible).
#[utoipa::path(post, path = "/v1/events/cloudevents", request_body(content = Object, content_type = "application/cloudevents+json"),
    responses((status = 200, body = IngestResponse), (status = 207, body = IngestResponse), (status = 400, body = ErrorResponse),
              (status = 401), (status = 403), (status = 413), (status = 415), (status = 503)),
    security(("bearer" = [])))]
async fn post_cloudevents(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    ingest_json(&s, &headers, &body, Format::CloudEvents).await
}

/// LiteLLM StandardLoggingPayload as sent by its `generic_api` callback.
#[utoipa::path(post, path = "/v1/events/litellm", request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = IngestResponse), (status = 207, body = IngestResponse), (status = 400, body = ErrorResponse),
              (status = 401), (status = 403), (status = 413), (status = 415), (status = 503)),
    security(("bearer" = [])))]
async fn post_litellm(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    ingest_json(&s, &headers, &body, Format::LiteLlm).await
}

/// OTLP/HTTP traces, JSON or protobuf. Spans with GenAI usage become events; the answer is
/// an ExportTraceServiceResponse whose partial_success counts refused spans.
#[utoipa::path(post, path = "/v1/traces", request_body(content = Object, content_type = "application/x-protobuf"),
    responses((status = 200), (status = 400), (status = 401), (status = 403), (status = 413), (status = 415), (status = 503)),
    security(("bearer" = [])))]
async fn post_traces(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    metrics::counter!(m::INGEST_REQUESTS, m::LABEL_FORMAT => "otlp").increment(1);
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    let ct = content_type(&headers);
    let protobuf = match ct.as_str() {
        "application/x-protobuf" | "application/protobuf" => true,
        "application/json" => false,
        _ => {
            reject_metric("otlp", "content_type", 1);
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Type '{ct}'; use application/x-protobuf or application/json"), vec![]);
        }
    };
    let req = if protobuf {
        ExportTraceServiceRequest::decode(body.as_ref()).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            reject_metric("otlp", "malformed", 1);
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed OTLP request: {e}"),
                vec![],
            );
        }
    };
    let results: Vec<_> = adapters::otlp::decode(&req, &ctx(&s))
        .into_iter()
        .map(|r| (r.index, r.event))
        .collect();
    if results.len() > s.cfg.max_batch_items {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} GenAI spans exceed the limit of {}",
                results.len(),
                s.cfg.max_batch_items
            ),
            vec![],
        );
    }
    if results.is_empty() {
        return otlp_answer(protobuf, 0, String::new());
    }
    match accept(&s, "otlp", results).await {
        Ok(r) if r.rejected.is_empty() => otlp_answer(protobuf, 0, String::new()),
        Ok(r) => {
            let message = serde_json::to_string(&r.rejected).unwrap_or_default();
            otlp_answer(protobuf, r.rejected.len() as i64, message)
        }
        Err(r) => r,
    }
}

fn otlp_answer(protobuf: bool, rejected: i64, message: String) -> Response {
    let resp = ExportTraceServiceResponse {
        partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message,
        }),
    };
    if protobuf {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response()
    } else {
        Json(resp).into_response()
    }
}

fn decide(s: &Shared, r: &CheckRequest) -> CheckResponse {
    let answer = s
        .enforcement
        .read()
        .expect("enforcement state")
        .check(r, Utc::now());
    let decision = match answer.decision {
        Decision::Allow => "allow",
        Decision::Throttle => "throttle",
        Decision::Block => "block",
    };
    metrics::counter!(m::ENFORCEMENT_CHECKS, m::LABEL_DECISION => decision).increment(1);
    answer
}

/// May a call with this attribution spend? Always 200 with the decision and the budgets
/// responsible (for gateways that call it from a hook, e.g. LiteLLM's custom auth).
#[utoipa::path(post, path = "/v1/enforcement/check", request_body = CheckRequest,
    responses((status = 200, body = CheckResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn enforcement_check(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    let req: CheckRequest =
        match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("field {}: {}", e.path(), e.inner()),
                    vec![],
                )
            }
        };
    Json(decide(&s, &req)).into_response()
}

/// Header names of the ext_authz variant (Envoy forwards them from the original request or
/// adds them with `headers_to_add`).
pub mod authz_headers {
    pub const TOKEN: &str = "x-meterline-authorization";
    pub const API_KEY_ID: &str = "x-meterline-api-key-id";
    pub const USER_ID: &str = "x-meterline-user-id";
    pub const TEAM_ID: &str = "x-meterline-team-id";
    pub const ORG_ID: &str = "x-meterline-org-id";
    pub const PROJECT_ID: &str = "x-meterline-project-id";
    pub const PROVIDER: &str = "x-meterline-provider";
    pub const MODEL: &str = "x-meterline-model";
    /// `x-meterline-tag-<key>: <value>`, one header per tag.
    pub const TAG_PREFIX: &str = "x-meterline-tag-";
    pub const DECISION: &str = "x-meterline-decision";
    pub const BUDGETS: &str = "x-meterline-budgets";
}

/// Envoy ext_authz (HTTP service): 200 to allow; 429 with `x-meterline-decision`,
/// `x-meterline-budgets` and `Retry-After` to throttle or block. Attribution comes from
/// `x-meterline-*` headers; the edge token from `x-meterline-authorization` (the original
/// request's `Authorization` belongs to the client) or `Authorization`.
#[utoipa::path(post, path = "/v1/enforcement/ext_authz",
    responses((status = 200, description = "allow"), (status = 429, description = "throttle or block"), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn enforcement_ext_authz(State(s): S, headers: HeaderMap) -> Response {
    use authz_headers as h;
    let mut auth = headers.clone();
    if let Some(t) = headers.get(h::TOKEN) {
        auth.insert(header::AUTHORIZATION, t.clone());
    }
    if let Err(r) = authorize(&s, &auth) {
        return r;
    }
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let tags = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix(h::TAG_PREFIX)?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let req = CheckRequest {
        api_key_id: get(h::API_KEY_ID),
        user_id: get(h::USER_ID),
        team_id: get(h::TEAM_ID),
        org_id: get(h::ORG_ID),
        project_id: get(h::PROJECT_ID),
        tags,
        provider: get(h::PROVIDER),
        model: get(h::MODEL),
    };
    let answer = decide(&s, &req);
    let (status, decision) = match answer.decision {
        Decision::Allow => (StatusCode::OK, "allow"),
        Decision::Throttle => (StatusCode::TOO_MANY_REQUESTS, "throttle"),
        Decision::Block => (StatusCode::TOO_MANY_REQUESTS, "block"),
    };
    let mut r = status.into_response();
    let hs = r.headers_mut();
    hs.insert(h::DECISION, HeaderValue::from_static(decision));
    let ids: Vec<&str> = answer
        .budgets
        .iter()
        .map(|b| b.budget_id.as_str())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
        if !ids.is_empty() {
            hs.insert(h::BUDGETS, v);
        }
    }
    if let Some(secs) = answer.retry_after_secs {
        hs.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn metrics_text(State(s): S) -> Response {
    let (events, bytes) = s.forwarder.spool_depth().await;
    metrics::gauge!(m::INGEST_SPOOL_DEPTH_EVENTS).set(events as f64);
    metrics::gauge!(m::INGEST_SPOOL_DEPTH_BYTES).set(bytes as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 503 when the spool is nearly full (the edge would soon refuse events).
#[utoipa::path(get, path = "/readyz", responses((status = 200), (status = 503)))]
async fn readyz(State(s): S) -> Response {
    let (events, bytes) = s.forwarder.spool_depth().await;
    let ready = bytes < s.cfg.spool.max_bytes / 100 * 95;
    let body = serde_json::json!({"ready": ready, "spooling": s.forwarder.is_spooling(), "spool_events": events, "spool_bytes": bytes});
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
        .into_response()
}
