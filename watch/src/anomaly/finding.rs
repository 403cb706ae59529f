//! What the detector reports: a [`Finding`] of a [`FindingKind`] per anomalous hour of a
//! series, explained by its baseline (`method`) and the hour's top contributors.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::series::SeriesKey;

/// Most contributors named in a finding.
const TOP_CONTRIBUTORS: usize = 3;
/// Decimal places of the ratios reported in findings.
pub(super) const RATIO_DP: u32 = 4;

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
    /// The baseline (a median, see the `anomaly` module doc), in the same unit as `observed`.
    pub expected: Decimal,
    /// Robust z-score in the alerting direction (see the `anomaly` module doc). Not money.
    pub score: f64,
    /// How the baseline was computed, for the reader of the alert.
    pub method: String,
    /// Up to 3 contributors of the hour by cost, descending, ties by key.
    pub top_contributors: Vec<(String, Decimal)>,
}

/// Up to [`TOP_CONTRIBUTORS`] keys by cost, descending, ties by key; repeated keys summed.
pub(super) fn top_contributors(contributors: &[(String, Decimal)]) -> Vec<(String, Decimal)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic_traffic::{dec, team_key};

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
