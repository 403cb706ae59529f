//! Tests: realistic weeks through the detector. Four weeks of synthetic traffic
//! (`synthetic_traffic.rs`), then a fifth with injected incidents: what must be flagged
//! (spikes by day and by night, a cache collapse, longer answers, billed errors) and what must
//! not (normal weeks, a tiny series, a recurring nightly batch job, the first day).

use chrono::{Datelike, Timelike};
use rust_decimal::Decimal;

use super::series::HOURS_PER_DAY;
use super::stats::median;
use super::synthetic_traffic::{
    dec, feed, four_weeks_then_one, hour_at, summary, team_key, week5, Effect, Incident, Traffic,
    TEAM, TINY,
};
use super::{AnomalyDetector, DetectorConfig, FindingKind};

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
