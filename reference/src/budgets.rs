//! Budget definitions: their periods (`period_at`), webhook entries, validation, drafts from
//! the CLI/API, reading the current set back from `meterline.budgets` and publishing a new
//! version. The tracker (aggregate), the API and the CLI all use these rules.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use meterline_runtime::follow;
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::{topics, AvroRecord, BudgetChange, Money, PeriodKind};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Why a budget cannot be published (checked before it reaches the topic).
pub fn validate(b: &BudgetChange) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Budget(format!("budget {:?}: {m}", b.budget_id)));
    if b.budget_id.trim().is_empty() || b.budget_id.contains('|') {
        return bad("budget_id must be non-empty and must not contain '|'".into());
    }
    if b.scope.value.trim().is_empty() {
        return bad("scope value is empty".into());
    }
    if b.limit <= Money::ZERO {
        return bad(format!("limit must be positive, got {}", b.limit));
    }
    if b.currency.len() != 3 || !b.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return bad(format!(
            "currency must be an ISO 4217 code, got {:?}",
            b.currency
        ));
    }
    if b.thresholds.is_empty() {
        return bad("at least one threshold is needed".into());
    }
    let mut seen = HashSet::new();
    for t in &b.thresholds {
        if !(1..=1000).contains(&t.percent) || !seen.insert(t.percent) {
            return bad(format!(
                "threshold {} % is out of 1..=1000 or repeated",
                t.percent
            ));
        }
    }
    if b.period == PeriodKind::Custom {
        match (b.custom_from, b.custom_to) {
            (Some(f), Some(t)) if f < t => {}
            _ => return bad("a custom period needs from < to".into()),
        }
    }
    period_at(b, b.effective_from)?; // the time zone parses
    for w in &b.webhooks {
        WebhookTarget::parse(w)?;
    }
    Ok(())
}

/// Start of the period `b` is in at `now`: the default `effective_from` of a new budget, so
/// that spend since the period began counts.
pub fn current_period_start(b: &BudgetChange, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    Ok(period_at(b, now)?.map_or(now, |(start, _)| start))
}

/// `team=search` → Scope; `tag=env=prod` keeps the tag's own `=`.
pub fn parse_scope(s: &str) -> Result<meterline_schemas::Scope, Error> {
    use meterline_schemas::ScopeKind::*;
    let (kind, value) = s
        .split_once('=')
        .ok_or_else(|| Error::Budget(format!("scope {s:?} is kind=value, e.g. team=search")))?;
    let kind = match kind {
        "org" => Org,
        "cost_center" => CostCenter,
        "team" => Team,
        "project" => Project,
        "api_key" => ApiKey,
        "user" => User,
        "tag" => Tag,
        "model" => Model,
        other => {
            return Err(Error::Budget(format!(
                "unknown scope kind {other:?} (org, cost_center, team, project, api_key, user, tag, model)"
            )))
        }
    };
    Ok(meterline_schemas::Scope {
        kind,
        value: value.to_string(),
    })
}

/// `50:notify,100:block` → thresholds.
pub fn parse_thresholds(s: &str) -> Result<Vec<meterline_schemas::Threshold>, Error> {
    use meterline_schemas::BudgetAction;
    s.split(',')
        .map(|t| {
            let (p, a) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| Error::Budget(format!("threshold {t:?} is percent:action")))?;
            let action = match a {
                "notify" => BudgetAction::Notify,
                "throttle" => BudgetAction::Throttle,
                "block" => BudgetAction::Block,
                other => {
                    return Err(Error::Budget(format!(
                        "unknown action {other:?} (notify, throttle, block)"
                    )))
                }
            };
            Ok(meterline_schemas::Threshold {
                percent: p
                    .parse()
                    .map_err(|_| Error::Budget(format!("threshold percent {p:?}")))?,
                action,
            })
        })
        .collect()
}

fn default_currency() -> String {
    "USD".into()
}
fn default_period() -> String {
    "month".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_thresholds() -> String {
    "50:notify,80:notify,100:block".into()
}
fn default_reason() -> String {
    "budget change".into()
}

/// A budget as a person writes it (CLI flags, API body); [`draft`] makes it a change.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDraft {
    /// Stable id (the compaction key); publishing it again makes a new version.
    pub budget_id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// `org=…`, `cost_center=…`, `team=…`, `project=…`, `api_key=…`, `user=…`,
    /// `tag=key=value`, `model=provider/model`.
    pub scope: String,
    /// Limit in `currency`, exact decimal text.
    pub limit: Money,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// `day`, `week` (ISO, Monday), `month` (calendar) or `custom` (with from/to).
    #[serde(default = "default_period")]
    pub period: String,
    /// IANA time zone the periods follow.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    pub to: Option<DateTime<Utc>>,
    /// `percent:action,…` with action notify | throttle | block.
    #[serde(default = "default_thresholds")]
    pub thresholds: String,
    /// Receivers of this budget's crossings; prefix `slack+` for Slack's shape.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// From when it applies; default: the start of the current period.
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    pub effective_from: Option<DateTime<Utc>>,
    #[serde(default = "default_reason")]
    pub reason: String,
}

/// The change `d` describes, authored by `author` at `now` (version 0: `publish` numbers it).
pub fn draft(d: BudgetDraft, author: &str, now: DateTime<Utc>) -> Result<BudgetChange, Error> {
    let period = match d.period.as_str() {
        "day" => PeriodKind::Day,
        "week" => PeriodKind::Week,
        "month" => PeriodKind::Month,
        "custom" => PeriodKind::Custom,
        other => {
            return Err(Error::Budget(format!(
                "unknown period {other:?} (day, week, month, custom)"
            )))
        }
    };
    let mut b = BudgetChange {
        name: d.name.unwrap_or_else(|| d.budget_id.clone()),
        budget_id: d.budget_id,
        version: 0,
        scope: parse_scope(&d.scope)?,
        limit: d.limit,
        currency: d.currency,
        period,
        timezone: d.timezone,
        custom_from: d.from,
        custom_to: d.to,
        thresholds: parse_thresholds(&d.thresholds)?,
        webhooks: d.webhooks,
        effective_from: now,
        effective_to: None,
        deleted: false,
        author: author.to_string(),
        reason: d.reason,
        changed_at: now,
    };
    b.effective_from = match d.effective_from {
        Some(t) => t,
        None => current_period_start(&b, now)?,
    };
    validate(&b)?;
    Ok(b)
}

/// The latest version of every budget ever published, deleted ones included.
pub fn load(kafka: &KafkaConfig) -> Result<BTreeMap<String, BudgetChange>, Error> {
    let c = follow::reader(kafka, "budgets-admin")?;
    let (records, _) = follow::read_to_end(&c, topics::BUDGETS, Duration::from_secs(60))?;
    let mut out: BTreeMap<String, BudgetChange> = BTreeMap::new();
    for bytes in records {
        let b = BudgetChange::from_avro(&bytes).map_err(Error::codec)?;
        if out.get(&b.budget_id).is_none_or(|o| b.version > o.version) {
            out.insert(b.budget_id.clone(), b);
        }
    }
    Ok(out)
}

/// Publishes `b` as the next version of its budget (key = budget id); returns it.
pub fn publish(kafka: &KafkaConfig, mut b: BudgetChange) -> Result<BudgetChange, Error> {
    if !b.deleted {
        validate(&b)?;
    }
    let current = load(kafka)?;
    let previous = current.get(&b.budget_id);
    if b.deleted && previous.is_none_or(|p| p.deleted) {
        return Err(Error::Budget(format!(
            "no budget {:?} to delete",
            b.budget_id
        )));
    }
    b.version = previous.map_or(1, |p| p.version + 1);
    b.changed_at = Utc::now();
    let p: BaseProducer = kafka
        .client("budgets-admin")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(Error::kafka)?;
    let bytes = b.to_avro().map_err(Error::codec)?;
    p.send(
        BaseRecord::to(topics::BUDGETS)
            .key(&b.budget_id)
            .payload(&bytes),
    )
    .map_err(|(e, _)| Error::kafka(e))?;
    p.flush(Duration::from_secs(30)).map_err(Error::kafka)?;
    Ok(b)
}

/// `[start, end)` of a budget period.
pub type Period = (DateTime<Utc>, DateTime<Utc>);

/// `[start, end)` of the period containing `at`, in the budget's time zone; `None` when `at`
/// is outside a custom range.
pub fn period_at(b: &BudgetChange, at: DateTime<Utc>) -> Result<Option<Period>, Error> {
    if b.period == PeriodKind::Custom {
        let (Some(from), Some(to)) = (b.custom_from, b.custom_to) else {
            return Err(Error::Budget(format!(
                "budget {}: custom period without from/to",
                b.budget_id
            )));
        };
        return Ok((at >= from && at < to).then_some((from, to)));
    }
    let tz: Tz = b.timezone.parse().map_err(|_| {
        Error::Budget(format!(
            "budget {}: unknown time zone {:?}",
            b.budget_id, b.timezone
        ))
    })?;
    let local = at.with_timezone(&tz).date_naive();
    let (start, end) = match b.period {
        PeriodKind::Day => (local, local + Days::days(1)),
        // ISO weeks: Monday to Monday
        PeriodKind::Week => {
            let monday = local - Days::days(local.weekday().num_days_from_monday() as i64);
            (monday, monday + Days::days(7))
        }
        PeriodKind::Month => {
            let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).expect("valid");
            let next = if local.month() == 12 {
                NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)
            }
            .expect("valid");
            (first, next)
        }
        PeriodKind::Custom => unreachable!("handled above"),
    };
    Ok(Some((midnight(&tz, start), midnight(&tz, end))))
}

/// Local midnight of `d` in `tz` as UTC. Where midnight does not exist (a DST jump at 00:00),
/// the first instant of the day.
fn midnight(tz: &Tz, d: NaiveDate) -> DateTime<Utc> {
    let naive = d.and_hms_opt(0, 0, 0).expect("midnight");
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + Days::hours(1)))
            .earliest()
            .expect("an hour after a DST gap exists")
            .with_timezone(&Utc),
    }
}

/// One webhook receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// `http://` or `https://` URL the alert is POSTed to.
    pub url: String,
    /// Payload shape: `json` (the alert record) or `slack` (`{"text": …}`, for Slack and
    /// Slack-compatible incoming webhooks such as Mattermost's).
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl WebhookTarget {
    /// A budget's `webhooks` entry: a URL, prefixed `slack+` for the Slack shape.
    pub fn parse(entry: &str) -> Result<WebhookTarget, Error> {
        let (format, url) = match entry.strip_prefix("slack+") {
            Some(url) => (WebhookFormat::Slack, url),
            None => (WebhookFormat::Json, entry),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Budget(format!(
                "webhook {entry:?} is not an http(s) URL (optionally prefixed slack+)"
            )));
        }
        Ok(WebhookTarget {
            url: url.to_string(),
            format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::{BudgetAction, Scope, ScopeKind, Threshold};

    fn b() -> BudgetChange {
        BudgetChange {
            budget_id: "search-monthly".into(),
            version: 0,
            name: "Search, monthly".into(),
            scope: Scope {
                kind: ScopeKind::Team,
                value: "search".into(),
            },
            limit: "1000".parse().unwrap(),
            currency: "USD".into(),
            period: PeriodKind::Month,
            timezone: "Europe/Berlin".into(),
            custom_from: None,
            custom_to: None,
            thresholds: vec![Threshold {
                percent: 100,
                action: BudgetAction::Block,
            }],
            webhooks: vec!["slack+https://hooks.example/x".into()],
            effective_from: "2026-11-01T00:00:00Z".parse().unwrap(),
            effective_to: None,
            deleted: false,
            author: "a".into(),
            reason: "r".into(),
            changed_at: "2026-11-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        assert!(validate(&b()).is_ok());
        let cases: Vec<(Box<dyn Fn(&mut BudgetChange)>, &str)> = vec![
            (Box::new(|b| b.limit = Money::ZERO), "limit"),
            (Box::new(|b| b.currency = "usd".into()), "currency"),
            (Box::new(|b| b.thresholds.clear()), "threshold"),
            (Box::new(|b| b.thresholds[0].percent = 0), "threshold"),
            (
                Box::new(|b| b.timezone = "Nowhere/Else".into()),
                "time zone",
            ),
            (Box::new(|b| b.period = PeriodKind::Custom), "custom"),
            (
                Box::new(|b| b.webhooks = vec!["mailto:x".into()]),
                "webhook",
            ),
            (Box::new(|b| b.budget_id = "a|b".into()), "budget_id"),
        ];
        for (mutate, word) in cases {
            let mut x = b();
            mutate(&mut x);
            let e = validate(&x).unwrap_err().to_string();
            assert!(e.contains(word), "{e:?} should mention {word}");
        }
    }

    #[test]
    fn a_new_budget_counts_from_the_start_of_its_current_period() {
        let now = "2026-11-23T10:00:00Z".parse().unwrap();
        // Berlin is UTC+1 in November
        assert_eq!(
            current_period_start(&b(), now).unwrap(),
            "2026-10-31T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
