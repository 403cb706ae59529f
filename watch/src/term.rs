//! One term as the active instance: from the lease acquired to the lease lost (or the stage
//! stopped, or a part failed). The term's first act for each part is to take its
//! transactional id over (`fence.rs`), which fences the previous holder — a crashed one, or
//! one stalled past its session that does not know yet — before anything is read: the
//! tracker then restores what was signalled from the topics, and delivery resumes at the
//! committed offsets, both final by then.

use std::sync::Arc;

use meterline_runtime::kafka::KafkaConfig;
use meterline_runtime::telemetry::Readiness;
use tokio_util::sync::CancellationToken;

use crate::config::WatchConfig;
use crate::fence::FencedProducer;
use crate::{alerts, spend, Error};

/// Runs the tracker and alert delivery until `term` is cancelled or one of them ends (which
/// cancels `term`, ending the other). Returns once both have stopped.
pub fn run(
    runtime: &tokio::runtime::Handle,
    kafka: &KafkaConfig,
    cfg: &WatchConfig,
    ledger: &meterline_ledger::LedgerConfig,
    ready: &Readiness,
    term: CancellationToken,
) -> Result<(), Error> {
    let tracker = if cfg.budgets {
        ready.not_ready("taking over: reading the signals and rebuilding spend");
        let producer = FencedProducer::take_over(
            kafka,
            "watch-signals",
            cfg.lease.signals_transactional_id(),
        )?;
        let anomalies = Arc::new(meterline_ledger::AnomalyTable::open(ledger, &cfg.data_dir)?);
        let ledger = Arc::new(meterline_ledger::Ledger::open(ledger, &cfg.data_dir)?);
        Some(spend::SpendTracker::new(
            kafka,
            ledger,
            anomalies,
            producer,
            term.clone(),
        )?)
    } else {
        None
    };
    ready.ready();
    let tracker = tracker.map(|t| {
        let term = term.clone();
        std::thread::spawn(move || {
            let r = t.run();
            log_end(&r, "budget tracker stopped");
            term.cancel();
            r
        })
    });
    let alerts = cfg.alerts.enabled.then(|| {
        let (kafka, alerts, term) = (kafka.clone(), cfg.alerts.clone(), term.clone());
        let id = cfg.lease.alerts_transactional_id();
        runtime.spawn(async move {
            let r = alerts::run(kafka, alerts, id, term.clone()).await;
            log_end(&r, "alert delivery stopped");
            term.cancel();
            r
        })
    });
    let tracked = match tracker {
        Some(t) => t
            .join()
            .map_err(|_| Error::Fatal("budget tracker panicked".into()))?,
        None => Ok(()),
    };
    let delivered = match alerts {
        Some(a) => runtime
            .block_on(a)
            .map_err(|_| Error::Fatal("alert delivery panicked".into()))?,
        None => Ok(()),
    };
    tracked.and(delivered)
}

/// How a part's end is logged: being fenced is a takeover by another instance, not a fault.
fn log_end(r: &Result<(), Error>, what: &str) {
    match r {
        Ok(()) => {}
        Err(e @ Error::Fenced { .. }) => tracing::warn!(error = %e, "{what}"),
        Err(e) => tracing::error!(error = %e, "{what}"),
    }
}
