//! The chargeback statement: what it is made of (lines per group and model, totals per
//! currency) and how its cents are allocated ([`assemble`]). Pure: computed by
//! `chargeback.rs`, rendered by `render.rs` and `focus.rs`, stored by a close.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::cents;
use crate::period::Month;

/// What chargeback lines are grouped by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    CostCenter,
    Team,
    Project,
}

impl GroupBy {
    pub const ALL: [GroupBy; 3] = [GroupBy::CostCenter, GroupBy::Team, GroupBy::Project];

    /// The ledger column (also the name used in URLs and files).
    pub fn column(&self) -> &'static str {
        match self {
            GroupBy::CostCenter => "cost_center",
            GroupBy::Team => "team",
            GroupBy::Project => "project",
        }
    }

    pub fn parse(s: &str) -> Result<GroupBy, String> {
        GroupBy::ALL
            .into_iter()
            .find(|g| g.column() == s)
            .ok_or_else(|| format!("by: {s:?} is not one of cost_center, team, project"))
    }
}

/// FOCUS ChargeCategory of a line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Category {
    Usage,
    Adjustment,
}

/// One line: a group's use of one model in one currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    pub category: Category,
    /// Month the usage occurred in (`YYYY-MM`): the report's month for usage, an earlier
    /// (closed) month for adjustments.
    pub charge_period: String,
    pub org: String,
    /// Cost center / team / project; null for usage no rule attributed to one.
    pub group: Option<String>,
    pub provider: String,
    pub model: String,
    pub currency: String,
    pub events: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// Exact cost at list prices (sum of the events' costs, full precision).
    #[schema(value_type = String)]
    pub list_cost: Decimal,
    /// What is charged: cents, allocated so that the lines of a billing account × category ×
    /// currency sum to that block's exact cost rounded to cents, whatever the grouping.
    #[schema(value_type = String)]
    pub billed_cost: Decimal,
}

impl Line {
    /// The line's counts as CSV cells, in the exports' column order: events, then input,
    /// cache read, cache write, output and reasoning tokens.
    pub fn count_cells(&self) -> [String; 6] {
        [
            self.events,
            self.input_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.output_tokens,
            self.reasoning_tokens,
        ]
        .map(|n| n.to_string())
    }
}

/// Per currency: the exact and the billed total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Total {
    pub currency: String,
    #[schema(value_type = String)]
    pub list_cost: Decimal,
    /// The sum of the lines' `billed_cost`: per billing account (`org`) × category, the exact
    /// cost rounded half away from zero to cents (see [`assemble`]).
    #[schema(value_type = String)]
    pub billed_cost: Decimal,
    #[schema(value_type = String)]
    pub adjustments_billed_cost: Decimal,
    pub lines: usize,
}

/// A month's chargeback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Chargeback {
    /// `YYYY-MM`.
    pub period: String,
    pub by: GroupBy,
    /// `open` (computed now; may still change) or `closed` (a snapshot; never changes).
    pub status: String,
    pub closed_at: Option<String>,
    pub closed_by: Option<String>,
    pub totals: Vec<Total>,
    pub lines: Vec<Line>,
}

/// Orders the lines, allocates cents and totals them. Pure.
///
/// Cents are allocated per billing account (`org`) × category × currency, the block an
/// internal invoice is made of: the block's exact total is rounded half away from zero to
/// cents, then spread over its lines by largest remainder ([`cents::allocate`]). A block holds
/// the same rows whatever the grouping, so what each account owes per category and currency
/// does not move with `by=`; only how it splits into lines does. A currency's billed total is
/// the sum of its blocks' totals (which may differ from its exact total rounded once by a cent
/// per block).
pub fn assemble(period: Month, by: GroupBy, mut lines: Vec<Line>) -> Chargeback {
    lines.sort_by(|a, b| {
        (
            &a.currency,
            a.category,
            &a.charge_period,
            &a.org,
            &a.group,
            &a.provider,
            &a.model,
        )
            .cmp(&(
                &b.currency,
                b.category,
                &b.charge_period,
                &b.org,
                &b.group,
                &b.provider,
                &b.model,
            ))
    });
    let mut blocks: BTreeMap<(&str, &str, Category), Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        blocks
            .entry((&l.currency, &l.org, l.category))
            .or_default()
            .push(i);
    }
    let mut billed = vec![Decimal::ZERO; lines.len()];
    for idx in blocks.values() {
        let exact: Vec<Decimal> = idx.iter().map(|&i| lines[i].list_cost).collect();
        for (&i, c) in idx.iter().zip(cents::allocate(&exact)) {
            billed[i] = c;
        }
    }
    for (l, c) in lines.iter_mut().zip(billed) {
        l.billed_cost = c;
    }
    let mut by_currency: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        by_currency.entry(l.currency.clone()).or_default().push(i);
    }
    let cents_sum = |it: &mut dyn Iterator<Item = &Line>| {
        let mut d: Decimal = it.map(|l| l.billed_cost).sum();
        d.rescale(cents::BILLED_SCALE);
        d
    };
    let totals = by_currency
        .into_iter()
        .map(|(currency, idx)| {
            let list_cost: Decimal = idx.iter().map(|&i| lines[i].list_cost).sum();
            Total {
                currency,
                list_cost: list_cost.normalize(),
                billed_cost: cents_sum(&mut idx.iter().map(|&i| &lines[i])),
                adjustments_billed_cost: cents_sum(
                    &mut idx
                        .iter()
                        .map(|&i| &lines[i])
                        .filter(|l| l.category == Category::Adjustment),
                ),
                lines: idx.len(),
            }
        })
        .collect();
    Chargeback {
        period: period.to_string(),
        by,
        status: "open".into(),
        closed_at: None,
        closed_by: None,
        totals,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn line(cat: Category, group: &str, model: &str, cur: &str, cost: &str) -> Line {
        Line {
            category: cat,
            charge_period: "2026-10".into(),
            org: "acme".into(),
            group: Some(group.into()),
            provider: "openai".into(),
            model: model.into(),
            currency: cur.into(),
            events: 1,
            input_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            list_cost: Decimal::from_str(cost).unwrap(),
            billed_cost: Decimal::ZERO,
        }
    }

    #[test]
    fn totals_per_currency_and_lines_sum_to_them() {
        let m: Month = "2026-11".parse().unwrap();
        let c = assemble(
            m,
            GroupBy::Team,
            vec![
                line(Category::Usage, "b", "gpt-4o", "USD", "0.335"),
                line(Category::Adjustment, "a", "gpt-4o", "USD", "0.335"),
                line(Category::Usage, "a", "gpt-4o", "USD", "0.335"),
                line(Category::Usage, "a", "claude", "EUR", "10.004"),
            ],
        );
        // EUR before USD; within USD usage before adjustment, then by group
        let order: Vec<(&str, Category, &str)> = c
            .lines
            .iter()
            .map(|l| (l.currency.as_str(), l.category, l.group.as_deref().unwrap()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("EUR", Category::Usage, "a"),
                ("USD", Category::Usage, "a"),
                ("USD", Category::Usage, "b"),
                ("USD", Category::Adjustment, "a"),
            ]
        );
        for t in &c.totals {
            let sum: Decimal = c
                .lines
                .iter()
                .filter(|l| l.currency == t.currency)
                .map(|l| l.billed_cost)
                .sum();
            assert_eq!(sum, t.billed_cost, "{}", t.currency);
        }
        let usd = c.totals.iter().find(|t| t.currency == "USD").unwrap();
        assert_eq!(usd.list_cost, Decimal::from_str("1.005").unwrap());
        // usage 0.67 (exactly) + the adjustment's 0.335 rounded on its own to 0.34
        assert_eq!(usd.billed_cost, Decimal::from_str("1.01").unwrap());
        assert_eq!(
            usd.adjustments_billed_cost,
            Decimal::from_str("0.34").unwrap()
        );
        let billed: Vec<String> = c.lines.iter().map(|l| l.billed_cost.to_string()).collect();
        // ties within the usage block go to the earlier line (a)
        assert_eq!(billed, ["10.00", "0.34", "0.33", "0.34"]);
    }

    mod grouping {
        //! The cents of every billing account × category × currency do not depend on the
        //! grouping (property test over random ledgers, all three groupings).
        use super::*;
        use proptest::prelude::*;

        /// One ledger row, as its tenant and cost.
        #[derive(Debug, Clone)]
        struct Row {
            org: &'static str,
            cost_center: Option<&'static str>,
            team: Option<&'static str>,
            project: Option<&'static str>,
            provider: &'static str,
            model: &'static str,
            currency: &'static str,
            category: Category,
            charge_period: &'static str,
            /// Cost in units of 10^-18 (the ledger's scale).
            atto: i64,
        }

        fn row() -> impl Strategy<Value = Row> {
            (
                (
                    prop::sample::select(vec!["acme", "globex", "unattributed"]),
                    prop::option::of(prop::sample::select(vec!["cc-1", "cc-2", "cc-3"])),
                    prop::option::of(prop::sample::select(vec!["search", "ads", "risk", "ml"])),
                    prop::option::of(prop::sample::select(vec!["web", "api", "batch"])),
                ),
                (
                    prop::sample::select(vec![
                        ("openai", "gpt-4o"),
                        ("openai", "gpt-4o-mini"),
                        ("anthropic", "claude"),
                    ]),
                    prop::sample::select(vec!["USD", "EUR"]),
                    prop::sample::select(vec![
                        (Category::Usage, "2026-11"),
                        (Category::Adjustment, "2026-10"),
                        (Category::Adjustment, "2026-09"),
                    ]),
                    // up to 0.05: a few cents, with 18-decimal fractions
                    0i64..50_000_000_000_000_000,
                ),
            )
                .prop_map(
                    |(
                        (org, cost_center, team, project),
                        ((provider, model), currency, (category, charge_period), atto),
                    )| Row {
                        org,
                        cost_center,
                        team,
                        project,
                        provider,
                        model,
                        currency,
                        category,
                        charge_period,
                        atto,
                    },
                )
        }

        /// The chargeback's lines for `by`, summed from the rows as the ledger query does.
        fn lines(rows: &[Row], by: GroupBy) -> Vec<Line> {
            let mut sums: BTreeMap<_, (i64, Decimal)> = BTreeMap::new();
            for r in rows {
                let g = match by {
                    GroupBy::CostCenter => r.cost_center,
                    GroupBy::Team => r.team,
                    GroupBy::Project => r.project,
                };
                let e = sums
                    .entry((
                        r.category,
                        r.charge_period,
                        r.org,
                        g,
                        r.provider,
                        r.model,
                        r.currency,
                    ))
                    .or_default();
                e.0 += 1;
                e.1 += Decimal::new(r.atto, 18);
            }
            sums.into_iter()
                .map(
                    |((category, cp, org, g, provider, model, currency), (events, cost))| Line {
                        category,
                        charge_period: cp.into(),
                        org: org.into(),
                        group: g.map(str::to_string),
                        provider: provider.into(),
                        model: model.into(),
                        currency: currency.into(),
                        events,
                        input_tokens: 0,
                        cache_read_tokens: 0,
                        cache_write_tokens: 0,
                        output_tokens: 0,
                        reasoning_tokens: 0,
                        list_cost: cost.normalize(),
                        billed_cost: Decimal::ZERO,
                    },
                )
                .collect()
        }

        type Block = (String, String, Category);

        fn blocks(c: &Chargeback) -> BTreeMap<Block, (Decimal, Decimal)> {
            let mut out: BTreeMap<Block, (Decimal, Decimal)> = BTreeMap::new();
            for l in &c.lines {
                let e = out
                    .entry((l.org.clone(), l.currency.clone(), l.category))
                    .or_default();
                e.0 += l.billed_cost;
                e.1 += l.list_cost;
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn billed_per_account_category_currency_is_the_same_for_every_grouping(
                rows in prop::collection::vec(row(), 1..80)
            ) {
                let m: Month = "2026-11".parse().unwrap();
                let all: Vec<Chargeback> = GroupBy::ALL
                    .into_iter()
                    .map(|by| assemble(m, by, lines(&rows, by)))
                    .collect();
                let first = blocks(&all[0]);
                for c in &all {
                    let b = blocks(c);
                    prop_assert_eq!(&b, &first, "by {:?}", c.by);
                    for ((org, cur, cat), (billed, exact)) in &b {
                        // the block's exact total rounded half away from zero
                        prop_assert_eq!(*billed, cents::round_total(*exact), "{} {} {:?}", org, cur, cat);
                    }
                    for l in &c.lines {
                        prop_assert!((l.billed_cost - l.list_cost).abs() < Decimal::new(1, 2));
                        prop_assert_eq!(l.billed_cost.scale(), 2);
                    }
                    for t in &c.totals {
                        let lines: Decimal = c.lines.iter().filter(|l| l.currency == t.currency).map(|l| l.billed_cost).sum();
                        prop_assert_eq!(lines, t.billed_cost);
                        let adj: Decimal = c.lines.iter().filter(|l| l.currency == t.currency && l.category == Category::Adjustment).map(|l| l.billed_cost).sum();
                        prop_assert_eq!(adj, t.adjustments_billed_cost);
                    }
                    // the currency totals too are the same for every grouping
                    prop_assert_eq!(&c.totals.iter().map(|t| (&t.currency, t.billed_cost, t.adjustments_billed_cost, t.list_cost)).collect::<Vec<_>>(),
                        &all[0].totals.iter().map(|t| (&t.currency, t.billed_cost, t.adjustments_billed_cost, t.list_cost)).collect::<Vec<_>>());
                }
            }
        }
    }
}
