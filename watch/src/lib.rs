//! `meterline watch`: budgets against spend, spend anomalies and alert delivery, beside the
//! ledger (`meterline aggregate` writes it; this stage reads it and the priced stream).
//!
//! - `budget`: budgets, periods in force, running spend and threshold crossings (pure);
//! - `spend`: the tracker — rebuilds running spend from the ledger, follows the priced
//!   stream, publishes signals and anomalies;
//! - `anomaly`: the detectors (pure; its `mod.rs` says which file holds what);
//!   `anomaly_watch`: hourly series and the anomalies table;
//! - `alerts`: webhook delivery of signals and anomalies; `config`: `[watch]`;
//! - `term`: one term as the active instance (the lease, below); `fence`: its writes,
//!   fenced by the broker;
//! - `derive`: the same state derived offline from a ledger (`meterline rebuild`).
//!
//! Any number of instances may run with the same `[watch]`: they join the lease group
//! (`meterline_runtime::lease`), the one holding it is active and runs the tracker and alert
//! delivery, the others wait as standbys; `/healthz` says `ok: active` or `ok: standby`, and
//! `meterline_watch_active` is 1 on the active one.
//!
//! The modules are private. Public: [`App`] and its [`Error`], [`WatchConfig`] (with
//! [`AlertsConfig`] and [`LeaseConfig`]), and [`derive()`] with what it returns ([`Derived`],
//! [`BudgetState`]).

mod alerts;
mod anomaly;
mod anomaly_watch;
mod budget;
mod config;
mod derive;
mod fence;
mod spend;
mod term;

use std::net::SocketAddr;
use std::path::PathBuf;

use meterline_ledger::LedgerConfig;
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_runtime::lease::Lease;
use meterline_runtime::telemetry::{Readiness, StageHost};
use meterline_schemas::metric_names as m;
use meterline_schemas::topics;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{AlertsConfig, LeaseConfig, WatchConfig};
pub use derive::{derive, BudgetState, Derived};

/// Errors of the watch stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics server could not listen on `[watch] listen` (the address in use, by an
    /// instance still stopping for one).
    #[error("metrics server: {0}")]
    Metrics(#[source] std::io::Error),
    /// The supervisor's blocking task panicked or was cancelled (a bug).
    #[error("watch supervisor task: {0}")]
    Supervisor(#[source] tokio::task::JoinError),
    /// A blocking Kafka call's task panicked or was cancelled (a bug).
    #[error("blocking kafka call: {0}")]
    Blocking(#[source] tokio::task::JoinError),
    /// Another instance took this one's transactional id over: it holds the lease now (this
    /// one stalled past its session, or was cut off). Not an outage: the stage goes back to
    /// standby with a new membership of the lease group.
    #[error("fenced: another instance took {transactional_id} over (it is active now): {source}")]
    Fenced {
        transactional_id: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A transaction of the active instance failed (aborted): what it published is not on
    /// the topics, and the work starts over from them.
    #[error("{what}: {source}")]
    Publish {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A ledger file could not be opened (permissions, a failing disk): worth retrying.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A ledger file that cannot be read (not Parquet, a column missing or of another type,
    /// an amount out of range): stop rather than guess.
    #[error("ledger file {path}: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An amount outside the money type, or a signal or anomaly Avro cannot encode
    /// (`meterline-schemas`): the same input fails the same way again.
    #[error(transparent)]
    Schemas(#[from] meterline_schemas::Error),
    /// The webhook HTTP client could not be built (its TLS backend).
    #[error("webhook client: {0}")]
    WebhookClient(#[source] reqwest::Error),
    /// The limit of deliveries in flight was closed (it is not, while delivery runs: a bug).
    #[error("alert delivery in-flight limit: {0}")]
    InFlight(#[source] tokio::sync::AcquireError),
    #[error("{0}")]
    Fatal(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker did not answer in time, or not what a healthy group answers: retried.
    #[error("{0}")]
    Broker(String),
    /// Topic provisioning, Kafka settings or the topic follower (`meterline-runtime`).
    #[error(transparent)]
    Runtime(#[from] meterline_runtime::Error),
    /// Budget definitions and their periods (`meterline-reference`).
    #[error(transparent)]
    Reference(#[from] meterline_reference::Error),
    /// The ledger's files (`meterline-ledger`).
    #[error(transparent)]
    Ledger(#[from] meterline_ledger::Error),
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    pub fn kafka(e: rdkafka::error::KafkaError) -> Error {
        Error::Kafka(e)
    }

    /// Whether waiting and trying again can help: broker faults, a failing disk, a metrics
    /// address still held. A corrupt ledger file, an amount or record the schemas refuse,
    /// configuration, fatal Kafka errors and bugs cannot be waited out.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) | Error::Publish { source: e, .. } => {
                meterline_runtime::kafka::retryable(e)
            }
            // back to standby, with a new membership of the lease group
            Error::Fenced { .. } => true,
            Error::Runtime(e) => e.is_retryable(),
            Error::Reference(e) => e.is_retryable(),
            Error::Ledger(e) => e.is_retryable(),
            Error::Broker(_) | Error::Io { .. } | Error::Metrics(_) => true,
            Error::Corrupt { .. }
            | Error::Schemas(_)
            | Error::WebhookClient(_)
            | Error::InFlight(_)
            | Error::Supervisor(_)
            | Error::Blocking(_)
            | Error::Fatal(_)
            | Error::Config(_) => false,
        }
    }

    /// Ends the budget tracker rather than being retried inside it: the same files and
    /// records fail the same way again, and after a failed publication the tracker's book is
    /// ahead of the topic (it must be read again).
    fn ends_tracking(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Schemas(_)
                | Error::Fenced { .. }
                | Error::Publish { .. }
        )
    }
}

/// The watch stage: configuration checked, metrics served; `run_until_stopped` runs the
/// budget tracker (with anomaly detection) and alert delivery under a supervisor.
pub struct App {
    cfg: WatchConfig,
    ledger: LedgerConfig,
    kafka: KafkaConfig,
    host: StageHost,
}

impl App {
    pub async fn build(
        kafka: &KafkaConfig,
        cfg: WatchConfig,
        ledger: LedgerConfig,
    ) -> Result<App, Error> {
        cfg.validate()?;
        ledger.validate()?;
        kafka.validate()?;
        let host = StageHost::start(&cfg.listen)
            .await
            .map_err(Error::Metrics)?;
        metrics::gauge!(m::WATCH_ACTIVE).set(0.0);
        // Anomalies per kind counted from zero: on `/metrics` (and in `rate()`) before the first.
        for kind in anomaly::FindingKind::ALL {
            metrics::counter!(meterline_schemas::metric_names::AGGREGATE_ANOMALIES,
                meterline_schemas::metric_names::LABEL_KIND => kind.as_str())
            .increment(0);
        }
        Ok(App {
            cfg,
            ledger,
            kafka: kafka.clone(),
            host,
        })
    }

    /// Address of the metrics server.
    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// Cancel to stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.host.stop_token()
    }

    /// Waits for the lease, then runs the tracker and alert delivery while it is held, until
    /// `stop`. A retryable error in either (broker faults, an unreadable disk, being fenced)
    /// restarts the attempt after a backoff, with a new membership of the lease group; each
    /// part resumes where its durable state ends (the tracker from the ledger and the signals
    /// topic, delivery at its group's committed offsets); `/healthz` says why meanwhile.
    /// Other errors end it.
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let App {
            cfg,
            ledger,
            kafka,
            host,
        } = self;
        let runtime = tokio::runtime::Handle::current();
        host.run_supervised(
            "watch",
            meterline_schemas::metric_names::WATCH_STAGE_RESTARTS,
            Error::is_retryable,
            move |ready, attempt| run_once(&runtime, &kafka, &cfg, &ledger, ready, attempt),
        )
        .await
        .map_err(Error::Supervisor)?
    }
}

/// One attempt: topics, the lease group, then terms as the active instance for as long as
/// this membership lasts. Losing the lease ends the term's work (its token is cancelled),
/// and the instance waits as a standby again; an error ends the attempt (and the membership:
/// a standby takes over meanwhile).
fn run_once(
    runtime: &tokio::runtime::Handle,
    kafka: &KafkaConfig,
    cfg: &WatchConfig,
    ledger: &LedgerConfig,
    ready: &Readiness,
    stop: CancellationToken,
) -> Result<(), Error> {
    if kafka.create_topics {
        runtime.block_on(ensure_topics(kafka, &topics::all(kafka.usage_partitions)))?;
    }
    if !cfg.budgets && !cfg.alerts.enabled {
        // nothing to do in this instance: no lease either
        ready.ready();
        runtime.block_on(stop.cancelled());
        return Ok(());
    }
    let lease = Lease::join(
        kafka,
        "watch-lease",
        topics::WATCH_LEASE,
        &cfg.lease.lease_group(),
        cfg.lease.session_timeout(),
    )?;
    loop {
        ready.set_role("standby");
        ready.ready();
        let Some(term) = lease.acquire(&stop)? else {
            return Ok(()); // stopped
        };
        info!(group = %cfg.lease.lease_group(), "active: this instance holds the lease");
        ready.set_role("active");
        metrics::gauge!(m::WATCH_ACTIVE).set(1.0);
        let result = term::run(runtime, kafka, cfg, ledger, ready, term.clone());
        metrics::gauge!(m::WATCH_ACTIVE).set(0.0);
        ready.set_role("standby");
        if stop.is_cancelled() {
            return result;
        }
        match result {
            // the lease was lost: the work has ended, wait for it again
            Ok(()) if term.is_cancelled() => {
                info!("standby: the lease was lost and the work stopped");
            }
            // woken from a stall: the lease was lost and a write was refused meanwhile
            Err(e @ Error::Fenced { .. }) if !lease.held() => {
                info!(error = %e, "standby: the lease was lost and the work stopped");
            }
            Ok(()) => return Ok(()), // a part ended on its own: the supervisor restarts
            // Fenced while still believing to hold the lease: this membership is stale, a
            // new one (the supervisor's next attempt) finds out who holds it
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn an_unreadable_ledger_file_is_retried_a_broken_one_is_not() {
        use meterline_ledger::{Ledger, LedgerConfig, TableFile};
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
        let since = chrono::Utc::now();
        let file = |name: &str| TableFile {
            path: format!("date=2026-03-01/{name}"),
            date: "2026-03-01".into(),
            spans: vec![meterline_ledger::OffsetSpan {
                partition: 0,
                first: 0,
                last: 9,
            }],
            rows: 1,
            bytes: 11,
            modified_ms: 0,
        };
        let e = crate::spend::read_spend_rows(
            &ledger.snapshot().unwrap(),
            &file("part-0-0-9-a.parquet"),
            since,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Ledger(_)), "{e:?}");
        assert!(
            e.is_retryable(),
            "a file the store does not give now may be given later"
        );
        assert!(e.source().is_some());

        std::fs::create_dir_all(dir.path().join("usage/date=2026-03-01")).unwrap();
        std::fs::write(
            dir.path()
                .join("usage/date=2026-03-01/part-0-10-19-b.parquet"),
            b"not parquet",
        )
        .unwrap();
        let e = crate::spend::read_spend_rows(
            &ledger.snapshot().unwrap(),
            &file("part-0-10-19-b.parquet"),
            since,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("part-0-10-19-b.parquet"), "{e}");
        assert!(e.source().is_some());

        let money = Error::from(meterline_schemas::Money::from_unscaled(i128::MAX).unwrap_err());
        assert!(!money.is_retryable());
    }
}
