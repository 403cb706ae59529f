//! `meterline-broker`: the tansu 0.6.0 broker with Kafka transactions completed.
//!
//! tansu's storage engines implement the transaction protocol (InitProducerId with fencing,
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, `Storage::txn_end` writing the
//! commit/abort markers, and a last stable offset that `read_committed` fetches stop at). Two
//! pieces are missing from the 0.6.0 broker, and this binary adds them:
//! 1. the EndTxn route (API key 26): without it librdkafka cannot commit or abort at all;
//! 2. the aborted-transaction index of read_committed Fetch responses (always empty in 0.6.0),
//!    without which a read_committed consumer is handed aborted records. It is computed from the
//!    batches being returned (transactional data batches and their abort markers), reading ahead
//!    up to the last stable offset for transactions whose marker lies past the response.
//!
//! Storage, groups and the wire protocol are tansu's own; only the route table, the fetch
//! post-processing and the accept loop are assembled here.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use clap::Parser;
use rama::{Context, Layer as _, Service};
use rama::layer::{MapErrLayer, MapStateLayer};
use tansu_broker::coordinator::group::administrator::Controller;
use std::collections::BTreeMap;

use tansu_sans_io::fetch_response::AbortedTransaction;
use tansu_sans_io::record::{deflated, inflated};
use tansu_sans_io::{
    ApiKey, EndTxnRequest, EndTxnResponse, FetchRequest, FetchResponse, IsolationLevel,
};
use tansu_service::{
    BytesFrameLayer, FrameRequestLayer, FrameRouteBuilder, FrameRouteService, TcpBytesLayer,
    TcpContext, TcpContextLayer,
};
use tansu_storage::{
    BrokerRegistrationRequest, FetchService, Storage, StorageContainer, TopicId, Topition,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use url::Url;

/// Same flags (and environment variables) as `tansu broker`, for the subset meterline uses.
#[derive(Parser)]
#[command(name = "meterline-broker", version)]
struct Args {
    #[arg(long, env = "CLUSTER_ID", default_value = "tansu_cluster")]
    cluster_id: String,
    #[arg(long, env = "LISTENER_URL", default_value = "tcp://0.0.0.0:9092")]
    listener_url: Url,
    #[arg(long, env = "ADVERTISED_LISTENER_URL", default_value = "tcp://localhost:9092")]
    advertised_listener_url: Url,
    /// `memory://tansu/` or `sqlite://file.db` (relative to the working directory).
    #[arg(long, env = "STORAGE_ENGINE", default_value = "memory://tansu/")]
    storage_engine: Url,
    /// How often retention and compaction run.
    #[arg(long, default_value = "600")]
    maintenance_interval_secs: u64,
}

/// Ends a transaction: writes the commit or abort markers through tansu's storage.
#[derive(Clone, Copy, Debug, Default)]
struct EndTxnService;

impl ApiKey for EndTxnService {
    const KEY: i16 = EndTxnRequest::KEY;
}

impl<S: Storage> Service<S, EndTxnRequest> for EndTxnService {
    type Response = EndTxnResponse;
    type Error = tansu_storage::Error;

    async fn serve(
        &self,
        ctx: Context<S>,
        req: EndTxnRequest,
    ) -> Result<Self::Response, Self::Error> {
        ctx.state()
            .txn_end(
                req.transactional_id.as_str(),
                req.producer_id,
                req.producer_epoch,
                req.committed,
            )
            .await
            .map(|code| {
                EndTxnResponse::default()
                    .throttle_time_ms(0)
                    .error_code(code.into())
            })
    }
}

const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// Control record type of an abort marker (the key is `version: i16, type: i16`).
const CONTROL_ABORT: i16 = 0;

fn is_abort_marker(batch: &deflated::Batch) -> bool {
    inflated::Batch::try_from(batch.clone())
        .ok()
        .and_then(|b| b.records.first().and_then(|r| r.key.clone()))
        .is_some_and(|k| k.len() >= 4 && i16::from_be_bytes([k[2], k[3]]) == CONTROL_ABORT)
}

/// Transactions seen in a run of batches: open ones (producer id → first offset) and aborted
/// ones. Returns the offset after the last batch.
fn scan(
    batches: &[deflated::Batch],
    open: &mut BTreeMap<i64, i64>,
    aborted: &mut Vec<AbortedTransaction>,
    track_new: bool,
) -> Option<i64> {
    let mut next = None;
    for b in batches {
        next = Some(b.base_offset + i64::from(b.last_offset_delta) + 1);
        if b.attributes & ATTR_CONTROL != 0 {
            if let Some(first) = open.remove(&b.producer_id) {
                if is_abort_marker(b) {
                    aborted.push(
                        AbortedTransaction::default()
                            .producer_id(b.producer_id)
                            .first_offset(first),
                    );
                }
            }
        } else if b.attributes & ATTR_TRANSACTIONAL != 0 && track_new {
            open.entry(b.producer_id).or_insert(b.base_offset);
        }
    }
    next
}

/// Fetch, plus the aborted-transaction index for read_committed consumers.
#[derive(Clone, Copy, Debug, Default)]
struct ReadCommittedFetch;

impl ApiKey for ReadCommittedFetch {
    const KEY: i16 = FetchRequest::KEY;
}

impl<S: Storage> Service<S, FetchRequest> for ReadCommittedFetch {
    type Response = FetchResponse;
    type Error = tansu_storage::Error;

    async fn serve(
        &self,
        ctx: Context<S>,
        req: FetchRequest,
    ) -> Result<Self::Response, Self::Error> {
        let read_committed = req.isolation_level == Some(1);
        let mut resp = FetchService.serve(ctx.clone(), req).await?;
        if !read_committed {
            return Ok(resp);
        }
        for topic in resp.responses.iter_mut().flatten() {
            // Fetch v13+ names topics by id only.
            let name = match (&topic.topic, topic.topic_id) {
                (Some(n), _) => n.clone(),
                (None, Some(id)) => {
                    let md = ctx
                        .state()
                        .metadata(Some(&[TopicId::Id(uuid::Uuid::from_bytes(id))]))
                        .await?;
                    match md.topics().first().and_then(|t| t.name.clone()) {
                        Some(n) => n,
                        None => continue,
                    }
                }
                (None, None) => continue,
            };
            for pd in topic.partitions.iter_mut().flatten() {
                let Some(frame) = &pd.records else { continue };
                let mut open = BTreeMap::new();
                let mut aborted = Vec::new();
                let mut next = scan(&frame.batches, &mut open, &mut aborted, true);
                let lso = pd.last_stable_offset.unwrap_or(pd.high_watermark);
                let tp = Topition::new(name.clone(), pd.partition_index);
                // Markers past the response: read ahead (committed range only) to find them.
                while let Some(offset) = next.filter(|o| !open.is_empty() && *o < lso) {
                    let batches = ctx
                        .state()
                        .fetch(&tp, offset, 1, 1 << 20, IsolationLevel::ReadCommitted)
                        .await?;
                    if batches.is_empty() {
                        break;
                    }
                    next = scan(&batches, &mut open, &mut aborted, false);
                }
                if !aborted.is_empty() {
                    debug!(topic = %name, partition = pd.partition_index, ?aborted, "aborted transactions");
                    pd.aborted_transactions = Some(aborted);
                }
            }
        }
        Ok(resp)
    }
}

fn fetch_route<S: Storage>(
    builder: FrameRouteBuilder<(), tansu_broker::Error>,
    storage: S,
) -> Result<FrameRouteBuilder<(), tansu_broker::Error>, tansu_broker::Error> {
    builder
        .with_route(
            FetchRequest::KEY,
            (
                MapErrLayer::new(tansu_broker::Error::from),
                MapStateLayer::new(|_| storage),
                FrameRequestLayer::<FetchRequest>::new(),
            )
                .into_layer(ReadCommittedFetch)
                .boxed(),
        )
        .map_err(Into::into)
}

/// tansu's storage routes, with Fetch replaced and EndTxn added.
fn storage_routes<S: Storage>(
    builder: FrameRouteBuilder<(), tansu_broker::Error>,
    storage: S,
) -> Result<FrameRouteBuilder<(), tansu_broker::Error>, tansu_broker::Error> {
    use tansu_broker::service::storage as s;
    type Route<S> = fn(
        FrameRouteBuilder<(), tansu_broker::Error>,
        S,
    ) -> Result<FrameRouteBuilder<(), tansu_broker::Error>, tansu_broker::Error>;
    let routes: [Route<S>; 27] = [
        s::add_offsets_to_txn,
        s::add_partitions_to_txn,
        s::alter_user_scram_credentials,
        s::consumer_group_describe,
        s::create_acls,
        s::create_topics,
        s::delete_groups,
        s::delete_records,
        s::delete_topics,
        s::describe_acls,
        s::describe_cluster,
        s::describe_configs,
        s::describe_groups,
        s::describe_topic_partitions,
        s::describe_user_scram_credentials,
        fetch_route,
        s::find_coordinator,
        s::get_telemetry_subscriptions,
        s::incremental_alter_configs,
        s::init_producer_id,
        s::list_groups,
        s::list_offsets,
        s::list_partition_reassignments,
        s::metadata,
        s::produce,
        s::txn_offset_commit_request,
        end_txn_route,
    ];
    routes
        .iter()
        .try_fold(builder, |b, route| route(b, storage.clone()))
}

fn end_txn_route<S: Storage>(
    builder: FrameRouteBuilder<(), tansu_broker::Error>,
    storage: S,
) -> Result<FrameRouteBuilder<(), tansu_broker::Error>, tansu_broker::Error> {
    builder
        .with_route(
            EndTxnRequest::KEY,
            (
                MapErrLayer::new(tansu_broker::Error::from),
                MapStateLayer::new(|_| storage),
                FrameRequestLayer::<EndTxnRequest>::new(),
            )
                .into_layer(EndTxnService)
                .boxed(),
        )
        .map_err(Into::into)
}

fn bind_addr(url: &Url) -> SocketAddr {
    let port = url.port().unwrap_or(9092);
    let host = url.host_str().unwrap_or("0.0.0.0");
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let cancel = CancellationToken::new();

    let storage = StorageContainer::builder()
        .cluster_id(args.cluster_id.clone())
        .node_id(tansu_broker::NODE_ID)
        .advertised_listener(args.advertised_listener_url.clone())
        .storage(args.storage_engine.clone())
        .schema_registry(None)
        .lake_house(None)
        .cancellation(cancel.clone())
        .silent(true)
        .build()
        .await?;
    storage
        .register_broker(BrokerRegistrationRequest {
            broker_id: tansu_broker::NODE_ID,
            cluster_id: args.cluster_id.clone(),
            incarnation_id: uuid::Uuid::now_v7(),
            rack: None,
        })
        .await?;
    let groups = Controller::with_storage(storage.clone())?;

    let listener = TcpListener::bind(bind_addr(&args.listener_url)).await?;
    info!(listener = %args.listener_url, advertised = %args.advertised_listener_url, "ready");
    println!("meterline-broker (tansu 0.6.0 + EndTxn) listening on {}", args.listener_url);

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut maintenance =
        tokio::time::interval(Duration::from_secs(args.maintenance_interval_secs.max(1)));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => { error!(%e, "accept"); continue; }
                };
                stream.set_nodelay(true)?;
                // The route table tansu assembles, with Fetch completed and EndTxn added.
                let route = storage_routes(
                    FrameRouteService::<(), tansu_broker::Error>::builder(),
                    storage.clone(),
                )
                .and_then(|b| tansu_broker::service::coordinator::services(b, groups.clone()))
                .and_then(tansu_broker::service::auth::services)
                .and_then(|b| b.build().map_err(Into::into))?;
                let service = (
                    TcpContextLayer::new(TcpContext::default().cluster_id(Some(args.cluster_id.clone()))),
                    TcpBytesLayer::default(),
                    BytesFrameLayer::default().with_sasl_config(None),
                )
                    .into_layer(route);
                tokio::spawn(async move {
                    if let Err(e) = service.serve(Context::default(), stream).await {
                        debug!(%addr, ?e, "connection ended");
                    }
                });
            }
            _ = maintenance.tick() => {
                let storage = storage.clone();
                tokio::spawn(async move {
                    if let Err(e) = storage.maintain(SystemTime::now()).await {
                        debug!(?e, "maintenance");
                    }
                });
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    cancel.cancel();
    Ok(())
}
