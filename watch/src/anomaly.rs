//! Spend-anomaly detection over closed hourly buckets.
//!
//! Pure and deterministic: no I/O, no wall clock (time comes only from the buckets), and the
//! same sequence of [`AnomalyDetector::observe`] calls always yields the same findings.
//!
//! # Input
//!
//! One [`HourBucket`] per series and closed hour, in increasing hour order. A series is a
//! [`SeriesKey`]: scope kind and value plus an optional model (`("team", "search",
//! Some("gpt-4o"))`, or `("org", "acme", None)` for all models). Token fields follow
//! meterline's usage convention of *disjoint* quantities: `input_tokens` is uncached input,
//! `cache_read_tokens` is input served from the prompt cache, so the prompt is their sum.
//!
//! A series that emits no bucket for an hour is taken to have spent nothing in that hour (the
//! aggregator only emits hours with events), from its first bucket on. Hours before its first
//! bucket are unknown, not zero.
//!
//! # Method
//!
//! Each call evaluates the new hour against a baseline built from the history *before* it,
//! then adds the hour to the history (anomalous hours included: the medians below are robust
//! to a few contaminated points, and a change that persists for weeks becomes the new normal).
//!
//! **Volume gate (all kinds).** Nothing is reported for an hour whose cost is below
//! [`DetectorConfig::min_hourly_cost`] or whose event count is below
//! [`DetectorConfig::min_events`]: small series are noisy and their anomalies cost little.
//!
//! **Cold start (all kinds).** Nothing is reported until the series has
//! [`DetectorConfig::min_history_hours`] (default 24) hours of history since its first bucket.
//!
//! **`spend_spike`** compares the hour's cost with a seasonal robust baseline:
//! * *hour-of-week* (normal mode, once the series has at least
//!   [`DetectorConfig::min_weeks_for_weekly`] = 2 weeks of history): the costs of the same
//!   hour 1, 2, … [`DetectorConfig::history_weeks`] weeks ago, each pooled with its
//!   ±[`DetectorConfig::neighbour_hours`] neighbours (default ±1 h, so up to 12 points with 4
//!   weeks; 11 in practice, the oldest neighbour having left the window). Weeks are counted in
//!   168-hour steps, so the baseline is seasonal in the series' own local time whatever its
//!   time zone.
//! * *hour-of-day* (fallback before 2 weeks): the same hour ±1 h on each past day. It mixes
//!   weekdays and weekends, so it is coarser: a series first seen on a weekend may be flagged
//!   on its first weekday morning. The weekly baseline takes over after 2 weeks.
//!
//! The baseline is the larger of the median of the pooled costs and the median of the
//! same-hour costs alone: the neighbours dilute a cost that recurs in one hour only (a
//! nightly batch job, the first hour of business), which would otherwise alert every period,
//! and taking the larger can only make the detector quieter. The spread `MAD` is the median
//! absolute deviation of the pooled costs from that baseline (the ordinary MAD when the
//! pooled median is the baseline). The score is the robust z-score
//! `z = (cost − baseline) / scale`, with
//! `scale = max(1.4826·MAD, scale_floor_fraction·baseline, scale_floor_abs)`. 1.4826·MAD
//! estimates a standard deviation; the floors (default 10 % of the baseline and $0.05) keep
//! a flat series, whose MAD is 0, from alerting on tiny wobbles. The hour is flagged when
//! all of
//! * `z ≥ spike_z_threshold` (default 6): unusual for this series at this time of week,
//! * `cost ≥ spike_min_ratio × baseline` (default 2×): large in relative terms, so a series
//!   that is merely very regular does not alert on +15 %,
//! * the volume gate.
//!
//! `observed` is the hour's cost and `expected` the baseline, both exact money.
//!
//! **Mix shifts** compare a per-hour ratio with the median of the same ratio over the last
//! [`DetectorConfig::ratio_baseline_hours`] (default 168) hours, using only hours with enough
//! volume (at least [`DetectorConfig::mix_min_prompt_tokens`] prompt tokens for token ratios,
//! at least `min_hourly_cost` for the error share) and at least
//! [`DetectorConfig::min_ratio_baseline_hours`] (default 12) of them. The score is a robust z
//! in the alerting direction with `scale = max(1.4826·MAD, scale_floor_fraction·median,
//! ratio_scale_floor_abs)`, and must reach [`DetectorConfig::ratio_z_threshold`] (default 4)
//! besides the rule of each kind, so a series whose ratio is naturally erratic stays quiet.
//! `observed` and `expected` are the ratios (0..1 fractions, not percent), rounded to 4
//! decimal places; the decisions use the unrounded values.
//! * **`cache_hit_collapse`**: hit rate `cache_read / (input + cache_read)` when the baseline
//!   rate is at least `cache_min_baseline_rate` (10 %) and the hour's rate is below
//!   `cache_collapse_fraction` (25 %) of it.
//! * **`output_ratio_spike`**: `output / (input + cache_read)` above
//!   `output_ratio_spike_factor` (3×) its baseline (not evaluated when the baseline is 0,
//!   e.g. an embeddings model).
//! * **`error_cost_share`**: `error_cost / cost` at least `error_share_threshold` (20 %) and at
//!   least `error_share_baseline_factor` (2×) its baseline, so a series that always fails a
//!   little is judged against itself.
//!
//! Every finding names up to 3 top contributors of the hour (by cost, descending; ties by
//! key), and carries a `method` string saying which baseline produced it.
//!
//! # Memory
//!
//! Per series the detector keeps at most `history_weeks × 168` hourly summaries of
//! [`STORED_HOUR_BYTES`] (64) bytes: 672 hours = 42 KiB with the default 4 weeks (see
//! [`DetectorConfig::series_memory_bytes`]), plus the key's strings. Contributors are not
//! stored. Series that stop reporting can be dropped with [`AnomalyDetector::evict_idle`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use thiserror::Error;

const HOURS_PER_DAY: i64 = 24;
const HOURS_PER_WEEK: i64 = 168;
const SECONDS_PER_HOUR: i64 = 3600;
/// Fewest pooled points a spend baseline may rest on.
const MIN_SPEND_BASELINE_POINTS: usize = 3;
/// Most contributors named in a finding.
const TOP_CONTRIBUTORS: usize = 3;
/// Decimal places of the ratios reported in findings.
const RATIO_DP: u32 = 4;
/// Turns a MAD into a standard-deviation estimate (exact for normally distributed data).
const MAD_TO_SIGMA: Decimal = Decimal::from_parts(14826, 0, 0, false, 4);
/// Bytes of one retained hour of history.
pub const STORED_HOUR_BYTES: usize = std::mem::size_of::<StoredHour>();

/// Identifies one monitored series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Kind of scope, e.g. `"org"`, `"team"`, `"project"`.
    pub scope_kind: String,
    /// The scope's value, e.g. `"search"`.
    pub scope_value: String,
    /// The model, or `None` for all models of the scope.
    pub model: Option<String>,
}

impl SeriesKey {
    pub fn new(scope_kind: &str, scope_value: &str, model: Option<&str>) -> Self {
        Self {
            scope_kind: scope_kind.to_owned(),
            scope_value: scope_value.to_owned(),
            model: model.map(str::to_owned),
        }
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.scope_kind, self.scope_value)?;
        match &self.model {
            Some(model) => write!(f, " model={model}"),
            None => write!(f, " (all models)"),
        }
    }
}

/// One closed hour of one series.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HourBucket {
    /// Start of the hour; must be aligned to a whole hour.
    pub hour_start: DateTime<Utc>,
    /// Priced cost of the hour (a negative net cost, e.g. credits, is never reported).
    pub cost: Decimal,
    /// Number of usage events.
    pub events: u64,
    /// Uncached input tokens (disjoint from `cache_read_tokens`).
    pub input_tokens: i64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost of the events whose status was an error (part of `cost`).
    pub error_cost: Decimal,
    /// Cost per contributing key in this hour, keyed like `"api_key:k-12"`, `"model:gpt-4o"`,
    /// `"user:u1"`. Repeated keys are summed.
    pub contributors: Vec<(String, Decimal)>,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    SpendSpike,
    CacheHitCollapse,
    OutputRatioSpike,
    ErrorCostShare,
}

impl FindingKind {
    pub const ALL: [FindingKind; 4] = [
        FindingKind::SpendSpike,
        FindingKind::CacheHitCollapse,
        FindingKind::OutputRatioSpike,
        FindingKind::ErrorCostShare,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            FindingKind::SpendSpike => "spend_spike",
            FindingKind::CacheHitCollapse => "cache_hit_collapse",
            FindingKind::OutputRatioSpike => "output_ratio_spike",
            FindingKind::ErrorCostShare => "error_cost_share",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One anomalous hour of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    pub series: SeriesKey,
    /// Start of the anomalous hour.
    pub window_start: DateTime<Utc>,
    /// End of the anomalous hour (exclusive).
    pub window_end: DateTime<Utc>,
    /// The hour's cost (`spend_spike`) or ratio (mix kinds, 4 decimal places).
    pub observed: Decimal,
    /// The baseline (a median, see the module doc), in the same unit as `observed`.
    pub expected: Decimal,
    /// Robust z-score in the alerting direction (see the module doc). Not money.
    pub score: f64,
    /// How the baseline was computed, for the reader of the alert.
    pub method: String,
    /// Up to 3 contributors of the hour by cost, descending, ties by key.
    pub top_contributors: Vec<(String, Decimal)>,
}

/// Tuning of the detector. The module doc explains how each field is used.
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
    pub fn series_memory_bytes(&self) -> usize {
        self.history_hours() as usize * STORED_HOUR_BYTES
    }
}

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

/// The part of an hour the baselines need; contributors are not kept.
#[derive(Debug, Clone, Copy)]
struct StoredHour {
    /// Hours since the Unix epoch.
    hour: i64,
    cost: Decimal,
    error_cost: Decimal,
    input_tokens: i64,
    cache_read_tokens: i64,
    output_tokens: i64,
}

impl StoredHour {
    fn prompt_tokens(&self) -> Option<i64> {
        self.input_tokens.checked_add(self.cache_read_tokens)
    }
}

#[derive(Debug)]
struct SeriesHistory {
    /// Hour of the series' first bucket: hours from there on without a bucket spent nothing.
    first_hour: i64,
    /// Sorted by hour, distinct, all within the last `history_hours` hours.
    hours: VecDeque<StoredHour>,
}

impl SeriesHistory {
    fn last_hour(&self) -> Option<i64> {
        self.hours.back().map(|h| h.hour)
    }

    /// Cost of hour `hour`: zero if the series had no bucket then.
    fn cost_at(&self, hour: i64) -> Decimal {
        match self.hours.binary_search_by_key(&hour, |h| h.hour) {
            Ok(i) => self.hours[i].cost,
            Err(_) => Decimal::ZERO,
        }
    }

    /// Drops hours that fall out of the window ending at the new hour, then appends it. Capacity
    /// grows in exact steps up to `horizon`, so it never exceeds the documented bound.
    fn push(&mut self, stored: StoredHour, horizon: usize) {
        let oldest_kept = stored.hour - horizon as i64 + 1;
        while self.hours.front().is_some_and(|h| h.hour < oldest_kept) {
            self.hours.pop_front();
        }
        if self.hours.len() == self.hours.capacity() {
            let target = (self.hours.len() * 2).clamp(HOURS_PER_DAY as usize, horizon);
            self.hours
                .reserve_exact(target.saturating_sub(self.hours.len()));
        }
        self.hours.push_back(stored);
    }
}

/// Median of the values; `None` when empty. Even counts average the two middle values.
pub fn median(values: &[Decimal]) -> Option<Decimal> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        // The mean of two Decimals cannot overflow when halved before adding.
        _ => Some(sorted[n / 2 - 1] / Decimal::TWO + sorted[n / 2] / Decimal::TWO),
    }
}

/// Median and median absolute deviation of the values; `None` when empty.
pub fn median_and_mad(values: &[Decimal]) -> Option<(Decimal, Decimal)> {
    let center = median(values)?;
    let deviations: Vec<Decimal> = values
        .iter()
        .map(|v| v.saturating_sub(center).abs())
        .collect();
    Some((center, median(&deviations)?))
}

/// Robust z-score `excess / max(1.4826·MAD, floor_fraction·center, floor_abs)`.
fn robust_z(
    excess: Decimal,
    center: Decimal,
    mad: Decimal,
    floor_fraction: Decimal,
    floor_abs: Decimal,
) -> f64 {
    let scale = MAD_TO_SIGMA
        .saturating_mul(mad)
        .max(floor_fraction.saturating_mul(center.max(Decimal::ZERO)))
        .max(floor_abs);
    match excess.checked_div(scale) {
        Some(z) => z.to_f64().unwrap_or(f64::INFINITY),
        // Only an excess near Decimal::MAX overflows: far beyond any threshold.
        None if excess.is_sign_negative() => f64::NEG_INFINITY,
        None => f64::INFINITY,
    }
}

/// Ratio `numerator / denominator` of two token counts, or `None` when undefined.
fn token_ratio(numerator: i64, denominator: i64) -> Option<Decimal> {
    if denominator <= 0 {
        return None;
    }
    Decimal::from(numerator).checked_div(Decimal::from(denominator))
}

/// Up to [`TOP_CONTRIBUTORS`] keys by cost, descending, ties by key; repeated keys summed.
fn top_contributors(contributors: &[(String, Decimal)]) -> Vec<(String, Decimal)> {
    let mut by_key: BTreeMap<&str, Decimal> = BTreeMap::new();
    for (key, cost) in contributors {
        let total = by_key.entry(key.as_str()).or_default();
        *total = total.saturating_add(*cost);
    }
    let mut ranked: Vec<(&str, Decimal)> = by_key.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(TOP_CONTRIBUTORS)
        .map(|(key, cost)| (key.to_owned(), cost))
        .collect()
}

/// Which per-hour ratio a mix-shift check looks at.
#[derive(Debug, Clone, Copy)]
enum MixRatio {
    CacheHitRate,
    OutputPerPrompt,
    ErrorShareOfCost,
}

impl MixRatio {
    /// The ratio of an hour, or `None` when the hour lacks the volume to make it meaningful.
    fn of(self, hour: &StoredHour, config: &DetectorConfig) -> Option<Decimal> {
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
struct Baseline {
    /// The value compared with: a median (for spend, the larger of two medians).
    center: Decimal,
    mad: Decimal,
    method: String,
}

/// Detects anomalous hours per series. See the module doc for the method.
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
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Hours of history held for the series (at most `history_weeks × 168`).
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

fn hour_to_datetime(hour: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::hours(hour)
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

/// Seasonal baseline of the hour's cost (hour-of-week, or hour-of-day before enough weeks).
fn spend_baseline(config: &DetectorConfig, history: &SeriesHistory, hour: i64) -> Option<Baseline> {
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
fn ratio_baseline(
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};
    use std::ops::Range;

    // Both fixtures are per-minute excerpts of public traces; see tests/fixtures/README.md.
    const AZURE_CONV_PER_MINUTE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/azure_conv_per_minute.csv"
    ));
    const MOONCAKE_CONV_PER_MINUTE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mooncake_conv_per_minute.csv"
    ));

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal literal")
    }

    fn decs(texts: &[&str]) -> Vec<Decimal> {
        texts.iter().map(|t| dec(t)).collect()
    }

    // ---- deterministic noise -------------------------------------------------------------

    /// SplitMix64 (Steele, Lea & Flood 2014): tiny, seedable, good enough for test noise.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn uniform(&mut self, low: f64, high: f64) -> f64 {
            low + (high - low) * self.unit()
        }

        fn index(&mut self, len: usize) -> usize {
            (self.next_u64() % len as u64) as usize
        }
    }

    /// An independent stream per (seed, lane, index), so that an incident injected in one
    /// hour leaves every other hour's noise unchanged.
    fn stream(seed: u64, lane: u64, index: i64) -> SplitMix64 {
        let a = SplitMix64(seed).next_u64() ^ lane;
        let b = SplitMix64(a).next_u64() ^ index as u64;
        SplitMix64(b)
    }

    // ---- fixtures --------------------------------------------------------------------------

    struct RequestMinute {
        requests: u64,
        context_tokens: u64,
        generated_tokens: u64,
    }

    struct CacheMinute {
        input_tokens: u64,
        cache_hit_tokens: u64,
    }

    /// Integer rows of a CSV fixture, header skipped.
    fn csv_rows(text: &str, columns: usize) -> Vec<Vec<u64>> {
        text.lines()
            .skip(1)
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let cells: Vec<u64> = line
                    .split(',')
                    .map(|cell| cell.trim().parse().expect("integer cell"))
                    .collect();
                assert_eq!(cells.len(), columns, "row {line:?}");
                cells
            })
            .collect()
    }

    /// Azure minutes 1–58: minutes 0 and 59 are only partly covered by the trace.
    fn azure_minutes() -> Vec<RequestMinute> {
        csv_rows(AZURE_CONV_PER_MINUTE, 4)[1..59]
            .iter()
            .map(|r| RequestMinute {
                requests: r[1],
                context_tokens: r[2],
                generated_tokens: r[3],
            })
            .collect()
    }

    /// Mooncake minutes 1–58: minute 0 is the cold-cache warm-up, minute 59 is empty.
    fn mooncake_minutes() -> Vec<CacheMinute> {
        csv_rows(MOONCAKE_CONV_PER_MINUTE, 5)[1..59]
            .iter()
            .map(|r| CacheMinute {
                input_tokens: r[2],
                cache_hit_tokens: r[3],
            })
            .collect()
    }

    // ---- synthetic traffic -----------------------------------------------------------------

    /// Weekday activity per UTC hour relative to the busiest hour: quiet nights, a morning
    /// ramp, business hours with a lunch dip, an evening tail.
    const WEEKDAY_ACTIVITY: [f64; 24] = [
        0.12, 0.10, 0.10, 0.10, 0.12, 0.18, 0.30, 0.55, 0.85, 1.00, 1.00, 1.00, //
        0.85, 0.95, 1.00, 1.00, 0.95, 0.80, 0.60, 0.45, 0.35, 0.25, 0.18, 0.14,
    ];
    /// Saturday and Sunday run at this fraction of the weekday curve.
    const WEEKEND_FACTOR: f64 = 0.3;
    const HISTORY_WEEKS: i64 = 4;

    fn activity(at: DateTime<Utc>) -> f64 {
        let weekday = WEEKDAY_ACTIVITY[at.hour() as usize];
        match at.weekday() {
            Weekday::Sat | Weekday::Sun => weekday * WEEKEND_FACTOR,
            _ => weekday,
        }
    }

    /// Hour `h` of the simulation, which starts on Monday 2024-01-01 00:00 UTC.
    fn hour_at(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    /// Hour index of `hour` o'clock on `day` (0 = Monday) of the evaluated fifth week.
    fn week5(day: i64, hour: i64) -> i64 {
        HISTORY_WEEKS * HOURS_PER_WEEK + day * HOURS_PER_DAY + hour
    }

    struct Shape {
        /// Mean requests in the busiest weekday hour of the first week.
        peak_requests_per_hour: f64,
        /// API keys and their share of requests.
        keys: &'static [(&'static str, f64)],
        /// Volume multiplier from one week to the next.
        weekly_growth: f64,
    }

    const TEAM_KEYS: &[(&str, f64)] = &[
        ("api_key:k-01", 0.45),
        ("api_key:k-02", 0.30),
        ("api_key:k-03", 0.15),
        ("api_key:k-04", 0.10),
    ];

    /// About $28 in the peak hour, $3 on weekday nights, $0.85 on weekend nights.
    const TEAM: Shape = Shape {
        peak_requests_per_hour: 6000.0,
        keys: TEAM_KEYS,
        weekly_growth: 1.02,
    };

    /// A few cents per hour.
    const TINY: Shape = Shape {
        peak_requests_per_hour: 20.0,
        keys: TEAM_KEYS,
        weekly_growth: 1.0,
    };

    enum Effect {
        /// Multiplies the key's request volume.
        Volume(f64),
        /// Multiplies output tokens.
        OutputTokens(f64),
        /// Multiplies cache reads (the missed tokens become uncached input).
        CacheReads(f64),
        /// Sets the share of requests that fail (and are billed).
        ErrorShare(f64),
    }

    struct Incident {
        hour: i64,
        /// `None` affects every key.
        key: Option<&'static str>,
        effect: Effect,
    }

    /// List prices in $ per million tokens.
    fn price(input: i64, cache_read: i64, output: i64) -> Decimal {
        (Decimal::from(input) * dec("2.50")
            + Decimal::from(cache_read) * dec("1.25")
            + Decimal::from(output) * dec("10"))
            / Decimal::from(1_000_000)
    }

    struct Traffic {
        requests: Vec<RequestMinute>,
        cache: Vec<CacheMinute>,
        mean_hour_requests: f64,
    }

    impl Traffic {
        fn load() -> Self {
            let requests = azure_minutes();
            let mean_minute =
                requests.iter().map(|m| m.requests).sum::<u64>() as f64 / requests.len() as f64;
            Self {
                requests,
                cache: mooncake_minutes(),
                mean_hour_requests: 60.0 * mean_minute,
            }
        }

        /// Hour `h` of a series. Per key: 60 trace minutes drawn with replacement give the
        /// hour's requests and token sums (Azure) and cache-hit rate (Mooncake); volume is
        /// scaled by the weekly curve, a per-day factor (±20 %), a per-key-hour jitter (±15 %,
        /// because real hours are burstier than a bootstrap of one hour's minutes) and weekly
        /// growth. 0–3 % of requests fail.
        fn bucket(&self, shape: &Shape, seed: u64, h: i64, incidents: &[Incident]) -> HourBucket {
            let at = hour_at(h);
            let day_factor = stream(seed, 0, h.div_euclid(HOURS_PER_DAY)).uniform(0.8, 1.2);
            let week = h.div_euclid(HOURS_PER_WEEK) as i32;
            let scale = shape.peak_requests_per_hour / self.mean_hour_requests
                * activity(at)
                * day_factor
                * shape.weekly_growth.powi(week);
            let mut bucket = HourBucket {
                hour_start: at,
                ..HourBucket::default()
            };
            for (lane, &(key, share)) in shape.keys.iter().enumerate() {
                let mut rng = stream(seed, lane as u64 + 1, h);
                let mut volume = scale * share * rng.uniform(0.85, 1.15);
                let (mut requests, mut context, mut generated) = (0u64, 0u64, 0u64);
                for _ in 0..60 {
                    let minute = &self.requests[rng.index(self.requests.len())];
                    requests += minute.requests;
                    context += minute.context_tokens;
                    generated += minute.generated_tokens;
                }
                let (mut cache_input, mut cache_hits) = (0u64, 0u64);
                for _ in 0..60 {
                    let minute = &self.cache[rng.index(self.cache.len())];
                    cache_input += minute.input_tokens;
                    cache_hits += minute.cache_hit_tokens;
                }
                let mut error_share = rng.uniform(0.0, 0.03);
                let (mut output_factor, mut cache_factor) = (1.0, 1.0);
                for incident in incidents
                    .iter()
                    .filter(|i| i.hour == h && i.key.is_none_or(|k| k == key))
                {
                    match incident.effect {
                        Effect::Volume(factor) => volume *= factor,
                        Effect::OutputTokens(factor) => output_factor *= factor,
                        Effect::CacheReads(factor) => cache_factor *= factor,
                        Effect::ErrorShare(share) => error_share = share,
                    }
                }
                let requests = (requests as f64 * volume).round() as u64;
                let prompt = (context as f64 * volume).round() as i64;
                let output = (generated as f64 * volume * output_factor).round() as i64;
                let hit_rate = cache_hits as f64 / cache_input as f64;
                let cache_read = (prompt as f64 * hit_rate * cache_factor).round() as i64;
                let input = prompt - cache_read;
                let cost = price(input, cache_read, output);
                let failed = (requests as f64 * error_share).round() as u64;
                let error_cost = if requests == 0 {
                    Decimal::ZERO
                } else {
                    (cost * Decimal::from(failed) / Decimal::from(requests)).round_dp(8)
                };
                bucket.cost += cost;
                bucket.events += requests;
                bucket.input_tokens += input;
                bucket.cache_read_tokens += cache_read;
                bucket.output_tokens += output;
                bucket.error_cost += error_cost;
                bucket.contributors.push((key.to_owned(), cost));
            }
            bucket
        }
    }

    fn team_key() -> SeriesKey {
        SeriesKey::new("team", "search", Some("gpt-4o"))
    }

    /// Feeds hours `hours` of a series to the detector; returns the buckets and findings.
    fn feed(
        detector: &mut AnomalyDetector,
        traffic: &Traffic,
        shape: &Shape,
        seed: u64,
        hours: Range<i64>,
        incidents: &[Incident],
    ) -> (Vec<HourBucket>, Vec<Finding>) {
        let key = team_key();
        let mut buckets = Vec::new();
        let mut findings = Vec::new();
        for h in hours {
            let bucket = traffic.bucket(shape, seed, h, incidents);
            findings.extend(detector.observe(&key, &bucket).expect("valid bucket"));
            buckets.push(bucket);
        }
        (buckets, findings)
    }

    struct Scenario {
        history: Vec<HourBucket>,
        history_findings: Vec<Finding>,
        week: Vec<HourBucket>,
        week_findings: Vec<Finding>,
    }

    /// Four weeks of history (`history_seed`), then a fifth week drawn with a different seed,
    /// each with the incidents that fall in its hours.
    fn four_weeks_then_one(
        shape: &Shape,
        config: DetectorConfig,
        history_seed: u64,
        week_seed: u64,
        incidents: &[Incident],
    ) -> Scenario {
        let traffic = Traffic::load();
        let mut detector = AnomalyDetector::new(config).expect("valid config");
        let history_hours = 0..HISTORY_WEEKS * HOURS_PER_WEEK;
        let week_hours = week5(0, 0)..week5(7, 0);
        let (history, history_findings) = feed(
            &mut detector,
            &traffic,
            shape,
            history_seed,
            history_hours,
            incidents,
        );
        let (week, week_findings) = feed(
            &mut detector,
            &traffic,
            shape,
            week_seed,
            week_hours,
            incidents,
        );
        Scenario {
            history,
            history_findings,
            week,
            week_findings,
        }
    }

    fn summary(findings: &[Finding]) -> Vec<(String, &'static str)> {
        findings
            .iter()
            .map(|f| (f.window_start.to_rfc3339(), f.kind.as_str()))
            .collect()
    }

    // ---- median / MAD ----------------------------------------------------------------------

    #[test]
    fn median_of_odd_even_ties_and_empty() {
        assert_eq!(median(&decs(&["3", "1", "2"])), Some(dec("2")));
        assert_eq!(median(&decs(&["4", "1", "3", "2"])), Some(dec("2.5")));
        assert_eq!(median(&decs(&["5", "5", "5", "1"])), Some(dec("5")));
        assert_eq!(median(&decs(&["0.1", "0.3", "0.2"])), Some(dec("0.2")));
        assert_eq!(median(&decs(&["-2", "7"])), Some(dec("2.5")));
        assert_eq!(median(&decs(&["7"])), Some(dec("7")));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn mad_of_hand_computed_arrays() {
        // Deviations from 2: 1 1 0 0 2 4 7 -> sorted 0 0 1 1 2 4 7 -> 1.
        assert_eq!(
            median_and_mad(&decs(&["1", "1", "2", "2", "4", "6", "9"])),
            Some((dec("2"), dec("1")))
        );
        // Median 2.5; deviations 1.5 0.5 0.5 1.5 -> 1.
        assert_eq!(
            median_and_mad(&decs(&["1", "2", "3", "4"])),
            Some((dec("2.5"), dec("1")))
        );
        // Ties: median 5, deviations 0 0 0 4 -> 0.
        assert_eq!(
            median_and_mad(&decs(&["5", "5", "5", "1"])),
            Some((dec("5"), dec("0")))
        );
        assert_eq!(median_and_mad(&decs(&["7"])), Some((dec("7"), dec("0"))));
        assert_eq!(median_and_mad(&[]), None);
    }

    #[test]
    fn fixtures_match_their_provenance() {
        let azure = csv_rows(AZURE_CONV_PER_MINUTE, 4);
        assert_eq!(azure.len(), 60);
        // Every request of the Azure conv trace (19,366 rows) is in exactly one minute.
        assert_eq!(azure.iter().map(|r| r[1]).sum::<u64>(), 19_366);
        let mooncake = csv_rows(MOONCAKE_CONV_PER_MINUTE, 5);
        assert_eq!(mooncake.len(), 60);
        assert_eq!(mooncake.iter().map(|r| r[1]).sum::<u64>(), 12_031);
        let input: u64 = mooncake.iter().map(|r| r[2]).sum();
        let hits: u64 = mooncake.iter().map(|r| r[3]).sum();
        let hit_rate = hits as f64 / input as f64;
        assert!(
            (0.36..0.39).contains(&hit_rate),
            "prefix-hit rate {hit_rate}"
        );
        assert!(AZURE_CONV_PER_MINUTE.len() < 20_000 && MOONCAKE_CONV_PER_MINUTE.len() < 20_000);
    }

    // ---- realistic weeks -------------------------------------------------------------------

    #[test]
    fn normal_weeks_raise_no_finding() {
        for (history_seed, week_seed) in [(1, 101), (2, 202), (3, 303)] {
            let run = four_weeks_then_one(
                &TEAM,
                DetectorConfig::default(),
                history_seed,
                week_seed,
                &[],
            );
            assert!(
                run.history_findings.is_empty(),
                "seed {history_seed}: history {:?}",
                summary(&run.history_findings)
            );
            assert!(
                run.week_findings.is_empty(),
                "seed {week_seed}: week {:?}",
                summary(&run.week_findings)
            );
            // Not vacuous: most hours pass the volume gate and the peak is well above it.
            let gated = run
                .week
                .iter()
                .filter(|b| b.cost >= Decimal::ONE && b.events >= 20)
                .count();
            assert!(gated >= 100, "only {gated} hours above the volume gate");
            let peak = run.week.iter().map(|b| b.cost).max().unwrap_or_default();
            assert!(peak >= dec("20"), "peak hour {peak}");
        }
    }

    #[test]
    fn weekday_afternoon_spike_is_flagged_with_the_injected_key_on_top() {
        let spike_hour = week5(2, 15); // Wednesday 15:00
        let incidents = [Incident {
            hour: spike_hour,
            key: Some("api_key:k-01"),
            effect: Effect::Volume(5.0),
        }];
        for (history_seed, week_seed) in [(1, 101), (2, 202)] {
            let run = four_weeks_then_one(
                &TEAM,
                DetectorConfig::default(),
                history_seed,
                week_seed,
                &incidents,
            );
            assert!(run.history_findings.is_empty());
            let [finding] = run.week_findings.as_slice() else {
                panic!(
                    "expected one finding, got {:?}",
                    summary(&run.week_findings)
                );
            };
            assert_eq!(finding.kind, FindingKind::SpendSpike);
            assert_eq!(finding.series, team_key());
            assert_eq!(finding.window_start, hour_at(spike_hour));
            assert_eq!(finding.window_end, hour_at(spike_hour + 1));
            assert_eq!(
                finding.observed,
                run.week[(spike_hour - week5(0, 0)) as usize].cost
            );
            assert!(finding.observed >= Decimal::TWO * finding.expected);
            assert!(finding.score >= 6.0, "score {}", finding.score);
            assert!(
                finding.method.starts_with("hour-of-week"),
                "{}",
                finding.method
            );
            let keys: Vec<&str> = finding
                .top_contributors
                .iter()
                .map(|c| c.0.as_str())
                .collect();
            assert_eq!(keys.len(), 3);
            assert_eq!(keys[0], "api_key:k-01");
            assert!(finding.top_contributors[0].1 > finding.top_contributors[1].1);
        }
    }

    #[test]
    fn night_spike_at_a_daytime_level_is_flagged_by_the_seasonal_baseline() {
        let spike_hour = week5(1, 3); // Tuesday 03:00
        let incidents = [Incident {
            hour: spike_hour,
            key: Some("api_key:k-03"),
            effect: Effect::Volume(35.0),
        }];
        for (history_seed, week_seed) in [(1, 101), (2, 202)] {
            let run = four_weeks_then_one(
                &TEAM,
                DetectorConfig::default(),
                history_seed,
                week_seed,
                &incidents,
            );
            let [finding] = run.week_findings.as_slice() else {
                panic!(
                    "expected one finding, got {:?}",
                    summary(&run.week_findings)
                );
            };
            assert_eq!(finding.kind, FindingKind::SpendSpike);
            assert_eq!(finding.window_start, hour_at(spike_hour));
            assert_eq!(finding.top_contributors[0].0, "api_key:k-03");
            // The level is ordinary for a weekday afternoon: below the median 15:00 hour.
            let afternoons: Vec<Decimal> = run
                .history
                .iter()
                .filter(|b| {
                    b.hour_start.hour() == 15 && b.hour_start.weekday().number_from_monday() <= 5
                })
                .map(|b| b.cost)
                .collect();
            let typical_afternoon = median(&afternoons).expect("afternoons in history");
            assert!(
                finding.observed < typical_afternoon,
                "night {} vs afternoon {typical_afternoon}",
                finding.observed
            );
        }
    }

    #[test]
    fn cache_hit_collapse_for_two_hours_is_flagged() {
        let first = week5(3, 10); // Thursday 10:00 and 11:00
        let incidents: Vec<Incident> = [first, first + 1]
            .into_iter()
            .map(|hour| Incident {
                hour,
                key: None,
                effect: Effect::CacheReads(0.01),
            })
            .collect();
        let run = four_weeks_then_one(&TEAM, DetectorConfig::default(), 4, 404, &incidents);
        assert_eq!(
            summary(&run.week_findings),
            vec![
                (hour_at(first).to_rfc3339(), "cache_hit_collapse"),
                (hour_at(first + 1).to_rfc3339(), "cache_hit_collapse"),
            ]
        );
        for finding in &run.week_findings {
            assert!(
                finding.observed < dec("0.01"),
                "observed {}",
                finding.observed
            );
            // The Mooncake-derived hit rate, ~37 % of prompt tokens.
            assert!(
                finding.expected > dec("0.30") && finding.expected < dec("0.45"),
                "expected {}",
                finding.expected
            );
            assert!(finding.score >= 4.0);
            assert!(
                finding.method.contains("cache-hit rate"),
                "{}",
                finding.method
            );
        }
    }

    #[test]
    fn output_ratio_spike_is_flagged() {
        let hour = week5(3, 14); // Thursday 14:00: answers five times longer
        let incidents = [Incident {
            hour,
            key: None,
            effect: Effect::OutputTokens(5.0),
        }];
        let run = four_weeks_then_one(&TEAM, DetectorConfig::default(), 5, 505, &incidents);
        assert!(
            run.week_findings
                .iter()
                .all(|f| f.window_start == hour_at(hour)),
            "{:?}",
            summary(&run.week_findings)
        );
        let ratio = run
            .week_findings
            .iter()
            .find(|f| f.kind == FindingKind::OutputRatioSpike)
            .expect("output ratio spike flagged");
        assert!(ratio.observed >= dec("3") * ratio.expected);
        // Azure conv answers are ~0.18 tokens per prompt token.
        assert!(ratio.expected > dec("0.15") && ratio.expected < dec("0.22"));
        // Output tokens are also the expensive ones, so the hour may be a spend spike too,
        // but only if it really costs twice its baseline.
        for other in run.week_findings.iter().filter(|f| f.kind != ratio.kind) {
            assert_eq!(other.kind, FindingKind::SpendSpike);
            assert!(other.observed >= Decimal::TWO * other.expected);
        }
    }

    #[test]
    fn error_cost_share_is_flagged() {
        let hour = week5(4, 11); // Friday 11:00: 35 % of requests fail after being billed
        let incidents = [Incident {
            hour,
            key: None,
            effect: Effect::ErrorShare(0.35),
        }];
        let run = four_weeks_then_one(&TEAM, DetectorConfig::default(), 6, 606, &incidents);
        let [finding] = run.week_findings.as_slice() else {
            panic!(
                "expected one finding, got {:?}",
                summary(&run.week_findings)
            );
        };
        assert_eq!(finding.kind, FindingKind::ErrorCostShare);
        assert_eq!(finding.window_start, hour_at(hour));
        assert!(finding.observed > dec("0.34") && finding.observed < dec("0.36"));
        assert!(
            finding.expected < dec("0.03"),
            "baseline {}",
            finding.expected
        );
    }

    #[test]
    fn tiny_series_jump_is_below_the_minimum_volume() {
        let hour = week5(2, 15);
        let incidents = [Incident {
            hour,
            key: None,
            effect: Effect::Volume(10.0),
        }];
        let run = four_weeks_then_one(&TINY, DetectorConfig::default(), 8, 808, &incidents);
        let jumped = &run.week[(hour - week5(0, 0)) as usize];
        assert!(
            jumped.cost < Decimal::ONE,
            "jumped hour costs {}",
            jumped.cost
        );
        assert!(run.history_findings.is_empty() && run.week_findings.is_empty());

        // The volume gate is what keeps it quiet: lowered, the same jump is flagged.
        let lowered = DetectorConfig {
            min_hourly_cost: dec("0.01"),
            min_events: 1,
            ..DetectorConfig::default()
        };
        let run = four_weeks_then_one(&TINY, lowered, 8, 808, &incidents);
        assert_eq!(
            summary(&run.week_findings),
            vec![(hour_at(hour).to_rfc3339(), "spend_spike")]
        );
    }

    #[test]
    fn cold_start_flags_nothing_on_day_one_then_uses_hour_of_day() {
        let traffic = Traffic::load();
        let mut detector = AnomalyDetector::new(DetectorConfig::default()).expect("config");
        // Monday 20:00, inside the first day: ten times the volume, not reported.
        let first_day = [Incident {
            hour: 20,
            key: None,
            effect: Effect::Volume(10.0),
        }];
        let (_, findings) = feed(&mut detector, &traffic, &TEAM, 7, 0..24, &first_day);
        assert!(findings.is_empty(), "{:?}", summary(&findings));

        // Tuesday 15:00: the hour-of-day baseline (Monday 14–16h) already catches a spike.
        let tuesday = [Incident {
            hour: 39,
            key: Some("api_key:k-01"),
            effect: Effect::Volume(5.0),
        }];
        let (_, findings) = feed(&mut detector, &traffic, &TEAM, 7, 24..48, &tuesday);
        let [finding] = findings.as_slice() else {
            panic!("expected one finding, got {:?}", summary(&findings));
        };
        assert_eq!(finding.kind, FindingKind::SpendSpike);
        assert_eq!(finding.window_start, hour_at(39));
        assert!(
            finding.method.starts_with("hour-of-day"),
            "{}",
            finding.method
        );
        assert!(
            finding.method.contains("over 1 days") && finding.method.contains("(3 points)"),
            "{}",
            finding.method
        );
    }

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

    #[test]
    fn top_contributors_are_merged_sorted_and_capped() {
        let contributors: Vec<(String, Decimal)> = [
            ("api_key:b", "5"),
            ("api_key:a", "5"),
            ("api_key:c", "1"),
            ("model:gpt-4o", "7"),
            ("api_key:b", "1"),
        ]
        .iter()
        .map(|(k, c)| (k.to_string(), dec(c)))
        .collect();
        assert_eq!(
            top_contributors(&contributors),
            vec![
                ("model:gpt-4o".to_owned(), dec("7")),
                ("api_key:b".to_owned(), dec("6")),
                ("api_key:a".to_owned(), dec("5")),
            ]
        );
        let tied = vec![("z".to_owned(), dec("2")), ("y".to_owned(), dec("2"))];
        assert_eq!(
            top_contributors(&tied),
            vec![("y".to_owned(), dec("2")), ("z".to_owned(), dec("2"))]
        );
        assert!(top_contributors(&[]).is_empty());
    }

    #[test]
    fn same_input_gives_same_findings() {
        let incidents = [
            Incident {
                hour: week5(2, 15),
                key: Some("api_key:k-01"),
                effect: Effect::Volume(6.0),
            },
            Incident {
                hour: week5(4, 11),
                key: None,
                effect: Effect::ErrorShare(0.5),
            },
        ];
        let first = four_weeks_then_one(&TEAM, DetectorConfig::default(), 9, 909, &incidents);
        let second = four_weeks_then_one(&TEAM, DetectorConfig::default(), 9, 909, &incidents);
        assert_eq!(first.week_findings.len(), 2);
        assert_eq!(first.week_findings, second.week_findings);
        assert_eq!(first.week, second.week);
    }

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

    #[test]
    fn recurring_nightly_batch_job_is_not_a_spike() {
        // k-04 runs a batch job every night at 02:00 at twenty times its volume; pooling with
        // 01:00 and 03:00 alone would make it look like a spike every night.
        let incidents: Vec<Incident> = (0..5 * 7)
            .map(|day| Incident {
                hour: day * HOURS_PER_DAY + 2,
                key: Some("api_key:k-04"),
                effect: Effect::Volume(20.0),
            })
            .collect();
        let run = four_weeks_then_one(&TEAM, DetectorConfig::default(), 10, 1010, &incidents);
        let batch = &run.week[2];
        let before = &run.week[1];
        assert!(
            batch.cost >= Decimal::TWO * before.cost,
            "batch hour {}",
            batch.cost
        );
        assert!(
            run.history_findings.is_empty(),
            "{:?}",
            summary(&run.history_findings)
        );
        assert!(
            run.week_findings.is_empty(),
            "{:?}",
            summary(&run.week_findings)
        );
    }

    #[test]
    fn names_read_as_in_alerts() {
        assert_eq!(FindingKind::SpendSpike.as_str(), "spend_spike");
        assert_eq!(
            FindingKind::CacheHitCollapse.to_string(),
            "cache_hit_collapse"
        );
        assert_eq!(FindingKind::OutputRatioSpike.as_str(), "output_ratio_spike");
        assert_eq!(FindingKind::ErrorCostShare.as_str(), "error_cost_share");
        assert_eq!(team_key().to_string(), "team=search model=gpt-4o");
        assert_eq!(
            SeriesKey::new("org", "acme", None).to_string(),
            "org=acme (all models)"
        );
    }
}
