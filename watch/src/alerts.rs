//! Alert delivery: budget signals and anomalies → webhooks (generic JSON or Slack-shaped).
//!
//! The topics are the source of truth; delivery reads them on its own (the offsets of group
//! `[watch.alerts] group_id`), so it never holds up the ledger or the budget tracker. Only the
//! active instance delivers. Each receiver of each alert is an independent task retried with
//! exponential backoff; an alert's offset is committed once all of its deliveries have ended
//! (delivered or given up), and only contiguously (see [`Completions`]), so a crash or a
//! takeover re-delivers at most what was in flight: at-least-once. Offsets are committed
//! through the fenced producer, and every HTTP attempt is preceded by a fenced confirmation
//! ([`FencedProgress`]): an instance that lost the lease while stalled delivers nothing more
//! when it wakes. Every request carries the alert's id (`x-meterline-alert-id`:
//! `<topic>/<partition>/<offset>`) for receivers that want to drop the rare repeat.

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
use crate::fence::{FencedProducer, FencedProgress};
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

/// The id of the alert at `offset` of `topic`/`partition`, sent as `x-meterline-alert-id`:
/// the same on every attempt and from whichever instance delivers it.
pub fn alert_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// One alert to one receiver.
struct Delivery {
    target: WebhookTarget,
    alert: Arc<Alert>,
    id: Arc<str>,
}

/// POSTs the alert to its receiver until it is accepted (2xx) or the attempts run out. Each
/// attempt is confirmed first (`progress`): an error there (fenced, the broker away) ends the
/// delivery unfinished, for the active instance to deliver.
async fn deliver(
    http: reqwest::Client,
    cfg: Arc<AlertsConfig>,
    d: Delivery,
    progress: Arc<FencedProgress>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let Delivery { target, alert, id } = d;
    let body = payload(target.format, &alert);
    for attempt in 1..=cfg.max_attempts {
        let wait = backoff(&cfg, attempt);
        if !wait.is_zero() {
            metrics::counter!(m::ALERT_DELIVERIES, m::LABEL_OUTCOME => "retried").increment(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
        tokio::select! {
            r = progress.confirm() => r?,
            _ = stop.cancelled() => return Ok(()),
        }
        let t0 = Instant::now();
        let request = http
            .post(&target.url)
            .header("x-meterline-alert-id", &*id)
            .json(&body)
            .send();
        // A term that ends (the lease lost, a stop) abandons the request at once.
        let result = tokio::select! {
            r = request => r,
            _ = stop.cancelled() => return Ok(()),
        };
        metrics::histogram!(m::ALERT_DELIVERY_SECONDS).record(t0.elapsed().as_secs_f64());
        match result {
            Ok(r) if r.status().is_success() => {
                metrics::counter!(m::ALERT_DELIVERIES, m::LABEL_OUTCOME => "delivered")
                    .increment(1);
                return Ok(());
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
    Ok(())
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

/// A budget change as delivery needs it (names, webhooks); an unreadable one is skipped.
fn apply_budget(budgets: &mut HashMap<String, BudgetChange>, bytes: &[u8]) {
    match BudgetChange::from_avro(bytes) {
        Ok(b) if b.deleted => {
            budgets.remove(&b.budget_id);
        }
        Ok(b) => {
            budgets.insert(b.budget_id.clone(), b);
        }
        Err(e) => warn!(error = %e, "alerts: skipping an unreadable budget change"),
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

/// Runs until `stop` (the end of the active term). Takes the deliverer's transactional id
/// over first (`transactional_id`), so a previous holder's progress is final before it is read.
pub async fn run(
    kafka: KafkaConfig,
    cfg: AlertsConfig,
    transactional_id: String,
    stop: CancellationToken,
) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
        .map_err(Error::WebhookClient)?;
    let k = kafka.clone();
    let fence = tokio::task::spawn_blocking(move || {
        FencedProducer::take_over(&k, "alerts-fence", transactional_id)
    })
    .await
    .map_err(Error::Blocking)??;
    // Assigned, not subscribed: only the active instance reads, from the group's committed
    // offsets (no group membership to wait for at a takeover).
    let alerts: StreamConsumer = kafka
        .client("alerts")
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(Error::kafka)?;
    let mut tpl = TopicPartitionList::new();
    for topic in [topics::BUDGET_SIGNALS, topics::ANOMALIES] {
        let md = alerts
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(Error::kafka)?;
        let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Stored)
                .map_err(Error::kafka)?;
        }
    }
    alerts.assign(&tpl).map_err(Error::kafka)?;
    let group = alerts
        .group_metadata()
        .ok_or_else(|| Error::Fatal("the alerts consumer has no group metadata".into()))?;
    let progress = Arc::new(FencedProgress::new(fence, group));
    // Budgets (for their names and own webhooks): read to their end before the first alert
    // (an alert of a budget not read yet would miss the budget's own receivers), then followed.
    let mut budgets: HashMap<String, BudgetChange> = HashMap::new();
    let k = kafka.clone();
    let (changes, budgets_next) = tokio::task::spawn_blocking(move || {
        let reader = meterline_runtime::follow::reader(&k, "alerts-budgets")?;
        meterline_runtime::follow::read_to_end(&reader, topics::BUDGETS, Duration::from_secs(60))
    })
    .await
    .map_err(Error::Blocking)??;
    for bytes in changes {
        apply_budget(&mut budgets, &bytes);
    }
    let budget_reader: StreamConsumer = kafka
        .client("alerts-budgets")
        .set("group.id", "meterline-alerts-budgets")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(Error::kafka)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topics::BUDGETS, 0, Offset::Offset(budgets_next))
        .map_err(Error::kafka)?;
    budget_reader.assign(&tpl).map_err(Error::kafka)?;

    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut completions: HashMap<(String, i32), Completions> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, i32, i64)>();
    // A confirmation that failed (fenced, the broker away) ends the term.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<Error>();
    info!(group = %cfg.group_id, receivers = cfg.webhooks.len(), "alert delivery started");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(e) = failed_rx.recv() => return Err(e),
            msg = budget_reader.recv() => match msg {
                Ok(msg) => if let Some(bytes) = msg.payload() { apply_budget(&mut budgets, bytes) },
                Err(e) => warn!(error = %e, "alerts: reading budgets"),
            },
            Some((topic, p, offset)) = done_rx.recv() => {
                let c = completions.entry((topic.clone(), p)).or_default();
                c.finished(offset);
                if let Some(next) = c.committable() {
                    progress.advance(&topic, p, next);
                    progress.confirm().await?;
                }
            }
            msg = alerts.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) if meterline_runtime::kafka::retryable(&e) => {
                        warn!(error = %e, "alerts: consumer"); continue;
                    }
                    Err(e) => return Err(Error::kafka(e)),
                };
                let (topic, p, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                // An undecodable record (poison) is skipped: committed as done, never retried.
                let alert = msg.payload().and_then(|b| decode(&topic, b, &budgets));
                drop(msg);
                progress.started_at(&topic, p, offset);
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
                let id: Arc<str> = alert_id(&topic, p, offset).into();
                let mut tasks = vec![];
                for target in targets {
                    let permit = in_flight.clone().acquire_owned().await.map_err(Error::InFlight)?;
                    let d = Delivery { target, alert: alert.clone(), id: id.clone() };
                    let (http, cfg, progress, stop) = (http.clone(), cfg.clone(), progress.clone(), stop.clone());
                    let failed_tx = failed_tx.clone();
                    tasks.push(tokio::spawn(async move {
                        let r = deliver(http, cfg, d, progress, stop.clone()).await;
                        drop(permit);
                        if let Err(e) = r {
                            // unfinished: not committed, the active instance delivers it
                            stop.cancel();
                            let _ = failed_tx.send(e);
                            return false;
                        }
                        true
                    }));
                }
                let done_tx = done_tx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut all = true;
                    for t in tasks { all &= t.await.unwrap_or(false); }
                    // Cut short by the end of the term: not finished, so not committed.
                    if all && !stop.is_cancelled() {
                        let _ = done_tx.send((topic, p, offset));
                    }
                });
            }
        }
    }
    // The last failure, if the term ended for one.
    if let Ok(e) = failed_rx.try_recv() {
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_alert_id_names_its_record() {
        assert_eq!(
            alert_id(topics::BUDGET_SIGNALS, 0, 17),
            "meterline.budget.signals/0/17"
        );
    }

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
