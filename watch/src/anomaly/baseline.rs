//! The baselines an hour is judged against: the seasonal baseline of its cost (hour-of-week,
//! or hour-of-day before enough weeks) and the median of each mix ratio ([`MixRatio`]) over
//! recent hours. Tested through the detector (`detector.rs`, `realistic_weeks.rs`).

use rust_decimal::Decimal;

use super::detector_config::DetectorConfig;
use super::series::{SeriesHistory, StoredHour, HOURS_PER_DAY, HOURS_PER_WEEK};
use super::stats::{median, median_and_mad};

/// Fewest pooled points a spend baseline may rest on.
const MIN_SPEND_BASELINE_POINTS: usize = 3;

/// Ratio `numerator / denominator` of two token counts, or `None` when undefined.
fn token_ratio(numerator: i64, denominator: i64) -> Option<Decimal> {
    if denominator <= 0 {
        return None;
    }
    Decimal::from(numerator).checked_div(Decimal::from(denominator))
}

/// Which per-hour ratio a mix-shift check looks at.
#[derive(Debug, Clone, Copy)]
pub(super) enum MixRatio {
    CacheHitRate,
    OutputPerPrompt,
    ErrorShareOfCost,
}

impl MixRatio {
    /// The ratio of an hour, or `None` when the hour lacks the volume to make it meaningful.
    pub(super) fn of(self, hour: &StoredHour, config: &DetectorConfig) -> Option<Decimal> {
        match self {
            MixRatio::CacheHitRate | MixRatio::OutputPerPrompt => {
                let prompt = hour.prompt_tokens()?;
                if prompt < config.mix_min_prompt_tokens {
                    return None;
                }
                let numerator = match self {
                    MixRatio::CacheHitRate => hour.cache_read_tokens,
                    _ => hour.output_tokens,
                };
                token_ratio(numerator, prompt)
            }
            MixRatio::ErrorShareOfCost => {
                if hour.cost < config.min_hourly_cost || hour.cost <= Decimal::ZERO {
                    return None;
                }
                hour.error_cost.checked_div(hour.cost)
            }
        }
    }

    fn describe(self, config: &DetectorConfig, points: usize) -> String {
        let (what, volume) = match self {
            MixRatio::CacheHitRate => (
                "cache-hit rate",
                format!("≥{} prompt tokens", config.mix_min_prompt_tokens),
            ),
            MixRatio::OutputPerPrompt => (
                "output/prompt token ratio",
                format!("≥{} prompt tokens", config.mix_min_prompt_tokens),
            ),
            MixRatio::ErrorShareOfCost => (
                "error share of cost",
                format!("cost ≥{}", config.min_hourly_cost),
            ),
        };
        format!(
            "median/MAD of hourly {what} over the last {}h ({points} hours with {volume})",
            config.ratio_baseline_hours
        )
    }
}

/// A baseline sample summarised.
pub(super) struct Baseline {
    /// The value compared with: a median (for spend, the larger of two medians).
    pub(super) center: Decimal,
    pub(super) mad: Decimal,
    pub(super) method: String,
}

/// Seasonal baseline of the hour's cost (hour-of-week, or hour-of-day before enough weeks).
pub(super) fn spend_baseline(
    config: &DetectorConfig,
    history: &SeriesHistory,
    hour: i64,
) -> Option<Baseline> {
    // Hours older than this are either before the series existed or out of the window.
    let oldest_known = history
        .first_hour
        .max(hour - i64::from(config.history_hours()));
    let weeks_known = (1..=i64::from(config.history_weeks))
        .filter(|k| hour - k * HOURS_PER_WEEK >= history.first_hour)
        .count() as i64;
    let (period, periods, label) = if weeks_known >= i64::from(config.min_weeks_for_weekly) {
        (HOURS_PER_WEEK, weeks_known, "hour-of-week")
    } else {
        let days_known = (hour - history.first_hour) / HOURS_PER_DAY;
        (
            HOURS_PER_DAY,
            days_known,
            "hour-of-day (fallback: <2 weeks of history)",
        )
    };
    let spread = i64::from(config.neighbour_hours);
    let mut pooled = Vec::new();
    let mut same_hour = Vec::new();
    for k in 1..=periods {
        for offset in -spread..=spread {
            let t = hour - k * period + offset;
            if t >= oldest_known && t < hour {
                let cost = history.cost_at(t);
                pooled.push(cost);
                if offset == 0 {
                    same_hour.push(cost);
                }
            }
        }
    }
    if pooled.len() < MIN_SPEND_BASELINE_POINTS {
        return None;
    }
    let pooled_median = median(&pooled)?;
    // Neighbours dilute a cost that recurs in one hour only (a nightly batch job, the first
    // hour of business): the same-hour median keeps such hours from alerting every period.
    let baseline = median(&same_hour).map_or(pooled_median, |m| m.max(pooled_median));
    // Spread around the value actually compared with (the plain MAD when that is the pooled
    // median), so a baseline lifted by the same-hour median does not come with a spread of 0.
    let deviations: Vec<Decimal> = pooled
        .iter()
        .map(|c| c.saturating_sub(baseline).abs())
        .collect();
    let mad = median(&deviations)?;
    let unit = if period == HOURS_PER_WEEK {
        "weeks"
    } else {
        "days"
    };
    let method = format!(
        "{label} baseline of cost over {periods} {unit}: max(median of the same hour, \
         median of the same hour ±{spread}h) with the ±{spread}h sample's median deviation from it ({} points); \
         z = (cost - baseline) / max(1.4826*MAD, {}*baseline, {})",
        pooled.len(),
        config.scale_floor_fraction,
        config.scale_floor_abs
    );
    Some(Baseline {
        center: baseline,
        mad,
        method,
    })
}

/// Median/MAD of a mix ratio over the recent qualifying hours.
pub(super) fn ratio_baseline(
    config: &DetectorConfig,
    history: &SeriesHistory,
    hour: i64,
    ratio: MixRatio,
) -> Option<Baseline> {
    let oldest = hour - i64::from(config.ratio_baseline_hours);
    let values: Vec<Decimal> = history
        .hours
        .iter()
        .rev()
        .take_while(|h| h.hour >= oldest)
        .filter_map(|h| ratio.of(h, config))
        .collect();
    if values.len() < config.min_ratio_baseline_hours as usize {
        return None;
    }
    let (median, mad) = median_and_mad(&values)?;
    Some(Baseline {
        center: median,
        mad,
        method: ratio.describe(config, values.len()),
    })
}
