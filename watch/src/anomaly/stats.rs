//! The robust statistics the baselines rest on: median, median absolute deviation (MAD) and
//! the robust z-score.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// Turns a MAD into a standard-deviation estimate (exact for normally distributed data).
const MAD_TO_SIGMA: Decimal = Decimal::from_parts(14826, 0, 0, false, 4);

/// Median of the values; `None` when empty. Even counts average the two middle values.
pub(super) fn median(values: &[Decimal]) -> Option<Decimal> {
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
pub(super) fn median_and_mad(values: &[Decimal]) -> Option<(Decimal, Decimal)> {
    let center = median(values)?;
    let deviations: Vec<Decimal> = values
        .iter()
        .map(|v| v.saturating_sub(center).abs())
        .collect();
    Some((center, median(&deviations)?))
}

/// Robust z-score `excess / max(1.4826·MAD, floor_fraction·center, floor_abs)`.
pub(super) fn robust_z(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic_traffic::{dec, decs};

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
}
