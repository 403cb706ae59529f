//! The OpenAPI document: every handler's spec, the bearer scheme and each operation's roles
//! (`x-roles`, from [`ROUTES`](crate::ROUTES)), so the spec and the authorization cannot drift.

use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;

use crate::{admin, close, closes, reports, roles_of, sql, web};

#[derive(OpenApi)]
#[openapi(
    info(title = "meterline api", description = "SQL, chargeback, showback, period close and admin over the usage ledger."),
    paths(web::get_me, sql::post_sql, reports::chargeback::get_chargeback, reports::showback::get_showback,
          reports::status::get_anomalies, reports::status::get_budgets, close::post_close, close::get_periods,
          admin::get_prices, admin::post_prices, admin::get_tenants, admin::post_tenants,
          admin::get_budgets, admin::post_budget, admin::delete_budget),
    components(schemas(web::Me, sql::SqlRequest, reports::chargeback::Chargeback, reports::chargeback::Line,
          reports::chargeback::Total, reports::chargeback::GroupBy, reports::chargeback::Category,
          closes::CloseRecord, closes::SnapshotFile, admin::PublicationReport, admin::BudgetRequest)),
    modifiers(&SecurityAndRoles)
)]
pub struct ApiDoc;

/// Adds the bearer scheme and each operation's roles (`x-roles`, from [`ROUTES`]).
struct SecurityAndRoles;
impl utoipa::Modify for SecurityAndRoles {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::extensions::ExtensionsBuilder;
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                ("GET", item.get.as_mut()),
                ("POST", item.post.as_mut()),
                ("DELETE", item.delete.as_mut()),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    let roles: Vec<serde_json::Value> = roles_of(method, path)
                        .iter()
                        .map(|r| serde_json::to_value(r).expect("role"))
                        .collect();
                    let ext = ExtensionsBuilder::new()
                        .add("x-roles", serde_json::Value::Array(roles))
                        .build();
                    match op.extensions.as_mut() {
                        Some(e) => e.merge(ext),
                        None => op.extensions = Some(ext),
                    }
                }
            }
        }
    }
}

pub(crate) async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
