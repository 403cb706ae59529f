//! Spend anomalies from the priced stream: rows are summed into hourly buckets per series —
//! each org (all models) and each team × model — and every closed hour goes through the
//! detector in `anomaly/`. Findings become `Anomaly` records (published by the tracker to
//! `meterline.anomalies`) and the hour's findings in the anomalies table (a Delta table beside
//! the usage table, [`meterline_ledger::AnomalyTable`]), replacing what an earlier run found.
//!
//! Like the budgets, the state is derived: at start the detector's history is rebuilt from
//! the ledger (`history_weeks` back), then the stream continues from where the files end.
//! Anomaly ids are deterministic (`kind/scope/model/hour`), so a finding recomputed after a
//! restart is recognised and not published twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use meterline_schemas::{Anomaly, Contributor, Money, Scope, ScopeKind};
use rust_decimal::Decimal;

use crate::anomaly::{AnomalyDetector, DetectorConfig, Finding, HourBucket, SeriesKey};
use crate::budget::SpendRow;
use crate::Error;

/// An hour is evaluated this long after it ends, so late events of the hour are in it.
pub const CLOSE_DELAY: Duration = Duration::minutes(5);

/// One hour's series: bucket and spend per contributor.
type OpenHour = BTreeMap<SeriesKey, (HourBucket, HashMap<String, Decimal>)>;

/// Where an evaluated hour's findings are kept: the anomalies table (in memory in unit tests).
pub(crate) trait HourFindings: Send + Sync {
    /// Replaces the findings of `hour` with `records`.
    fn replace_hour(&self, hour: DateTime<Utc>, records: &[Anomaly]) -> Result<(), Error>;
}

impl HourFindings for meterline_ledger::AnomalyTable {
    fn replace_hour(&self, hour: DateTime<Utc>, records: &[Anomaly]) -> Result<(), Error> {
        Ok(meterline_ledger::AnomalyTable::replace_hour(
            self, hour, records,
        )?)
    }
}

/// Buckets of the hours not yet evaluated, and the detector.
pub struct AnomalyWatch {
    detector: AnomalyDetector,
    /// hour → series → (bucket, contributor spend)
    open: BTreeMap<DateTime<Utc>, OpenHour>,
    /// Hours before this are evaluated; their late rows are ignored here (the ledger has them).
    closed_before: Option<DateTime<Utc>>,
    /// Ids already on the topic.
    published: HashSet<String>,
    /// Findings about hours that ended before this are history being replayed: not published.
    publish_from: DateTime<Utc>,
    findings: Arc<dyn HourFindings>,
}

fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::hours(1)).unwrap_or(t)
}

impl AnomalyWatch {
    pub fn new(
        cfg: DetectorConfig,
        findings: Arc<dyn HourFindings>,
        published: HashSet<String>,
        publish_from: DateTime<Utc>,
    ) -> Result<AnomalyWatch, Error> {
        let detector = AnomalyDetector::new(cfg)
            .map_err(|e| Error::Config(format!("anomalies.{}: {}", e.field, e.reason)))?;
        Ok(AnomalyWatch {
            detector,
            open: BTreeMap::new(),
            closed_before: None,
            published,
            publish_from,
            findings,
        })
    }

    /// Forgets every hour (before the history is read again from the ledger).
    pub fn reset(&mut self) -> Result<(), Error> {
        self.detector = AnomalyDetector::new(self.detector.config().clone())
            .map_err(|e| Error::Config(format!("anomalies.{}: {}", e.field, e.reason)))?;
        self.open.clear();
        self.closed_before = None;
        Ok(())
    }

    /// How far back the detector's history reaches at `now`.
    pub fn history_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        hour_of(now) - Duration::hours(self.detector.config().history_hours() as i64)
    }

    pub fn add(&mut self, row: &SpendRow) {
        let hour = hour_of(row.occurred_at);
        if self.closed_before.is_some_and(|c| hour < c) {
            return;
        }
        let who = &row.who;
        let model = who.model.clone().unwrap_or_default();
        let mut series = vec![];
        if let Some(org) = &who.org {
            series.push((
                SeriesKey::new("org", org, None),
                "api_key",
                who.api_key_id.clone(),
            ));
        }
        if let Some(team) = &who.team {
            series.push((
                SeriesKey::new("team", team, Some(&model)),
                "api_key",
                who.api_key_id.clone(),
            ));
        }
        let cost = row.cost.decimal();
        for (key, contributor_kind, contributor) in series {
            let (b, c) = self
                .open
                .entry(hour)
                .or_default()
                .entry(key)
                .or_insert_with(|| {
                    (
                        HourBucket {
                            hour_start: hour,
                            ..Default::default()
                        },
                        HashMap::new(),
                    )
                });
            b.cost += cost;
            b.events += 1;
            b.input_tokens += row.input_tokens;
            b.cache_read_tokens += row.cache_read_tokens;
            b.output_tokens += row.output_tokens;
            if row.failed {
                b.error_cost += cost;
            }
            let name = match contributor {
                Some(k) => format!("{contributor_kind}:{k}"),
                None => format!("model:{model}"),
            };
            *c.entry(name).or_default() += cost;
        }
    }

    /// Evaluates every hour that ended at least [`CLOSE_DELAY`] before `now`; returns the
    /// findings to publish (new, and not history being replayed) after writing their file.
    pub fn close_due(&mut self, now: DateTime<Utc>) -> Result<Vec<Anomaly>, Error> {
        let mut out = vec![];
        while let Some((&hour, _)) = self.open.first_key_value() {
            if hour + Duration::hours(1) + CLOSE_DELAY > now {
                break;
            }
            let series = self.open.pop_first().map(|(_, s)| s).unwrap_or_default();
            self.closed_before = Some(hour + Duration::hours(1));
            // A series that stopped reporting (a team renamed, a key revoked) has nothing left
            // in the window once its last hour is older than the history: forget it, or the
            // detector grows with every series ever seen until the stage restarts. Judged in
            // event time, as the history is, so a replay forgets the same series.
            self.detector.evict_idle(hour);
            let mut findings = vec![];
            for (key, (mut bucket, contributors)) in series {
                bucket.contributors = contributors.into_iter().collect();
                match self.detector.observe(&key, &bucket) {
                    Ok(f) => findings.extend(f),
                    Err(e) => {
                        tracing::warn!(series = %key, error = %e, "anomaly detector refused an hour")
                    }
                }
            }
            if findings.is_empty() {
                continue;
            }
            let records: Vec<Anomaly> = findings
                .iter()
                .map(|f| record(f, now))
                .collect::<Result<_, _>>()?;
            self.findings.replace_hour(hour, &records)?;
            for r in records {
                let fresh = r.window_end >= self.publish_from;
                if fresh && self.published.insert(r.anomaly_id.clone()) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

fn anomaly_id(f: &Finding) -> String {
    format!(
        "{}/{}:{}/{}/{}",
        f.kind.as_str(),
        f.series.scope_kind,
        f.series.scope_value,
        f.series.model.as_deref().unwrap_or("*"),
        f.window_start.format("%Y-%m-%dT%H:%MZ")
    )
}

fn money(d: Decimal) -> Result<Money, Error> {
    Ok(Money::new(d.round_dp(18))?)
}

fn record(f: &Finding, now: DateTime<Utc>) -> Result<Anomaly, Error> {
    let kind = match f.series.scope_kind.as_str() {
        "org" => ScopeKind::Org,
        "team" => ScopeKind::Team,
        "cost_center" => ScopeKind::CostCenter,
        "project" => ScopeKind::Project,
        other => return Err(Error::Fatal(format!("anomaly scope kind {other}"))),
    };
    Ok(Anomaly {
        anomaly_id: anomaly_id(f),
        scope: Scope {
            kind,
            value: f.series.scope_value.clone(),
        },
        model: f.series.model.clone(),
        kind: f.kind.as_str().to_string(),
        window_start: f.window_start,
        window_end: f.window_end,
        observed: money(f.observed)?,
        expected: money(f.expected)?,
        score: f.score,
        method: f.method.clone(),
        top_contributors: f
            .top_contributors
            .iter()
            .map(|(k, v)| {
                let (kind, value) = k.split_once(':').unwrap_or(("key", k));
                Ok(Contributor {
                    kind: kind.to_string(),
                    value: value.to_string(),
                    spend: money(*v)?,
                })
            })
            .collect::<Result<_, Error>>()?,
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::scope::Attribution;
    use std::sync::Mutex;

    /// The anomalies table in memory: hour → its findings.
    #[derive(Default)]
    struct MemoryFindings(Mutex<BTreeMap<DateTime<Utc>, Vec<Anomaly>>>);

    impl HourFindings for MemoryFindings {
        fn replace_hour(&self, hour: DateTime<Utc>, records: &[Anomaly]) -> Result<(), Error> {
            self.0.lock().unwrap().insert(hour, records.to_vec());
            Ok(())
        }
    }

    fn row(at: DateTime<Utc>, key: &str, cost: &str) -> SpendRow {
        SpendRow {
            who: Attribution {
                org: Some("acme".into()),
                team: Some("search".into()),
                api_key_id: Some(key.into()),
                model: Some("gpt-4o".into()),
                provider: Some("openai".into()),
                ..Default::default()
            },
            occurred_at: at,
            cost: cost.parse().unwrap(),
            currency: "USD".into(),
            input_tokens: 1000,
            cache_read_tokens: 300,
            output_tokens: 200,
            failed: false,
        }
    }

    #[test]
    fn a_spike_after_two_quiet_weeks_is_published_once_with_its_findings_kept() {
        let table = Arc::new(MemoryFindings::default());
        let start: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap(); // a Monday
        let mut w = AnomalyWatch::new(
            DetectorConfig::default(),
            table.clone(),
            HashSet::new(),
            start + Duration::days(14),
        )
        .unwrap();
        // two weeks + a day: 30 calls of $0.10 every hour ($3/h), then one hour at 10×
        let hours = 24 * 15;
        for h in 0..hours {
            let t = start + Duration::hours(h);
            let n = if h == hours - 1 { 300 } else { 30 };
            for i in 0..n {
                let key = if h == hours - 1 && i >= 30 {
                    "k-rogue"
                } else {
                    "k-1"
                };
                w.add(&row(t + Duration::seconds(i), key, "0.1"));
            }
            let mut found = w.close_due(t + Duration::hours(1) + CLOSE_DELAY).unwrap();
            if h < hours - 1 {
                assert!(found.is_empty(), "hour {h}: {found:?}");
                continue;
            }
            found.sort_by(|a, b| a.anomaly_id.cmp(&b.anomaly_id));
            assert_eq!(found.len(), 2, "org and team series: {found:?}");
            let a = &found[0];
            assert_eq!(a.kind, "spend_spike");
            assert_eq!(a.observed, "30".parse().unwrap());
            assert_eq!(a.expected, "3".parse().unwrap());
            assert_eq!(a.top_contributors[0].value, "k-rogue");
            assert_eq!(a.top_contributors[0].spend, "27".parse().unwrap());
            let kept = table.0.lock().unwrap().clone();
            assert_eq!(
                kept.keys().collect::<Vec<_>>(),
                [&t],
                "only the spike's hour"
            );
            let mut kept = kept[&t].clone();
            kept.sort_by(|a, b| a.anomaly_id.cmp(&b.anomaly_id));
            assert_eq!(kept, found);
        }
        // a late row of a closed hour is ignored; nothing is published twice
        w.add(&row(start, "k-1", "1000"));
        assert!(w.close_due(start + Duration::days(30)).unwrap().is_empty());
    }

    #[test]
    fn a_series_that_stops_reporting_is_forgotten_once_out_of_the_window() {
        let start: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
        let config = DetectorConfig::default();
        let window = i64::from(config.history_hours());
        let mut w = AnomalyWatch::new(
            config,
            Arc::new(MemoryFindings::default()),
            HashSet::new(),
            start,
        )
        .unwrap();
        let team = |at, team: &str| {
            let mut r = row(at, "k-1", "0.1");
            r.who.team = Some(team.into());
            r
        };
        // `search` reports for one hour, `ads` every hour after it
        w.add(&team(start, "search"));
        for h in 0..=window {
            let t = start + Duration::hours(h);
            w.add(&team(t, "ads"));
            w.close_due(t + Duration::hours(1) + CLOSE_DELAY).unwrap();
            // org acme, team ads, and team search while its hour is in the window
            let expected = if h < window { 3 } else { 2 };
            assert_eq!(w.detector.series_count(), expected, "after hour {h}");
        }
    }

    #[test]
    fn replayed_history_and_known_ids_are_not_published() {
        let start: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
        let spike_hour = start + Duration::hours(24 * 15 - 1);
        let build = |published: HashSet<String>, from| {
            let mut w = AnomalyWatch::new(
                DetectorConfig::default(),
                Arc::new(MemoryFindings::default()),
                published,
                from,
            )
            .unwrap();
            for h in 0..24 * 15 {
                let t = start + Duration::hours(h);
                let n = if t == spike_hour { 300 } else { 30 };
                for i in 0..n {
                    w.add(&row(t + Duration::seconds(i), "k-1", "0.1"));
                }
            }
            w.close_due(spike_hour + Duration::hours(1) + CLOSE_DELAY)
                .unwrap()
        };
        // replaying history at a restart: the spike hour is older than `publish_from`
        assert!(build(HashSet::new(), spike_hour + Duration::hours(3)).is_empty());
        // recent, but already on the topic
        let first = build(HashSet::new(), start);
        assert_eq!(first.len(), 2);
        let ids: HashSet<String> = first.iter().map(|a| a.anomaly_id.clone()).collect();
        assert!(build(ids, start).is_empty());
    }
}
