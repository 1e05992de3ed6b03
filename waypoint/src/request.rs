//! One HTTP request through the waypoint, in order: well-formed (method, path), authenticated
//! (JWT rules bound to the Gateway or the Service), authorized (`mesh::policy`, the same order
//! as ztunnel's), then forwarded to an endpoint picked for this request. Each refusal is a
//! response the client can read — 400, 401, 403 `RBAC: access denied`, 503 — and a log line
//! naming why; the connection and the process carry on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use mesh::hbone::Baggage;
use mesh::hbone::headers::connect_headers;
use mesh::identity::SpiffeId;
use mesh::policy::{
    ConnectionAttrs, DenyReason, DryRunReport, RequestAttrs, RequestAuth, Verdict, evaluate_request,
};
use mesh::state::{Service, Workload};
use opentelemetry::KeyValue;
use tracing::{debug, info, warn};

use crate::authn::Outcome as Authn;
use crate::metrics::{
    self, AccessLog, Completion, Counted, Metered, Peers, RequestLabels, UpstreamBody,
};
use crate::path::normalize;
use crate::proxy::Inputs;
use crate::traces::RequestSpan;
use crate::upstream::{Endpoint, UpstreamError, Upstreams, Version};

/// What the client reads: the endpoint's body, or one the waypoint wrote.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Envoy's body when the endpoint could not be reached or broke off.
const UPSTREAM_FAILED: &str = "upstream connect error or disconnect/reset before headers";

/// Envoy's body for an RBAC denial; clients and tests match on it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One tunnelled client connection, as every request on it shares it.
pub struct Downstream {
    /// Shared waypoint state.
    pub inputs: Arc<Inputs>,
    /// The client's verified identity (its ztunnel presented the client's certificate).
    pub client: SpiffeId,
    /// The original client address (`forwarded` from the client's ztunnel).
    pub source: SocketAddr,
    /// The address the client dialed: a service VIP and port, or a pod.
    pub target: SocketAddr,
    /// The service dialed, when `target` is a VIP.
    pub service: Option<Arc<Service>>,
    /// HTTP version on both sides.
    pub version: Version,
    /// Tunnels to endpoints opened for this connection.
    pub upstreams: tokio::sync::Mutex<Upstreams>,
}

/// How the waypoint's part of one request went, for its log line and metrics.
#[derive(Default)]
struct Outcome {
    /// Why the waypoint answered itself; empty when the endpoint answered.
    note: String,
    /// Envoy's response flag, `-` when none.
    flags: &'static str,
    /// The endpoint picked.
    endpoint: Option<Arc<Workload>>,
    /// The client went away before a response could be sent.
    client_gone: bool,
}

impl Outcome {
    fn local(note: impl Into<String>, flags: &'static str) -> Self {
        Self {
            note: note.into(),
            flags,
            endpoint: None,
            client_gone: false,
        }
    }
}

/// Serves one request; never fails, since every failure is a response.
pub async fn handle(
    down: Arc<Downstream>,
    request: Request<Incoming>,
) -> Result<Response<Metered<ProxyBody>>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    // The request line as it travels: method, path and query, version.
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(1, |pq| pq.as_str().len());
    let request_headers =
        metrics::header_bytes(request.headers()) + (method.as_str().len() + target_len + 12) as u64;
    let request_body = Arc::new(AtomicU64::new(0));
    let span = down.inputs.traces.as_ref().map(|traces| {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_owned();
        let attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path.clone()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("server.address", host),
            KeyValue::new("network.protocol.version", down.version.as_str()),
            KeyValue::new("client.address", down.source.ip().to_string()),
            KeyValue::new("source.principal", down.client.to_string()),
        ];
        let service = down.service.as_ref().map_or("", |s| s.hostname.as_str());
        traces.request_span(request.headers(), format!("{method} {service}"), attributes)
    });
    let request = request.map(|body| Counted::new(body, Arc::clone(&request_body)));
    let (response, outcome) = down.process(request, span.as_ref()).await;
    let status = if outcome.client_gone {
        0
    } else {
        response.status().as_u16()
    };
    let labels = down.labels(&outcome, status, grpc);
    let completion = Completion {
        metrics: Arc::clone(&down.inputs.metrics),
        labels,
        started,
        request_headers,
        request_body,
        response_headers: metrics::header_bytes(response.headers()) + 17,
        grpc,
        span,
        upstream: outcome.endpoint.as_ref().map(|w| w.uid.clone()),
        access: AccessLog {
            client: down.client.to_string(),
            source: down.source,
            target: down.target,
            service: down
                .service
                .as_ref()
                .map(|s| s.hostname.clone())
                .unwrap_or_default(),
            method: method.to_string(),
            path,
            note: outcome.note,
        },
    };
    Ok(response.map(|body| Metered::new(body, completion)))
}

fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

impl Downstream {
    fn service_name(&self) -> Option<(String, String)> {
        self.service
            .as_ref()
            .map(|s| (s.namespace.clone(), s.name.clone()))
    }

    fn labels(&self, outcome: &Outcome, status: u16, grpc: bool) -> RequestLabels {
        let snapshot = self.inputs.directory.load();
        let peers = Peers {
            source: snapshot.workload_by_ip(&self.inputs.network, self.source.ip()),
            source_principal: self.client.to_string(),
            destination: outcome.endpoint.clone(),
            service_host: self
                .service
                .as_ref()
                .map(|s| s.hostname.clone())
                .unwrap_or_default(),
            service_name: self
                .service
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        };
        let protocol = if grpc { "grpc" } else { "http" };
        self.inputs
            .reporter
            .request_labels(&peers, protocol, status, outcome.flags)
    }

    /// The response, and how the waypoint's part of it went.
    async fn process(
        &self,
        request: Request<UpstreamBody>,
        span: Option<&RequestSpan>,
    ) -> (Response<ProxyBody>, Outcome) {
        if !request
            .method()
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_uppercase())
        {
            return (
                local(StatusCode::BAD_REQUEST, "invalid method"),
                Outcome::local("method is not upper case", "-"),
            );
        }
        let raw = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let (path, query) = match normalize(&raw) {
            Ok(normalized) => normalized,
            Err(err) => {
                return (
                    local(StatusCode::BAD_REQUEST, "invalid path"),
                    Outcome::local(err.to_string(), "-"),
                );
            }
        };
        let (mut parts, body) = request.into_parts();
        if let Err(note) = rewrite_path(&mut parts.uri, &path, query) {
            return (
                local(StatusCode::BAD_REQUEST, "invalid path"),
                Outcome::local(note, "-"),
            );
        }

        let policies = self.inputs.policies.load();
        let service = self.service_name();
        let rules = policies.jwt_rules(service.as_ref());
        let auth = if rules.is_empty() {
            None
        } else {
            match self
                .inputs
                .authenticator
                .authenticate(&rules, &mut parts)
                .await
            {
                Authn::NoToken => None,
                Authn::Authenticated(token) => Some(RequestAuth {
                    issuer: token.issuer,
                    subject: token.subject,
                    audiences: token.audiences,
                    presenter: token.presenter,
                    claims: token.claims,
                }),
                Authn::Refused(refusal) => {
                    let note = format!("token refused: {}", mesh::errors::chain(&refusal));
                    return (
                        local(refusal.status(), refusal.body()),
                        Outcome::local(note, "-"),
                    );
                }
            }
        };

        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_owned();
        let connection = ConnectionAttrs {
            source_identity: Some(self.client.clone()),
            source_ip: self.source.ip(),
            destination_ip: self.target.ip(),
            destination_port: self.target.port(),
        };
        let attrs = RequestAttrs {
            method: parts.method.as_str(),
            path: &path,
            host: &host,
            headers: &parts.headers,
            remote_ip: self.source.ip(),
            auth: auth.as_ref(),
        };
        let decision = evaluate_request(
            policies.authorizations(service.as_ref()),
            &connection,
            &attrs,
        );
        if let Some(report) = &decision.dry_run {
            self.report_dry_run(report);
        }
        if let Verdict::Deny(reason) = decision.verdict {
            let note = match &reason {
                DenyReason::DeniedBy(policy) => format!("denied by {policy}"),
                other => other.to_string(),
            };
            info!(src.identity = %self.client, dst = %self.target, reason = %reason, "request denied");
            return (
                local(StatusCode::FORBIDDEN, DENIED_BODY),
                Outcome::local(note, "RBAC"),
            );
        }

        if self.version == Version::Http1 {
            strip_hop_by_hop(&mut parts.headers);
        }
        // The endpoint's spans become children of the waypoint's.
        if let (Some(traces), Some(span)) = (&self.inputs.traces, span) {
            traces.inject(span, &mut parts.headers);
        }
        let request = Request::from_parts(parts, body);
        self.forward(request).await
    }

    async fn forward(&self, request: Request<UpstreamBody>) -> (Response<ProxyBody>, Outcome) {
        let (addr, workload, expected) = match self.inputs.pick_endpoint(self.target) {
            Ok(picked) => picked,
            Err(why) => return no_upstream(&why),
        };
        let headers = connect_headers(
            &Baggage::default(),
            self.source,
            self.service.as_ref().map(|s| s.hostname.as_str()),
        );
        let endpoint = Endpoint {
            addr,
            expected,
            headers,
            source: &self.inputs.identity,
        };
        match self
            .inputs
            .forwarder
            .send_within(&self.upstreams, endpoint, self.version, request)
            .await
        {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if self.version == Version::Http1 {
                    strip_hop_by_hop(&mut parts.headers);
                }
                let outcome = Outcome {
                    note: String::new(),
                    flags: "-",
                    endpoint: Some(workload),
                    client_gone: false,
                };
                (Response::from_parts(parts, Either::Left(body)), outcome)
            }
            Err(err) => {
                let note = mesh::errors::chain(&err).to_string();
                // The client's own body failed (it went away mid-upload): its loss, not the
                // endpoint's, so no warning and no 503 blamed on the upstream.
                if let UpstreamError::Http { cause, .. } = &err
                    && cause.is_user()
                {
                    debug!(dst = %self.target, error = %note, "client went away mid-request");
                    let outcome = Outcome {
                        note,
                        flags: "DC",
                        endpoint: Some(workload),
                        client_gone: true,
                    };
                    return (
                        local(StatusCode::BAD_REQUEST, "client disconnected"),
                        outcome,
                    );
                }
                warn!(dst = %self.target, endpoint = %workload.uid, error = %note, "upstream request failed");
                let (flags, status, body) = match err {
                    UpstreamError::Tunnel { .. } => {
                        ("UF", StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_FAILED)
                    }
                    UpstreamError::Http { .. } => {
                        ("UC", StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_FAILED)
                    }
                    UpstreamError::Timeout { .. } => (
                        "UT",
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                    ),
                };
                let outcome = Outcome {
                    note,
                    flags,
                    endpoint: Some(workload),
                    client_gone: false,
                };
                (local(status, body), outcome)
            }
        }
    }

    /// The dry-run record and counter, in ztunnel's words and with its rules (policy.md §5.4).
    fn report_dry_run(&self, report: &DryRunReport) {
        for policy in &report.matched_denies {
            info!(%policy, "dry-run: deny policy match");
        }
        for policy in &report.matched_allows {
            info!(%policy, "dry-run: allow policy match");
        }
        if report.no_allow_matched {
            info!("dry-run: no allow policies match");
        }
        for count in report.counts() {
            self.inputs.metrics.dry_run(count);
        }
        let (verdict, policy) = report.verdict.summary();
        info!(src = %self.source.ip(), dst = %self.target, policy, verdict, "dry-run verdict");
    }
}

fn no_upstream(why: &str) -> (Response<ProxyBody>, Outcome) {
    warn!(reason = why, "no upstream for request");
    (
        local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        Outcome::local(why, "UH"),
    )
}

/// Forwards the normalised path, as Envoy does, so the application sees what policy saw.
fn rewrite_path(uri: &mut Uri, path: &str, query: Option<&str>) -> Result<(), String> {
    let wanted = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    if uri.path_and_query().map(|pq| pq.as_str()) == Some(wanted.as_str()) {
        return Ok(());
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        wanted
            .parse()
            .map_err(|e| format!("normalised path: {e}"))?,
    );
    *uri = Uri::from_parts(parts).map_err(|e| format!("normalised path: {e}"))?;
    Ok(())
}

/// Drops the headers of one HTTP/1.1 hop, both ways.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}
