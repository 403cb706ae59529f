//! Admin over HTTP against a real broker: prices, tenant rules and budgets are listed, created
//! and changed through `meterline api`; each change is a reference event on its topic with the
//! calling principal as author; unchanged input publishes nothing, a dry run publishes nothing,
//! bad input is a precise 400 and only admins may do any of it.

mod common;

use common::{drain_topic, Harness};
use meterline_api::{ApiConfig, App};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::{topics, AvroRecord, BudgetChange, PriceChange};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
const FINANCE: &str = "finance-secret";

const PRICES: &str = r#"{"price": [{
    "provider": "openai", "model": "gpt-4o", "effective_from": "2025-01-01T00:00:00Z",
    "rate": [
        {"unit": "input_token", "price": "2.50", "per": 1000000},
        {"unit": "output_token", "price": "10", "per": 1000000}
    ]}]}"#;

const TENANTS: &str = r#"
- rule_id: search
  match: { team_id: search }
  tenant: { org: acme, cost_center: CC-42, team: search }
"#;

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn start(h: &Harness) -> Api {
        let token = |p: &str, t: &str, role| TokenConfig {
            principal: p.into(),
            sha256: hash_token(t),
            role,
            teams: vec![],
        };
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: h.dir.path().join("data"),
            tokens: vec![
                token("alice", ADMIN, Role::Admin),
                token("fin", FINANCE, Role::Finance),
            ],
            ..Default::default()
        };
        let app = App::build(Some(&h.kafka), cfg, Default::default())
            .await
            .expect("api builds");
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until_stopped());
        Api {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.body(b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, ADMIN, None).await
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, ADMIN, Some(body.into()))
            .await
    }
}

async fn topic<T: AvroRecord + Send + 'static>(h: &Harness, topic: &'static str) -> Vec<T> {
    let b = h.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        drain_topic(&b, topic)
            .iter()
            .map(|v| T::from_avro(v).expect("reference event"))
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn admin_changes_are_reference_events_authored_by_the_principal() {
    let h = Harness::start().await;
    let api = Api::start(&h).await;

    // prices: publish, list, publish again (unchanged), dry-run a change, change
    let (status, body) = api.post("/v1/admin/prices", PRICES).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], json!([["openai/gpt-4o", 1]]), "{body}");
    let (status, again) = api.post("/v1/admin/prices", PRICES).await;
    assert_eq!(status, 200);
    assert_eq!(again["unchanged"], json!(["openai/gpt-4o"]), "{again}");
    let cheaper = PRICES.replace("\"2.50\"", "\"2.00\"");
    let (_, dry) = api
        .post("/v1/admin/prices?dry_run=true&reason=test", &cheaper)
        .await;
    assert_eq!(
        (dry["changed"].clone(), dry["dry_run"].clone()),
        (json!([["openai/gpt-4o", 2]]), json!(true))
    );
    let (_, listed) = api.get("/v1/admin/prices").await;
    assert_eq!(
        listed[0]["version"], 1,
        "a dry run publishes nothing: {listed}"
    );
    let (_, changed) = api
        .post("/v1/admin/prices?reason=negotiated%20discount", &cheaper)
        .await;
    assert_eq!(changed["changed"], json!([["openai/gpt-4o", 2]]));
    let (_, listed) = api.get("/v1/admin/prices").await;
    assert_eq!(
        (listed[0]["version"].clone(), listed[0]["author"].clone()),
        (json!(2), json!("alice")),
        "{listed}"
    );
    let prices: Vec<PriceChange> = topic(&h, topics::PRICES).await;
    assert_eq!(
        prices.len(),
        2,
        "two versions published, nothing for unchanged or dry runs"
    );
    assert!(prices.iter().all(|p| p.author == "alice"));
    // the history: both versions, in order, each with its own rates and reason
    let (status, history) = api.get("/v1/admin/prices?history=true").await;
    assert_eq!(status, 200, "{history}");
    let versions: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["price_id"].clone(),
                p["version"].clone(),
                p["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (
                json!("openai/gpt-4o"),
                json!(1),
                prices[0].reason.clone().into()
            ),
            (
                json!("openai/gpt-4o"),
                json!(2),
                json!("negotiated discount")
            ),
        ],
        "{history}"
    );
    assert_eq!(prices[1].reason, "negotiated discount");

    // tenant rules (YAML)
    let (status, t) = api.post("/v1/admin/tenants", TENANTS).await;
    assert_eq!(
        (status, t["added"].clone()),
        (200, json!([["search", 1]])),
        "{t}"
    );
    let (_, rules) = api.get("/v1/admin/tenants").await;
    assert_eq!(rules[0]["rule_id"], "search", "{rules}");
    assert_eq!(rules[0]["author"], "alice", "{rules}");
    let (_, every) = api.get("/v1/admin/tenants?history=true").await;
    assert_eq!(every, rules, "one version: the history is the list");

    // budgets: create, list, change, delete
    let budget = json!({"budget_id": "search-monthly", "scope": "team=search", "limit": "1000.00"});
    let (status, b) = api.post("/v1/admin/budgets", &budget.to_string()).await;
    assert_eq!(status, 201, "{b}");
    let mut bigger = budget.clone();
    bigger["limit"] = json!("1500.00");
    let (status, _) = api.post("/v1/admin/budgets", &bigger.to_string()).await;
    assert_eq!(status, 201);
    let (_, all) = api.get("/v1/admin/budgets").await;
    let b = &all.as_array().unwrap()[0];
    assert_eq!(
        (
            b["budget_id"].clone(),
            b["version"].clone(),
            b["author"].clone()
        ),
        (json!("search-monthly"), json!(2), json!("alice")),
        "{all}"
    );
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            "/v1/admin/budgets/search-monthly",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            "/v1/admin/budgets/no-such",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let budgets: Vec<BudgetChange> = topic(&h, topics::BUDGETS).await;
    assert_eq!(budgets.len(), 3);
    assert!(budgets[2].deleted && budgets.iter().all(|b| b.author == "alice"));

    // bad input: which field, why; nothing published
    let (status, e) = api
        .post(
            "/v1/admin/budgets",
            &json!({"budget_id": "x", "scope": "team=search", "limit": "lots"}).to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(e.to_string().contains("budget.limit: "), "{e}");
    let (status, e) = api
        .post(
            "/v1/admin/budgets",
            &json!({"budget_id": "x", "scope": "planet=mars", "limit": "1"}).to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(e.to_string().contains("planet"), "{e}");
    let (status, e) = api.post("/v1/admin/prices", "{\"price\": [{}]}").await;
    assert_eq!(status, 400);
    assert!(e.to_string().contains("price document"), "{e}");
    assert_eq!(topic::<BudgetChange>(&h, topics::BUDGETS).await.len(), 3);

    // finance may not change configuration
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/prices",
            FINANCE,
            Some(PRICES.into()),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(topic::<PriceChange>(&h, topics::PRICES).await.len(), 2);
}
