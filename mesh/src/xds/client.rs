//! The client's stream loop: connect through the caller's [`Connector`], open the stream with one
//! initial request per type, answer each response, and reconnect with backoff when it ends.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use xds_proto::envoy::config::core::v3::Node;
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::metrics::{TerminationReason, XdsMetrics};
use super::session::{Reply, TypeState};
use super::{Subscription, XdsError, XdsHandler};
use crate::backoff::{Backoff, BackoffPolicy};
use crate::errors;

/// Largest response accepted (bytes); upstream ztunnel accepts 200 MiB, and a control plane
/// may send a whole mesh's addresses in one response. A bigger one ends the stream.
pub const MAX_RESPONSE_BYTES: usize = 200 * 1024 * 1024;

/// How long the [`Connector`] may take to return a channel.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to answer the call (response headers). istiod sends them with
/// its first response, which for a large mesh takes a while to compute.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an ACK or NACK may wait to be taken by the transport; longer means the server
/// stopped reading, and the stream is reopened.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Delay after failures: 20 ms doubling to 15 s, as upstream (xds.md §2.4), ±20 % so the agents
/// of a cluster do not return in step.
pub const FAILURE_BACKOFF: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_millis(20),
    max: Duration::from_secs(15),
    jitter: 0.2,
};

/// Delay after a stream ended in a way that says "the server went away, another is there"
/// (GOAWAY, transport closing) or cleanly. Upstream reconnects at once after a clean end; the
/// small delay keeps a server that ends every stream immediately from spinning us.
pub const QUICK_RECONNECT: Duration = Duration::from_millis(10);

/// Requests queued towards the server beyond the initial ones (ACKs, NACKs).
const REQUEST_QUEUE: usize = 16;

type RequestSender = mpsc::Sender<DeltaDiscoveryRequest>;

/// Returns a channel to the control plane, once per stream, so a reconnect can dial again with
/// fresh credentials. Implemented by any `FnMut() -> impl Future<Output = Result<Channel, E>>`.
///
/// Keepalive belongs on the channel (xds.md §1.4: HTTP/2 PING every 30 s, 10 s timeout): the
/// stream idles between pushes, so only PINGs reveal a dead connection.
pub trait Connector: Send {
    /// Why a channel could not be made.
    type Error: std::error::Error + Send + Sync + 'static;

    /// A channel to the control plane.
    fn connect(&mut self) -> impl Future<Output = Result<Channel, Self::Error>> + Send;
}

impl<F, Fut, E> Connector for F
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<Channel, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    fn connect(&mut self) -> impl Future<Output = Result<Channel, E>> + Send {
        self()
    }
}

/// Counters of the client, published on every change (see [`AdsClient::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Attempts to open a stream.
    pub connect_attempts: u64,
    /// Streams opened (the server answered the call).
    pub streams_opened: u64,
    /// Responses received.
    pub responses: u64,
    /// Responses accepted whole.
    pub acks: u64,
    /// Responses (partly) refused.
    pub nacks: u64,
}

/// How a stream ended, for the log and the next delay.
#[derive(Debug, thiserror::Error)]
enum StreamError<E> {
    #[error("connecting failed")]
    Connect(#[source] E),
    #[error("connecting did not finish within {0:?}")]
    ConnectTimeout(Duration),
    #[error("opening the DeltaAggregatedResources call failed: {0}")]
    Open(StatusText),
    #[error("the DeltaAggregatedResources call was not answered within {0:?}")]
    OpenTimeout(Duration),
    #[error("the stream ended with {0}")]
    Closed(StatusText),
    #[error("the server did not take our reply to a {type_url} response within {timeout:?}")]
    SendTimeout { type_url: String, timeout: Duration },
    #[error("the transport dropped the request stream")]
    RequestsClosed,
}

/// A gRPC status as one readable line: code, message and the transport's causes, without the
/// metadata dump of `Status`'s own `Display`.
#[derive(Debug)]
struct StatusText {
    code: tonic::Code,
    message: String,
}

impl From<tonic::Status> for StatusText {
    fn from(status: tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        if let Some(cause) = std::error::Error::source(&status) {
            message.push_str(": ");
            message.push_str(&errors::chain(cause));
        }
        Self {
            code: status.code(),
            message,
        }
    }
}

impl std::fmt::Display for StatusText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {:?}: {}", self.code, self.message)
    }
}

impl<E> StreamError<E> {
    /// Whether the end means "reconnect now" rather than "back off" (xds.md §2.4): the server
    /// went away (restart, GOAWAY, connection reset) rather than refused us.
    fn is_server_gone(&self) -> bool {
        let Self::Closed(status) = self else {
            return false;
        };
        match status.code {
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => true,
            tonic::Code::Unavailable => {
                status.message.contains("transport is closing")
                    || status.message.contains("received prior goaway")
            }
            _ => false,
        }
    }
}

/// A delta ADS client. Register types, take [`AdsClient::ready`] and [`AdsClient::stats`], then
/// spawn [`AdsClient::run`] (on the control runtime).
pub struct AdsClient<C> {
    connector: C,
    node: Node,
    control_plane: String,
    types: Vec<TypeState>,
    ready: watch::Sender<bool>,
    stats: watch::Sender<ClientStats>,
    metadata: Option<MetadataSource>,
    metrics: XdsMetrics,
}

/// Builds the request metadata (e.g. `authorization`, `clusterid`) for each new stream, so a
/// rotated token file is read again.
pub type MetadataSource = Box<dyn Fn() -> tonic::metadata::MetadataMap + Send>;

impl<C: Connector> AdsClient<C> {
    /// A client for `node` (its `id` and `metadata` as xds.md §1.3 says) that reaches the
    /// control plane through `connector`. `control_plane` names it in log lines (its address).
    pub fn new(
        node: Node,
        control_plane: impl Into<String>,
        connector: C,
    ) -> Result<Self, XdsError> {
        if node.id.is_empty() {
            return Err(XdsError::MissingNodeId);
        }
        Ok(Self {
            connector,
            node,
            control_plane: control_plane.into(),
            types: Vec::new(),
            ready: watch::channel(false).0,
            stats: watch::channel(ClientStats::default()).0,
            metadata: None,
            metrics: XdsMetrics::default(),
        })
    }

    /// Counts into `metrics` (registered by the caller) instead of unregistered families.
    pub fn with_metrics(mut self, metrics: XdsMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets where each new stream's request metadata comes from.
    pub fn with_metadata(mut self, source: MetadataSource) -> Self {
        self.metadata = Some(source);
        self
    }

    /// Subscribes to `type_url` and routes its responses to `handler`. Initial requests go out in
    /// registration order (ztunnel: Address, then Authorization).
    pub fn register(
        &mut self,
        type_url: impl Into<String>,
        subscription: Subscription,
        handler: Box<dyn XdsHandler>,
    ) -> Result<(), XdsError> {
        let type_url = type_url.into();
        if type_url.is_empty() {
            return Err(XdsError::EmptyTypeUrl);
        }
        if self.types.iter().any(|state| state.type_url() == type_url) {
            return Err(XdsError::DuplicateType(type_url));
        }
        self.types
            .push(TypeState::new(type_url, subscription, handler));
        Ok(())
    }

    /// True once every wildcard type has had a response accepted whole; it stays true across
    /// disconnects, since the last good state keeps serving (xds.md §2.3, §2.4).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The client's counters.
    pub fn stats(&self) -> watch::Receiver<ClientStats> {
        self.stats.subscribe()
    }

    /// Keeps a stream open until `shutdown` is cancelled, reconnecting forever.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.publish_readiness();
        let mut failures = Backoff::new(FAILURE_BACKOFF);
        loop {
            let ended = tokio::select! {
                () = shutdown.cancelled() => break,
                ended = self.run_stream(&mut failures) => ended,
            };
            self.metrics.terminated(match &ended {
                Ok(()) => TerminationReason::Complete,
                Err(err) if err.is_server_gone() => TerminationReason::Reconnect,
                Err(
                    StreamError::Connect(_)
                    | StreamError::ConnectTimeout(_)
                    | StreamError::Open(_)
                    | StreamError::OpenTimeout(_),
                ) => TerminationReason::ConnectionError,
                Err(_) => TerminationReason::Error,
            });
            let delay = match &ended {
                Ok(()) => {
                    info!(
                        control_plane = %self.control_plane,
                        node = %self.node.id,
                        "control plane closed the xDS stream; reconnecting"
                    );
                    QUICK_RECONNECT
                }
                Err(err) => {
                    let delay = if err.is_server_gone() {
                        QUICK_RECONNECT
                    } else {
                        failures.next_delay()
                    };
                    warn!(
                        control_plane = %self.control_plane,
                        node = %self.node.id,
                        error = %errors::chain(err),
                        retry_in = ?delay,
                        "xDS stream to the control plane failed"
                    );
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!(control_plane = %self.control_plane, "xDS client stopped");
    }

    /// One stream, from dialing to its end; `Ok` is a clean end by the server.
    async fn run_stream(&mut self, failures: &mut Backoff) -> Result<(), StreamError<C::Error>> {
        let (requests, mut responses) = self.open_stream().await?;
        // No timeout on reads: the stream idles between pushes; channel keepalive finds a dead
        // connection.
        while let Some(response) = responses
            .message()
            .await
            .map_err(|status| StreamError::Closed(status.into()))?
        {
            // A server that answers is healthy, whatever ends this stream later.
            failures.reset();
            self.metrics.received(&response);
            let reply = self.handle(response);
            let type_url = reply.request.type_url.clone();
            match tokio::time::timeout(SEND_TIMEOUT, requests.send(reply.request)).await {
                Err(_elapsed) => {
                    return Err(StreamError::SendTimeout {
                        type_url,
                        timeout: SEND_TIMEOUT,
                    });
                }
                Ok(Err(_closed)) => return Err(StreamError::RequestsClosed),
                Ok(Ok(())) => {}
            }
            self.stats.send_modify(|stats| {
                stats.responses += 1;
                if reply.accepted {
                    stats.acks += 1;
                } else {
                    stats.nacks += 1;
                }
            });
        }
        Ok(())
    }

    /// Dials, queues one initial request per type and opens the call.
    async fn open_stream(
        &mut self,
    ) -> Result<(RequestSender, Streaming<DeltaDiscoveryResponse>), StreamError<C::Error>> {
        self.stats.send_modify(|stats| stats.connect_attempts += 1);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect())
            .await
            .map_err(|_elapsed| StreamError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(StreamError::Connect)?;
        let (requests, queue) = mpsc::channel(self.types.len() + REQUEST_QUEUE);
        // Built first, so no borrow of the (non-`Sync`) handlers is held across an await.
        let initial: Vec<_> = self
            .types
            .iter()
            .map(|state| state.initial_request(&self.node))
            .collect();
        for request in initial {
            // Queued before the call is opened: istiod answers the call only after reading
            // them. The queue has room for all of them, so this never waits.
            requests
                .send(request)
                .await
                .map_err(|_closed| StreamError::RequestsClosed)?;
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut call = tonic::Request::new(ReceiverStream::new(queue));
        if let Some(source) = &self.metadata {
            *call.metadata_mut() = source();
        }
        let opened = tokio::time::timeout(OPEN_TIMEOUT, grpc.delta_aggregated_resources(call))
            .await
            .map_err(|_elapsed| StreamError::OpenTimeout(OPEN_TIMEOUT))?
            .map_err(|status| StreamError::Open(status.into()))?;
        self.stats.send_modify(|stats| stats.streams_opened += 1);
        info!(control_plane = %self.control_plane, node = %self.node.id, "xDS stream opened");
        Ok((requests, opened.into_inner()))
    }

    /// Applies one response through its type's handler and returns the reply to send.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> Reply {
        let Some(state) = self
            .types
            .iter_mut()
            .find(|state| state.type_url() == response.type_url)
        else {
            warn!(
                control_plane = %self.control_plane,
                type_url = response.type_url,
                "response of a type nobody subscribed to; ACKed and ignored"
            );
            return Reply::ack_unhandled(response);
        };
        debug!(
            type_url = response.type_url,
            nonce = response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "xDS response"
        );
        let reply = state.apply(response);
        if let Some(detail) = &reply.request.error_detail {
            warn!(
                control_plane = %self.control_plane,
                type_url = reply.request.type_url,
                nonce = reply.request.response_nonce,
                error = detail.message,
                "rejected xDS resources (NACK); the rest are applied"
            );
        }
        self.publish_readiness();
        reply
    }

    fn publish_readiness(&self) {
        let ready = self
            .types
            .iter()
            .filter(|state| state.gates_readiness())
            .all(TypeState::has_accepted);
        self.ready.send_if_modified(|current| {
            // Once ready, stays ready: readiness never goes back on a later NACK or disconnect.
            let changed = ready && !*current;
            *current |= ready;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{Delta, Rejection};

    fn closed(code: tonic::Code, message: &str) -> StreamError<std::io::Error> {
        StreamError::Closed(tonic::Status::new(code, message).into())
    }

    #[test]
    fn reconnects_at_once_only_when_the_server_went_away() {
        use tonic::Code;
        for (err, gone) in [
            (closed(Code::Unknown, "h2 protocol error"), true),
            (closed(Code::Cancelled, ""), true),
            (closed(Code::DeadlineExceeded, ""), true),
            (closed(Code::Unavailable, "transport is closing"), true),
            (
                closed(Code::Unavailable, "received prior goaway: code: NO_ERROR"),
                true,
            ),
            (
                closed(Code::Unavailable, "control plane is shutting down"),
                false,
            ),
            (closed(Code::PermissionDenied, "namespace mismatch"), false),
            (
                StreamError::Open(tonic::Status::unavailable("tcp connect error").into()),
                false,
            ),
            (StreamError::ConnectTimeout(CONNECT_TIMEOUT), false),
        ] {
            assert_eq!(err.is_server_gone(), gone, "{err}");
        }
    }

    #[test]
    fn status_text_is_one_readable_line() {
        let err = closed(tonic::Code::PermissionDenied, "namespace mismatch");
        assert_eq!(
            err.to_string(),
            "the stream ended with status PermissionDenied: namespace mismatch"
        );
    }

    #[test]
    fn run_can_be_spawned_on_a_multi_threaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let connector =
            || async { Err::<Channel, std::io::Error>(std::io::Error::other("unused")) };
        let node = Node {
            id: "ztunnel~1.1.1.1~.~.svc.cluster.local".to_owned(),
            ..Default::default()
        };
        let client = AdsClient::new(node, "cp", connector).unwrap();
        assert_send(&client.run(CancellationToken::new()));
    }

    #[test]
    fn refuses_a_node_without_id_and_duplicate_types() {
        let connector =
            || async { Err::<Channel, std::io::Error>(std::io::Error::other("unused")) };
        let err = AdsClient::new(Node::default(), "cp", connector).err();
        assert_eq!(err, Some(XdsError::MissingNodeId));
        let node = Node {
            id: "ztunnel~1.1.1.1~.~.svc.cluster.local".to_owned(),
            ..Default::default()
        };
        let mut client = AdsClient::new(node, "cp", connector).unwrap();
        struct Nothing;
        impl XdsHandler for Nothing {
            fn apply(&mut self, _: &str, _: Delta) -> Result<(), Vec<Rejection>> {
                Ok(())
            }
        }
        client
            .register("t", Subscription::Wildcard, Box::new(Nothing))
            .unwrap();
        assert_eq!(
            client.register("t", Subscription::Wildcard, Box::new(Nothing)),
            Err(XdsError::DuplicateType("t".to_owned()))
        );
        assert_eq!(
            client.register("", Subscription::Wildcard, Box::new(Nothing)),
            Err(XdsError::EmptyTypeUrl)
        );
    }
}
