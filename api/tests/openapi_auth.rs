//! Every operation in the served `/openapi.json` refuses a missing token (401) and every role
//! its `x-roles` does not list (403), and lets the listed roles past authorization. The spec
//! is generated from the code and the roles come from the same table the handlers use; this
//! checks the running server against both.

use meterline_api::{ApiConfig, App};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use serde_json::Value;

const ROLES: [(Role, &str); 5] = [
    (Role::Admin, "admin"),
    (Role::Finance, "finance"),
    (Role::TeamLead, "team_lead"),
    (Role::Viewer, "viewer"),
    (Role::Edge, "edge"),
];

fn token_of(role: &str) -> String {
    format!("token-{role}")
}

#[tokio::test]
async fn every_route_in_the_spec_refuses_missing_tokens_and_wrong_roles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        tokens: ROLES
            .iter()
            .map(|(role, name)| TokenConfig {
                principal: format!("p-{name}"),
                sha256: hash_token(&token_of(name)),
                role: *role,
                teams: vec!["search".into()],
            })
            .collect(),
        ..Default::default()
    };
    let app = App::build(None, cfg, Default::default()).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let spec: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        // path parameters get plausible values
        let url = path
            .replace("{period}", "2025-01")
            .replace("{budget_id}", "b-1");
        for (method, op) in item.as_object().unwrap() {
            let allowed: Vec<&str> = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} states no x-roles"))
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            assert!(!allowed.is_empty(), "{method} {path}");
            assert!(
                op["security"].as_array().is_some_and(|s| !s.is_empty()),
                "{method} {path} declares its bearer security"
            );
            let send = |token: Option<String>| {
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut rq = client.request(m, format!("{base}{url}"));
                if let Some(t) = token {
                    rq = rq.bearer_auth(t);
                }
                rq.header("content-type", "application/json")
                    .body("{}")
                    .send()
            };
            let r = send(None).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} without a token");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let r = send(Some("not-a-token".into())).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with an unknown token");
            for (_, role) in ROLES {
                let status = send(Some(token_of(role))).await.unwrap().status().as_u16();
                if allowed.contains(&role) {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path}: {role} is listed but got {status}"
                    );
                } else {
                    assert_eq!(status, 403, "{method} {path}: {role} is not listed");
                }
            }
            operations += 1;
        }
    }
    assert_eq!(
        operations,
        meterline_api::ROUTES.len(),
        "every route is in the spec"
    );
}

/// Credentials are checked before anything of the request is read: a query string, a path
/// parameter or a body the route would refuse gets 401 without a token and 403 with a token
/// of a role the route does not admit, never a 400 that tells a stranger how to shape it.
#[tokio::test]
async fn credentials_come_before_the_query_string_path_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        tokens: ROLES
            .iter()
            .map(|(role, name)| TokenConfig {
                principal: format!("p-{name}"),
                sha256: hash_token(&token_of(name)),
                role: *role,
                teams: vec!["search".into()],
            })
            .collect(),
        ..Default::default()
    };
    let app = App::build(None, cfg, Default::default()).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let mut checked = 0;
    for (method, path, roles) in meterline_api::ROUTES {
        let url = path
            .replace("{period}", "not-a-month")
            .replace("{budget_id}", "%FF%FE");
        let outsider = ROLES
            .iter()
            .map(|(_, n)| *n)
            .find(|n| !roles.iter().any(|r| serde_json::to_value(r).unwrap() == *n))
            .expect("a role the route does not admit");
        for (token, want) in [(None, 401), (Some(token_of(outsider)), 403)] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut rq = client
                .request(
                    m,
                    format!("{base}{url}?bogus=1&format=nope&from=x&period=13-2026"),
                )
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, b'{']);
            if let Some(t) = token {
                rq = rq.bearer_auth(t);
            }
            let status = rq.send().await.unwrap().status().as_u16();
            assert_eq!(status, want, "{method} {url} as {outsider:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * meterline_api::ROUTES.len());
}
