//! Istio's standard L7 metrics as a waypoint reports them (telemetry.md §a.4): one
//! `istio_requests_total` increment and one sample in each of the duration, request-size and
//! response-size histograms per completed request, labelled with who called, which endpoint
//! answered and how; plus the `istio_tcp_*` families for streams that are not HTTP.
//!
//! A request is recorded when its response body ends — sent whole, or abandoned by the client —
//! so the duration covers streaming, and a gRPC status read from the trailers is in the labels.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use mesh::policy::DryRunCount;
use mesh::state::Workload;
use mesh::telemetry::metrics::DryRunLabels;

use crate::traces::RequestSpan;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Envoy's default buckets, for the milliseconds and the bytes histograms alike.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The labels of the request families, in Envoy's order for a waypoint. Empty means `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The labels of the `istio_tcp_*` families: the request labels without the HTTP ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Who called and who answered, as the labels describe them.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// The caller's workload, when known by its address.
    pub source: Option<Arc<Workload>>,
    /// The caller's verified identity (`spiffe://...`).
    pub source_principal: String,
    /// The endpoint that answered, when one was picked.
    pub destination: Option<Arc<Workload>>,
    /// The Service FQDN, or the request's host when it was not addressed to a Service.
    pub service_host: String,
    /// The Service's short name.
    pub service_name: String,
}

/// The waypoint's own place, for the `destination_service_namespace` and `destination_cluster`
/// labels (Envoy fills them from its node metadata).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The waypoint's namespace.
    pub namespace: String,
    /// Its cluster id.
    pub cluster: String,
}

fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        "unknown".to_owned()
    } else {
        value.to_owned()
    }
}

fn workload_parts(w: Option<&Workload>) -> [String; 7] {
    let get = |f: fn(&Workload) -> &str| or_unknown(w.map_or("", f));
    let revision = w
        .map(|w| w.canonical_revision.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or("latest")
        .to_owned();
    [
        get(|w| w.workload_name.as_str()),
        get(|w| w.canonical_name.as_str()),
        revision,
        get(Workload::namespace),
        get(|w| w.canonical_name.as_str()),
        get(|w| w.canonical_revision.as_str()),
        get(|w| w.cluster_id.as_str()),
    ]
}

impl Reporter {
    /// The TCP labels for a stream between `peers`.
    pub fn tcp_labels(&self, peers: &Peers, flags: &'static str) -> TcpLabels {
        let [sw, scs, scr, sns, sapp, sver, scl] = workload_parts(peers.source.as_deref());
        let [dw, dcs, dcr, dns, dapp, dver, _] = workload_parts(peers.destination.as_deref());
        // The namespace in the caller's SPIFFE ID beats the workload lookup (telemetry.md).
        let sns = namespace_of(&peers.source_principal).unwrap_or(sns);
        TcpLabels {
            reporter: "waypoint",
            source_workload: sw,
            source_canonical_service: scs,
            source_canonical_revision: scr,
            source_workload_namespace: sns,
            source_principal: or_unknown(&peers.source_principal),
            source_app: sapp,
            source_version: sver,
            source_cluster: scl,
            destination_workload: dw,
            destination_workload_namespace: dns,
            destination_principal: or_unknown(
                &peers
                    .destination
                    .as_ref()
                    .map(|w| w.identity().to_string())
                    .unwrap_or_default(),
            ),
            destination_app: dapp,
            destination_version: dver,
            destination_service: or_unknown(&peers.service_host),
            destination_canonical_service: dcs,
            destination_canonical_revision: dcr,
            destination_service_name: or_unknown(&peers.service_name),
            destination_service_namespace: or_unknown(&self.namespace),
            destination_cluster: or_unknown(&self.cluster),
            request_protocol: "tcp",
            response_flags: flags,
            connection_security_policy: "mutual_tls",
        }
    }

    /// The request labels for one exchange.
    pub fn request_labels(
        &self,
        peers: &Peers,
        protocol: &'static str,
        status: u16,
        flags: &'static str,
    ) -> RequestLabels {
        let t = self.tcp_labels(peers, flags);
        RequestLabels {
            reporter: t.reporter,
            source_workload: t.source_workload,
            source_canonical_service: t.source_canonical_service,
            source_canonical_revision: t.source_canonical_revision,
            source_workload_namespace: t.source_workload_namespace,
            source_principal: t.source_principal,
            source_app: t.source_app,
            source_version: t.source_version,
            source_cluster: t.source_cluster,
            destination_workload: t.destination_workload,
            destination_workload_namespace: t.destination_workload_namespace,
            destination_principal: t.destination_principal,
            destination_app: t.destination_app,
            destination_version: t.destination_version,
            destination_service: t.destination_service,
            destination_canonical_service: t.destination_canonical_service,
            destination_canonical_revision: t.destination_canonical_revision,
            destination_service_name: t.destination_service_name,
            destination_service_namespace: t.destination_service_namespace,
            destination_cluster: t.destination_cluster,
            request_protocol: protocol,
            response_code: status.to_string(),
            grpc_response_status: String::new(),
            response_flags: flags,
            connection_security_policy: t.connection_security_policy,
        }
    }
}

fn namespace_of(principal: &str) -> Option<String> {
    let rest = principal.split("/ns/").nth(1)?;
    Some(rest.split('/').next()?.to_owned())
}

/// Every family the waypoint exports.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    dry_run: Family<DryRunLabels, Counter>,
    refused_connections: Counter,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    /// Registers every family in `registry` under upstream's names.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
            request_bytes: Family::new_with_constructor(histogram),
            response_bytes: Family::new_with_constructor(histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            dry_run: Family::default(),
            refused_connections: Counter::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests completed",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration, from the request's start to the end of its response",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request size: headers and body",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response size: headers and body",
            metrics.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened through the waypoint",
            metrics.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed through the waypoint",
            metrics.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP connections",
            metrics.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections",
            metrics.tcp_received.clone(),
        );
        registry.register(
            "istio_authz_dry_run",
            "Dry-run policy outcomes: what would have been allowed or denied",
            metrics.dry_run.clone(),
        );
        registry.register(
            "waypoint_connections_refused",
            "Client connections refused because the waypoint held its maximum",
            metrics.refused_connections.clone(),
        );
        Arc::new(metrics)
    }

    /// One dry-run outcome (policy.md §5.4).
    pub fn dry_run(&self, count: DryRunCount) {
        self.dry_run
            .get_or_create(&DryRunLabels::of("waypoint", count))
            .inc();
    }

    /// A client connection refused at the connection limit.
    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    /// One completed request.
    pub fn record_request(&self, labels: &RequestLabels, millis: f64, request: u64, response: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes
            .get_or_create(labels)
            .observe(request as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(response as f64);
    }

    /// A TCP stream opened.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A TCP stream closed after `sent` bytes to the client and `received` from it.
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }
}

/// The size of a header block as it would travel in HTTP/1.1 (`name: value\r\n` each).
pub fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

/// The request body as forwarded: counted on its way to the endpoint.
pub type UpstreamBody = Counted<hyper::body::Incoming>;

/// A body whose data bytes are counted into a shared total.
pub struct Counted<B> {
    inner: B,
    total: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// `inner`, counted into `total`.
    pub fn new(inner: B, total: Arc<AtomicU64>) -> Self {
        Self { inner, total }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.total
                .fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is recorded when the response ends.
pub struct Completion {
    /// Where to record.
    pub metrics: Arc<Metrics>,
    /// Labels (the gRPC status is filled from the trailers, if any).
    pub labels: RequestLabels,
    /// When the request arrived.
    pub started: Instant,
    /// Request header bytes plus the counted body.
    pub request_headers: u64,
    /// The request body's counter.
    pub request_body: Arc<AtomicU64>,
    /// Response header bytes.
    pub response_headers: u64,
    /// Whether the request is gRPC (so trailers carry a status).
    pub grpc: bool,
    /// The request's span, ended with the response.
    pub span: Option<RequestSpan>,
    /// The endpoint that answered, for the span.
    pub upstream: Option<String>,
    /// What the access log line says besides the labels.
    pub access: AccessLog,
}

/// The request as the access log names it.
pub struct AccessLog {
    /// The client's identity.
    pub client: String,
    /// The original client address.
    pub source: std::net::SocketAddr,
    /// The address dialed.
    pub target: std::net::SocketAddr,
    /// The Service FQDN, empty when addressed to a pod.
    pub service: String,
    /// The method.
    pub method: String,
    /// The path as received.
    pub path: String,
    /// Why the waypoint answered itself, if it did.
    pub note: String,
}

/// A response body that records its request when it ends or is dropped.
pub struct Metered<B: Body + Unpin> {
    inner: B,
    sent: u64,
    completion: Option<Completion>,
}

impl<B: Body + Unpin> Metered<B> {
    /// `inner`, recording `completion` at its end.
    pub fn new(inner: B, completion: Completion) -> Self {
        Self {
            inner,
            sent: 0,
            completion: Some(completion),
        }
    }

    fn finish(&mut self, client_gone: bool) {
        let Some(mut done) = self.completion.take() else {
            return;
        };
        if client_gone && done.labels.response_flags == "-" {
            // The client went away before the response ended (Envoy's downstream disconnect).
            done.labels.response_flags = "DC";
        }
        if done.grpc && done.labels.grpc_response_status.is_empty() {
            "2".clone_into(&mut done.labels.grpc_response_status);
        }
        let request = done.request_headers + done.request_body.load(Ordering::Relaxed);
        let elapsed = done.started.elapsed();
        let millis = elapsed.as_secs_f64() * 1000.0;
        let response = done.response_headers + self.sent;
        // One line per request, written when its response has ended (or was abandoned), so the
        // duration, sizes and gRPC status are the final ones.
        let access = &done.access;
        tracing::info!(
            src.identity = %access.client,
            src.addr = %access.source,
            dst = %access.target,
            dst.service = %access.service,
            method = %access.method,
            path = ?access.path,
            status = %done.labels.response_code,
            grpc_status = %done.labels.grpc_response_status,
            flags = %done.labels.response_flags,
            request_bytes = request,
            response_bytes = response,
            duration_ms = elapsed.as_millis() as u64,
            note = ?access.note,
            "request complete"
        );
        done.metrics
            .record_request(&done.labels, millis, request, response);
        if let Some(span) = done.span {
            let status = done.labels.response_code.parse().unwrap_or(0);
            span.end(status, done.labels.response_flags, done.upstream);
        }
    }
}

impl<B: Body + Unpin> Drop for Metered<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (an empty body is never polled).
        let gone = !self.inner.is_end_stream();
        self.finish(gone);
    }
}

impl<B: Body + Unpin> Body for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.remaining() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(done) = self.completion.as_mut()
                        && let Some(status) =
                            trailers.get("grpc-status").and_then(|v| v.to_str().ok())
                    {
                        status.clone_into(&mut done.labels.grpc_response_status);
                    }
                    self.sent += header_bytes(trailers);
                }
            }
            Poll::Ready(None) => self.finish(false),
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = self.completion.as_mut() {
                    done.labels.response_flags = "UC";
                }
                self.finish(false);
            }
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.finish(false);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
