//! The delta ADS server: serves a [`Snapshot`] of resources to every connected ztunnel over
//! `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`
//! (xds.md §2).
//!
//! The caller publishes snapshots on a `watch` channel; each stream keeps, per type, what its
//! client holds and is sent only the difference: on the type's first request (honouring
//! `initial_resource_versions`, so a reconnecting client gets only what changed, even from a
//! restarted server, since versions are content hashes) and on every new snapshot. A NACK is
//! logged with the client's node id and the refused version is not sent again until it changes.
//!
//! No sockets or TLS here: [`DeltaAdsServer::into_service`] is the tonic service, and
//! [`serve_with_incoming`] runs it on any stream of accepted connections (TLS is wrapped around
//! them by the caller).

mod snapshot;
mod stream;
mod subscription;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

pub use snapshot::{Snapshot, resource_version};

use snapshot::VersionCache;
use stream::Session;

/// Largest request accepted (bytes). A reconnecting client lists every name it holds in one
/// request, about 100 bytes each; a bigger request fails the stream with `OutOfRange`.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Responses queued per stream before the stream waits for its client to read; with responses
/// of a whole type this bounds per-stream memory to a few snapshots' worth.
pub const RESPONSE_QUEUE: usize = 4;

/// Resource types one stream may subscribe to; one more ends the stream (`ResourceExhausted`).
pub const MAX_TYPES_PER_STREAM: usize = 16;

/// Names one stream may hold or subscribe to explicitly per type; more ends the stream
/// (`ResourceExhausted`). Wildcard streams are also bounded by the snapshot itself.
pub const MAX_NAMES_PER_TYPE: usize = 100_000;

/// HTTP/2 PING interval and timeout towards clients, so a vanished client's stream ends.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the server, published on every change (see [`DeltaAdsServer::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Streams open now.
    pub streams_open: usize,
    /// Streams opened since start.
    pub streams_opened: u64,
    /// Responses sent, all streams.
    pub responses_sent: u64,
    /// Responses acknowledged.
    pub acks: u64,
    /// Responses (partly) rejected.
    pub nacks: u64,
    /// The most recent rejection.
    pub last_nack: Option<NackReport>,
}

/// A client's rejection of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackReport {
    /// The rejecting client's `node.id`.
    pub node_id: String,
    /// The type of the rejected response.
    pub type_url: String,
    /// The rejected response's nonce.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
}

/// Why [`serve_with_incoming`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("xDS gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// What every stream shares.
struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    versions: VersionCache,
    stats: watch::Sender<ServerStats>,
    shutdown: CancellationToken,
    next_stream_id: AtomicU64,
}

/// The delta ADS service. Cheap to clone; clones share streams' counters and shutdown.
#[derive(Clone)]
pub struct DeltaAdsServer {
    shared: Arc<Shared>,
}

impl DeltaAdsServer {
    /// Serves the snapshots published on `snapshots`. Cancelling `shutdown` ends every stream
    /// with `Unavailable` (so clients reconnect at once, elsewhere or to our successor); so does
    /// dropping the sender of `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: CancellationToken) -> Self {
        let (stats, _) = watch::channel(ServerStats::default());
        Self {
            shared: Arc::new(Shared {
                snapshots,
                versions: VersionCache::default(),
                stats,
                shutdown,
                next_stream_id: AtomicU64::new(1),
            }),
        }
    }

    /// The server's counters; changes as streams open, close, send and are answered.
    pub fn stats(&self) -> watch::Receiver<ServerStats> {
        self.shared.stats.subscribe()
    }

    /// The tonic service, with this module's request size limit.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DeltaAdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let session = Session::new(id, peer, Arc::clone(&self.shared), tx);
        // The task owns its end: the client closing, its connection dying (tonic drops the
        // response stream, closing `tx`), or `shutdown`.
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `server` on the connections of `incoming` until the server's shutdown token is
/// cancelled; returns once its streams have ended (they end on the same token) and their
/// connections closed.
///
/// Accepted sockets should have `TCP_NODELAY` set (e.g. `TcpIncoming::with_nodelay`): pushes
/// are small writes the client answers, and Nagle's algorithm would hold each one back until
/// the previous one's delayed ACK (tens of milliseconds).
pub async fn serve_with_incoming<I, IO, IE>(
    server: DeltaAdsServer,
    incoming: I,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let shutdown = server.shared.shutdown.clone();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .serve_with_incoming_shutdown(server.into_service(), incoming, shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Transport)
}
