//! [`AnomalyDetector`]: each closed hour of a series checked ([`ObserveError`]), passed through
//! the volume gate and the cold start, judged against its baselines by the rule of each kind,
//! then added to the series' history.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use thiserror::Error;

use super::baseline::{ratio_baseline, spend_baseline, MixRatio};
use super::detector_config::{ConfigError, DetectorConfig};
use super::finding::{top_contributors, Finding, FindingKind, RATIO_DP};
use super::series::{
    hour_to_datetime, HourBucket, SeriesHistory, SeriesKey, StoredHour, SECONDS_PER_HOUR,
};
use super::stats::robust_z;

/// A bucket that cannot be added to its series.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObserveError {
    #[error("hour_start {0} is not aligned to a whole hour")]
    UnalignedHour(DateTime<Utc>),
    #[error("bucket for {got} is not after the last observed hour {last} of the series")]
    OutOfOrder {
        last: DateTime<Utc>,
        got: DateTime<Utc>,
    },
    #[error("bucket for {0} has a negative token count")]
    NegativeTokens(DateTime<Utc>),
    #[error("hour_start {0} is too close to the end of time to have an end")]
    HourOutOfRange(DateTime<Utc>),
}

/// Detects anomalous hours per series. See the `anomaly` module doc for the method.
#[derive(Debug)]
pub struct AnomalyDetector {
    config: DetectorConfig,
    series: BTreeMap<SeriesKey, SeriesHistory>,
}

impl AnomalyDetector {
    pub fn new(config: DetectorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            series: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Number of series with history.
    #[cfg(test)]
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Hours of history held for the series (at most `history_weeks × 168`).
    #[cfg(test)]
    pub fn history_len(&self, key: &SeriesKey) -> usize {
        self.series.get(key).map_or(0, |s| s.hours.len())
    }

    /// Evaluates a closed hour of a series against its history, then adds it to the history.
    ///
    /// Buckets of one series must come in increasing hour order; hours may be skipped (they
    /// count as zero spend). A rejected bucket leaves the detector unchanged.
    pub fn observe(
        &mut self,
        key: &SeriesKey,
        bucket: &HourBucket,
    ) -> Result<Vec<Finding>, ObserveError> {
        let timestamp = bucket.hour_start.timestamp();
        if timestamp.rem_euclid(SECONDS_PER_HOUR) != 0
            || bucket.hour_start.timestamp_subsec_nanos() != 0
        {
            return Err(ObserveError::UnalignedHour(bucket.hour_start));
        }
        if bucket.input_tokens < 0 || bucket.cache_read_tokens < 0 || bucket.output_tokens < 0 {
            return Err(ObserveError::NegativeTokens(bucket.hour_start));
        }
        let window_end = bucket
            .hour_start
            .checked_add_signed(Duration::hours(1))
            .ok_or(ObserveError::HourOutOfRange(bucket.hour_start))?;
        let stored = StoredHour {
            hour: timestamp.div_euclid(SECONDS_PER_HOUR),
            cost: bucket.cost,
            error_cost: bucket.error_cost,
            input_tokens: bucket.input_tokens,
            cache_read_tokens: bucket.cache_read_tokens,
            output_tokens: bucket.output_tokens,
        };
        let horizon = self.config.history_hours() as usize;
        let findings = match self.series.get_mut(key) {
            Some(history) => {
                if let Some(last) = history.last_hour().filter(|&last| stored.hour <= last) {
                    return Err(ObserveError::OutOfOrder {
                        last: hour_to_datetime(last),
                        got: bucket.hour_start,
                    });
                }
                let hour = ObservedHour {
                    stored: &stored,
                    bucket,
                    window_end,
                };
                let findings = evaluate(&self.config, history, key, &hour);
                history.push(stored, horizon);
                findings
            }
            None => {
                // First bucket of the series: nothing to compare with yet.
                let mut history = SeriesHistory {
                    first_hour: stored.hour,
                    hours: VecDeque::new(),
                };
                history.push(stored, horizon);
                self.series.insert(key.clone(), history);
                Vec::new()
            }
        };
        Ok(findings)
    }

    /// Forgets series whose last bucket is older than the history window ending at `now`
    /// (their history is all out of the window anyway). Returns how many were dropped.
    pub fn evict_idle(&mut self, now: DateTime<Utc>) -> usize {
        let now_hour = now.timestamp().div_euclid(SECONDS_PER_HOUR);
        let oldest_kept = now_hour - i64::from(self.config.history_hours()) + 1;
        let before = self.series.len();
        self.series
            .retain(|_, history| history.last_hour().is_some_and(|h| h >= oldest_kept));
        before - self.series.len()
    }

    #[cfg(test)]
    fn history_capacity(&self, key: &SeriesKey) -> usize {
        self.series.get(key).map_or(0, |s| s.hours.capacity())
    }
}

/// The hour being evaluated, validated.
struct ObservedHour<'a> {
    stored: &'a StoredHour,
    bucket: &'a HourBucket,
    window_end: DateTime<Utc>,
}

/// All findings for `hour` given the history before it.
fn evaluate(
    config: &DetectorConfig,
    history: &SeriesHistory,
    key: &SeriesKey,
    hour: &ObservedHour<'_>,
) -> Vec<Finding> {
    let (current, bucket) = (hour.stored, hour.bucket);
    let history_hours = current.hour - history.first_hour;
    if history_hours < i64::from(config.min_history_hours)
        || current.cost < config.min_hourly_cost
        || bucket.events < config.min_events
    {
        return Vec::new();
    }
    let finding = |kind, observed, expected, score, method| Finding {
        kind,
        series: key.clone(),
        window_start: bucket.hour_start,
        window_end: hour.window_end,
        observed,
        expected,
        score,
        method,
        top_contributors: top_contributors(&bucket.contributors),
    };
    let mut findings = Vec::new();

    if let Some(baseline) = spend_baseline(config, history, current.hour) {
        let excess = current.cost.saturating_sub(baseline.center);
        let score = robust_z(
            excess,
            baseline.center,
            baseline.mad,
            config.scale_floor_fraction,
            config.scale_floor_abs,
        );
        let large_enough = current.cost >= config.spike_min_ratio.saturating_mul(baseline.center);
        if score >= config.spike_z_threshold && large_enough {
            findings.push(finding(
                FindingKind::SpendSpike,
                current.cost,
                baseline.center,
                score,
                baseline.method,
            ));
        }
    }

    for ratio in [
        MixRatio::CacheHitRate,
        MixRatio::OutputPerPrompt,
        MixRatio::ErrorShareOfCost,
    ] {
        let Some(observed) = ratio.of(current, config) else {
            continue;
        };
        let Some(baseline) = ratio_baseline(config, history, current.hour, ratio) else {
            continue;
        };
        let (kind, excess, rule_met) = match ratio {
            MixRatio::CacheHitRate => (
                FindingKind::CacheHitCollapse,
                baseline.center.saturating_sub(observed),
                baseline.center >= config.cache_min_baseline_rate
                    && observed
                        < config
                            .cache_collapse_fraction
                            .saturating_mul(baseline.center),
            ),
            MixRatio::OutputPerPrompt => (
                FindingKind::OutputRatioSpike,
                observed.saturating_sub(baseline.center),
                baseline.center > Decimal::ZERO
                    && observed
                        > config
                            .output_ratio_spike_factor
                            .saturating_mul(baseline.center),
            ),
            MixRatio::ErrorShareOfCost => (
                FindingKind::ErrorCostShare,
                observed.saturating_sub(baseline.center),
                observed >= config.error_share_threshold
                    && observed
                        >= config
                            .error_share_baseline_factor
                            .saturating_mul(baseline.center),
            ),
        };
        if !rule_met {
            continue;
        }
        let score = robust_z(
            excess,
            baseline.center,
            baseline.mad,
            config.scale_floor_fraction,
            config.ratio_scale_floor_abs,
        );
        if score >= config.ratio_z_threshold {
            findings.push(finding(
                kind,
                observed.round_dp(RATIO_DP),
                baseline.center.round_dp(RATIO_DP),
                score,
                baseline.method,
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::series::{HOURS_PER_DAY, HOURS_PER_WEEK, STORED_HOUR_BYTES};
    use crate::anomaly::synthetic_traffic::{dec, hour_at, summary, team_key};

    /// A series of constant hours, as a hand-checkable baseline.
    fn flat_bucket(h: i64, cost: &str) -> HourBucket {
        HourBucket {
            hour_start: hour_at(h),
            cost: dec(cost),
            events: 100,
            input_tokens: 3_000_000,
            cache_read_tokens: 1_000_000,
            output_tokens: 500_000,
            error_cost: dec("0.10"),
            contributors: vec![("api_key:k-flat".to_owned(), dec(cost))],
        }
    }

    #[test]
    fn flat_series_ignores_wobbles_thanks_to_the_scale_floor() {
        let key = SeriesKey::new("org", "acme", None);
        let mut detector = AnomalyDetector::new(DetectorConfig::default()).expect("config");
        for h in 0..3 * HOURS_PER_WEEK {
            let findings = detector
                .observe(&key, &flat_bucket(h, "10"))
                .expect("valid");
            assert!(findings.is_empty());
        }
        let monday = 3 * HOURS_PER_WEEK;
        // MAD is 0, so the scale is the 10 % floor, $1: +$3 is z = 3; +$9.99 is z = 9.99 but
        // under 2× the median; $25 is z = 15 and 2.5×.
        for (h, cost) in [(monday + 10, "13"), (monday + 11, "19.99")] {
            let findings = detector
                .observe(&key, &flat_bucket(h, cost))
                .expect("valid");
            assert!(findings.is_empty(), "{cost}: {:?}", summary(&findings));
        }
        let findings = detector
            .observe(&key, &flat_bucket(monday + 12, "25"))
            .expect("valid");
        let [finding] = findings.as_slice() else {
            panic!("expected one finding, got {:?}", summary(&findings));
        };
        assert_eq!(finding.kind, FindingKind::SpendSpike);
        assert_eq!(finding.expected, dec("10"));
        assert!(
            (finding.score - 15.0).abs() < 1e-9,
            "score {}",
            finding.score
        );
        assert!(
            finding.method.contains("over 3 weeks") && finding.method.contains("(9 points)"),
            "{}",
            finding.method
        );
    }

    #[test]
    fn missing_hours_count_as_zero_spend() {
        // A series that only runs in weekday business hours and emits nothing otherwise.
        let key = SeriesKey::new("project", "office-bot", Some("gpt-4o-mini"));
        let mut detector = AnomalyDetector::new(DetectorConfig::default()).expect("config");
        let business =
            |h: i64| h.rem_euclid(HOURS_PER_DAY) >= 9 && h.rem_euclid(HOURS_PER_DAY) <= 17;
        let weekday = |h: i64| h.rem_euclid(HOURS_PER_WEEK) < 5 * HOURS_PER_DAY;
        for h in (0..3 * HOURS_PER_WEEK).filter(|&h| business(h) && weekday(h)) {
            let findings = detector
                .observe(&key, &flat_bucket(h, "20"))
                .expect("valid");
            assert!(findings.is_empty(), "{:?}", summary(&findings));
        }
        let tuesday = 3 * HOURS_PER_WEEK + HOURS_PER_DAY;
        let night = detector
            .observe(&key, &flat_bucket(tuesday + 3, "20"))
            .expect("valid");
        assert_eq!(
            summary(&night),
            vec![(hour_at(tuesday + 3).to_rfc3339(), "spend_spike")]
        );
        assert_eq!(night[0].expected, Decimal::ZERO);
        let morning = detector
            .observe(&key, &flat_bucket(tuesday + 10, "20"))
            .expect("valid");
        assert!(morning.is_empty(), "{:?}", summary(&morning));
    }

    #[test]
    fn history_is_bounded_by_the_configured_weeks() {
        let config = DetectorConfig {
            history_weeks: 1,
            min_weeks_for_weekly: 1,
            ratio_baseline_hours: 24,
            ..DetectorConfig::default()
        };
        let horizon = HOURS_PER_WEEK as usize;
        let key = team_key();
        let mut detector = AnomalyDetector::new(config).expect("config");
        // Three weeks with a 60-hour outage in the middle.
        for h in (0..400).filter(|h| !(200..260).contains(h)) {
            detector
                .observe(&key, &flat_bucket(h, "10"))
                .expect("valid");
            assert!(detector.history_len(&key) <= horizon);
            assert!(detector.history_capacity(&key) <= horizon);
        }
        // Hours 232..400 are in the window, 232..260 had no bucket.
        assert_eq!(detector.history_len(&key), 140);
        for h in 400..600 {
            detector
                .observe(&key, &flat_bucket(h, "10"))
                .expect("valid");
        }
        assert_eq!(detector.history_len(&key), horizon);
        assert_eq!(detector.history_capacity(&key), horizon);

        // Idle series leave once their last hour is out of the window.
        assert_eq!(detector.evict_idle(hour_at(599 + 167)), 0);
        assert_eq!(detector.evict_idle(hour_at(599 + 168)), 1);
        assert_eq!(detector.series_count(), 0);

        assert_eq!(STORED_HOUR_BYTES, 64);
        assert_eq!(DetectorConfig::default().series_memory_bytes(), 672 * 64);
    }

    #[test]
    fn invalid_buckets_are_rejected_without_changing_history() {
        let key = team_key();
        let mut detector = AnomalyDetector::new(DetectorConfig::default()).expect("config");
        detector
            .observe(&key, &flat_bucket(10, "10"))
            .expect("valid");

        let mut unaligned = flat_bucket(11, "10");
        unaligned.hour_start += Duration::minutes(30);
        assert_eq!(
            detector.observe(&key, &unaligned),
            Err(ObserveError::UnalignedHour(unaligned.hour_start))
        );
        let mut sub_second = flat_bucket(11, "10");
        sub_second.hour_start += Duration::nanoseconds(1);
        assert!(matches!(
            detector.observe(&key, &sub_second),
            Err(ObserveError::UnalignedHour(_))
        ));
        let mut negative = flat_bucket(11, "10");
        negative.output_tokens = -1;
        assert_eq!(
            detector.observe(&key, &negative),
            Err(ObserveError::NegativeTokens(hour_at(11)))
        );
        for h in [10, 9] {
            assert_eq!(
                detector.observe(&key, &flat_bucket(h, "10")),
                Err(ObserveError::OutOfOrder {
                    last: hour_at(10),
                    got: hour_at(h),
                })
            );
        }
        let mut last_hour_of_time = flat_bucket(11, "10");
        let last_hour = DateTime::<Utc>::MAX_UTC
            .timestamp()
            .div_euclid(SECONDS_PER_HOUR);
        last_hour_of_time.hour_start =
            DateTime::from_timestamp(last_hour * SECONDS_PER_HOUR, 0).expect("representable");
        assert_eq!(
            detector.observe(&key, &last_hour_of_time),
            Err(ObserveError::HourOutOfRange(last_hour_of_time.hour_start))
        );
        assert_eq!(detector.history_len(&key), 1);
        assert!(detector.observe(&key, &flat_bucket(11, "10")).is_ok());
        assert_eq!(detector.history_len(&key), 2);
    }
}
