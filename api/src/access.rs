//! Who may call what: every authenticated route with the roles it admits ([`ROUTES`]), and the
//! middleware that checks a request's bearer token against it before any handler runs.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use meterline_runtime::auth::{AuthFailure, Principal, Role};

use crate::{error, Shared};

use Role::{Admin, Finance, TeamLead, Viewer};

const QUERY: &[Role] = &[Admin, Finance, Viewer, TeamLead];
const FINANCE_READ: &[Role] = &[Admin, Finance, Viewer];
const FINANCE_WRITE: &[Role] = &[Admin, Finance];
const ADMIN: &[Role] = &[Admin];

/// Every authenticated route: method, path (as in the spec), roles admitted.
pub const ROUTES: &[(&str, &str, &[Role])] = &[
    ("GET", "/v1/me", QUERY),
    ("POST", "/v1/sql", QUERY),
    ("GET", "/v1/reports/showback", QUERY),
    ("GET", "/v1/reports/anomalies", QUERY),
    ("GET", "/v1/reports/budgets", QUERY),
    ("GET", "/v1/reports/chargeback", FINANCE_READ),
    ("GET", "/v1/periods", FINANCE_READ),
    ("POST", "/v1/periods/{period}/close", FINANCE_WRITE),
    ("GET", "/v1/admin/prices", ADMIN),
    ("POST", "/v1/admin/prices", ADMIN),
    ("GET", "/v1/admin/tenants", ADMIN),
    ("POST", "/v1/admin/tenants", ADMIN),
    ("GET", "/v1/admin/budgets", ADMIN),
    ("POST", "/v1/admin/budgets", ADMIN),
    ("DELETE", "/v1/admin/budgets/{budget_id}", ADMIN),
];

pub fn roles_of(method: &str, path: &str) -> &'static [Role] {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|r| r.2)
        .unwrap_or(&[])
}

/// The caller of `method path`, if its token is known and its role admitted there.
fn authorize_route(
    s: &Shared,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    roles: &[Role],
) -> Result<Principal, Response> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.tokens.authorize(h, roles).map_err(|f| match f {
        f @ AuthFailure::Unauthenticated => {
            let mut r = error(StatusCode::UNAUTHORIZED, f.to_string());
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        f @ AuthFailure::Forbidden { .. } => {
            error(StatusCode::FORBIDDEN, format!("{method} {path}: {f}"))
        }
    })
}

/// Who is calling: put in the request by [`authenticate`] before any handler runs, so a
/// handler taking `Extension<Caller>` cannot be reached without admitted credentials.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// Checks the credentials of every routed request against [`ROUTES`] before anything else
/// of it is read: the query string, path parameters and body are parsed by the handler's
/// extractors, which run after this (a malformed query string used to answer 400 to a
/// caller without a token). A route missing from [`ROUTES`] is refused (fail closed).
pub(crate) async fn authenticate(
    State(s): State<Arc<Shared>>,
    path: MatchedPath,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().as_str().to_string();
    let path = path.as_str();
    let roles = roles_of(&method, path);
    if roles.is_empty() {
        return if ROUTES.iter().any(|(_, p, _)| *p == path) {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} {path} is not a route"),
            )
        } else {
            tracing::error!(%method, path, "route missing from ROUTES");
            error(StatusCode::INTERNAL_SERVER_ERROR, "route without roles")
        };
    }
    match authorize_route(&s, req.headers(), &method, path, roles) {
        Ok(who) => {
            req.extensions_mut().insert(Caller(who));
            next.run(req).await
        }
        Err(r) => r,
    }
}
