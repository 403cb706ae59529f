//! Alert delivery: budget signals and anomalies → webhooks (generic JSON or Slack-shaped).
//!
//! The topics are the source of truth; this is a consumer group of its own, so delivery never
//! holds up the ledger or the budget tracker. Each receiver of each alert is an independent
//! task retried with exponential backoff; an alert's offset is committed once all of its
//! deliveries have ended (delivered or given up), and only contiguously (see
//! [`Completions`]), so a crash re-delivers at most what was in flight: at-least-once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::metric_names as m;
use meterline_schemas::{
    topics, Anomaly, AvroRecord, BudgetAction, BudgetChange, BudgetSignal, BudgetState,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AlertsConfig;
use crate::Error;
use meterline_reference::budgets::{WebhookFormat, WebhookTarget};

/// What is delivered.
#[derive(Debug, Clone)]
pub enum Alert {
    Budget {
        signal: BudgetSignal,
        name: Option<String>,
    },
    Anomaly(Anomaly),
}

impl Alert {
    fn at(&self) -> chrono::DateTime<Utc> {
        match self {
            Alert::Budget { signal, .. } => signal.at,
            Alert::Anomaly(a) => a.at,
        }
    }
}

/// The body POSTed to a receiver.
pub fn payload(format: WebhookFormat, alert: &Alert) -> serde_json::Value {
    match (format, alert) {
        (WebhookFormat::Json, Alert::Budget { signal, name }) => json!({
            "type": "budget_signal",
            "budget_name": name,
            "signal": signal,
        }),
        (WebhookFormat::Json, Alert::Anomaly(a)) => json!({"type": "anomaly", "anomaly": a}),
        (WebhookFormat::Slack, Alert::Budget { signal: s, name }) => {
            let what = match (s.state, s.threshold_percent) {
                (BudgetState::Exceeded, _) => "exceeded".to_string(),
                (BudgetState::Warning, Some(p)) => format!("reached {p} %"),
                (BudgetState::Warning, None) => "warning".to_string(),
                (BudgetState::Ok, _) => "back within its limit".to_string(),
            };
            json!({"text": format!(
                ":money_with_wings: Budget *{}* ({}) {what}: {} of {} {} spent in the period {} – {}; action: {}.",
                name.as_deref().unwrap_or(&s.budget_id),
                s.scope.label(),
                s.spend,
                s.limit,
                s.currency,
                s.period_start.format("%Y-%m-%d %H:%M UTC"),
                s.period_end.format("%Y-%m-%d %H:%M UTC"),
                action_name(s.action),
            )})
        }
        (WebhookFormat::Slack, Alert::Anomaly(a)) => {
            let top: Vec<String> = a
                .top_contributors
                .iter()
                .map(|c| format!("{}:{} ({})", c.kind, c.value, c.spend))
                .collect();
            json!({"text": format!(
                ":rotating_light: Spend anomaly *{}* for {}{}: observed {} vs expected {} (score {:.1}, {}) in {} – {}. Top: {}.",
                a.kind,
                a.scope.label(),
                a.model.as_ref().map(|m| format!(" / {m}")).unwrap_or_default(),
                a.observed,
                a.expected,
                a.score,
                a.method,
                a.window_start.format("%Y-%m-%d %H:%M UTC"),
                a.window_end.format("%H:%M UTC"),
                if top.is_empty() { "-".to_string() } else { top.join(", ") },
            )})
        }
    }
}

fn action_name(a: BudgetAction) -> &'static str {
    match a {
        BudgetAction::Notify => "notify",
        BudgetAction::Throttle => "throttle",
        BudgetAction::Block => "block",
    }
}

/// Delay before attempt `attempt` (1-based; attempt 1 is immediate).
pub fn backoff(cfg: &AlertsConfig, attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u64.checked_shl(attempt - 2).unwrap_or(u64::MAX);
    Duration::from_millis(
        cfg.backoff_initial_ms
            .saturating_mul(factor)
            .min(cfg.backoff_max_ms),
    )
}

/// Offsets of one partition whose deliveries are in flight; what may be committed is the
/// offset before the first unfinished one.
#[derive(Debug, Default)]
pub struct Completions {
    /// offset → finished
    pending: BTreeMap<i64, bool>,
    /// Highest offset seen so far, finished or not.
    next: Option<i64>,
}

impl Completions {
    pub fn started(&mut self, offset: i64) {
        self.pending.insert(offset, false);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    pub fn finished(&mut self, offset: i64) {
        if let Some(done) = self.pending.get_mut(&offset) {
            *done = true;
        }
    }

    /// The offset to commit (the next one to read after a restart), if it moved.
    pub fn committable(&mut self) -> Option<i64> {
        let mut moved = false;
        while let Some((_, true)) = self.pending.first_key_value() {
            self.pending.pop_first();
            moved = true;
        }
        if !moved {
            return None;
        }
        match self.pending.first_key_value() {
            Some((first_open, _)) => Some(*first_open),
            None => self.next,
        }
    }
}

/// POSTs `alert` to `target` until it is accepted (2xx) or the attempts run out.
async fn deliver(
    http: reqwest::Client,
    cfg: Arc<AlertsConfig>,
    target: WebhookTarget,
    alert: Arc<Alert>,
    stop: CancellationToken,
) {
    let body = payload(target.format, &alert);
    for attempt in 1..=cfg.max_attempts {
        let wait = backoff(&cfg, attempt);
        if !wait.is_zero() {
            metrics::counter!(m::ALERT_DELIVERIES, m::LABEL_OUTCOME => "retried").increment(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
        let t0 = Instant::now();
        let result = http.post(&target.url).json(&body).send().await;
        metrics::histogram!(m::ALERT_DELIVERY_SECONDS).record(t0.elapsed().as_secs_f64());
        match result {
            Ok(r) if r.status().is_success() => {
                metrics::counter!(m::ALERT_DELIVERIES, m::LABEL_OUTCOME => "delivered")
                    .increment(1);
                return;
            }
            // A 4xx other than 408/429 will not change by asking again.
            Ok(r)
                if r.status().is_client_error()
                    && r.status() != reqwest::StatusCode::REQUEST_TIMEOUT
                    && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                warn!(url = %redact(&target.url), status = %r.status(), "webhook refused the alert; not retrying");
                break;
            }
            Ok(r) => {
                warn!(url = %redact(&target.url), status = %r.status(), attempt, "webhook delivery failed")
            }
            Err(e) => {
                let e = e.without_url();
                warn!(url = %redact(&target.url), error = %e, attempt, "webhook delivery failed")
            }
        }
    }
    metrics::counter!(m::ALERT_DELIVERIES, m::LABEL_OUTCOME => "failed").increment(1);
}

fn decode(topic: &str, bytes: &[u8], budgets: &HashMap<String, BudgetChange>) -> Option<Alert> {
    match topic {
        topics::BUDGET_SIGNALS => BudgetSignal::from_avro(bytes)
            .ok()
            .map(|signal| Alert::Budget {
                name: budgets.get(&signal.budget_id).map(|b| b.name.clone()),
                signal,
            }),
        topics::ANOMALIES => Anomaly::from_avro(bytes).ok().map(Alert::Anomaly),
        _ => None,
    }
}

/// The receivers of `alert`: the global ones and the budget's own.
fn targets(
    cfg: &AlertsConfig,
    alert: &Alert,
    budgets: &HashMap<String, BudgetChange>,
) -> Vec<WebhookTarget> {
    let mut out = cfg.webhooks.clone();
    if let Alert::Budget { signal, .. } = alert {
        if let Some(b) = budgets.get(&signal.budget_id) {
            for w in &b.webhooks {
                match WebhookTarget::parse(w) {
                    Ok(t) if !out.contains(&t) => out.push(t),
                    Ok(_) => {}
                    Err(e) => warn!(budget = %b.budget_id, error = %e, "ignoring webhook"),
                }
            }
        }
    }
    out
}

/// A webhook URL as logs may show it: scheme and host only. The path and query of a webhook
/// are its secret (a Slack incoming-webhook URL is the credential).
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!(
                "{}://{}{port}{rest}",
                u.scheme(),
                u.host_str().unwrap_or("?")
            )
        }
        Err(_) => "<unparseable webhook url>".into(),
    }
}

/// Runs until `stop`.
pub async fn run(
    kafka: KafkaConfig,
    cfg: AlertsConfig,
    stop: CancellationToken,
) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
        .map_err(Error::WebhookClient)?;
    let alerts: StreamConsumer = kafka
        .stage_consumer("alerts", &cfg.group_id, 10_000, 300_000)
        .create()
        .map_err(Error::kafka)?;
    alerts
        .subscribe(&[topics::BUDGET_SIGNALS, topics::ANOMALIES])
        .map_err(Error::kafka)?;
    // Budgets (for their names and own webhooks), followed from the beginning.
    let budget_reader: StreamConsumer = kafka
        .client("alerts-budgets")
        .set("group.id", "meterline-alerts-budgets")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(Error::kafka)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topics::BUDGETS, 0, Offset::Beginning)
        .map_err(Error::kafka)?;
    budget_reader.assign(&tpl).map_err(Error::kafka)?;
    let mut budgets: HashMap<String, BudgetChange> = HashMap::new();

    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut completions: HashMap<(String, i32), Completions> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, i32, i64)>();
    info!(group = %cfg.group_id, receivers = cfg.webhooks.len(), "alert delivery started");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = budget_reader.recv() => match msg {
                Ok(msg) => if let Some(Ok(b)) = msg.payload().map(BudgetChange::from_avro) {
                    if b.deleted { budgets.remove(&b.budget_id); } else { budgets.insert(b.budget_id.clone(), b); }
                },
                Err(e) => warn!(error = %e, "alerts: reading budgets"),
            },
            Some((topic, p, offset)) = done_rx.recv() => {
                let c = completions.entry((topic.clone(), p)).or_default();
                c.finished(offset);
                if let Some(next) = c.committable() {
                    let mut tpl = TopicPartitionList::new();
                    if tpl.add_partition_offset(&topic, p, Offset::Offset(next)).is_ok() {
                        if let Err(e) = alerts.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
                            warn!(error = %e, "alerts: commit");
                        }
                    }
                }
            }
            msg = alerts.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => { warn!(error = %e, "alerts: consumer"); continue; }
                };
                let (topic, p, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                let alert = msg.payload().and_then(|b| decode(&topic, b, &budgets));
                drop(msg);
                completions.entry((topic.clone(), p)).or_default().started(offset);
                let fresh = alert.as_ref().is_some_and(|a| {
                    Utc::now() - a.at() <= chrono::Duration::seconds(cfg.max_age_secs as i64)
                });
                let (Some(alert), true) = (alert, fresh) else {
                    let _ = done_tx.send((topic, p, offset));
                    continue;
                };
                let targets = targets(&cfg, &alert, &budgets);
                let alert = Arc::new(alert);
                let mut tasks = vec![];
                for t in targets {
                    let permit = in_flight.clone().acquire_owned().await.map_err(Error::InFlight)?;
                    let (http, cfg, alert, stop) = (http.clone(), cfg.clone(), alert.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        deliver(http, cfg, t, alert, stop).await;
                        drop(permit);
                    }));
                }
                let done_tx = done_tx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    for t in tasks { let _ = t.await; }
                    // Cut short by a shutdown: not finished, so not committed.
                    if !stop.is_cancelled() {
                        let _ = done_tx.send((topic, p, offset));
                    }
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn webhook_urls_are_redacted_for_logs() {
        let r = redact("https://hooks.slack.com/services/T000/B000/XXXXSECRET?x=1");
        assert_eq!(r, "https://hooks.slack.com/…");
        assert!(!r.contains("SECRET"));
        assert_eq!(redact("http://ops:8080/"), "http://ops:8080");
        assert_eq!(redact("not a url"), "<unparseable webhook url>");
    }

    use super::*;
    use meterline_schemas::{Contributor, Scope, ScopeKind};

    fn signal() -> BudgetSignal {
        BudgetSignal {
            budget_id: "b-1".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            period_start: "2026-11-01T00:00:00Z".parse().unwrap(),
            period_end: "2026-12-01T00:00:00Z".parse().unwrap(),
            state: BudgetState::Exceeded,
            spend: "100.000000000000000001".parse().unwrap(),
            limit: "100".parse().unwrap(),
            currency: "USD".into(),
            threshold_percent: Some(100),
            action: BudgetAction::Block,
            at: "2026-11-23T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn payloads_carry_exact_money_and_slack_gets_text() {
        let a = Alert::Budget {
            signal: signal(),
            name: Some("search monthly".into()),
        };
        let j = payload(WebhookFormat::Json, &a);
        assert_eq!(j["type"], "budget_signal");
        assert_eq!(j["signal"]["spend"], "100.000000000000000001");
        assert_eq!(j["signal"]["action"], "block");
        assert_eq!(j["signal"]["scope"]["kind"], "team");
        let s = payload(WebhookFormat::Slack, &a);
        let text = s["text"].as_str().unwrap();
        assert!(
            text.contains("*search monthly* (team:search) exceeded"),
            "{text}"
        );
        assert!(text.contains("100.000000000000000001 of 100 USD"), "{text}");
        assert!(text.ends_with("action: block."), "{text}");
        let an = Alert::Anomaly(Anomaly {
            anomaly_id: "a1".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            model: Some("gpt-4o".into()),
            kind: "spend_spike".into(),
            window_start: "2026-11-23T14:00:00Z".parse().unwrap(),
            window_end: "2026-11-23T15:00:00Z".parse().unwrap(),
            observed: "52.5".parse().unwrap(),
            expected: "10".parse().unwrap(),
            score: 9.25,
            method: "hour-of-week median/MAD".into(),
            top_contributors: vec![Contributor {
                kind: "api_key".into(),
                value: "k-7".into(),
                spend: "40".parse().unwrap(),
            }],
            at: "2026-11-23T15:00:05Z".parse().unwrap(),
        });
        let text = payload(WebhookFormat::Slack, &an)["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            text.contains("team:search / gpt-4o: observed 52.5 vs expected 10 (score 9.2"),
            "{text}"
        );
        assert!(text.contains("api_key:k-7 (40)"), "{text}");
        assert_eq!(
            payload(WebhookFormat::Json, &an)["anomaly"]["observed"],
            "52.5"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = AlertsConfig {
            backoff_initial_ms: 500,
            backoff_max_ms: 3_000,
            ..Default::default()
        };
        let ms: Vec<u128> = (1..=6).map(|a| backoff(&cfg, a).as_millis()).collect();
        assert_eq!(ms, vec![0, 500, 1000, 2000, 3000, 3000]);
        assert_eq!(
            backoff(&cfg, 200),
            Duration::from_millis(3000),
            "no overflow"
        );
    }

    #[test]
    fn only_contiguously_finished_offsets_are_committed() {
        let mut c = Completions::default();
        for o in [10, 11, 12] {
            c.started(o);
        }
        c.finished(11);
        assert_eq!(c.committable(), None, "10 still in flight");
        c.finished(10);
        assert_eq!(c.committable(), Some(12), "12 is next to read");
        assert_eq!(c.committable(), None, "nothing new");
        c.finished(12);
        assert_eq!(c.committable(), Some(13));
        c.finished(99); // unknown: ignored
        assert_eq!(c.committable(), None);
    }

    #[test]
    fn receivers_are_the_global_ones_plus_the_budgets_own() {
        let cfg = AlertsConfig {
            webhooks: vec![WebhookTarget {
                url: "http://ops/hook".into(),
                format: WebhookFormat::Json,
            }],
            ..Default::default()
        };
        let mut b: BudgetChange = serde_json::from_value(json!({
            "budget_id": "b-1", "version": 1, "name": "n",
            "scope": {"kind": "team", "value": "search"}, "limit": "100", "currency": "USD",
            "period": "month", "timezone": "UTC", "custom_from": null, "custom_to": null,
            "thresholds": [], "webhooks": ["slack+https://hooks.example/T1", "http://ops/hook", "ftp://x"],
            "effective_from": "2026-01-01T00:00:00Z", "effective_to": null, "deleted": false,
            "author": "a", "reason": "r", "changed_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let budgets = HashMap::from([(b.budget_id.clone(), b.clone())]);
        let a = Alert::Budget {
            signal: signal(),
            name: None,
        };
        let t = targets(&cfg, &a, &budgets);
        assert_eq!(
            t.iter()
                .map(|t| (t.url.as_str(), t.format))
                .collect::<Vec<_>>(),
            vec![
                ("http://ops/hook", WebhookFormat::Json),
                ("https://hooks.example/T1", WebhookFormat::Slack)
            ]
        );
        b.webhooks.clear();
        assert_eq!(targets(&cfg, &a, &HashMap::new()).len(), 1);
    }
}
