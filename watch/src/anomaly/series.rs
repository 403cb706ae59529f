//! The hourly series model: what names a series ([`SeriesKey`]), one closed hour of it as the
//! caller gives it ([`HourBucket`]), and what is kept of its past hours ([`SeriesHistory`] of
//! [`StoredHour`]s, by hours since the Unix epoch).

use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

pub(super) const HOURS_PER_DAY: i64 = 24;
pub(super) const HOURS_PER_WEEK: i64 = 168;
pub(super) const SECONDS_PER_HOUR: i64 = 3600;
/// Bytes of one retained hour of history.
#[cfg(test)]
pub(super) const STORED_HOUR_BYTES: usize = std::mem::size_of::<StoredHour>();

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

/// The part of an hour the baselines need; contributors are not kept.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredHour {
    /// Hours since the Unix epoch.
    pub(super) hour: i64,
    pub(super) cost: Decimal,
    pub(super) error_cost: Decimal,
    pub(super) input_tokens: i64,
    pub(super) cache_read_tokens: i64,
    pub(super) output_tokens: i64,
}

impl StoredHour {
    pub(super) fn prompt_tokens(&self) -> Option<i64> {
        self.input_tokens.checked_add(self.cache_read_tokens)
    }
}

/// What is kept of one series: where it started, and its hours within the history window.
#[derive(Debug)]
pub(super) struct SeriesHistory {
    /// Hour of the series' first bucket: hours from there on without a bucket spent nothing.
    pub(super) first_hour: i64,
    /// Sorted by hour, distinct, all within the last `history_hours` hours.
    pub(super) hours: VecDeque<StoredHour>,
}

impl SeriesHistory {
    pub(super) fn last_hour(&self) -> Option<i64> {
        self.hours.back().map(|h| h.hour)
    }

    /// Cost of hour `hour`: zero if the series had no bucket then.
    pub(super) fn cost_at(&self, hour: i64) -> Decimal {
        match self.hours.binary_search_by_key(&hour, |h| h.hour) {
            Ok(i) => self.hours[i].cost,
            Err(_) => Decimal::ZERO,
        }
    }

    /// Drops hours that fall out of the window ending at the new hour, then appends it. Capacity
    /// grows in exact steps up to `horizon`, so it never exceeds the documented bound.
    pub(super) fn push(&mut self, stored: StoredHour, horizon: usize) {
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

/// Start of `hour` (hours since the Unix epoch).
pub(super) fn hour_to_datetime(hour: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::hours(hour)
}
