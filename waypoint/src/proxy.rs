//! HBONE in: the waypoint's port 15008. Each mTLS connection comes from a client's ztunnel
//! (presenting the client workload's certificate); each CONNECT stream on it is one client
//! connection to a service VIP (or a pod) that uses this waypoint. A stream is served as
//! HTTP/1.1 or HTTP/2 when it speaks it, else as TCP under the L4 attributes of the same
//! policies. Draining stops accepting, sends GOAWAY and lets requests in flight finish.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::hbone::headers::{connect_headers, forwarded_for};
use mesh::hbone::server::{IncomingTunnel, serve_connection};
use mesh::hbone::{Authority, Baggage, H2Settings};
use mesh::identity::{CertStore, SpiffeId};
use mesh::policy::{ConnectionAttrs, Verdict, evaluate};
use mesh::state::{Directory, Resolution, Service, Workload};
use mesh::tls::{self, TrustBundles};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::authn::Authenticator;
use crate::metrics::{Metrics, Peers, Reporter};
use crate::policies::PolicyStore;
use crate::request::{self, Downstream};
use crate::sniff::{Prefixed, Protocol, sniff};
use crate::traces::Traces;
use crate::upstream::{Endpoint, Forwarder, Upstreams, Version};

/// Request and connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A stream silent this long at its start is TCP.
    pub sniff_wait: Duration,
    /// Longest an HTTP/1.1 client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head (and read buffer), in bytes.
    pub max_header_bytes: usize,
    /// Largest HTTP/2 header list, in bytes.
    pub max_header_list_size: u32,
    /// Concurrent HTTP/2 requests per client connection.
    pub max_concurrent_streams: u32,
    /// Client connections held at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sniff_wait: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 60 * 1024,
            max_header_list_size: 60 * 1024,
            max_concurrent_streams: 100,
            max_connections: 10_000,
        }
    }
}

/// What every connection shares.
pub struct Inputs {
    /// The waypoint's identity.
    pub identity: SpiffeId,
    /// Its pod address: how it finds its own workload (and avoids routing to itself).
    pub instance_ip: IpAddr,
    /// Network of its pod.
    pub network: String,
    /// Workloads and services.
    pub directory: Arc<Directory>,
    /// L7 policies and JWT rules.
    pub policies: Arc<PolicyStore>,
    /// The waypoint's certificate.
    pub certs: CertStore,
    /// Requests out.
    pub forwarder: Forwarder,
    /// JWT validation.
    pub authenticator: Authenticator,
    /// Limits.
    pub limits: Limits,
    /// Request and TCP metrics.
    pub metrics: Arc<Metrics>,
    /// The waypoint's own labels.
    pub reporter: Reporter,
    /// Request spans, when an OTLP collector is configured.
    pub traces: Option<Traces>,
    server_config: Mutex<Option<(String, Arc<ServerConfig>)>>,
}

impl Inputs {
    /// Inputs with no TLS configuration built yet.
    #[allow(clippy::too_many_arguments)] // one field each, named at the call site
    pub fn new(
        identity: SpiffeId,
        instance_ip: IpAddr,
        network: String,
        directory: Arc<Directory>,
        policies: Arc<PolicyStore>,
        certs: CertStore,
        forwarder: Forwarder,
        authenticator: Authenticator,
        limits: Limits,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        traces: Option<Traces>,
    ) -> Self {
        Self {
            identity,
            instance_ip,
            network,
            directory,
            policies,
            certs,
            forwarder,
            authenticator,
            limits,
            metrics,
            reporter,
            traces,
            server_config: Mutex::new(None),
        }
    }

    /// The endpoint for one request or TCP stream to `target`, picked now: its address with
    /// the target port, its workload, and the identities its ztunnel may prove.
    pub fn pick_endpoint(
        &self,
        target: SocketAddr,
    ) -> Result<(SocketAddr, Arc<Workload>, Vec<SpiffeId>), String> {
        let snapshot = self.directory.load();
        let me = snapshot.workload_by_ip(&self.network, self.instance_ip);
        let resolution = snapshot.resolve_destination(&self.network, target, me.as_deref());
        let expected = resolution.expected_identities();
        let (workload, port) = match resolution {
            Resolution::Service {
                endpoint,
                target_port,
                ..
            } => (endpoint, target_port),
            Resolution::Workload { workload, port } => (workload, port),
            // Without our own workload the destination still points at this waypoint.
            Resolution::Waypoint { .. } | Resolution::WaypointUnavailable { .. } => {
                return Err(format!(
                    "{target} resolves to a waypoint: this waypoint's own workload ({}) is not known",
                    self.instance_ip
                ));
            }
            Resolution::NoHealthyEndpoint { service } => {
                return Err(format!("{}: no healthy endpoint", service.hostname));
            }
            Resolution::NoPort { service, port } => {
                return Err(format!("{}: no port {port}", service.hostname));
            }
            Resolution::Passthrough { .. } => return Err(format!("{target}: unknown destination")),
        };
        let ip = *workload
            .ips
            .first()
            .ok_or_else(|| format!("{}: no address", workload.uid))?;
        Ok((SocketAddr::new(ip, port), workload, expected))
    }

    /// The TLS server configuration, rebuilt only when the certificate changes.
    async fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let cert = self
            .certs
            .get(&self.identity)
            .await
            .map_err(|e| format!("no certificate for {}: {e}", self.identity))?;
        let serial = cert.leaf().serial.clone();
        let mut held = self
            .server_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((held_serial, config)) = held.as_ref()
            && *held_serial == serial
        {
            return Ok(Arc::clone(config));
        }
        let bundles = TrustBundles::single(self.identity.trust_domain().clone(), cert.roots())
            .map_err(|e| format!("trust bundle: {e}"))?;
        let config =
            tls::server_config(&cert, Arc::new(bundles)).map_err(|e| format!("TLS: {e}"))?;
        *held = Some((serial, Arc::clone(&config)));
        Ok(config)
    }
}

/// Accepts on `listener` until `drain`; then waits up to `grace` for open connections.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    drain: CancellationToken,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    // Each client connection holds a permit: memory stays bounded however many ztunnels call.
    let permits = Arc::new(Semaphore::new(inputs.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = drain.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    inputs.metrics.connection_refused();
                    warn!(src = %peer, limit = inputs.limits.max_connections,
                        "connection refused: the waypoint holds its maximum of client connections (MAX_CONNECTIONS)");
                    continue;
                };
                let (inputs, drain) = (Arc::clone(&inputs), drain.clone());
                tracker.spawn(async move {
                    connection(inputs, tcp, peer, drain).await;
                    drop(permit);
                });
            }
            Err(err) => {
                // Out of descriptors, say: back off briefly instead of spinning.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracker.close();
    info!(connections = tracker.len(), ?grace, "draining");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            connections = tracker.len(),
            "drain grace period over; closing the rest"
        );
    }
}

async fn connection(
    inputs: Arc<Inputs>,
    tcp: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let config = match inputs.server_config().await {
        Ok(config) => config,
        Err(err) => {
            warn!(src = %peer, error = err, "inbound connection refused");
            return;
        }
    };
    let (tls, client) = match tls::accept(config, tcp).await {
        Ok(done) => done,
        Err(err) => {
            warn!(src = %peer, error = %mesh::errors::chain(&err), "inbound handshake failed");
            return;
        }
    };
    debug!(src = %peer, client = %client, "inbound HBONE connection");
    let context = Arc::new(Client {
        inputs,
        identity: client,
        peer,
        drain: drain.clone(),
    });
    let served = serve_connection(tls, H2Settings::server(), drain, move |tunnel| {
        let context = Arc::clone(&context);
        async move { context.tunnel(tunnel).await }
    })
    .await;
    if let Err(err) = served {
        debug!(src = %peer, error = %mesh::errors::chain(&err), "inbound HBONE connection ended");
    }
}

/// One client ztunnel's connection.
struct Client {
    inputs: Arc<Inputs>,
    identity: SpiffeId,
    peer: SocketAddr,
    drain: CancellationToken,
}

impl Client {
    async fn tunnel(&self, tunnel: IncomingTunnel) {
        let Authority::Addr(target) = *tunnel.authority() else {
            warn!(src = %self.peer, authority = %tunnel.authority(), "tunnel refused: not ip:port");
            tunnel.reject(StatusCode::BAD_REQUEST);
            return;
        };
        let source = forwarded_for(tunnel.headers()).unwrap_or(self.peer);
        let snapshot = self.inputs.directory.load();
        let network = &self.inputs.network;
        let service = snapshot.service_by_vip(network, target.ip());
        if service.is_none() && snapshot.workload_by_ip(network, target.ip()).is_none() {
            warn!(src = %source, dst = %target, "tunnel refused: unknown destination");
            tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
        let mut stream = match tunnel.accept(HeaderMap::new()) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(src = %source, error = %err, "client went away before the tunnel opened");
                return;
            }
        };
        let limits = self.inputs.limits;
        let (protocol, prefix) = match sniff(&mut stream, limits.sniff_wait).await {
            Ok(sniffed) => sniffed,
            Err(err) => {
                debug!(src = %source, error = %err, "tunnel failed before its first byte");
                return;
            }
        };
        debug!(src = %source, dst = %target, protocol = protocol.as_str(), "tunnel opened");
        let io = TokioIo::new(Prefixed::new(prefix, stream));
        let version = match protocol {
            Protocol::Http1 => Version::Http1,
            Protocol::Http2 => Version::Http2,
            Protocol::Tcp => {
                let io = io.into_inner();
                self.tcp(io, source, target, service).await;
                return;
            }
        };
        let downstream = Arc::new(Downstream {
            inputs: Arc::clone(&self.inputs),
            client: self.identity.clone(),
            source,
            target,
            service,
            version,
            upstreams: tokio::sync::Mutex::new(Upstreams::default()),
        });
        let service = service_fn(move |req| request::handle(Arc::clone(&downstream), req));
        let drain = self.drain.clone();
        let served = match version {
            Version::Http1 => {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192))
                    .serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    served = conn.as_mut() => served,
                    () = drain.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
            Version::Http2 => {
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(limits.max_header_list_size)
                    .max_concurrent_streams(limits.max_concurrent_streams)
                    .serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    served = conn.as_mut() => served,
                    () = drain.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        };
        if let Err(err) = served {
            // A malformed request costs its connection only; hyper has answered 400 already
            // where HTTP allows it.
            debug!(src = %source, dst = %target, error = %err, "client connection ended with an error");
        }
    }

    /// Bytes that are not HTTP: authorized on the connection's L4 attributes alone (every L7
    /// condition is absent), then carried to an endpoint.
    async fn tcp<S>(
        &self,
        mut io: S,
        source: SocketAddr,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let snapshot = self.inputs.directory.load();
        let mut peers = Peers {
            source: snapshot.workload_by_ip(&self.inputs.network, source.ip()),
            source_principal: self.identity.to_string(),
            destination: None,
            service_host: service
                .as_ref()
                .map(|s| s.hostname.clone())
                .unwrap_or_default(),
            service_name: service.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        };
        let reporter = &self.inputs.reporter;
        let metrics = &self.inputs.metrics;
        let refused = |peers: &Peers, flags| {
            let labels = reporter.tcp_labels(peers, flags);
            metrics.tcp_opened(&labels);
            metrics.tcp_closed(&labels, 0, 0);
        };
        let policies = self.inputs.policies.load();
        let key = service
            .as_ref()
            .map(|s| (s.namespace.clone(), s.name.clone()));
        let attrs = ConnectionAttrs {
            source_identity: Some(self.identity.clone()),
            source_ip: source.ip(),
            destination_ip: target.ip(),
            destination_port: target.port(),
        };
        if let Verdict::Deny(reason) =
            evaluate(policies.authorizations(key.as_ref()), &attrs).verdict
        {
            info!(src.identity = %self.identity, dst = %target, %reason, "TCP connection denied");
            refused(&peers, "DENY");
            return;
        }
        let (addr, workload, expected) = match self.inputs.pick_endpoint(target) {
            Ok(picked) => picked,
            Err(why) => {
                warn!(src = %source, dst = %target, reason = why, "no upstream for TCP connection");
                refused(&peers, "UH");
                return;
            }
        };
        peers.destination = Some(Arc::clone(&workload));
        let endpoint = Endpoint {
            addr,
            expected,
            headers: connect_headers(&Baggage::default(), source, None),
            source: &self.inputs.identity,
        };
        let mut upstream = match self.inputs.forwarder.tunnel(&endpoint).await {
            Ok(tunnel) => tunnel,
            Err(err) => {
                warn!(dst = %target, endpoint = %workload.uid, error = %mesh::errors::chain(&err), "TCP upstream failed");
                refused(&peers, "UF");
                return;
            }
        };
        let labels = reporter.tcp_labels(&peers, "-");
        metrics.tcp_opened(&labels);
        match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
            Ok((received, sent)) => {
                info!(src = %source, dst = %target, sent, received, "TCP connection complete");
                metrics.tcp_closed(&labels, sent, received);
            }
            Err(err) => {
                debug!(src = %source, dst = %target, error = %err, "TCP connection ended with an error");
                metrics.tcp_closed(&reporter.tcp_labels(&peers, "UC"), 0, 0);
            }
        }
    }
}
