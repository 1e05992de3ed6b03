//! One client's delta ADS stream: its requests in, its responses out, until either side ends.
//!
//! Requests are read as istiod reads them (xds.md §2.7): a type's first request records the
//! subscription and is always answered; a reply to a nonce other than the last one sent is
//! stale and ignored; `error_detail` is a NACK, logged with the client's node id and not
//! answered; subscription changes are answered with the newly subscribed names. A new snapshot
//! pushes, per type, only what changed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};
use xds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use xds_proto::google::rpc;
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::snapshot::{Snapshot, VersionedSnapshot};
use super::subscription::{Changes, Scope, TypeSubscription};
use super::{MAX_TYPES_PER_STREAM, NackReport, Shared};

/// How long a new stream may take to send its first request; a client that opens the call and
/// says nothing is dropped rather than holding a task forever.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a response may wait for room in the stream's queue (i.e. for the client to read);
/// past it the client is considered stuck and its stream ends.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the final error status may wait for room in the queue before it is dropped.
const STATUS_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Workload` type istiod also serves; only used to order pushes.
const WORKLOAD_TYPE_URL: &str = "type.googleapis.com/istio.workload.Workload";

pub(crate) type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamEnd {
    #[error("client closed its request stream")]
    ClientClosed,
    #[error("client went away")]
    ClientGone,
    #[error("client stream failed: {code:?}: {message}")]
    ClientFailed { code: tonic::Code, message: String },
    #[error("client sent no request within {0:?}")]
    FirstRequestTimeout(Duration),
    #[error("client did not read a response within {0:?}")]
    SendTimeout(Duration),
    #[error("refused the client: {}", .0.message())]
    Refused(Status),
    #[error("control plane is shutting down")]
    ShuttingDown,
    #[error("snapshot source closed")]
    SourceClosed,
}

impl StreamEnd {
    /// The status to end the call with, for ends the client should be told about.
    fn status(&self) -> Option<Status> {
        match self {
            Self::Refused(status) => Some(status.clone()),
            Self::ShuttingDown | Self::SourceClosed => Some(Status::unavailable(self.to_string())),
            Self::SendTimeout(_) => Some(Status::deadline_exceeded(self.to_string())),
            Self::FirstRequestTimeout(_) => Some(Status::deadline_exceeded(self.to_string())),
            Self::ClientClosed | Self::ClientGone | Self::ClientFailed { .. } => None,
        }
    }
}

/// Node id for logs before the first request named it.
struct NodeId<'a>(&'a str);

impl fmt::Display for NodeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unknown>"
        } else {
            self.0
        })
    }
}

/// One stream's state.
pub(crate) struct Session {
    id: u64,
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    snapshot: Arc<VersionedSnapshot>,
    node_id: String,
    types: BTreeMap<String, TypeSubscription>,
    responses_sent: u64,
    tx: ResponseSender,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        peer: Option<SocketAddr>,
        shared: Arc<Shared>,
        tx: ResponseSender,
    ) -> Self {
        let mut snapshots = shared.snapshots.clone();
        // Its own statement, so the watch's read guard is released before hashing starts.
        let latest = Arc::clone(&snapshots.borrow_and_update());
        let snapshot = shared.versions.versioned(latest);
        Self {
            id,
            peer,
            shared,
            snapshots,
            snapshot,
            node_id: String::new(),
            types: BTreeMap::new(),
            responses_sent: 0,
            tx,
        }
    }

    /// Serves the stream to its end, then logs why it ended and tells the client if it should.
    pub(crate) async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        self.shared.stats.send_modify(|stats| {
            stats.streams_open += 1;
            stats.streams_opened += 1;
        });
        let end = self.serve(&mut requests).await;
        self.shared
            .stats
            .send_modify(|stats| stats.streams_open = stats.streams_open.saturating_sub(1));
        info!(
            stream = self.id,
            node = %NodeId(&self.node_id),
            peer = ?self.peer,
            reason = %end,
            responses = self.responses_sent,
            "xDS stream closed"
        );
        if let Some(status) = end.status() {
            // Best effort: the client may be gone or not reading; it learns of the end anyway.
            let _ = tokio::time::timeout(STATUS_SEND_TIMEOUT, self.tx.send(Err(status))).await;
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<DeltaDiscoveryRequest>) -> StreamEnd {
        let first = tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled() => return StreamEnd::ShuttingDown,
            () = self.tx.closed() => return StreamEnd::ClientGone,
            first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()) => first,
        };
        let first = match first {
            Err(_elapsed) => return StreamEnd::FirstRequestTimeout(FIRST_REQUEST_TIMEOUT),
            Ok(message) => match received(message) {
                Ok(request) => request,
                Err(end) => return end,
            },
        };
        match first.node.as_ref().map(|node| node.id.as_str()) {
            Some(id) if !id.is_empty() => self.node_id = id.to_owned(),
            _ => {
                return StreamEnd::Refused(Status::invalid_argument(
                    "the first request of a stream must carry node.id",
                ));
            }
        }
        info!(stream = self.id, node = %self.node_id, peer = ?self.peer, "xDS stream opened");
        if let Err(end) = self.handle(first).await {
            return end;
        }
        loop {
            let step = tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => Err(StreamEnd::ShuttingDown),
                () = self.tx.closed() => Err(StreamEnd::ClientGone),
                // Requests first: an ACK already received is then counted before a push makes
                // its nonce stale. Clients only send in answer to responses, so they cannot
                // starve pushes.
                message = requests.message() => match received(message) {
                    Ok(request) => self.handle(request).await,
                    Err(end) => Err(end),
                },
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => self.push_changes().await,
                    Err(_closed) => Err(StreamEnd::SourceClosed),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn handle(&mut self, request: DeltaDiscoveryRequest) -> Result<(), StreamEnd> {
        if request.type_url.is_empty() {
            return Err(StreamEnd::Refused(Status::invalid_argument(
                "request carries no type_url",
            )));
        }
        if self.types.contains_key(&request.type_url) {
            return self.handle_follow_up(request).await;
        }
        if self.types.len() >= MAX_TYPES_PER_STREAM {
            return Err(StreamEnd::Refused(Status::resource_exhausted(format!(
                "more than {MAX_TYPES_PER_STREAM} resource types on one stream"
            ))));
        }
        let subscription = TypeSubscription::from_initial(&request).map_err(refuse)?;
        let changes = subscription.initial_changes(self.snapshot.versions(&request.type_url));
        debug!(
            stream = self.id,
            node = %self.node_id,
            type_url = request.type_url,
            held = request.initial_resource_versions.len(),
            "subscribed"
        );
        self.types.insert(request.type_url.clone(), subscription);
        // The first request of a type is always answered, even with nothing: the client's
        // readiness waits for it (xds.md §2.3).
        self.send(&request.type_url, changes).await
    }

    async fn handle_follow_up(&mut self, request: DeltaDiscoveryRequest) -> Result<(), StreamEnd> {
        let Some(subscription) = self.types.get_mut(&request.type_url) else {
            return Ok(());
        };
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && subscription.last_nonce() != Some(nonce) {
            debug!(
                stream = self.id,
                node = %self.node_id,
                type_url = request.type_url,
                nonce,
                "stale nonce ignored"
            );
            return Ok(());
        }
        match &request.error_detail {
            Some(detail) => self.record_nack(&request.type_url, nonce, detail),
            None if !nonce.is_empty() => self.shared.stats.send_modify(|stats| stats.acks += 1),
            None => {}
        }
        let Some(subscription) = self.types.get_mut(&request.type_url) else {
            return Ok(());
        };
        let scope = subscription
            .update(
                &request.resource_names_subscribe,
                &request.resource_names_unsubscribe,
            )
            .map_err(refuse)?;
        if let Some(scope) = scope {
            let changes = subscription.changes(self.snapshot.versions(&request.type_url), &scope);
            // An explicit answer even when empty: the client asked and may be waiting.
            return self.send(&request.type_url, changes).await;
        }
        Ok(())
    }

    fn record_nack(&self, type_url: &str, nonce: &str, detail: &rpc::Status) {
        warn!(
            stream = self.id,
            node = %self.node_id,
            type_url,
            nonce,
            code = detail.code,
            error = detail.message,
            "client rejected resources (NACK)"
        );
        let report = NackReport {
            node_id: self.node_id.clone(),
            type_url: type_url.to_owned(),
            nonce: nonce.to_owned(),
            message: detail.message.clone(),
        };
        self.shared.stats.send_modify(|stats| {
            stats.nacks += 1;
            stats.last_nack = Some(report);
        });
    }

    /// Takes the newest snapshot and pushes, type by type, what changed.
    async fn push_changes(&mut self) -> Result<(), StreamEnd> {
        let latest = Arc::clone(&self.snapshots.borrow_and_update());
        self.snapshot = self.shared.versions.versioned(latest);
        let mut type_urls: Vec<String> = self.types.keys().cloned().collect();
        // Addresses before policies, as istiod pushes (xds.md §2.7).
        type_urls.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)));
        for type_url in type_urls {
            let Some(subscription) = self.types.get(&type_url) else {
                continue;
            };
            let changes = subscription.changes(self.snapshot.versions(&type_url), &Scope::All);
            if !changes.is_empty() {
                self.send(&type_url, changes).await?;
            }
        }
        Ok(())
    }

    /// Sends `changes` of `type_url` with a fresh nonce and records them as held by the client.
    async fn send(&mut self, type_url: &str, changes: Changes) -> Result<(), StreamEnd> {
        self.responses_sent += 1;
        let nonce = format!("{:x}-{}", self.id, self.responses_sent);
        let response = self.response(type_url, &changes, nonce.clone());
        if let Some(subscription) = self.types.get_mut(type_url) {
            subscription.record_sent(&changes, nonce);
        }
        debug!(
            stream = self.id,
            node = %self.node_id,
            type_url,
            nonce = response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "response"
        );
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(response))).await {
            Err(_elapsed) => Err(StreamEnd::SendTimeout(SEND_TIMEOUT)),
            Ok(Err(_closed)) => Err(StreamEnd::ClientGone),
            Ok(Ok(())) => {
                self.shared
                    .stats
                    .send_modify(|stats| stats.responses_sent += 1);
                Ok(())
            }
        }
    }

    fn response(&self, type_url: &str, changes: &Changes, nonce: String) -> DeltaDiscoveryResponse {
        let resources = changes
            .upserts
            .iter()
            .filter_map(|(name, version)| {
                let resource = self.snapshot.resource(type_url, name)?;
                Some(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(resource.clone()),
                    ..Default::default()
                })
            })
            .collect();
        DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            nonce,
            resources,
            removed_resources: changes.removed.clone(),
            ..Default::default()
        }
    }
}

/// A request, or why the request stream ended.
fn received(
    message: Result<Option<DeltaDiscoveryRequest>, Status>,
) -> Result<DeltaDiscoveryRequest, StreamEnd> {
    match message {
        Ok(Some(request)) => Ok(request),
        Ok(None) => Err(StreamEnd::ClientClosed),
        Err(status) => Err(StreamEnd::ClientFailed {
            code: status.code(),
            message: status.message().to_owned(),
        }),
    }
}

fn refuse(err: super::subscription::SubscriptionError) -> StreamEnd {
    StreamEnd::Refused(Status::resource_exhausted(err.to_string()))
}

fn push_rank(type_url: &str) -> (u8, &str) {
    let rank = match type_url {
        ADDRESS_TYPE_URL => 0,
        WORKLOAD_TYPE_URL => 1,
        AUTHORIZATION_TYPE_URL => 2,
        _ => 3,
    };
    (rank, type_url)
}
