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
//! `STORED_HOUR_BYTES` (64) bytes: 672 hours = 42 KiB with the default 4 weeks (see
//! `DetectorConfig::series_memory_bytes`), plus the key's strings. Contributors are not
//! stored. Series that stop reporting are dropped once their last hour leaves the window
//! ([`AnomalyDetector::evict_idle`], called as each hour closes).
//!
//! # Files
//!
//! - `series.rs`: the hourly series model: [`SeriesKey`], [`HourBucket`], and what is kept of
//!   a series' past hours;
//! - `detector_config.rs`: [`DetectorConfig`], its defaults and its validation;
//! - `stats.rs`: median, MAD and the robust z-score;
//! - `baseline.rs`: the seasonal spend baseline and the mix-ratio baselines;
//! - `detector.rs`: [`AnomalyDetector`]: each hour checked, gated, judged by the rule of each
//!   kind, then added to the history;
//! - `finding.rs`: what is reported: [`Finding`], [`FindingKind`], the top contributors;
//! - tests: each file's own, and `realistic_weeks.rs`: weeks of synthetic traffic
//!   (`synthetic_traffic.rs`, from the traces in `tests/fixtures/`) with injected incidents.

mod baseline;
mod detector;
mod detector_config;
mod finding;
#[cfg(test)]
mod realistic_weeks;
mod series;
mod stats;
#[cfg(test)]
mod synthetic_traffic;

pub use detector::AnomalyDetector;
pub use detector_config::DetectorConfig;
pub use finding::{Finding, FindingKind};
pub use series::{HourBucket, SeriesKey};
