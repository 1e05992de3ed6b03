//! What each proxied connection reports: the `istio_tcp_*` series (opened once its context is
//! known, bytes as they flow, closed once with the final flag) and one access-log record when it
//! ends (telemetry.md §a.3, §b.2). A [`ConnectionRecord`] is that context; dropping one that
//! was never finished (a connection cut at the drain deadline) still closes it exactly once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use mesh::hbone::pool::PoolError;
use mesh::identity::SpiffeId;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ConnectionError, chain};
use crate::metrics::{Metrics, Reporter, ResponseFlag, SecurityPolicy, TrafficLabels};
use crate::state::{Service, Workload};

/// One side of a connection, as metrics and the access log describe it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The workload, when known.
    pub workload: Option<Arc<Workload>>,
    /// The identity proven over mTLS (or, for a destination, the one it must prove).
    pub identity: Option<SpiffeId>,
}

/// Everything known about a connection once it is routed (or accepted) and before bytes flow.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionContext {
    pub reporter: Reporter,
    pub security: SecurityPolicy,
    pub source: Peer,
    pub destination: Peer,
    /// The Service the client meant, if any.
    pub service: Option<Arc<Service>>,
    /// The client's socket address.
    pub src_addr: SocketAddr,
    /// The TCP destination actually used.
    pub dst_addr: SocketAddr,
    /// The CONNECT authority (HBONE only).
    pub hbone_addr: Option<SocketAddr>,
}

/// The series a connection counts into, and its own running totals.
pub(crate) struct Counts {
    /// Client → server (`istio_tcp_received_bytes_total`).
    client_to_server: Counter,
    /// Server → client (`istio_tcp_sent_bytes_total`).
    server_to_client: Counter,
    up: AtomicU64,
    down: AtomicU64,
}

/// A recorded connection. Finish it with [`ConnectionRecord::finish`].
pub(crate) struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: TrafficLabels,
    context: ConnectionContext,
    counts: Counts,
    started: Instant,
    finished: bool,
}

impl ConnectionRecord {
    /// Counts the connection as opened.
    pub(crate) fn open(metrics: &Arc<Metrics>, context: ConnectionContext) -> Self {
        let labels = labels(&context);
        metrics.connections_opened.get_or_create(&labels).inc();
        let counts = Counts {
            client_to_server: metrics.received_bytes.get_or_create(&labels).clone(),
            server_to_client: metrics.sent_bytes.get_or_create(&labels).clone(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        };
        tracing::event!(target: "access", tracing::Level::DEBUG, src.addr = %context.src_addr, dst.addr = %context.dst_addr,
            direction = direction(context.reporter), "connection opened");
        Self {
            metrics: Arc::clone(metrics),
            labels,
            context,
            counts,
            started: Instant::now(),
            finished: false,
        }
    }

    /// `downstream` (the client's leg), counting what is read from it as client → server and
    /// what is written to it as server → client.
    pub(crate) fn meter<'a, S: ?Sized>(&'a self, downstream: &'a mut S) -> Metered<'a, S> {
        Metered {
            inner: downstream,
            counts: &self.counts,
        }
    }

    /// Ends the record: closed (and failed) with the outcome's flag, and the access-log line.
    pub(crate) fn finish(mut self, outcome: Result<(), &ConnectionError>) {
        self.finished = true;
        let flag = outcome.err().map_or(ResponseFlag::None, flag_of);
        let error = outcome.err().map(error_text);
        self.close(flag, error.as_deref());
    }

    fn close(&self, flag: ResponseFlag, error: Option<&str>) {
        let mut labels = self.labels.clone();
        labels.response_flags = flag.as_str();
        self.metrics.connections_closed.get_or_create(&labels).inc();
        if flag != ResponseFlag::None {
            self.metrics.connections_failed.get_or_create(&labels).inc();
        }
        access_log(&self.context, &self.counts, self.started, error);
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.close(
                ResponseFlag::Connect,
                Some("connection cut: the proxy's drain deadline passed"),
            );
        }
    }
}

/// The flag upstream reports for `err`.
fn flag_of(err: &ConnectionError) -> ResponseFlag {
    match err {
        ConnectionError::Denied(_) | ConnectionError::PolicyChanged => ResponseFlag::Deny,
        ConnectionError::Tls(_) => ResponseFlag::TlsFailure,
        ConnectionError::Certificate(_) => ResponseFlag::IdentityError,
        ConnectionError::Tunnel(PoolError::DialTimeout { .. }) => ResponseFlag::NetworkPolicy,
        _ => ResponseFlag::Connect,
    }
}

/// The error text of the access log: upstream's wording for policy denials.
fn error_text(err: &ConnectionError) -> String {
    match err {
        ConnectionError::Denied(reason) => {
            format!("connection closed due to policy rejection: {reason}")
        }
        other => chain(other),
    }
}

fn direction(reporter: Reporter) -> &'static str {
    match reporter {
        Reporter::Source => "outbound",
        Reporter::Destination => "inbound",
    }
}

fn labels(context: &ConnectionContext) -> TrafficLabels {
    let mut labels = TrafficLabels {
        reporter: context.reporter.as_str(),
        request_protocol: "tcp",
        response_flags: ResponseFlag::None.as_str(),
        connection_security_policy: context.security.as_str(),
        ..TrafficLabels::default()
    };
    if let Some(w) = &context.source.workload {
        labels.source_workload = controller_name(w).to_owned();
        labels.source_canonical_service = w.canonical_name.clone();
        labels.source_canonical_revision = w.canonical_revision.clone();
        labels.source_workload_namespace = w.namespace().to_owned();
        labels.source_app = w.canonical_name.clone();
        labels.source_version = w.canonical_revision.clone();
        labels.source_cluster = w.cluster_id.clone();
        labels.source_region = w.locality.region.clone();
        labels.source_zone = w.locality.zone.clone();
    }
    if context.security == SecurityPolicy::MutualTls
        && let Some(id) = &context.source.identity
    {
        labels.source_principal = id.to_string();
    }
    if let Some(service) = &context.service {
        labels.destination_service = service.hostname.clone();
        labels.destination_service_namespace = service.namespace.clone();
        labels.destination_service_name = service.name.clone();
    }
    if let Some(w) = &context.destination.workload {
        labels.destination_workload = controller_name(w).to_owned();
        labels.destination_canonical_service = w.canonical_name.clone();
        labels.destination_canonical_revision = w.canonical_revision.clone();
        labels.destination_workload_namespace = w.namespace().to_owned();
        labels.destination_app = w.canonical_name.clone();
        labels.destination_version = w.canonical_revision.clone();
        labels.destination_cluster = w.cluster_id.clone();
        labels.destination_region = w.locality.region.clone();
        labels.destination_zone = w.locality.zone.clone();
        labels.destination_principal = w.identity().to_string();
    }
    labels.fill_unknown()
}

/// The owning controller's name (`workload_name`), else the pod name.
fn controller_name(workload: &Workload) -> &str {
    if workload.workload_name.is_empty() {
        &workload.name
    } else {
        &workload.workload_name
    }
}

/// Pod name, else canonical service: how the access log names a workload.
fn pod_name(workload: &Workload) -> Option<&str> {
    [workload.name.as_str(), workload.canonical_name.as_str()]
        .into_iter()
        .find(|name| !name.is_empty())
}

/// One `connection complete` record, fields in upstream's order; unknown fields are omitted.
fn access_log(context: &ConnectionContext, counts: &Counts, started: Instant, error: Option<&str>) {
    let up = counts.up.load(Ordering::Relaxed);
    let down = counts.down.load(Ordering::Relaxed);
    // Upstream's `bytes_sent` is what this ztunnel sent towards the remote peer.
    let (bytes_sent, bytes_recv) = match context.reporter {
        Reporter::Source => (up, down),
        Reporter::Destination => (down, up),
    };
    let mtls = context.security == SecurityPolicy::MutualTls;
    let src = context.source.workload.as_deref();
    let dst = context.destination.workload.as_deref();
    let src_identity = mtls
        .then(|| context.source.identity.as_ref().map(|id| id.to_string()))
        .flatten();
    let dst_identity = mtls
        .then(|| {
            context
                .destination
                .identity
                .as_ref()
                .map(|id| id.to_string())
        })
        .flatten();
    let duration = format!("{}ms", started.elapsed().as_millis());
    let hbone_addr = context.hbone_addr.map(tracing::field::display);
    let service = context.service.as_ref().map(|s| s.hostname.as_str());
    macro_rules! record {
        ($level:expr) => {
            tracing::event!(target: "access", $level,
                src.addr = %context.src_addr,
                src.workload = src.and_then(pod_name),
                src.namespace = src.map(Workload::namespace),
                src.identity = src_identity.as_deref(),
                src.cluster = src.map(|w| w.cluster_id.as_str()),
                dst.addr = %context.dst_addr,
                dst.hbone_addr = hbone_addr,
                dst.service = service,
                dst.workload = dst.and_then(pod_name),
                dst.namespace = dst.map(Workload::namespace),
                dst.identity = dst_identity.as_deref(),
                dst.cluster = dst.map(|w| w.cluster_id.as_str()),
                direction = direction(context.reporter),
                bytes_sent,
                bytes_recv,
                duration = duration.as_str(),
                error,
                "connection complete")
        };
    }
    if error.is_some() {
        record!(tracing::Level::ERROR);
    } else {
        record!(tracing::Level::INFO);
    }
}

/// A stream whose reads and writes are counted as they happen, so a long-lived connection's
/// bytes show in metrics before it ends.
pub(crate) struct Metered<'a, S: ?Sized> {
    inner: &'a mut S,
    counts: &'a Counts,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.counts.client_to_server.inc_by(read);
            self.counts.up.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            let written = *written as u64;
            self.counts.server_to_client.inc_by(written);
            self.counts.down.fetch_add(written, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
