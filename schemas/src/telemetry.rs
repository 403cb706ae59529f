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
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("non-empty buckets")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    crate::metric_names::AGGREGATE_BUDGET_LAG_SECONDS.into(),
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

/// The `/metrics` and `/healthz` server of a stage without its own HTTP API.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    /// Ends once `stop` is cancelled and open requests are answered.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `listen` (`host:0` picks a free port) and serves until `stop` is cancelled.
pub async fn serve_metrics(
    listen: &str,
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
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(MetricsServer { local_addr, task })
}
