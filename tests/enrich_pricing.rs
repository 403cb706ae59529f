//! End to end through a real broker: ingest → raw → enrich → priced/rejected. Prices and
//! tenants are published as events; duplicates are priced once, also across a restart of the
//! stage; prices apply by `occurred_at`; unpriceable events are rejected with their reason and
//! replayed once a price exists.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{drain_topic, eventually, Harness};
use meterline_enrich::{admin, EnrichConfig};
use meterline_reference::{native, publish, tenants};
use meterline_schemas::{topics, AvroRecord, PricedUsage};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PRICES_V1: &str = r#"
[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2025-01-01T00:00:00Z"
[[price.rate]]
unit = "input_token"
price = "2.50"
per = 1_000_000
[[price.rate]]
unit = "cache_read_token"
price = "1.25"
per = 1_000_000
[[price.rate]]
unit = "output_token"
price = "10"
per = 1_000_000
"#;

const TENANTS: &str = r#"
- rule_id: search
  match: { team_id: search }
  tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search }
"#;

pub fn enrich_config() -> EnrichConfig {
    EnrichConfig {
        listen: "127.0.0.1:0".into(),
        txn_max_records: 50,
        txn_max_ms: 100,
        session_timeout_ms: 3000,
        max_poll_interval_ms: 30_000,
        ..Default::default()
    }
}

struct Enrich {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_enrich(h: &Harness) -> Enrich {
    let app = meterline_enrich::App::build(&h.kafka, enrich_config())
        .await
        .expect("enrich builds");
    let stop = app.stop_token();
    let task = tokio::spawn(async move { app.run_until_stopped().await.expect("enrich runs") });
    Enrich { stop, task }
}

impl Enrich {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

async fn priced(h: &Harness) -> Vec<PricedUsage> {
    let b = h.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        drain_topic(&b, topics::USAGE_PRICED)
            .iter()
            .map(|v| PricedUsage::from_avro(v).expect("PricedUsage"))
            .collect()
    })
    .await
    .unwrap()
}

async fn publish_prices(h: &Harness, toml: &str) -> publish::Publication {
    let k = h.kafka.clone();
    let drafts = native::parse(toml, native::Syntax::Toml, None, "test", "test").unwrap();
    tokio::task::spawn_blocking(move || publish::publish_prices(&k, drafts, "test", false))
        .await
        .unwrap()
        .unwrap()
}

fn event(
    id: &str,
    at: &str,
    team: &str,
    model: &str,
    input: u64,
    output: u64,
) -> serde_json::Value {
    json!({"event_id": id, "occurred_at": at, "provider": "openai", "model": model,
           "operation": "chat", "team_id": team,
           "usage": {"input_tokens": input, "output_tokens": output}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_attributes_dedups_rejects_and_replays() {
    let h = Harness::start().await;
    // 1. reference data as events: v1 prices, then a back-dated correction of input from
    //    2026-01-01 and a future cut from 2030; tenant rules.
    let p = publish_prices(&h, PRICES_V1).await;
    assert_eq!((p.added.len(), p.changed.len()), (1, 0));
    assert_eq!(
        publish_prices(&h, PRICES_V1).await.unchanged.len(),
        1,
        "re-import is a no-op"
    );
    let corrected = PRICES_V1
        .replace("2025-01-01", "2026-01-01")
        .replace("\"2.50\"", "\"2.00\"");
    assert_eq!(
        publish_prices(&h, &corrected).await.changed,
        vec![("openai/gpt-4o".to_string(), 2)]
    );
    let future = PRICES_V1
        .replace("2025-01-01", "2030-01-01")
        .replace("\"2.50\"", "\"1.00\"");
    assert_eq!(
        publish_prices(&h, &future).await.changed,
        vec![("openai/gpt-4o".to_string(), 3)]
    );
    let k = h.kafka.clone();
    let rules =
        tenants::parse_yaml(TENANTS, Some("2020-01-01T00:00:00Z".parse().unwrap()), "t").unwrap();
    tokio::task::spawn_blocking(move || {
        publish::publish_tenants(&k, rules, "test", false).unwrap()
    })
    .await
    .unwrap();

    let enrich = start_enrich(&h).await;
    // 2. events: two periods, an edge retry (same id twice), an unknown team, an unknown model
    let batch = json!([
        event(
            "old-1",
            "2025-06-01T12:00:00Z",
            "search",
            "gpt-4o",
            1_000_000,
            100_000
        ),
        event(
            "new-1",
            "2026-02-01T12:00:00Z",
            "search",
            "gpt-4o-2024-08-06",
            1_000_000,
            100_000
        ),
        event(
            "new-1",
            "2026-02-01T12:00:00Z",
            "search",
            "gpt-4o-2024-08-06",
            1_000_000,
            100_000
        ),
        event(
            "stray-1",
            "2026-02-01T12:00:00Z",
            "nobody",
            "gpt-4o",
            10,
            20
        ),
        event(
            "mystery-1",
            "2026-02-01T12:00:00Z",
            "search",
            "mystery-model",
            10,
            20
        ),
    ]);
    let (status, body) = h
        .post("/v1/events", "application/json", batch.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(60), "3 priced events", || async {
        priced(&h).await.len() >= 3
    })
    .await;
    let rejected = {
        let k = h.kafka.clone();
        tokio::task::spawn_blocking(move || admin::rejected(&k, false).unwrap())
            .await
            .unwrap()
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (
            rejected[0].event_id.as_deref(),
            rejected[0].code.as_str(),
            rejected[0].field.as_str()
        ),
        (Some("mystery-1"), "no_price", "model")
    );

    // 3. the same event retried by the edge after a restart of the stage: still once
    enrich.stop().await;
    let retry = event(
        "new-1",
        "2026-02-01T12:00:00Z",
        "search",
        "gpt-4o-2024-08-06",
        1_000_000,
        100_000,
    );
    let (status, _) = h
        .post("/v1/events", "application/json", retry.to_string())
        .await;
    assert_eq!(status, 200);
    let enrich = start_enrich(&h).await;
    // a marker event after the retry: once it is priced, the retry has been handled
    let marker = event("marker-1", "2026-02-01T12:01:00Z", "search", "gpt-4o", 1, 1);
    assert_eq!(
        h.post("/v1/events", "application/json", marker.to_string())
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(60), "marker priced", || async {
        priced(&h)
            .await
            .iter()
            .any(|p| p.event.event_id == "marker-1")
    })
    .await;

    // 3b. in this same run of the stage (no restart to rebuild dedup): another unknown model,
    //     and "new-1" again with other billable content (a reused id, not a retry)
    let later = json!([
        event(
            "mystery-2",
            "2026-02-01T12:02:00Z",
            "search",
            "mystery-model",
            30,
            40
        ),
        event(
            "new-1",
            "2026-02-01T12:00:00Z",
            "search",
            "gpt-4o-2024-08-06",
            1_000_000,
            100_005
        ),
    ]);
    assert_eq!(
        h.post("/v1/events", "application/json", later.to_string())
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(60), "3 pending rejections", || async {
        let k = h.kafka.clone();
        tokio::task::spawn_blocking(move || admin::rejected(&k, false).unwrap())
            .await
            .unwrap()
            .len()
            >= 3
    })
    .await;
    let k = h.kafka.clone();
    let pending = tokio::task::spawn_blocking(move || admin::rejected(&k, false).unwrap())
        .await
        .unwrap();
    let codes: Vec<(Option<&str>, &str)> = pending
        .iter()
        .map(|r| (r.event_id.as_deref(), r.code.as_str()))
        .collect();
    assert!(codes.contains(&(Some("new-1"), "id_conflict")), "{codes:?}");
    assert!(
        codes.contains(&(Some("mystery-2"), "no_price")),
        "{codes:?}"
    );

    // 4. a price for the mystery model appears; replay prices the rejected events once
    publish_prices(
        &h,
        "[[price]]\nprovider = \"openai\"\nmodel = \"mystery-model\"\neffective_from = \"2026-01-01T00:00:00Z\"\n[[price.rate]]\nunit = \"input_token\"\nprice = \"0.001\"\n[[price.rate]]\nunit = \"output_token\"\nprice = \"0.002\"\n",
    )
    .await;
    // The stage follows the prices topic live: wait until it has applied the new price (3
    // versions loaded by each of the two stage runs + this one = 7 records applied).
    eventually(
        Duration::from_secs(30),
        "new price applied by the stage",
        || async {
            let text = meterline_runtime::telemetry::prometheus().render();
            text.lines()
                .filter(|l| {
                    l.starts_with("meterline_enrich_reference_records_total")
                        && l.contains("meterline.prices")
                        && l.contains("applied")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                >= 7.0
        },
    )
    .await;
    let k = h.kafka.clone();
    let report = tokio::task::spawn_blocking(move || admin::replay(&k).unwrap())
        .await
        .unwrap();
    assert_eq!(report.replayed, 3);
    let k = h.kafka.clone();
    let again = tokio::task::spawn_blocking(move || admin::replay(&k).unwrap())
        .await
        .unwrap();
    assert_eq!(again.replayed, 0, "a replay re-submits each rejection once");
    eventually(
        Duration::from_secs(60),
        "replayed events priced",
        || async {
            let ids: Vec<String> = priced(&h)
                .await
                .into_iter()
                .map(|p| p.event.event_id)
                .collect();
            ids.iter().any(|i| i == "mystery-1")
                && ids.iter().any(|i| i == "mystery-2")
                && ids.iter().any(|i| i.starts_with("new-1#"))
        },
    )
    .await;
    let k = h.kafka.clone();
    let listed = tokio::task::spawn_blocking(move || admin::rejected(&k, true).unwrap())
        .await
        .unwrap();
    assert!(
        listed.iter().all(|r| r.replayed),
        "every listed rejection shows as replayed: {listed:?}"
    );
    enrich.stop().await;
    // 5. The replay was a transaction on the raw topic: its commit marker follows the replayed
    //    records, so the stage's committed offset now points at a marker. A restarted stage
    //    must price the next event (the first record past the marker), not skip it.
    let enrich = start_enrich(&h).await;
    let after = event(
        "after-replay-1",
        "2026-02-01T12:03:00Z",
        "search",
        "gpt-4o",
        1,
        1,
    );
    assert_eq!(
        h.post("/v1/events", "application/json", after.to_string())
            .await
            .0,
        200
    );
    eventually(
        Duration::from_secs(60),
        "the event after the replay priced",
        || async {
            priced(&h)
                .await
                .iter()
                .any(|p| p.event.event_id == "after-replay-1")
        },
    )
    .await;
    enrich.stop().await;

    // The operator's view, through the binary: how a name resolves, and the rejected queue.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meterline"))
            .args(args)
            .env("METERLINE_KAFKA__BROKERS", &h.kafka.brokers)
            .env_remove("METERLINE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&[
        "prices",
        "resolve",
        "openai",
        "openai/gpt-4o-2024-08-06",
        "--at",
        "2026-02-01T00:00:00Z",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("openai/gpt-4o v2") && text.contains("by snapshot_stripped"),
        "{text}"
    );
    let (ok, text) = cli(&["prices", "resolve", "gmi", "gpt-4o"]);
    assert!(
        !ok && text.contains("no price for gmi/gpt-4o"),
        "another provider's price never applies: {text}"
    );
    let (ok, text) = cli(&["rejected", "list", "--all", "--json"]);
    assert!(ok, "{text}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.len(), 3, "{text}");
    assert!(
        listed
            .iter()
            .all(|r| r["replayed"] == true && r["replayable"] == true),
        "{text}"
    );

    let all = priced(&h).await;
    let mut by_id: HashMap<&str, Vec<&PricedUsage>> = HashMap::new();
    for p in &all {
        by_id.entry(p.event.event_id.as_str()).or_default().push(p);
    }
    let counts: HashMap<&str, usize> = by_id.iter().map(|(k, v)| (*k, v.len())).collect();
    assert_eq!(
        counts,
        HashMap::from([
            ("old-1", 1),
            ("new-1", 1),
            ("stray-1", 1),
            ("marker-1", 1),
            ("mystery-1", 1),
            ("mystery-2", 1),
            ("after-replay-1", 1),
            (
                by_id
                    .keys()
                    .find(|k| k.starts_with("new-1#"))
                    .copied()
                    .unwrap_or("new-1#?"),
                1
            ),
        ]),
        "every id priced exactly once"
    );
    let one = |id: &str| by_id[id][0];
    // 2025-06: v1 input 2.50/M → 2.50 + 1.00 output
    assert_eq!(one("old-1").cost.total.to_string(), "3.5");
    assert_eq!(one("old-1").price_version, 1);
    // 2026-02: the back-dated v2 (2.00/M) applies; the dated snapshot name resolves
    assert_eq!(one("new-1").cost.total.to_string(), "3");
    assert_eq!(one("new-1").cost.input.to_string(), "2");
    assert_eq!(one("new-1").price_version, 2);
    assert_eq!(
        (
            one("new-1").model.as_str(),
            one("new-1").price_resolution.as_str()
        ),
        ("gpt-4o", "snapshot_stripped"),
        "the canonical model name, and how the dated name found it"
    );
    assert_eq!(one("new-1").tenant.cost_center.as_deref(), Some("CC-42"));
    assert_eq!(one("new-1").tenant_rule_id.as_deref(), Some("search"));
    assert_eq!(one("stray-1").tenant.org, "unattributed");
    assert_eq!(one("mystery-1").cost.total.to_string(), "0.05");
    // the future v3 (2030) has not applied to anything
    assert!(all.iter().all(|p| p.price_version != 3));
}
