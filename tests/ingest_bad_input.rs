//! Bad input gets the documented 4xx with item index, field path and reason, and nothing is
//! produced for it; good items of a mixed batch are accepted.

mod common;

use common::{Harness, FINANCE_TOKEN};
use serde_json::{json, Value};

fn good(id: &str) -> Value {
    json!({"event_id": id, "occurred_at": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o", "team_id": "t", "usage": {"input_tokens": 10, "output_tokens": 2}})
}

fn with(id: &str, path: &[&str], v: Value) -> Value {
    let mut e = good(id);
    let mut cur = &mut e;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = v;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_precise_4xx_and_produce_nothing() {
    let h = Harness::start().await;
    let j = "application/json";

    // malformed JSON
    let (st, body) = h.post("/v1/events", j, "{\"event_id\": ").await;
    assert_eq!(st, 400);
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    let (st, _) = h.post("/v1/events", j, "[{\"a\":1},").await;
    assert_eq!(st, 400);
    let (st, _) = h.post("/v1/events", j, "").await;
    assert_eq!(st, 400);

    // single invalid items: each names its field
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with("bad-type", &["usage", "input_tokens"], json!("ten")),
            "usage.input_tokens",
            "invalid type",
        ),
        (
            with("bad-neg", &["usage", "output_tokens"], json!(-5)),
            "usage.output_tokens",
            "invalid value",
        ),
        (
            with(
                "bad-overflow",
                &["usage", "input_tokens"],
                json!(18446744073709551615u64),
            ),
            "usage.input_tokens",
            "overflows",
        ),
        (
            with("bad-float", &["usage", "input_tokens"], json!(1.5)),
            "usage.input_tokens",
            "invalid type",
        ),
        (
            with("bad-time", &["occurred_at"], json!("yesterday")),
            "occurred_at",
            "",
        ),
        (
            with("bad-op", &["operation"], json!("dance")),
            "operation",
            "unknown operation",
        ),
        (
            with("bad-unknown", &["prompt"], json!("secret prompt text")),
            "prompt",
            "unknown field `prompt`",
        ),
        (
            with("bad-cost", &["gateway_reported_cost"], json!("-1")),
            "gateway_reported_cost",
            "negative",
        ),
        (
            {
                let mut e = with(
                    "bad-provider-usage",
                    &["provider_usage"],
                    json!({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}),
                );
                e.as_object_mut().unwrap().remove("usage");
                e
            },
            "provider_usage.prompt_tokens",
            "smaller",
        ),
        (
            {
                let mut e = good("x");
                e.as_object_mut().unwrap().remove("event_id");
                e
            },
            "event_id",
            "required",
        ),
        (
            {
                let mut e = good("no-usage");
                e.as_object_mut().unwrap().remove("usage");
                e
            },
            "usage",
            "required",
        ),
    ];
    for (item, field, reason) in &cases {
        let (st, body) = h.post("/v1/events", j, item.to_string()).await;
        assert_eq!(st, 400, "{item} → {body}");
        let r = &body["rejected"][0];
        assert_eq!(r["index"], 0);
        assert_eq!(r["field"].as_str().unwrap(), *field, "{body}");
        assert!(r["reason"].as_str().unwrap().contains(reason), "{body}");
        assert!(
            !body.to_string().contains("secret prompt text"),
            "content is never echoed"
        );
    }

    // mixed batch: good items accepted, bad ones reported by index (207)
    let batch = json!([
        good("mix-0"),
        with("mix-1", &["usage", "input_tokens"], json!(-1)),
        good("mix-2"),
        json!(42)
    ]);
    let (st, body) = h.post("/v1/events", j, batch.to_string()).await;
    assert_eq!(st, 207, "{body}");
    assert_eq!(body["accepted"], 2);
    let idx: Vec<u64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![1, 3]);

    // NDJSON: a malformed line is that item's error
    let nd = format!("{}\nnot json\n{}\n", good("nd-ok-1"), good("nd-ok-2"));
    let (st, body) = h.post("/v1/events", "application/x-ndjson", nd).await;
    assert_eq!(
        (st, body["rejected"][0]["index"].as_u64()),
        (207, Some(1)),
        "{body}"
    );

    // limits: body over max_body_bytes, more items than max_batch_items
    let (st, _) = h
        .post(
            "/v1/events",
            j,
            format!("[{}]", vec![good("big").to_string(); 400].join(",")),
        )
        .await;
    assert_eq!(st, 413);
    let many: Vec<Value> = (0..51)
        .map(|i| json!({"event_id": format!("many-{i}")}))
        .collect();
    let (st, body) = h.post("/v1/events", j, json!(many).to_string()).await;
    assert_eq!(st, 413, "{body}");

    // content types
    let (st, body) = h
        .post("/v1/events", "text/plain", good("ct").to_string())
        .await;
    assert_eq!(st, 415, "{body}");
    let (st, _) = h
        .post("/v1/events/cloudevents", "application/x-ndjson", "{}")
        .await;
    assert_eq!(st, 415);
    let (st, _) = h.post("/v1/traces", "application/xml", "<x/>").await;
    assert_eq!(st, 415);
    let (st, _) = h
        .post(
            "/v1/traces",
            "application/x-protobuf",
            vec![0xff, 0xff, 0xff],
        )
        .await;
    assert_eq!(st, 400);

    // CloudEvents: missing required attribute, wrong spec version
    let (st, body) = h
        .post(
            "/v1/events/cloudevents",
            "application/cloudevents+json",
            json!({"specversion": "1.0", "source": "s", "type": "t"}).to_string(),
        )
        .await;
    assert_eq!(
        (st, body["rejected"][0]["field"].as_str()),
        (400, Some("id")),
        "{body}"
    );
    let (st, body) = h
        .post(
            "/v1/events/cloudevents",
            "application/cloudevents+json",
            json!({"specversion": "0.3", "id": "1", "source": "s", "type": "t"}).to_string(),
        )
        .await;
    assert_eq!(
        (st, body["rejected"][0]["field"].as_str()),
        (400, Some("specversion"))
    );
    // LiteLLM without a call id (nor the response id it falls back to)
    let (st, body) = h
        .post(
            "/v1/events/litellm",
            j,
            json!([{"model": "gpt-4o", "custom_llm_provider": "openai"}]).to_string(),
        )
        .await;
    assert_eq!(
        (st, body["rejected"][0]["field"].as_str()),
        (400, Some("litellm_call_id"))
    );

    // auth: none, unknown, wrong role
    let (st, _) = h
        .post_as("/v1/events", j, good("auth-1").to_string(), None)
        .await;
    assert_eq!(st, 401);
    let (st, _) = h
        .post_as("/v1/events", j, good("auth-2").to_string(), Some("wrong"))
        .await;
    assert_eq!(st, 401);
    let (st, _) = h
        .post_as(
            "/v1/events",
            j,
            good("auth-3").to_string(),
            Some(FINANCE_TOKEN),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = h
        .post_as("/v1/traces", "application/json", "{}", None)
        .await;
    assert_eq!(st, 401);

    // only the good items reached Kafka
    let mut ids: Vec<String> = h
        .raw_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["mix-0", "mix-2", "nd-ok-1", "nd-ok-2"]);

    // the rejections are counted by reason
    let metrics = h.metrics_text().await;
    assert!(
        metrics.contains(
            "meterline_ingest_events_rejected_total{format=\"native\",reason=\"invalid\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("meterline_ingest_events_accepted_total{format=\"native\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_refuses_missing_and_wrong_tokens() {
    let h = Harness::start().await;
    let spec: Value = h
        .client
        .get(format!("{}/openapi.json", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        if item["post"]["security"].is_null() {
            continue;
        }
        let (st, _) = h.post_as(path, "application/json", "{}", None).await;
        assert_eq!(st, 401, "{path} without token");
        let (st, _) = h
            .post_as(path, "application/json", "{}", Some(FINANCE_TOKEN))
            .await;
        assert_eq!(st, 403, "{path} with a finance token");
        checked += 1;
    }
    assert_eq!(
        checked, 6,
        "the four event endpoints and the two enforcement endpoints are documented with bearer auth"
    );
}
