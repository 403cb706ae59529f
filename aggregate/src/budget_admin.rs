//! Budgets as configuration events: validation, reading the current set back from
//! `meterline.budgets`, and publishing a new version (used by `meterline budgets` and the API).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meterline_schemas::kafka::KafkaConfig;
use meterline_schemas::{topics, AvroRecord, BudgetChange, Money, PeriodKind};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::budget::period_at;
use crate::config::WebhookTarget;
use crate::Error;

/// Why a budget cannot be published (checked before it reaches the topic).
pub fn validate(b: &BudgetChange) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Config(format!("budget {:?}: {m}", b.budget_id)));
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

/// The latest version of every budget ever published, deleted ones included.
pub fn load(kafka: &KafkaConfig) -> Result<BTreeMap<String, BudgetChange>, Error> {
    let c: BaseConsumer = kafka
        .client("budgets-admin")
        .set("group.id", "meterline-budgets-admin")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(Error::kafka)?;
    let (records, _) = crate::spend::read_to_end(&c, topics::BUDGETS)?;
    let mut out: BTreeMap<String, BudgetChange> = BTreeMap::new();
    for bytes in records {
        let b = BudgetChange::from_avro(&bytes).map_err(Error::io)?;
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
        return Err(Error::Config(format!(
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
    let bytes = b.to_avro().map_err(Error::io)?;
    p.send(
        BaseRecord::to(topics::BUDGETS)
            .key(&b.budget_id)
            .payload(&bytes),
    )
    .map_err(|(e, _)| Error::kafka(e))?;
    p.flush(Duration::from_secs(30)).map_err(Error::kafka)?;
    Ok(b)
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
