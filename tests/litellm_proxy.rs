//! End to end with the real LiteLLM proxy: LiteLLM from PyPI, unmodified (installed by
//! `scripts/setup-python`, pinned in `tests/fixtures/litellm_proxy/constraints.txt`), runs as a
//! child process in front of a stand-in OpenAI (an in-process HTTP server) and reports every
//! call with its own `generic_api` callback to the ingest edge, configured as the README says
//! (`tests/fixtures/litellm_proxy/config.yaml`). Through a real broker, enrich prices the
//! events with a native price; the test checks what was billed, call by call:
//!
//! - every call is priced exactly once, keyed on LiteLLM's call id (the `x-litellm-call-id`
//!   LiteLLM answers each client with), although the provider repeats one response id for all
//!   of them, and a request repeated with identical content is two calls, billed twice;
//! - tokens are the provider's (OpenAI's conventions undone: cached tokens out of the prompt,
//!   reasoning out of the completion), streamed calls included;
//! - the cost is the published rates × those tokens, computed here in Decimal, line by line;
//!   LiteLLM's own `response_cost` (its list price) is kept as `gateway_reported_cost`;
//! - a request answered from LiteLLM's cache is usage billed at zero (`cache_hit`);
//! - attribution: a request tag (`metadata.tags`) selects the tenant rule.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::{drain_topic, ingest_config, Harness, EDGE_TOKEN};
use meterline_enrich::{admin, EnrichConfig};
use meterline_reference::{native, publish, tenants};
use meterline_schemas::{topics, AvroRecord, PricedUsage};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The exact package set `scripts/setup-python` installs; its venv's stamp must start with it.
const CONSTRAINTS: &str = include_str!("fixtures/litellm_proxy/constraints.txt");
const CONFIG_TEMPLATE: &str = include_str!("fixtures/litellm_proxy/config.yaml");
const MASTER_KEY: &str = "sk-meterline-test-3f6c1a9e0b7d4c2e8a5f6b1d9e0c7a42";
/// The stand-in provider answers every call with this id, as caches and some providers do.
const PROVIDER_RESPONSE_ID: &str = "chatcmpl-stub-always-the-same";

/// meterline's negotiated price for openai/gpt-4o, per million tokens. Deliberately not
/// LiteLLM's list price (2.50 / 1.25 / 10), so meterline's cost and LiteLLM's differ.
const RATE_INPUT: &str = "2.00";
const RATE_CACHE_READ: &str = "0.50";
const RATE_OUTPUT: &str = "8.00";
/// LiteLLM's list price for gpt-4o in its bundled cost map, per million tokens.
const LIST_INPUT: &str = "2.50";
const LIST_CACHE_READ: &str = "1.25";
const LIST_OUTPUT: &str = "10.00";

fn prices_toml() -> String {
    format!(
        r#"
[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2025-01-01T00:00:00Z"
[[price.rate]]
unit = "input_token"
price = "{RATE_INPUT}"
per = 1_000_000
[[price.rate]]
unit = "cache_read_token"
price = "{RATE_CACHE_READ}"
per = 1_000_000
[[price.rate]]
unit = "output_token"
price = "{RATE_OUTPUT}"
per = 1_000_000
"#
    )
}

const TENANTS: &str = r#"
- rule_id: search-tag
  match: { tag: "team=search" }
  tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search }
"#;

// ---------------------------------------------------------------------------------------------
// The stand-in provider: OpenAI's chat completions, with the usage each request asks for.

/// What the provider reports for a call, OpenAI style: `prompt` includes `cached`,
/// `completion` includes `reasoning`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct StubUsage {
    prompt: i64,
    cached: i64,
    completion: i64,
    reasoning: i64,
}

impl StubUsage {
    /// The request text carries its usage as `usage=prompt/cached/completion/reasoning`.
    fn parse(text: &str) -> Option<StubUsage> {
        let spec = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("usage="))?;
        let n: Vec<i64> = spec
            .split('/')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        match n[..] {
            [prompt, cached, completion, reasoning] => Some(StubUsage {
                prompt,
                cached,
                completion,
                reasoning,
            }),
            _ => None,
        }
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    }
}

#[derive(Clone, Default)]
struct Provider {
    /// Every request body received, in order.
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn chat_completions(State(p): State<Provider>, Json(req): Json<Value>) -> Response {
    p.requests.lock().unwrap().push(req.clone());
    let text = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let Some(usage) = StubUsage::parse(text) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "no usage=p/c/o/r in the last message",
                                  "type": "invalid_request_error"}}),
            ),
        )
            .into_response();
    };
    let created = chrono::Utc::now().timestamp();
    let model = "gpt-4o-2024-08-06";
    if req["stream"].as_bool() == Some(true) {
        // As OpenAI: the usage chunk (empty choices) only when stream_options asks for it.
        let mut chunks = vec![
            json!({"id": PROVIDER_RESPONSE_ID, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [{"index": 0,
                   "delta": {"role": "assistant", "content": "streamed "}, "finish_reason": null}]}),
            json!({"id": PROVIDER_RESPONSE_ID, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [{"index": 0, "delta": {"content": "answer"},
                   "finish_reason": null}]}),
            json!({"id": PROVIDER_RESPONSE_ID, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ];
        if req["stream_options"]["include_usage"].as_bool() == Some(true) {
            chunks.push(
                json!({"id": PROVIDER_RESPONSE_ID, "object": "chat.completion.chunk",
                "created": created, "model": model, "choices": [], "usage": usage.json()}),
            );
        }
        let mut body = String::new();
        for c in chunks {
            body.push_str(&format!("data: {c}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    Json(json!({
        "id": PROVIDER_RESPONSE_ID,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer", "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": usage.json(),
    }))
    .into_response()
}

async fn start_provider() -> (String, Provider, CancellationToken) {
    let p = Provider::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
            .unwrap()
    });
    (format!("http://{addr}/v1"), p, stop)
}

// ---------------------------------------------------------------------------------------------
// The LiteLLM proxy, a child process.

/// The venv `scripts/setup-python` built, checked against the constraints this test was built
/// with: a missing or stale one fails the test (never skipped).
fn litellm_exe() -> PathBuf {
    let home = std::env::var_os("METERLINE_PY_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/meterline/py")
        });
    let exe = home.join("bin/litellm");
    let stamp = std::fs::read_to_string(home.join(".complete")).unwrap_or_default();
    let version = CONSTRAINTS
        .lines()
        .find_map(|l| l.strip_prefix("litellm=="))
        .unwrap();
    assert!(
        exe.is_file() && stamp.starts_with(CONSTRAINTS),
        "the LiteLLM proxy {version} is not installed in {} (or was installed from other \
         constraints): run scripts/setup (it runs scripts/setup-python; METERLINE_PY_HOME \
         chooses the venv)",
        home.display()
    );
    exe
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proxy {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Proxy {
    fn spawn(dir: &Path, provider_base: &str, edge: &str) -> Proxy {
        let exe = litellm_exe();
        let config = CONFIG_TEMPLATE
            .replace("{{PROVIDER_BASE}}", provider_base)
            .replace("{{EDGE}}", edge)
            .replace("{{EDGE_TOKEN}}", EDGE_TOKEN)
            .replace("{{MASTER_KEY}}", MASTER_KEY);
        assert!(
            !config
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("{{")),
            "unfilled placeholder in {config}"
        );
        let cfg = dir.join("litellm.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("litellm.log");
        let out = std::fs::File::create(&log).unwrap();
        let port = free_port();
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(&cfg)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(dir)
            // Nothing from the environment may redirect or reconfigure it.
            .env_remove("DATABASE_URL")
            .env_remove("LITELLM_MASTER_KEY")
            .env_remove("GENERIC_LOGGER_ENDPOINT")
            .env_remove("GENERIC_LOGGER_HEADERS")
            .env_remove("REDIS_HOST")
            .env_remove("REDIS_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_BASE")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            // Offline: the cost map bundled with the pinned version, no telemetry.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY_DISABLED", "true")
            // generic_api batches: posted when DEFAULT_BATCH_SIZE (512) events are queued or
            // every DEFAULT_FLUSH_INTERVAL_SECONDS (5, whole seconds). 1 s for the test.
            .env("DEFAULT_FLUSH_INTERVAL_SECONDS", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        // Its own process group (killed whole), and SIGKILLed if this thread dies.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits until /health/liveliness answers; fails with the log if the proxy exits.
    async fn ready(&mut self, client: &reqwest::Client) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the LiteLLM proxy exited ({status}):\n{}", self.log_tail());
            }
            let r = client
                .get(format!("{}/health/liveliness", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                eprintln!(
                    "LiteLLM proxy on {} ready in {:.1} s",
                    self.base,
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "the LiteLLM proxy did not answer within 90 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let f = std::fs::File::open(&self.log).unwrap();
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// meterline's side (as in tests/enrich_pricing.rs).

fn enrich_config() -> EnrichConfig {
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

/// The edge with its production body limits (16 MiB, 10,000 items) instead of the harness's
/// 64 KiB: a StandardLoggingPayload is ~13 KB (it carries the messages and the response), and
/// LiteLLM posts up to 512 of them at once.
async fn restart_edge_with_default_limits(h: &mut Harness) {
    h.stop_ingest().await;
    let defaults = meterline_ingest::IngestConfig::default();
    let cfg = meterline_ingest::IngestConfig {
        max_body_bytes: defaults.max_body_bytes,
        max_batch_items: defaults.max_batch_items,
        ..ingest_config(h.dir.path())
    };
    let app = meterline_ingest::App::build(&h.kafka, cfg)
        .await
        .expect("ingest builds");
    h.base = format!("http://{}", app.local_addr());
    h.stop = app.stop_token();
    h.task = Some(tokio::spawn(async move {
        app.run_until_stopped().await.expect("ingest runs")
    }));
}

/// The edge's metric lines for LiteLLM posts.
async fn edge_litellm_metrics(h: &Harness) -> String {
    h.metrics_text()
        .await
        .lines()
        .filter(|l| l.contains("format=\"litellm\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The priced records, once every call in `by_call_id` is among them; on a timeout, what is
/// missing, what the edge saw and what LiteLLM logged.
async fn all_priced(
    h: &Harness,
    proxy: &Proxy,
    by_call_id: &HashMap<String, usize>,
) -> Vec<PricedUsage> {
    let t0 = Instant::now();
    loop {
        let got = priced(h).await;
        let have: HashSet<&str> = got.iter().map(|p| call_id_of(&p.event.event_id)).collect();
        let mut missing: Vec<(usize, &str)> = by_call_id
            .iter()
            .filter(|(id, _)| !have.contains(id.as_str()))
            .map(|(id, i)| (*i, id.as_str()))
            .collect();
        if missing.is_empty() {
            return got;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            missing.sort();
            panic!(
                "after 60 s, {} of {} calls are not priced (call, LiteLLM call id): {missing:?}\n\
                 edge:\n{}\nLiteLLM's log:\n{}",
                missing.len(),
                by_call_id.len(),
                edge_litellm_metrics(h).await,
                proxy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn per_million(tokens: i64, rate: &str) -> Decimal {
    Decimal::from(tokens) * Decimal::from_str(rate).unwrap() / Decimal::from(1_000_000)
}

// ---------------------------------------------------------------------------------------------

/// One call through the proxy.
struct Call {
    what: &'static str,
    content: String,
    usage: StubUsage,
    stream: bool,
    /// `cache: {"no-cache": true}`: LiteLLM does not answer from its cache.
    no_cache: bool,
    /// Identical to an earlier call, so LiteLLM answers from its cache.
    cache_hit: bool,
}

fn calls() -> Vec<Call> {
    let u = |prompt, cached, completion, reasoning| StubUsage {
        prompt,
        cached,
        completion,
        reasoning,
    };
    let plain = [
        u(1000, 0, 40, 0),
        u(1137, 256, 63, 0),
        u(1274, 512, 86, 12),
        u(1411, 0, 109, 0),
        u(1548, 1024, 132, 30),
        u(1685, 128, 155, 0),
        u(1822, 0, 178, 8),
        u(1959, 640, 201, 0),
    ];
    let content = |i: usize, u: &StubUsage| {
        format!(
            "question {i} usage={}/{}/{}/{}",
            u.prompt, u.cached, u.completion, u.reasoning
        )
    };
    let mut out: Vec<Call> = plain
        .iter()
        .enumerate()
        .map(|(i, u)| Call {
            what: "plain",
            content: content(i, u),
            usage: *u,
            stream: false,
            no_cache: false,
            cache_hit: false,
        })
        .collect();
    for (i, u) in [(8, u(2048, 1024, 300, 64)), (9, u(777, 0, 55, 0))] {
        out.push(Call {
            what: "streamed",
            content: content(i, &u),
            usage: u,
            stream: true,
            no_cache: false,
            cache_hit: false,
        });
    }
    // The same request as call 0 again, past the cache: a second call, same content, same
    // provider response id, same usage. Billed again.
    out.push(Call {
        what: "repeat of call 0, cache bypassed",
        content: content(0, &plain[0]),
        usage: plain[0],
        stream: false,
        no_cache: true,
        cache_hit: false,
    });
    // The same request as call 1 again: LiteLLM's cache answers.
    out.push(Call {
        what: "repeat of call 1, cache hit",
        content: content(1, &plain[1]),
        usage: plain[1],
        stream: false,
        no_cache: false,
        cache_hit: true,
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_proxy_calls_are_priced_once_each() {
    let t0 = Instant::now();
    // Fails (not skips) at once when scripts/setup-python has not run.
    litellm_exe();
    let (provider_base, provider, provider_stop) = start_provider().await;
    let mut h = Harness::start().await;
    restart_edge_with_default_limits(&mut h).await;
    let mut proxy = Proxy::spawn(h.dir.path(), &provider_base, &h.base);

    let drafts = native::parse(&prices_toml(), native::Syntax::Toml, None, "test", "test").unwrap();
    let k = h.kafka.clone();
    let p = tokio::task::spawn_blocking(move || publish::publish_prices(&k, drafts, "test", false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.added.len(), 1);
    let price_id = p.added[0].0.clone();
    assert_eq!(price_id, "openai/gpt-4o");
    let rules =
        tenants::parse_yaml(TENANTS, Some("2020-01-01T00:00:00Z".parse().unwrap()), "t").unwrap();
    let k = h.kafka.clone();
    tokio::task::spawn_blocking(move || {
        publish::publish_tenants(&k, rules, "test", false).unwrap()
    })
    .await
    .unwrap();
    let enrich = start_enrich(&h).await;
    proxy.ready(&h.client).await;

    // 1. The calls, one after another (the cache hit needs its original answered first).
    let calls = calls();
    let mut by_call_id: HashMap<String, usize> = HashMap::new();
    for (i, c) in calls.iter().enumerate() {
        let mut body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": c.content}],
            "metadata": {"tags": ["team:search"]},
        });
        if c.stream {
            body["stream"] = json!(true);
        }
        if c.no_cache {
            body["cache"] = json!({"no-cache": true});
        }
        let resp = h
            .client
            .post(format!("{}/v1/chat/completions", proxy.base))
            .bearer_auth(MASTER_KEY)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the proxy answers");
        let status = resp.status();
        let call_id = resp
            .headers()
            .get("x-litellm-call-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "call {i} ({}): {status} {text}\n{}",
            c.what,
            proxy.log_tail()
        );
        if c.stream {
            assert!(text.contains("data: [DONE]"), "call {i}: {text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["usage"]["prompt_tokens"], c.usage.prompt,
                "call {i}: {text}"
            );
        }
        let call_id = call_id.unwrap_or_else(|| panic!("call {i}: no x-litellm-call-id"));
        assert!(
            by_call_id.insert(call_id.clone(), i).is_none(),
            "LiteLLM gave call {i} the id {call_id} of an earlier call"
        );
    }
    // The cache hit did not reach the provider; every other call did.
    let provider_calls = provider.requests.lock().unwrap().len();
    assert_eq!(
        provider_calls,
        calls.iter().filter(|c| !c.cache_hit).count(),
        "calls that reached the provider"
    );

    // 2. Every call priced: awaited by LiteLLM's call ids (its batches are flushed every second).
    let t_flush = Instant::now();
    let priced = all_priced(&h, &proxy, &by_call_id).await;
    let flushed_in = t_flush.elapsed();
    let raw = h.raw_events().await;
    let rejected = {
        let k = h.kafka.clone();
        tokio::task::spawn_blocking(move || admin::rejected(&k, true).unwrap())
            .await
            .unwrap()
    };
    assert!(rejected.is_empty(), "rejected: {rejected:?}");
    // LiteLLM posted each call once, and meterline priced each once.
    assert_eq!(raw.len(), calls.len(), "events the edge accepted");
    assert_eq!(priced.len(), calls.len(), "priced records");
    let distinct: HashSet<&str> = priced.iter().map(|p| p.event.event_id.as_str()).collect();
    assert_eq!(distinct.len(), calls.len(), "distinct priced event ids");

    // 3. Each call's record: its tokens, its price, its cost.
    for p in &priced {
        let i = by_call_id[call_id_of(&p.event.event_id)];
        let c = &calls[i];
        let e = &p.event;
        let what = format!("call {i} ({}), event {}", c.what, e.event_id);
        assert_ne!(e.event_id, PROVIDER_RESPONSE_ID, "{what}");
        assert!(
            !e.event_id.starts_with(PROVIDER_RESPONSE_ID),
            "{what}: keyed on the response id"
        );
        assert_eq!(e.format, "litellm", "{what}");
        assert_eq!(e.provider, "openai", "{what}");
        assert!(e.model.ends_with("gpt-4o"), "{what}: model {}", e.model);
        assert_eq!(p.price_id, price_id, "{what}");
        assert_eq!(p.price_version, 1, "{what}");
        assert_eq!(p.model, "gpt-4o", "{what}");
        assert_eq!(p.currency, "USD", "{what}");
        assert_eq!(
            e.tags.get("team").map(String::as_str),
            Some("search"),
            "{what}: tags {:?}",
            e.tags
        );
        assert_eq!(p.tenant_rule_id.as_deref(), Some("search-tag"), "{what}");
        assert_eq!(p.tenant.team.as_deref(), Some("search"), "{what}");
        if c.cache_hit {
            assert!(
                e.request_id
                    .as_deref()
                    .is_some_and(|r| r.starts_with(PROVIDER_RESPONSE_ID)),
                "{what}: request id {:?}",
                e.request_id
            );
        } else {
            assert_eq!(
                e.request_id.as_deref(),
                Some(PROVIDER_RESPONSE_ID),
                "{what}"
            );
        }

        let u = &e.usage;
        let s = c.usage;
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.output_tokens,
                u.reasoning_tokens
            ),
            (
                s.prompt - s.cached,
                s.cached,
                s.completion - s.reasoning,
                s.reasoning
            ),
            "{what}: tokens (input, cache read, output, reasoning)"
        );
        assert_eq!(
            (
                u.cache_write_5m_tokens,
                u.cache_write_1h_tokens,
                u.audio_input_tokens,
                u.audio_output_tokens
            ),
            (0, 0, 0, 0),
            "{what}"
        );
        assert_eq!(e.cache_hit, c.cache_hit, "{what}: cache_hit");

        let gateway = e
            .gateway_reported_cost
            .unwrap_or_else(|| panic!("{what}: no gateway_reported_cost"))
            .decimal();
        let cost = &p.cost;
        if c.cache_hit {
            // Usage kept, nothing billed; LiteLLM reports 0 too.
            assert!(cost.total.is_zero(), "{what}: cache hit cost {:?}", cost);
            assert!(
                [cost.input, cost.cache_read, cost.output, cost.reasoning]
                    .iter()
                    .all(|m| m.is_zero()),
                "{what}: {cost:?}"
            );
            assert!(gateway.is_zero(), "{what}: LiteLLM's cost {gateway}");
            continue;
        }
        let input = per_million(s.prompt - s.cached, RATE_INPUT);
        let cache_read = per_million(s.cached, RATE_CACHE_READ);
        let output = per_million(s.completion - s.reasoning, RATE_OUTPUT);
        let reasoning = per_million(s.reasoning, RATE_OUTPUT);
        assert_eq!(cost.input.decimal(), input, "{what}: input");
        assert_eq!(cost.cache_read.decimal(), cache_read, "{what}: cache read");
        assert_eq!(cost.output.decimal(), output, "{what}: output");
        assert_eq!(
            cost.reasoning.decimal(),
            reasoning,
            "{what}: reasoning at the output rate"
        );
        assert!(
            cost.cache_write.is_zero() && cost.other.is_zero(),
            "{what}: {cost:?}"
        );
        assert_eq!(
            cost.total.decimal(),
            input + cache_read + output + reasoning,
            "{what}: total"
        );
        // LiteLLM's own figure, at its list price, computed by it in floating point: kept as
        // reported, and not what meterline bills.
        let list = per_million(s.prompt - s.cached, LIST_INPUT)
            + per_million(s.cached, LIST_CACHE_READ)
            + per_million(s.completion, LIST_OUTPUT);
        assert!(
            (gateway - list).abs() < Decimal::from_str("0.000000000001").unwrap(),
            "{what}: LiteLLM reported {gateway}, its list price gives {list}"
        );
        assert_ne!(gateway, cost.total.decimal(), "{what}");
    }

    // 4. The repeated request: two calls, two records, equal content, both billed.
    let repeat: Vec<&PricedUsage> = priced
        .iter()
        .filter(|p| {
            by_call_id[call_id_of(&p.event.event_id)] == 0
                || calls[by_call_id[call_id_of(&p.event.event_id)]].no_cache
        })
        .collect();
    assert_eq!(repeat.len(), 2);
    assert_ne!(repeat[0].event.event_id, repeat[1].event.event_id);
    assert_eq!(repeat[0].event.usage, repeat[1].event.usage);
    assert_eq!(repeat[0].cost, repeat[1].cost);
    assert!(!repeat[0].cost.total.is_zero());
    let billed: Decimal = priced.iter().map(|p| p.cost.total.decimal()).sum();
    eprintln!(
        "{} calls through LiteLLM {} priced once each ({billed} billed), the last {:.1} s after \
         the last answer; {:.1} s in all; edge:\n{}",
        calls.len(),
        CONSTRAINTS
            .lines()
            .find_map(|l| l.strip_prefix("litellm=="))
            .unwrap(),
        flushed_in.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        edge_litellm_metrics(&h).await
    );

    enrich.stop().await;
    drop(proxy);
    provider_stop.cancel();
}

/// The LiteLLM call id in an event id (`<litellm_call_id>@<start µs>`).
fn call_id_of(event_id: &str) -> &str {
    event_id
        .rsplit_once('@')
        .map(|(c, _)| c)
        .unwrap_or(event_id)
}
