//! The web dashboard: static HTML, JS and CSS compiled into the binary and served at `/` and
//! `/assets/…` without a token (they hold no data). The page signs in with a bearer token it
//! keeps in the tab's `sessionStorage` and calls the API's own endpoints with it (`/v1/me`,
//! `/v1/sql`, the reports, periods and admin routes), so it sees exactly what the token's
//! role and scope let the API answer: there is no second query path. Charts are hand-written
//! SVG (no library, nothing fetched from elsewhere: works offline).
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's script and
//! style (no inline script, no other hosts), so the token cannot be sent anywhere else.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use crate::{error, Caller};

/// `(name under /assets/, content type, bytes)`.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
];

/// The page itself, served at `/`.
pub const INDEX: &[u8] = include_bytes!("../assets/index.html");

const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // the binary's assets change with the binary: revalidate, never serve a stale script
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => page(ct, body),
        None => error(StatusCode::NOT_FOUND, format!("no asset {name:?}")),
    }
}

/// Bytes of the page and all its assets (what a first visit downloads).
pub fn page_weight() -> usize {
    INDEX.len() + ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>()
}

/// Who the bearer token is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The principal's name (recorded as the author of its changes).
    pub principal: String,
    /// `admin`, `finance`, `viewer` or `team_lead`.
    pub role: String,
    /// A team lead's teams (every query of it is scoped to them); empty for other roles,
    /// which see every team.
    pub teams: Vec<String>,
}

/// The caller's principal, role and scope.
#[utoipa::path(get, path = "/v1/me",
    description = "Roles: admin, finance, viewer, team_lead. The dashboard shows the caller's scope from it.",
    responses((status = 200, body = Me), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_me(Extension(Caller(who)): Extension<Caller>) -> Response {
    let role = serde_json::to_value(who.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let teams = if who.role == meterline_runtime::auth::Role::TeamLead {
        who.teams
    } else {
        vec![]
    };
    Json(Me {
        principal: who.name,
        role,
        teams,
    })
    .into_response()
}
