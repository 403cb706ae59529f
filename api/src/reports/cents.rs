//! Rounding a report's exact amounts to cents so that the lines sum exactly to the rounded
//! total (largest-remainder allocation). Pure; the chargeback calls it once per billing account ×
//! category × currency (`chargeback::assemble`).

use rust_decimal::{Decimal, RoundingStrategy};

/// Digits a billed amount keeps (cents).
pub const BILLED_SCALE: u32 = 2;

/// The total, rounded half away from zero to cents: what the invoice says.
pub fn round_total(exact: Decimal) -> Decimal {
    cents(exact.round_dp_with_strategy(BILLED_SCALE, RoundingStrategy::MidpointAwayFromZero))
}

/// Always two decimals (`0.50`, not `0.5`): invoices print cents.
fn cents(mut d: Decimal) -> Decimal {
    d.rescale(BILLED_SCALE);
    d
}

/// Cent amounts for `exact` lines, summing exactly to `round_total(sum(exact))`.
///
/// 1. every line is floored to cents;
/// 2. the cents still missing to the rounded total (between 0 and the number of lines) go one
///    each to the lines that lost the most in step 1; ties go to the earlier line, so the
///    answer depends only on the lines' order, which the reports fix by sorting.
pub fn allocate(exact: &[Decimal]) -> Vec<Decimal> {
    let total = round_total(exact.iter().copied().sum());
    let mut out: Vec<Decimal> = exact
        .iter()
        .map(|v| v.round_dp_with_strategy(BILLED_SCALE, RoundingStrategy::ToNegativeInfinity))
        .collect();
    let cent = Decimal::new(1, BILLED_SCALE);
    let missing = total - out.iter().copied().sum::<Decimal>();
    let mut n = (missing / cent).trunc();
    debug_assert!(n >= Decimal::ZERO && n <= Decimal::from(exact.len()));
    let mut order: Vec<usize> = (0..exact.len()).collect();
    // stable: equal remainders keep line order
    order.sort_by(|&a, &b| (exact[b] - out[b]).cmp(&(exact[a] - out[a])));
    for i in order {
        if n <= Decimal::ZERO {
            break;
        }
        out[i] += cent;
        n -= Decimal::ONE;
    }
    out.into_iter().map(cents).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ds(v: &[&str]) -> Vec<Decimal> {
        v.iter().map(|s| d(s)).collect()
    }

    #[test]
    fn lines_sum_to_the_rounded_total() {
        // three thirds of a dollar: 0.333… each, total 1.00
        let lines = ds(&[
            "0.333333333333333333",
            "0.333333333333333333",
            "0.333333333333333334",
        ]);
        let got = allocate(&lines);
        assert_eq!(got.iter().copied().sum::<Decimal>(), d("1.00"));
        // the largest remainder is the last line's
        assert_eq!(got, ds(&["0.33", "0.33", "0.34"]));
    }

    #[test]
    fn ties_go_to_the_earlier_line() {
        let got = allocate(&ds(&["0.005", "0.005"]));
        // total 0.01 (half away from zero); floors are 0.00, 0.00; one cent missing
        assert_eq!(got, ds(&["0.01", "0.00"]));
    }

    #[test]
    fn exact_cents_are_unchanged_and_empty_is_empty() {
        assert_eq!(allocate(&ds(&["1.25", "2.50"])), ds(&["1.25", "2.50"]));
        assert!(allocate(&[]).is_empty());
    }

    #[test]
    fn many_tiny_lines_do_not_vanish_from_the_total() {
        // 1000 lines of 0.0004: each floors to 0, the total is 0.40
        let lines = vec![d("0.0004"); 1000];
        let got = allocate(&lines);
        assert_eq!(got.iter().copied().sum::<Decimal>(), d("0.40"));
        assert_eq!(got.iter().filter(|c| **c == d("0.01")).count(), 40);
    }

    #[test]
    fn every_line_is_within_one_cent_of_its_exact_amount() {
        let lines = ds(&["12.3456", "0.0049", "7.9999", "100.005", "0.5"]);
        let got = allocate(&lines);
        assert_eq!(
            got.iter().copied().sum::<Decimal>(),
            round_total(lines.iter().copied().sum())
        );
        for (e, c) in lines.iter().zip(&got) {
            assert!((*e - *c).abs() < d("0.01"), "{e} → {c}");
            assert_eq!(c.scale(), 2);
        }
    }

    #[test]
    fn negative_amounts_round_consistently() {
        let lines = ds(&["-0.333", "-0.333", "-0.334"]);
        let got = allocate(&lines);
        assert_eq!(got.iter().copied().sum::<Decimal>(), d("-1.00"));
    }
}
