//! The state `meterline watch` derives from a ledger when it starts, computed offline and
//! without publishing anything: the running spend of every budget's current period, the
//! threshold crossings that spend reaches beyond the signals already published (what watch
//! would publish on its first rebuild over this ledger), and the anomalies table of the
//! detector's history window (the anomalies table, written as watch writes it).
//! `meterline rebuild` runs it over the ledger it rebuilt. The same pieces as the tracker's
//! rebuild (`spend.rs`): `BudgetBook`, `AnomalyWatch`, `read_spend_rows`, a snapshot of the table.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use meterline_ledger::{AnomalyTable, Ledger};
use meterline_reference::budgets::period_at;
use meterline_schemas::{BudgetChange, BudgetSignal, Money};

use crate::anomaly::DetectorConfig;
use crate::anomaly_watch::AnomalyWatch;
use crate::budget::BudgetBook;
use crate::spend::{files_since, read_spend_rows};
use crate::Error;

/// One live budget in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    pub budget_id: String,
    pub currency: String,
    pub limit: Money,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Spend of the ledger's rows in the period.
    pub spend: Money,
    /// Crossings (of this period or of another still open) not on the signals topic yet.
    pub unsignalled_crossings: usize,
}

/// What was derived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// Ledger rows read (those of open budget periods and of the detector's history window).
    pub rows_read: usize,
    /// Live budgets with a current period, by id.
    pub budgets: Vec<BudgetState>,
    /// Findings written to the anomalies table, and the hours they are in.
    pub anomalies: usize,
    pub anomaly_hours: usize,
}

/// Derives watch's state at `now` from `ledger` (a snapshot of it), given the budgets and the
/// signals already published; writes the findings of every hour evaluated to `anomalies`.
pub fn derive(
    ledger: &Ledger,
    anomalies: Arc<AnomalyTable>,
    budgets: impl IntoIterator<Item = BudgetChange>,
    signals: &[BudgetSignal],
    now: DateTime<Utc>,
) -> Result<Derived, Error> {
    let mut book = BudgetBook::default();
    for b in budgets {
        book.apply(b);
    }
    for s in signals {
        book.restore(s);
    }
    // every finding is returned (none is "already published", none "history"), nothing is sent
    let mut watch = AnomalyWatch::new(
        DetectorConfig::default(),
        anomalies,
        HashSet::new(),
        DateTime::<Utc>::MIN_UTC,
    )?;
    let budget_since = book.open_since(now)?;
    let history_since = watch.history_since(now);
    let since = budget_since.map_or(history_since, |b| b.min(history_since));
    let snapshot = ledger.snapshot()?;
    let mut out = Derived::default();
    let mut crossings: BTreeMap<String, usize> = BTreeMap::new();
    for f in files_since(&snapshot.files, since) {
        for row in read_spend_rows(&snapshot, f, since)? {
            out.rows_read += 1;
            watch.add(&row);
            if budget_since.is_some_and(|b| row.occurred_at >= b) {
                for s in book.add(&row, now)? {
                    *crossings.entry(s.budget_id).or_default() += 1;
                }
            }
        }
    }
    let found = watch.close_due(now)?;
    out.anomalies = found.len();
    out.anomaly_hours = found
        .iter()
        .map(|a| a.window_start)
        .collect::<BTreeSet<_>>()
        .len();
    for b in book.budgets() {
        let Some((start, end)) = period_at(b, now)? else {
            continue;
        };
        out.budgets.push(BudgetState {
            budget_id: b.budget_id.clone(),
            currency: b.currency.clone(),
            limit: b.limit,
            period_start: start,
            period_end: end,
            spend: book.spend(&b.budget_id, start),
            unsignalled_crossings: crossings.get(&b.budget_id).copied().unwrap_or(0),
        });
    }
    out.budgets.sort_by(|a, b| a.budget_id.cmp(&b.budget_id));
    Ok(out)
}
