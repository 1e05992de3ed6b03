//! The data path. One file per step, read top to bottom:
//! [`outbound`] (15001: captured client connections → HBONE or TCP, routed by [`route`]),
//! [`inbound`] (15008: HBONE tunnels → the application), [`inbound_plaintext`] (15006:
//! non-HBONE connections to a pod → policy → the application); [`relay`] copies bytes and
//! [`socket`] holds the socket options all of them need. Inbound connections stay registered
//! in [`tracked`] while open, so a policy change closes the ones it no longer allows.
//!
//! Shutdown drains: listeners stop accepting, HBONE connections get GOAWAY, and open
//! connections have the drain timeout to finish before they are cut.

mod error;
mod inbound;
mod inbound_plaintext;
mod observe;
mod outbound;
mod relay;
mod route;
pub mod scope;
pub mod socket;
mod tracked;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use mesh::hbone::H2Settings;
use mesh::hbone::pool::Pool;
use mesh::identity::{CertStore, SpiffeId};
use mesh::policy::{ConnectionAttrs, Decision, DryRunReport, Verdict, applicable, evaluate};
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use error::ConnectionError;
pub use scope::{EnrolledPod, Scope};

use crate::metrics::{Metrics, ReporterLabel};
use crate::state::{Directory, Snapshot, Workload};
use mesh::telemetry::metrics::DryRunLabels;

/// Longest a connect to an application or plain-TCP destination may take (upstream's value).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection handler reads. Shared, read-mostly.
pub struct Inputs {
    /// Workloads, services and policies.
    pub directory: Arc<Directory>,
    /// Workload certificates.
    pub certs: CertStore,
    /// Outbound HBONE connections.
    pub pool: Pool,
    /// This node's network.
    pub network: String,
    /// This node's name: only its workloads are served.
    pub node: String,
    /// Default cluster id for baggage.
    pub cluster_id: String,
    /// Where connections are counted.
    pub metrics: Arc<Metrics>,
    /// HTTP/2 settings of accepted HBONE connections (15008).
    pub inbound_h2: H2Settings,
    server_configs: Mutex<HashMap<SpiffeId, (String, Arc<ServerConfig>)>>,
    /// Open inbound connections, re-checked on every policy change.
    tracked: tracked::Tracked,
    /// Starts the re-check task once per process, however many proxies share these inputs.
    recheck_started: Once,
}

impl Inputs {
    /// Assembles the inputs.
    pub fn new(
        directory: Arc<Directory>,
        certs: CertStore,
        pool: Pool,
        network: String,
        node: String,
        cluster_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            directory,
            certs,
            pool,
            network,
            node,
            cluster_id,
            metrics,
            inbound_h2: H2Settings::server(),
            server_configs: Mutex::new(HashMap::new()),
            tracked: tracked::Tracked::new(),
            recheck_started: Once::new(),
        }
    }

    /// The same inputs, accepting HBONE with `settings` instead of the defaults.
    pub fn with_inbound_h2(mut self, settings: H2Settings) -> Self {
        self.inbound_h2 = settings;
        self
    }

    /// Starts, on the current runtime and only the first time, the task that closes open
    /// inbound connections a configuration change no longer allows.
    fn start_recheck(&self) {
        self.recheck_started.call_once(|| {
            drop(tokio::spawn(self.tracked.follow(&self.directory)));
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A cache: any state left by a panic elsewhere is still a valid (if stale) cache.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The policies of `snapshot` that bind `workload`, evaluated for a connection.
fn decide(
    snapshot: &Snapshot,
    workload: &Workload,
    attrs: &ConnectionAttrs,
) -> (Decision, Vec<String>) {
    let selected = applicable(
        snapshot.policies(),
        workload.namespace(),
        &workload.authorization_policies,
    );
    let decision = evaluate(selected.policies.iter().copied(), attrs);
    (decision, selected.unknown)
}

/// Applies the policies of `snapshot` that bind `workload` to a new connection; a dry-run
/// verdict is only logged and counted.
fn authorize(
    snapshot: &Snapshot,
    workload: &Workload,
    attrs: &ConnectionAttrs,
    metrics: &Metrics,
) -> Result<(), ConnectionError> {
    let (decision, unknown) = decide(snapshot, workload, attrs);
    for unknown in &unknown {
        warn!(workload = %workload.uid, policy = %unknown, "workload lists an unknown policy; skipped");
    }
    if let Some(dry_run) = &decision.dry_run {
        report_dry_run(dry_run, workload, attrs, metrics);
    }
    match decision.verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny(reason) => Err(ConnectionError::Denied(reason)),
    }
}

/// The dry-run record and counters of policy.md §5.4.
fn report_dry_run(
    report: &DryRunReport,
    workload: &Workload,
    attrs: &ConnectionAttrs,
    metrics: &Metrics,
) {
    for policy in &report.matched_denies {
        info!(workload = %workload.uid, %policy, "dry-run: deny policy match");
    }
    for policy in &report.matched_allows {
        info!(workload = %workload.uid, %policy, "dry-run: allow policy match");
    }
    if report.no_allow_matched {
        info!(workload = %workload.uid, "dry-run: no allow policies match");
    }
    for count in report.counts() {
        metrics
            .dry_run
            .get_or_create(&DryRunLabels::of("destination", count))
            .inc();
    }
    let (verdict, policy) = report.verdict.summary();
    info!(workload = %workload.uid, src = %attrs.source_ip, policy, verdict, "dry-run verdict");
}

/// The verdict [`authorize`] would reach, without its log lines: for re-checking connections
/// already open (dry-run policies never change it).
fn enforced_verdict(snapshot: &Snapshot, workload: &Workload, attrs: &ConnectionAttrs) -> Verdict {
    decide(snapshot, workload, attrs).0.verdict
}

/// Connects to an application or plain-TCP destination, bounded by
/// [`UPSTREAM_CONNECT_TIMEOUT`].
async fn connect_upstream(
    addr: SocketAddr,
    how: socket::UpstreamSocket,
    origin: &socket::Origin,
) -> Result<TcpStream, ConnectionError> {
    tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, socket::connect(addr, how, origin))
        .await
        .map_err(|_| ConnectionError::UpstreamTimeout {
            addr,
            timeout: UPSTREAM_CONNECT_TIMEOUT,
        })?
        .map_err(|cause| ConnectionError::Upstream { addr, cause })
}

/// Where the three listeners bind.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// Captured outbound.
    pub outbound: SocketAddr,
    /// Captured inbound plaintext.
    pub inbound_plaintext: SocketAddr,
    /// HBONE.
    pub inbound: SocketAddr,
    /// `SO_REUSEPORT` on in-pod listeners.
    pub reuse_port: bool,
}

impl Listeners {
    /// The in-pod listeners: 15001, 15006 and 15008 on the wildcard address of the pod's
    /// namespace (`[::]`, dual-stack, when IPv6 is enabled).
    pub fn in_pod(ipv6: bool, reuse_port: bool) -> Self {
        let any = if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Self {
            outbound: SocketAddr::new(any, 15001),
            inbound_plaintext: SocketAddr::new(any, 15006),
            inbound: SocketAddr::new(any, 15008),
            reuse_port,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("binding {role} listener on {addr} failed")]
    Bind {
        /// Which listener.
        role: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    inputs: Arc<Inputs>,
    scope: Scope,
    outbound: TcpListener,
    inbound_plaintext: TcpListener,
    inbound: TcpListener,
}

impl Proxy {
    /// Binds the listeners: in ztunnel's namespace for [`Scope::Node`], inside the pod's for
    /// [`Scope::Pod`] (with `SO_REUSEPORT`, so an upgraded ztunnel can bind beside this one).
    pub async fn bind(
        inputs: Arc<Inputs>,
        scope: Scope,
        listeners: Listeners,
    ) -> Result<Self, StartError> {
        let bind = |role: &'static str, addr: SocketAddr| {
            let scope = &scope;
            async move {
                let bound = match scope {
                    Scope::Node => TcpListener::bind(addr).await,
                    Scope::Pod(_) => scope.origin().listen(addr, listeners.reuse_port),
                };
                bound.map_err(|cause| StartError::Bind { role, addr, cause })
            }
        };
        Ok(Self {
            outbound: bind("outbound", listeners.outbound).await?,
            inbound_plaintext: bind("inbound plaintext", listeners.inbound_plaintext).await?,
            inbound: bind("inbound", listeners.inbound).await?,
            scope,
            inputs,
        })
    }

    /// Serves until `shutdown` fires; then the listeners close at once (new connections are
    /// refused rather than queued) and open connections have `drain_timeout` to finish before
    /// they are cut. `cut` ends every connection at once, drain or not.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        drain_timeout: Duration,
        cut: CancellationToken,
    ) {
        self.inputs.start_recheck();
        let tracker = TaskTracker::new();
        let force = cut;
        let Self {
            inputs,
            scope,
            outbound,
            inbound_plaintext,
            inbound,
        } = self;
        let sockets = |reporter| {
            let label = ReporterLabel { reporter };
            inputs.metrics.sockets_open.get_or_create(&label).clone()
        };
        let (source, destination) = (sockets("source"), sockets("destination"));
        let outbound = accept_loop(
            outbound,
            &shutdown,
            &tracker,
            &force,
            source,
            |tcp, peer| {
                let (inputs, scope) = (Arc::clone(&inputs), scope.clone());
                async move { outbound::handle(&inputs, &scope, tcp, peer).await }
            },
        );
        let plaintext = accept_loop(
            inbound_plaintext,
            &shutdown,
            &tracker,
            &force,
            destination.clone(),
            |tcp, peer| inbound_plaintext::handle(Arc::clone(&inputs), scope.clone(), tcp, peer),
        );
        let hbone = accept_loop(
            inbound,
            &shutdown,
            &tracker,
            &force,
            destination,
            |tcp, peer| {
                inbound::handle(
                    Arc::clone(&inputs),
                    scope.clone(),
                    tcp,
                    peer,
                    shutdown.clone(),
                )
            },
        );
        tokio::join!(outbound, plaintext, hbone);
        tracker.close();
        let pod = scope
            .pod()
            .map_or_else(|| "all".to_owned(), EnrolledPod::display_name);
        if !tracker.is_empty() {
            info!(%pod, open = tracker.len(), timeout = ?drain_timeout, "draining connections");
        }
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                %pod,
                open = tracker.len(),
                "drain timeout reached; closing remaining connections"
            );
            force.cancel();
            tracker.wait().await;
        }
        info!(%pod, "proxy stopped");
    }
}

/// One accepted socket, counted in `istio_tcp_sockets_open` for as long as its task lives (on
/// 15008 that is the TLS connection, whatever number of tunnels it carries).
struct OpenSocket(Gauge);

impl OpenSocket {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts until `shutdown`, then drops the listener so the kernel refuses new connections.
async fn accept_loop<H, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    force: &CancellationToken,
    open_sockets: Gauge,
    mut handler: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let open = OpenSocket::new(&open_sockets);
                let connection = handler(tcp, socket::unmapped(peer));
                let force = force.clone();
                tracker.spawn(async move {
                    let _open = open;
                    tokio::select! {
                        () = connection => {}
                        () = force.cancelled() => {}
                    }
                });
            }
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(err) => {
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
