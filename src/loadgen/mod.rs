//! `meterline loadgen`: realistic usage traffic against an ingest edge, at a fixed rate for a
//! fixed time, spread over the edge's four formats (see `formats.rs`).
//!
//! - Request sizes (input, output and cached prompt tokens) are drawn from an excerpt of the
//!   Azure LLM inference trace 2023 and the Mooncake trace (`requests.csv`, see README.md here).
//! - 5 teams, 20 API keys (busy and quiet ones: Zipf-like weights), each key with a workload
//!   (chat, code or long-context) and a main model among gpt-4o, gpt-4o-mini (openai),
//!   claude-sonnet-4 (anthropic) and gemini-2.5-pro (gemini); prompt-cache hits, a streaming
//!   share, gateway cache hits (billed at zero) and reasoning tokens for the thinking model.
//! - Batches of 1..=`batch` events per request, at most `concurrency` requests in flight.
//! - A share of batches is sent again, byte for byte (the same event ids): the edge accepts
//!   both and the pipeline bills them once. Transport errors, 429 and 5xx are retried with
//!   backoff (honouring `Retry-After`), with the same body.
//! - `--spike`: now and then a burst at several times the rate for a few seconds.
//!
//! `run` is the library entry (`meterline dev`, tests); `cli` adds the printed summary and the
//! exit status.

pub mod formats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use formats::{Call, Format};

use crate::progress::Progress;

/// The edge token of `meterline dev`.
pub const DEFAULT_TOKEN: &str = "dev-edge-token";

const REQUESTS_CSV: &str = include_str!("requests.csv");

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send: `30s`, `5m`, `1h`, `500ms` (a bare number is seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Base URL of the ingest edge.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Bearer token with the edge role.
    #[arg(long, env = "METERLINE_LOADGEN_TOKEN", default_value = DEFAULT_TOKEN, hide_env_values = true)]
    pub token: String,
    /// Formats to spread the events over.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "native,litellm,cloudevents,otlp"
    )]
    pub formats: Vec<Format>,
    /// Seed of the traffic's shape (sizes, mix, batching); event ids stay unique per run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Now and then a burst at 3–8× the rate for 2–5 s.
    #[arg(long)]
    pub spike: bool,
    /// Most events per request (each request holds 1..=batch).
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Most requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Share of batches sent a second time with the same event ids.
    #[arg(long, default_value_t = 0.05)]
    pub resend_share: f64,
    /// No progress output (the summary is still returned / printed).
    #[arg(long)]
    pub quiet: bool,
}

impl LoadgenArgs {
    /// Defaults for a target and rate (for `meterline dev` and tests).
    pub fn new(target: impl Into<String>, rate: f64, duration: Duration) -> LoadgenArgs {
        LoadgenArgs {
            rate,
            duration,
            target: target.into(),
            token: DEFAULT_TOKEN.into(),
            formats: Format::ALL.to_vec(),
            seed: None,
            spike: false,
            batch: 5,
            concurrency: 32,
            resend_share: 0.05,
            quiet: false,
        }
    }
}

/// `30s`, `5m`, `1h`, `250ms`, `2.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (30s, 5m, 1h, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit '{u}' in '{s}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("'{s}' must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What a run did. Event counts are of distinct events (a resend is counted in `retried`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Distinct events generated and sent (at least once).
    pub sent: u64,
    /// Events the edge accepted (first delivery of each batch).
    pub accepted: u64,
    /// Events the edge refused (207 `rejected[]`, 4xx, OTLP `rejectedSpans`).
    pub rejected: u64,
    /// Events never answered (transport errors or 5xx after every retry).
    pub failed: u64,
    /// Events sent again with the same ids: deliberate resends and retries after errors.
    pub retried: u64,
    /// HTTP requests made (every attempt).
    pub requests: u64,
    /// Attempts that failed: transport errors and non-2xx answers.
    pub http_errors: u64,
    /// Distinct events sent, per format.
    pub sent_by_format: BTreeMap<String, u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub requested_rate: f64,
    /// `sent` over the time from the start to the last first-delivery answer.
    pub achieved_rate: f64,
    pub elapsed_secs: f64,
    pub spikes: u32,
    /// Edge ids of events resent deliberately whose both deliveries were accepted (at most
    /// 10,000): on the raw topic twice with the same content, billed once.
    pub resent_ids: Vec<String>,
    /// The first few rejection reasons seen.
    pub rejection_samples: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} events in {:.1} s ({:.1}/s achieved, {:.1}/s requested{})",
            self.sent,
            self.elapsed_secs,
            self.achieved_rate,
            self.requested_rate,
            if self.spikes > 0 {
                format!(", {} spikes", self.spikes)
            } else {
                String::new()
            }
        )?;
        let by: Vec<String> = self
            .sent_by_format
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  by format: {}", by.join(", "))?;
        writeln!(
            f,
            "  accepted {}  rejected {}  failed {}  retried {}",
            self.accepted, self.rejected, self.failed, self.retried
        )?;
        writeln!(
            f,
            "  requests {}  http errors {}  latency p50 {:.1} ms  p99 {:.1} ms",
            self.requests, self.http_errors, self.latency_p50_ms, self.latency_p99_ms
        )?;
        for r in &self.rejection_samples {
            writeln!(f, "  e.g. {r}")?;
        }
        Ok(())
    }
}

/// `meterline loadgen`: runs, prints the summary, fails when nothing was accepted.
pub async fn cli(args: LoadgenArgs) -> anyhow::Result<()> {
    let s = run(args).await?;
    print!("{s}");
    anyhow::ensure!(s.accepted > 0, "nothing was accepted");
    Ok(())
}

// ---- traffic model ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Chat,
    Code,
    LongContext,
}

struct Row {
    input: u64,
    output: u64,
    cached: u64,
}

struct Model {
    provider: &'static str,
    name: &'static str,
    /// Share of calls (a key's main model aside).
    weight: f64,
    /// Decode time per output token, ms.
    ms_per_token: f64,
    /// Thousandths of a USD per 1M tokens (= 1e-9 USD per token): input, cached input,
    /// output. Integers, so a call's cost is exact at 9 decimals (money is never a float).
    price: (i64, i64, i64),
    thinking: bool,
}

const MODELS: [Model; 4] = [
    Model {
        provider: "openai",
        name: "gpt-4o",
        weight: 0.25,
        ms_per_token: 12.0,
        price: (2_500, 1_250, 10_000),
        thinking: false,
    },
    Model {
        provider: "openai",
        name: "gpt-4o-mini",
        weight: 0.35,
        ms_per_token: 7.0,
        price: (150, 75, 600),
        thinking: false,
    },
    Model {
        provider: "anthropic",
        name: "claude-sonnet-4",
        weight: 0.25,
        ms_per_token: 14.0,
        price: (3_000, 300, 15_000),
        thinking: false,
    },
    Model {
        provider: "gemini",
        name: "gemini-2.5-pro",
        weight: 0.15,
        ms_per_token: 9.0,
        price: (1_250, 125, 10_000),
        thinking: true,
    },
];

const TEAMS: [&str; 5] = [
    "search",
    "support-bot",
    "data-science",
    "platform",
    "growth",
];
const KEYS: usize = 20;

struct Key {
    hash: String,
    alias: String,
    team: &'static str,
    workload: Workload,
    main_model: usize,
    users: u32,
    environment: &'static str,
}

struct Traffic {
    rows: Vec<(Workload, Row)>,
    keys: Vec<Key>,
    /// Cumulative Zipf-like weights over `keys`.
    key_cdf: Vec<f64>,
    run: String,
    nonce: u128,
    seq: u64,
}

fn rows() -> Vec<(Workload, Row)> {
    REQUESTS_CSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = |i: usize| f[i].trim().parse::<u64>().expect("requests.csv: a count");
            let w = match f[0] {
                "azure_conv" => Workload::Chat,
                "azure_code" => Workload::Code,
                _ => Workload::LongContext,
            };
            (
                w,
                Row {
                    input: n(1),
                    output: n(2),
                    cached: n(3),
                },
            )
        })
        .collect()
}

fn pick_model(rng: &mut impl Rng) -> usize {
    let mut x = rng.random::<f64>();
    for (i, m) in MODELS.iter().enumerate() {
        if x < m.weight {
            return i;
        }
        x -= m.weight;
    }
    MODELS.len() - 1
}

impl Traffic {
    fn new(rng: &mut StdRng) -> Traffic {
        let keys: Vec<Key> = (0..KEYS)
            .map(|i| {
                let team = TEAMS[i % TEAMS.len()];
                let hash: [u8; 32] = rng.random();
                Key {
                    hash: hex_string(&hash),
                    alias: format!("{team}-key-{}", i / TEAMS.len() + 1),
                    team,
                    workload: [Workload::Chat, Workload::Code, Workload::LongContext][i % 3],
                    main_model: pick_model(rng),
                    users: rng.random_range(1..=40),
                    environment: if i % 4 == 3 { "staging" } else { "prod" },
                }
            })
            .collect();
        let mut acc = 0.0;
        let key_cdf = (0..KEYS)
            .map(|i| {
                acc += 1.0 / (i as f64 + 1.0);
                acc
            })
            .collect();
        let nonce: u128 = rand::random();
        Traffic {
            rows: rows(),
            keys,
            key_cdf,
            run: format!("{:08x}", (nonce >> 96) as u32),
            nonce,
            seq: 0,
        }
    }

    fn call(&mut self, rng: &mut StdRng) -> Call {
        self.seq += 1;
        let x = rng.random::<f64>() * self.key_cdf[KEYS - 1];
        let k = &self.keys[self.key_cdf.partition_point(|c| *c < x).min(KEYS - 1)];
        let m = &MODELS[if rng.random_bool(0.8) {
            k.main_model
        } else {
            pick_model(rng)
        }];
        let same: Vec<&Row> = self
            .rows
            .iter()
            .filter(|(w, _)| *w == k.workload)
            .map(|(_, r)| r)
            .collect();
        let row = same[rng.random_range(0..same.len())];
        let input = row.input.max(1);
        // The Azure rows have no cache column: borrow a hit ratio from a Mooncake row.
        let cached = if k.workload == Workload::LongContext {
            row.cached.min(input)
        } else if rng.random_bool(0.5) {
            let long: Vec<&Row> = self
                .rows
                .iter()
                .filter(|(w, _)| *w == Workload::LongContext)
                .map(|(_, r)| r)
                .collect();
            let r = long[rng.random_range(0..long.len())];
            (input as f64 * r.cached as f64 / r.input.max(1) as f64) as u64
        } else {
            0
        };
        // OpenAI caches prompts of 1024+ tokens in 128-token steps.
        let cached = if m.provider == "openai" {
            if input >= 1024 {
                cached / 128 * 128
            } else {
                0
            }
        } else {
            cached
        };
        let output = row.output;
        let reasoning = if m.thinking && output > 0 {
            (output as f64 * rng.random_range(0.3..0.7)) as u64
        } else {
            0
        };
        let stream = rng.random_bool(0.6);
        let gateway_cache_hit = rng.random_bool(0.02);
        let (ttft, latency) = if gateway_cache_hit {
            let t = rng.random_range(3..25);
            (t, t + rng.random_range(0..5))
        } else {
            let ttft = 120.0 + input as f64 / 40.0 + rng.random_range(0.0..250.0);
            let decode = output as f64 * m.ms_per_token * rng.random_range(0.8..1.3);
            (ttft as u64, (ttft + decode) as u64)
        };
        let cost = if gateway_cache_hit {
            rust_decimal::Decimal::new(0, 9)
        } else {
            let nano_usd = (input - cached) as i64 * m.price.0
                + cached as i64 * m.price.1
                + output as i64 * m.price.2;
            rust_decimal::Decimal::new(nano_usd, 9)
        };
        let bits = rng.random::<u128>() ^ self.nonce;
        Call {
            seq: self.seq,
            run: self.run.clone(),
            uuid: uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid(),
            started: Utc::now() - chrono::Duration::milliseconds(latency as i64),
            org: "acme",
            team: k.team,
            key_hash: k.hash.clone(),
            key_alias: k.alias.clone(),
            user: format!("{}-user-{}", k.team, rng.random_range(1..=k.users)),
            provider: m.provider,
            model: m.name,
            input_tokens: input,
            cached_tokens: cached,
            output_tokens: output,
            reasoning_tokens: reasoning,
            stream,
            gateway_cache_hit,
            ttft_ms: ttft,
            latency_ms: latency,
            cost,
            environment: k.environment,
        }
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- sending ------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    requests: AtomicU64,
    http_errors: AtomicU64,
    /// µs since the start of the last first-delivery answer.
    last_answer_us: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    resent_ids: Mutex<Vec<String>>,
    rejection_samples: Mutex<Vec<String>>,
}

/// What the edge said about one request.
enum Outcome {
    /// 2xx: accepted and rejected item counts.
    Answered { accepted: u64, rejected: u64 },
    /// 4xx other than 429: nothing accepted, do not retry.
    Refused,
    /// Transport error, 429 or 5xx after every retry.
    Failed,
}

struct Sender {
    client: reqwest::Client,
    target: String,
    token: String,
    stats: Arc<Stats>,
    start: Instant,
}

const ATTEMPTS: u32 = 4;

impl Sender {
    fn sample_rejection(&self, what: String) {
        let mut s = self.stats.rejection_samples.lock().unwrap();
        if s.len() < 5 {
            s.push(what);
        }
    }

    /// Sends `body` (holding `n` events), retrying transport errors, 429 and 5xx.
    async fn deliver(&self, format: Format, body: &[u8], n: u64) -> Outcome {
        let url = format!("{}{}", self.target.trim_end_matches('/'), format.path());
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                self.stats.retried.fetch_add(n, Ordering::Relaxed);
            }
            let t0 = Instant::now();
            let r = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .header(reqwest::header::CONTENT_TYPE, format.content_type())
                .body(body.to_vec())
                .send()
                .await;
            let r = match r {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    resp.bytes()
                        .await
                        .map(|b| (status, retry_after, b))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats.latencies_us.lock().unwrap().push(us);
            let (status, retry_after, bytes) = match r {
                Ok(x) => x,
                Err(e) => {
                    self.stats.http_errors.fetch_add(1, Ordering::Relaxed);
                    if attempt == ATTEMPTS {
                        self.sample_rejection(format!("{}: {e}", format.label()));
                        return Outcome::Failed;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                let rejected = if format == Format::Otlp {
                    let p = v.get("partialSuccess").or_else(|| v.get("partial_success"));
                    let r = p
                        .and_then(|p| p.get("rejectedSpans").or_else(|| p.get("rejected_spans")))
                        .and_then(|r| {
                            r.as_u64()
                                .or_else(|| r.as_str().and_then(|s| s.parse().ok()))
                        })
                        .unwrap_or(0);
                    if r > 0 {
                        let msg = p
                            .and_then(|p| p.get("errorMessage").or_else(|| p.get("error_message")))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        self.sample_rejection(format!("otlp: {msg}"));
                    }
                    r
                } else {
                    let list = v.get("rejected").and_then(Value::as_array);
                    if let Some(first) = list.and_then(|l| l.first()) {
                        self.sample_rejection(format!("{}: {first}", format.label()));
                    }
                    list.map_or(0, |l| l.len() as u64)
                };
                let accepted = match v.get("accepted").and_then(Value::as_u64) {
                    Some(a) => a,
                    None => n.saturating_sub(rejected),
                };
                return Outcome::Answered { accepted, rejected };
            }
            self.stats.http_errors.fetch_add(1, Ordering::Relaxed);
            let retryable = status.is_server_error() || status.as_u16() == 429;
            if !retryable || attempt == ATTEMPTS {
                let text = String::from_utf8_lossy(&bytes);
                self.sample_rejection(format!(
                    "{}: HTTP {}: {}",
                    format.label(),
                    status.as_u16(),
                    text.chars().take(300).collect::<String>()
                ));
                return if retryable {
                    Outcome::Failed
                } else {
                    Outcome::Refused
                };
            }
            let wait = retry_after
                .map(|s| Duration::from_secs(s.min(5)))
                .unwrap_or(backoff);
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
        Outcome::Failed
    }

    /// First delivery of a batch: counts the events' fate.
    async fn first(&self, format: Format, body: &[u8], n: u64) -> bool {
        let o = self.deliver(format, body, n).await;
        let s = &self.stats;
        let clean = match o {
            Outcome::Answered { accepted, rejected } => {
                s.accepted.fetch_add(accepted, Ordering::Relaxed);
                s.rejected.fetch_add(rejected, Ordering::Relaxed);
                rejected == 0
            }
            Outcome::Refused => {
                s.rejected.fetch_add(n, Ordering::Relaxed);
                false
            }
            Outcome::Failed => {
                s.failed.fetch_add(n, Ordering::Relaxed);
                false
            }
        };
        s.last_answer_us
            .fetch_max(self.start.elapsed().as_micros() as u64, Ordering::Relaxed);
        clean
    }

    /// A deliberate resend of an accepted batch, byte for byte.
    async fn resend(&self, format: Format, body: &[u8], ids: Vec<String>) {
        let n = ids.len() as u64;
        self.stats.retried.fetch_add(n, Ordering::Relaxed);
        if let Outcome::Answered { rejected: 0, .. } = self.deliver(format, body, n).await {
            let mut r = self.stats.resent_ids.lock().unwrap();
            if r.len() < 10_000 {
                r.extend(ids);
            }
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// What the progress line says besides the rate (`crate::progress` draws it).
fn progress_detail(stats: &Stats, spiking: bool) -> String {
    format!(
        "accepted {}  rejected {}  retried {}  http errors {}{}",
        stats.accepted.load(Ordering::Relaxed),
        stats.rejected.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        stats.http_errors.load(Ordering::Relaxed),
        if spiking { "  SPIKE" } else { "" }
    )
}

/// Sends traffic as `args` says and returns what happened. Errors only on bad arguments; an
/// unreachable edge shows as `failed` events and `http_errors`.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be positive"
    );
    anyhow::ensure!(!args.formats.is_empty(), "--formats names none");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.resend_share),
        "--resend-share must be within 0..1"
    );
    let mut formats = args.formats.clone();
    formats.sort();
    formats.dedup();
    let mut rng = match args.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    };
    let mut traffic = Traffic::new(&mut rng);
    let start = Instant::now();
    let sender = Arc::new(Sender {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(args.concurrency)
            .build()?,
        target: args.target.clone(),
        token: args.token.clone(),
        stats: Arc::new(Stats::default()),
        start,
    });
    let stats = sender.stats.clone();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();
    let mut by_format: BTreeMap<String, u64> = BTreeMap::new();
    let mut progress = Progress::new(
        "loadgen",
        "events",
        Some((args.rate * args.duration.as_secs_f64()).round() as u64),
        args.quiet,
    )
    .every(if args.duration <= Duration::from_secs(20) {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });

    // Spikes: (start, end, multiplier), from 5 s in, one every 10–40 s.
    let mut spikes: Vec<(Duration, Duration, f64)> = Vec::new();
    if args.spike {
        let mut at = Duration::from_secs_f64(rng.random_range(5.0..15.0));
        while at < args.duration {
            let len = Duration::from_secs_f64(rng.random_range(2.0..5.0));
            spikes.push((at, at + len, rng.random_range(3.0..8.0)));
            at += len + Duration::from_secs_f64(rng.random_range(10.0..40.0));
        }
    }
    let mut spikes_seen = 0u32;
    let mut in_spike: Option<usize> = None;

    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut credit = 0.0f64;
    let mut last = Duration::ZERO;
    let mut next_size = rng.random_range(1..=args.batch);
    loop {
        tick.tick().await;
        let now = start.elapsed().min(args.duration);
        let spike = spikes.iter().position(|(a, b, _)| now >= *a && now < *b);
        if spike.is_some() && spike != in_spike {
            spikes_seen += 1;
        }
        in_spike = spike;
        let mult = spike.map_or(1.0, |i| spikes[i].2);
        credit += (now - last).as_secs_f64() * args.rate * mult;
        last = now;
        let finishing = now >= args.duration;
        // At the end, whatever credit is left rounds to the events still due.
        if finishing {
            credit = credit.round();
        }
        while credit >= next_size as f64 || (finishing && credit >= 1.0) {
            let n = next_size.min(credit as usize).max(1);
            credit -= n as f64;
            next_size = rng.random_range(1..=args.batch);
            let format = formats[rng.random_range(0..formats.len())];
            let calls: Vec<Call> = (0..n).map(|_| traffic.call(&mut rng)).collect();
            let (body, ids) = formats::render(format, &calls);
            let resend = rng.random_bool(args.resend_share);
            let resend_delay = Duration::from_millis(rng.random_range(50..1000));
            *by_format.entry(format.label().into()).or_default() += n as u64;
            stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            let permit = permits.clone().acquire_owned().await?;
            let s = sender.clone();
            let p = permits.clone();
            tasks.spawn(async move {
                let clean = s.first(format, &body, n as u64).await;
                drop(permit);
                if resend && clean {
                    // A gateway resending a batch it got no answer for, a little later.
                    tokio::time::sleep(resend_delay).await;
                    let _permit = p.acquire_owned().await;
                    s.resend(format, &body, ids).await;
                }
            });
            // Reap finished tasks so the set stays small on long runs.
            while tasks.try_join_next().is_some() {}
        }
        progress.update(stats.sent.load(Ordering::Relaxed), || {
            progress_detail(&stats, in_spike.is_some())
        });
        if finishing {
            break;
        }
    }
    while tasks.join_next().await.is_some() {
        progress.update(stats.sent.load(Ordering::Relaxed), || {
            progress_detail(&stats, false)
        });
    }
    progress.finish(&progress_detail(&stats, false));

    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let sent = stats.sent.load(Ordering::Relaxed);
    let answered = Duration::from_micros(stats.last_answer_us.load(Ordering::Relaxed))
        .max(Duration::from_millis(1));
    let resent_ids = std::mem::take(&mut *stats.resent_ids.lock().unwrap());
    let rejection_samples = std::mem::take(&mut *stats.rejection_samples.lock().unwrap());
    Ok(Summary {
        sent,
        accepted: stats.accepted.load(Ordering::Relaxed),
        rejected: stats.rejected.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        retried: stats.retried.load(Ordering::Relaxed),
        requests: stats.requests.load(Ordering::Relaxed),
        http_errors: stats.http_errors.load(Ordering::Relaxed),
        sent_by_format: by_format,
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        requested_rate: args.rate,
        achieved_rate: sent as f64 / answered.as_secs_f64(),
        elapsed_secs: start.elapsed().as_secs_f64(),
        spikes: spikes_seen,
        resent_ids,
        rejection_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn the_fixture_has_every_workload_and_cache_hits() {
        let r = rows();
        assert_eq!(r.len(), 600);
        for w in [Workload::Chat, Workload::Code, Workload::LongContext] {
            assert_eq!(r.iter().filter(|(x, _)| *x == w).count(), 200);
        }
        let (i, c) = r
            .iter()
            .filter(|(w, _)| *w == Workload::LongContext)
            .fold((0, 0), |(i, c), (_, r)| (i + r.input, c + r.cached));
        let share = c as f64 / i as f64;
        assert!((0.3..0.4).contains(&share), "{share}");
    }

    #[test]
    fn a_seed_gives_the_same_shape_and_new_ids() {
        let shape = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut t = Traffic::new(&mut rng);
            let calls: Vec<Call> = (0..50).map(|_| t.call(&mut rng)).collect();
            calls
        };
        let (a, b) = (shape(7), shape(7));
        let sizes = |c: &[Call]| {
            c.iter()
                .map(|c| (c.model, c.input_tokens, c.cached_tokens, c.output_tokens))
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(&a), sizes(&b));
        assert_ne!(a[0].uuid, b[0].uuid);
        for c in &a {
            assert!(c.cached_tokens <= c.input_tokens);
            assert!(c.reasoning_tokens <= c.output_tokens);
        }
    }
}
