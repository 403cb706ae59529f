//! Test support for the detector's tests: decimal literals, and synthetic hourly traffic of
//! one team, made from per-minute excerpts of public traces (`tests/fixtures/`) with a weekly
//! curve, noise, growth and injected incidents, fed through the detector week by week.

use std::ops::Range;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc, Weekday};
use rust_decimal::Decimal;

use super::series::{HOURS_PER_DAY, HOURS_PER_WEEK};
use super::{AnomalyDetector, DetectorConfig, Finding, HourBucket, SeriesKey};

// Both fixtures are per-minute excerpts of public traces; see tests/fixtures/README.md.
const AZURE_CONV_PER_MINUTE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/azure_conv_per_minute.csv"
));
const MOONCAKE_CONV_PER_MINUTE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mooncake_conv_per_minute.csv"
));

/// A decimal literal.
pub(super) fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

/// Decimal literals.
pub(super) fn decs(texts: &[&str]) -> Vec<Decimal> {
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
pub(super) fn hour_at(h: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
}

/// Hour index of `hour` o'clock on `day` (0 = Monday) of the evaluated fifth week.
pub(super) fn week5(day: i64, hour: i64) -> i64 {
    HISTORY_WEEKS * HOURS_PER_WEEK + day * HOURS_PER_DAY + hour
}

pub(super) struct Shape {
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
pub(super) const TEAM: Shape = Shape {
    peak_requests_per_hour: 6000.0,
    keys: TEAM_KEYS,
    weekly_growth: 1.02,
};

/// A few cents per hour.
pub(super) const TINY: Shape = Shape {
    peak_requests_per_hour: 20.0,
    keys: TEAM_KEYS,
    weekly_growth: 1.0,
};

pub(super) enum Effect {
    /// Multiplies the key's request volume.
    Volume(f64),
    /// Multiplies output tokens.
    OutputTokens(f64),
    /// Multiplies cache reads (the missed tokens become uncached input).
    CacheReads(f64),
    /// Sets the share of requests that fail (and are billed).
    ErrorShare(f64),
}

pub(super) struct Incident {
    pub(super) hour: i64,
    /// `None` affects every key.
    pub(super) key: Option<&'static str>,
    pub(super) effect: Effect,
}

/// List prices in $ per million tokens.
fn price(input: i64, cache_read: i64, output: i64) -> Decimal {
    (Decimal::from(input) * dec("2.50")
        + Decimal::from(cache_read) * dec("1.25")
        + Decimal::from(output) * dec("10"))
        / Decimal::from(1_000_000)
}

pub(super) struct Traffic {
    requests: Vec<RequestMinute>,
    cache: Vec<CacheMinute>,
    mean_hour_requests: f64,
}

impl Traffic {
    pub(super) fn load() -> Self {
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

pub(super) fn team_key() -> SeriesKey {
    SeriesKey::new("team", "search", Some("gpt-4o"))
}

/// Feeds hours `hours` of a series to the detector; returns the buckets and findings.
pub(super) fn feed(
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

pub(super) struct Scenario {
    pub(super) history: Vec<HourBucket>,
    pub(super) history_findings: Vec<Finding>,
    pub(super) week: Vec<HourBucket>,
    pub(super) week_findings: Vec<Finding>,
}

/// Four weeks of history (`history_seed`), then a fifth week drawn with a different seed,
/// each with the incidents that fall in its hours.
pub(super) fn four_weeks_then_one(
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

pub(super) fn summary(findings: &[Finding]) -> Vec<(String, &'static str)> {
    findings
        .iter()
        .map(|f| (f.window_start.to_rfc3339(), f.kind.as_str()))
        .collect()
}
