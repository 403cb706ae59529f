//! One Prometheus recorder per process (stages run in-process together in `meterline dev` and
//! in tests, so it is installed once and shared).

use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub fn prometheus() -> PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        // Real histogram buckets (not client-side summaries), so dashboards can aggregate
        // quantiles across instances: 0.5 ms … 30 s.
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        // Budget lag has a target (p99 ≤ 2 s): fine buckets around it.
        let lag_buckets = [
            0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 1.75, 2.0,
            2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
        ];
        // Sizes (records per transaction, rows per flush) are counts, not seconds.
        let count_buckets = [
            1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
        ];
        let mut builder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("non-empty buckets");
        for name in [
            meterline_schemas::metric_names::ENRICH_TXN_RECORDS,
            meterline_schemas::metric_names::AGGREGATE_FLUSH_ROWS,
        ] {
            builder = builder
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(name.into()),
                    &count_buckets,
                )
                .expect("non-empty buckets");
        }
        let recorder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    meterline_schemas::metric_names::AGGREGATE_BUDGET_LAG_SECONDS.into(),
                ),
                &lag_buckets,
            )
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by an embedding program; then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
    .clone()
}

/// Whether a stage is doing its work, for `/healthz`: not ready while it starts, and while it
/// waits out a broker fault (with the reason). A stage that runs as several instances with
/// one active (`meterline watch`) also says which this one is.
#[derive(Clone, Default)]
pub struct Readiness(std::sync::Arc<std::sync::Mutex<Health>>);

#[derive(Default)]
struct Health {
    /// `None` when ready, else why not.
    not_ready: Option<String>,
    /// `active` / `standby`, for stages with a lease.
    role: Option<&'static str>,
}

impl Readiness {
    /// Starting: not ready until `ready()`.
    pub fn starting() -> Readiness {
        let r = Readiness::default();
        r.not_ready("starting");
        r
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn ready(&self) {
        self.lock().not_ready = None;
    }
    pub fn not_ready(&self, why: impl Into<String>) {
        self.lock().not_ready = Some(why.into());
    }
    /// `None` when ready, else why not.
    pub fn reason(&self) -> Option<String> {
        self.lock().not_ready.clone()
    }
    /// This instance's role (`active`, `standby`): on `/healthz` after `ok`. A standby is
    /// healthy: it is ready to take over (an orchestrator must not restart it, nor hold a
    /// rollout back waiting for it).
    pub fn set_role(&self, role: &'static str) {
        self.lock().role = Some(role);
    }
    pub fn role(&self) -> Option<&'static str> {
        self.lock().role
    }
    /// The `/healthz` answer: 200 `ok` (`ok: <role>`), or 503 `not ready: <why>` (`not ready
    /// (<role>): <why>`).
    pub fn answer(&self) -> (axum::http::StatusCode, String) {
        let h = self.lock();
        match (&h.not_ready, h.role) {
            (None, None) => (axum::http::StatusCode::OK, "ok".into()),
            (None, Some(role)) => (axum::http::StatusCode::OK, format!("ok: {role}")),
            (Some(why), role) => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                match role {
                    Some(role) => format!("not ready ({role}): {why}"),
                    None => format!("not ready: {why}"),
                },
            ),
        }
    }
}

/// How long the `/metrics` server waits for a client to send (a scrape sends at once).
const METRICS_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The `/metrics` and `/healthz` server of a stage without its own HTTP API.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    /// Ends once `stop` is cancelled and open requests are answered.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `listen` (`host:0` picks a free port) and serves until `stop` is cancelled.
/// `/healthz` answers 200 `ok` while `ready` says so, else 503 with the reason (see
/// [`Readiness::answer`]).
pub async fn serve_metrics(
    listen: &str,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<MetricsServer> {
    let handle = prometheus();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {listen}: {e}")))?;
    let local_addr = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { handle.render() }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move { ready.answer() }
            }),
        );
    let listener = IdleTimeoutListener::new(listener, METRICS_IDLE);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(MetricsServer { local_addr, task })
}

/// Backoff of the stage supervisors: 0.5 s doubling to 30 s, reset after a good run.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: std::time::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: std::time::Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// Waits the current delay (returning early, `false`, when `stop` is cancelled), then
    /// doubles it up to 30 s.
    pub fn wait(&mut self, stop: &CancellationToken) -> bool {
        let until = std::time::Instant::now() + self.next;
        self.next = (self.next * 2).min(std::time::Duration::from_secs(30));
        while std::time::Instant::now() < until {
            if stop.is_cancelled() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        !stop.is_cancelled()
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The run loop of a stage that must ride out broker faults: runs `attempt` (with a token
/// that ends the attempt's threads and clients) until `stop`. An attempt that fails with an
/// error `retryable` accepts, or that returns before `stop`, is run again after a backoff
/// (0.5 s doubling to 30 s; reset after a run of a minute), with `/healthz` saying why and
/// `restarts_metric` counting; any other error is returned (the process ends with it).
pub fn supervise<E: std::fmt::Display>(
    stage: &str,
    stop: &CancellationToken,
    ready: &Readiness,
    restarts_metric: &'static str,
    retryable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut(CancellationToken) -> Result<(), E>,
) -> Result<(), E> {
    let mut backoff = Backoff::default();
    // Counted from zero: on `/metrics` (and in `rate()`) before the first restart.
    metrics::counter!(restarts_metric).increment(0);
    loop {
        // 1. Each attempt owns its threads and clients: a child token ends them with it.
        let token = stop.child_token();
        let started = std::time::Instant::now();
        let r = attempt(token.clone());
        token.cancel();
        if stop.is_cancelled() {
            return r;
        }
        let why = match r {
            Ok(()) => "a part of the stage ended".to_string(),
            Err(e) if retryable(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        ready.not_ready(why.clone());
        metrics::counter!(restarts_metric).increment(1);
        tracing::warn!(stage, error = %why, "restarting the stage's work after a backoff");
        // 2. A run that lasted was healthy: the next failure starts the backoff again.
        if started.elapsed() > std::time::Duration::from_secs(60) {
            backoff.reset();
        }
        if !backoff.wait(stop) {
            return Ok(());
        }
    }
}

/// What every supervised Kafka stage (enrich, aggregate, watch) runs inside: its metrics
/// server with `/healthz`, its readiness and its stop token. A stage's `App` is its own
/// configuration plus one of these; [`StageHost::run_supervised`] is its run loop.
pub struct StageHost {
    ready: Readiness,
    local_addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl StageHost {
    /// Serves `/metrics` and `/healthz` on `listen` (`host:0` picks a free port), not ready
    /// until the stage says so.
    pub async fn start(listen: &str) -> std::io::Result<StageHost> {
        let stop = CancellationToken::new();
        let ready = Readiness::starting();
        let metrics = serve_metrics(listen, ready.clone(), stop.clone()).await?;
        Ok(StageHost {
            ready,
            local_addr: metrics.local_addr,
            stop,
            server: metrics.task,
        })
    }

    /// Address of the metrics server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancel to stop the stage.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `attempt` under [`supervise`] on a blocking thread until the stop token is
    /// cancelled or an error `retryable` refuses ends it; then stops the metrics server. The
    /// outer error is the supervisor thread's own end (a panic).
    pub async fn run_supervised<E>(
        self,
        stage: &'static str,
        restarts_metric: &'static str,
        retryable: fn(&E) -> bool,
        mut attempt: impl FnMut(&Readiness, CancellationToken) -> Result<(), E> + Send + 'static,
    ) -> Result<Result<(), E>, tokio::task::JoinError>
    where
        E: std::fmt::Display + Send + 'static,
    {
        let StageHost {
            ready,
            stop,
            server,
            ..
        } = self;
        let supervisor_stop = stop.clone();
        let result = tokio::task::spawn_blocking(move || {
            supervise(
                stage,
                &supervisor_stop,
                &ready,
                restarts_metric,
                retryable,
                |token| attempt(&ready, token),
            )
        })
        .await;
        stop.cancel();
        let _ = server.await;
        result
    }
}

/// The TCP listener of every HTTP server here (API, ingest edge, `/metrics`):
/// 1. connections are closed when the client keeps the server waiting to read for longer
///    than `idle` (a silent or trickling client — slowloris — holds no connection and no
///    task forever). Writes are not limited: a long streamed answer to a client that is
///    reading it is not cut;
/// 2. every connection has `TCP_NODELAY`. Without it a streamed answer (`/v1/sql`, CSV) ends
///    with a small write that Nagle's algorithm holds until the client acknowledges the
///    previous one, and a keep-alive client delays that acknowledgement by up to 40 ms: a
///    team lead's 85 ms query took 130 ms over a kept-alive connection (`meterline bench
///    api`, the dashboard), and only fresh connections were fast.
pub struct IdleTimeoutListener {
    inner: tokio::net::TcpListener,
    idle: std::time::Duration,
}

impl IdleTimeoutListener {
    pub fn new(inner: tokio::net::TcpListener, idle: std::time::Duration) -> Self {
        IdleTimeoutListener { inner, idle }
    }
}

impl axum::serve::Listener for IdleTimeoutListener {
    type Io = std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<tokio::net::TcpStream>>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        if let Err(e) = io.set_nodelay(true) {
            // the connection still works, only slower: served, and said
            tracing::warn!(error = %e, %addr, "TCP_NODELAY could not be set");
        }
        let mut s = tokio_io_timeout::TimeoutStream::new(io);
        s.set_read_timeout(Some(self.idle));
        (Box::pin(s), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn healthz_names_the_role_and_a_standby_is_healthy() {
        use axum::http::StatusCode;
        let r = Readiness::starting();
        assert_eq!(
            r.answer(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting".into()
            )
        );
        r.ready();
        assert_eq!(
            r.answer(),
            (StatusCode::OK, "ok".into()),
            "no role: as before"
        );
        r.set_role("standby");
        assert_eq!(r.answer(), (StatusCode::OK, "ok: standby".into()));
        r.set_role("active");
        r.not_ready("broker away");
        assert_eq!(
            r.answer(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready (active): broker away".into()
            )
        );
        assert_eq!(r.role(), Some("active"));
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_supervisor_retries_what_waiting_can_cure_and_stops_on_the_rest() {
        #[derive(Debug)]
        enum E {
            BrokerDown,
            Fenced,
        }
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{self:?}")
            }
        }
        let stop = CancellationToken::new();
        let ready = Readiness::starting();
        let mut attempts = 0;
        let seen = std::cell::RefCell::new(Vec::new());
        let r = supervise(
            "t",
            &stop,
            &ready,
            "t_restarts",
            |e: &E| matches!(e, E::BrokerDown),
            |_| {
                attempts += 1;
                seen.borrow_mut().push(ready.reason());
                match attempts {
                    1 | 2 => Err(E::BrokerDown),
                    _ => Err(E::Fenced),
                }
            },
        );
        assert!(matches!(r, Err(E::Fenced)), "a fatal error ends it");
        assert_eq!(attempts, 3, "two retryable failures were retried");
        assert_eq!(
            seen.into_inner()[1].as_deref(),
            Some("BrokerDown"),
            "/healthz says why while waiting"
        );
        // stopped while backing off: returns promptly
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let t0 = std::time::Instant::now();
        let r: Result<(), E> = supervise(
            "t",
            &stop,
            &ready,
            "t_restarts",
            |_| true,
            |_| {
                s2.cancel();
                Err(E::BrokerDown)
            },
        );
        assert!(r.is_err() && t0.elapsed() < std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn every_connection_is_accepted_without_nagle() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut l = IdleTimeoutListener::new(l, std::time::Duration::from_secs(5));
        let addr = axum::serve::Listener::local_addr(&l).unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (io, _) = axum::serve::Listener::accept(&mut l).await;
        let stream: &tokio_io_timeout::TimeoutStream<tokio::net::TcpStream> = &io;
        assert!(
            stream.get_ref().nodelay().unwrap(),
            "a streamed answer's last write would wait for a delayed ACK"
        );
        let plain = client.await.unwrap().unwrap();
        assert!(
            !plain.nodelay().unwrap(),
            "the check can fail: off by default"
        );
    }

    #[tokio::test]
    async fn silent_clients_are_disconnected_and_others_served() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l = IdleTimeoutListener::new(l, std::time::Duration::from_millis(300));
        let addr = axum::serve::Listener::local_addr(&l).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        // a request that never finishes its headers (slowloris)
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf))
            .await
            .expect("closed by the server, not left open")
            .unwrap_or(0);
        assert_eq!(n, 0, "connection closed without an answer");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        // a client that sends its request is answered as usual
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        ok.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("hi"),
            "{out}"
        );
        server.abort();
    }
}
