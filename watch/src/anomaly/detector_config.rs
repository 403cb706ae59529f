//! Configuration of detection: [`DetectorConfig`] (the volume gate, the baselines' windows,
//! the thresholds of each kind), its defaults, and the ranges it is checked against
//! ([`ConfigError`]).

use rust_decimal::Decimal;
use thiserror::Error;

use super::series::HOURS_PER_WEEK;

/// Tuning of the detector. The `anomaly` module doc (`mod.rs`) explains how each field is used.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Weeks of hourly history kept per series; bounds memory (default 4).
    pub history_weeks: u32,
    /// Past weeks needed before the hour-of-week baseline replaces hour-of-day (default 2).
    pub min_weeks_for_weekly: u32,
    /// Hours of history a series needs before anything is reported (default 24).
    pub min_history_hours: u32,
    /// Neighbouring hours pooled on each side of the same hour-of-week/day (default 1).
    pub neighbour_hours: u32,
    /// Robust z-score at or above which a spend spike is reported (default 6.0).
    pub spike_z_threshold: f64,
    /// Cost must also be at least this multiple of the baseline (default 2).
    pub spike_min_ratio: Decimal,
    /// Hours cheaper than this are never reported, whatever the kind (default $1.00).
    pub min_hourly_cost: Decimal,
    /// Hours with fewer events are never reported (default 20).
    pub min_events: u64,
    /// Lower bound of every z-score scale as a fraction of the baseline (default 0.10).
    pub scale_floor_fraction: Decimal,
    /// Absolute lower bound of the spend z-score scale, in money (default $0.05).
    pub scale_floor_abs: Decimal,
    /// Window of past hours for the mix-ratio baselines (default 168).
    pub ratio_baseline_hours: u32,
    /// Qualifying hours needed in that window for a mix-ratio baseline (default 12).
    pub min_ratio_baseline_hours: u32,
    /// Prompt tokens (uncached input + cache reads) an hour needs for the token ratios
    /// (default 100 000).
    pub mix_min_prompt_tokens: i64,
    /// Robust z-score a mix shift must also reach (default 4.0).
    pub ratio_z_threshold: f64,
    /// Absolute lower bound of the mix-ratio z-score scale, in ratio units (default 0.01).
    pub ratio_scale_floor_abs: Decimal,
    /// A cache collapse needs a baseline hit rate at least this high (default 0.10).
    pub cache_min_baseline_rate: Decimal,
    /// …and an hour's hit rate below this fraction of the baseline (default 0.25).
    pub cache_collapse_fraction: Decimal,
    /// Output/prompt ratio above this multiple of its baseline is a spike (default 3).
    pub output_ratio_spike_factor: Decimal,
    /// Error share of cost at or above this is reported (default 0.20)…
    pub error_share_threshold: Decimal,
    /// …when it is also at least this multiple of its baseline (default 2).
    pub error_share_baseline_factor: Decimal,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            history_weeks: 4,
            min_weeks_for_weekly: 2,
            min_history_hours: 24,
            neighbour_hours: 1,
            spike_z_threshold: 6.0,
            spike_min_ratio: Decimal::TWO,
            min_hourly_cost: Decimal::ONE,
            min_events: 20,
            scale_floor_fraction: Decimal::new(10, 2),
            scale_floor_abs: Decimal::new(5, 2),
            ratio_baseline_hours: 168,
            min_ratio_baseline_hours: 12,
            mix_min_prompt_tokens: 100_000,
            ratio_z_threshold: 4.0,
            ratio_scale_floor_abs: Decimal::new(1, 2),
            cache_min_baseline_rate: Decimal::new(10, 2),
            cache_collapse_fraction: Decimal::new(25, 2),
            output_ratio_spike_factor: Decimal::new(3, 0),
            error_share_threshold: Decimal::new(20, 2),
            error_share_baseline_factor: Decimal::TWO,
        }
    }
}

/// A configuration value that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid detector config: {field} {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl DetectorConfig {
    /// Checks the ranges the method relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason| Err(ConfigError { field, reason });
        if !(1..=52).contains(&self.history_weeks) {
            return fail("history_weeks", "must be 1..=52");
        }
        if self.min_weeks_for_weekly == 0 || self.min_weeks_for_weekly > self.history_weeks {
            return fail("min_weeks_for_weekly", "must be 1..=history_weeks");
        }
        if self.neighbour_hours >= 12 {
            return fail("neighbour_hours", "must be below 12");
        }
        if !(self.spike_z_threshold.is_finite() && self.spike_z_threshold > 0.0) {
            return fail("spike_z_threshold", "must be finite and positive");
        }
        if !(self.ratio_z_threshold.is_finite() && self.ratio_z_threshold >= 0.0) {
            return fail("ratio_z_threshold", "must be finite and non-negative");
        }
        if self.spike_min_ratio < Decimal::ONE {
            return fail("spike_min_ratio", "must be at least 1");
        }
        if self.min_hourly_cost.is_sign_negative() {
            return fail("min_hourly_cost", "must not be negative");
        }
        if self.scale_floor_fraction.is_sign_negative() {
            return fail("scale_floor_fraction", "must not be negative");
        }
        // A positive absolute floor keeps every z-score division well defined.
        if self.scale_floor_abs <= Decimal::ZERO {
            return fail("scale_floor_abs", "must be positive");
        }
        if self.ratio_scale_floor_abs <= Decimal::ZERO {
            return fail("ratio_scale_floor_abs", "must be positive");
        }
        if self.ratio_baseline_hours == 0 || self.ratio_baseline_hours > self.history_hours() {
            return fail("ratio_baseline_hours", "must be 1..=history_weeks*168");
        }
        if self.min_ratio_baseline_hours == 0
            || self.min_ratio_baseline_hours > self.ratio_baseline_hours
        {
            return fail(
                "min_ratio_baseline_hours",
                "must be 1..=ratio_baseline_hours",
            );
        }
        if self.mix_min_prompt_tokens <= 0 {
            return fail("mix_min_prompt_tokens", "must be positive");
        }
        if self.cache_collapse_fraction <= Decimal::ZERO
            || self.cache_collapse_fraction > Decimal::ONE
        {
            return fail("cache_collapse_fraction", "must be in (0, 1]");
        }
        if self.output_ratio_spike_factor < Decimal::ONE {
            return fail("output_ratio_spike_factor", "must be at least 1");
        }
        if self.error_share_threshold.is_sign_negative()
            || self.error_share_threshold > Decimal::ONE
        {
            return fail("error_share_threshold", "must be in [0, 1]");
        }
        if self.error_share_baseline_factor < Decimal::ONE {
            return fail("error_share_baseline_factor", "must be at least 1");
        }
        Ok(())
    }

    /// Hours of history kept per series.
    pub fn history_hours(&self) -> u32 {
        self.history_weeks.saturating_mul(HOURS_PER_WEEK as u32)
    }

    /// Upper bound of the history memory of one series, in bytes (key strings and map node
    /// excluded): `history_weeks × 168 × STORED_HOUR_BYTES`.
    #[cfg(test)]
    pub fn series_memory_bytes(&self) -> usize {
        self.history_hours() as usize * super::series::STORED_HOUR_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic_traffic::dec;
    use crate::anomaly::AnomalyDetector;

    #[test]
    fn config_validation_rejects_nonsense() {
        assert_eq!(DetectorConfig::default().validate(), Ok(()));
        let broken = [
            DetectorConfig {
                history_weeks: 0,
                ..DetectorConfig::default()
            },
            DetectorConfig {
                min_weeks_for_weekly: 5,
                ..DetectorConfig::default()
            },
            DetectorConfig {
                scale_floor_abs: Decimal::ZERO,
                ..DetectorConfig::default()
            },
            DetectorConfig {
                spike_z_threshold: f64::NAN,
                ..DetectorConfig::default()
            },
            DetectorConfig {
                ratio_baseline_hours: 5000,
                ..DetectorConfig::default()
            },
            DetectorConfig {
                cache_collapse_fraction: dec("1.5"),
                ..DetectorConfig::default()
            },
        ];
        for config in broken {
            let field = config.validate().expect_err("invalid config").field;
            assert!(AnomalyDetector::new(config).is_err(), "{field}");
        }
    }
}
