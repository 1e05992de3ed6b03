//! The data path. One file per step, read top to bottom:
//! [`outbound`] (15001: captured client connections → HBONE or TCP, routed by [`route`]),
//! [`inbound`] (15008: HBONE tunnels → the application), [`inbound_plaintext`] (15006:
//! non-HBONE connections to a pod → policy → the application); [`relay`] copies bytes and
//! [`socket`] holds the socket options all of them need.
//!
//! Shutdown drains: listeners stop accepting, HBONE connections get GOAWAY, and open
//! connections have the drain timeout to finish before they are cut.

mod error;
mod inbound;
mod inbound_plaintext;
mod outbound;
mod relay;
mod route;
pub mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh::hbone::pool::Pool;
use mesh::identity::{CertStore, SpiffeId};
use mesh::policy::{ConnectionAttrs, Verdict, applicable, evaluate};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use error::ConnectionError;

use crate::state::{Directory, Workload};

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
    server_configs: Mutex<HashMap<SpiffeId, (String, Arc<ServerConfig>)>>,
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
    ) -> Self {
        Self {
            directory,
            certs,
            pool,
            network,
            node,
            cluster_id,
            server_configs: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A cache: any state left by a panic elsewhere is still a valid (if stale) cache.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the policies that bind `workload` to a connection; a dry-run verdict is only logged.
fn authorize(
    inputs: &Inputs,
    workload: &Workload,
    attrs: &ConnectionAttrs,
) -> Result<(), ConnectionError> {
    let snapshot = inputs.directory.load();
    let selected = applicable(
        snapshot.policies(),
        workload.namespace(),
        &workload.authorization_policies,
    );
    for unknown in &selected.unknown {
        warn!(workload = %workload.uid, policy = %unknown, "workload lists an unknown policy; skipped");
    }
    let decision = evaluate(selected.policies.iter().copied(), attrs);
    if let Some(dry_run) = &decision.dry_run {
        info!(workload = %workload.uid, src = %attrs.source_ip, verdict = ?dry_run.verdict,
            "dry-run policy evaluated (not enforced)");
    }
    match decision.verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny(reason) => Err(ConnectionError::Denied(reason)),
    }
}

/// Connects to an application or plain-TCP destination, bounded by
/// [`UPSTREAM_CONNECT_TIMEOUT`].
async fn connect_upstream(
    addr: SocketAddr,
    how: socket::UpstreamSocket,
) -> Result<TcpStream, ConnectionError> {
    tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, socket::connect(addr, how))
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
    outbound: TcpListener,
    inbound_plaintext: TcpListener,
    inbound: TcpListener,
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| StartError::Bind { role, addr, cause })
}

impl Proxy {
    /// Binds the listeners.
    pub async fn bind(inputs: Arc<Inputs>, listeners: Listeners) -> Result<Self, StartError> {
        Ok(Self {
            outbound: bind("outbound", listeners.outbound).await?,
            inbound_plaintext: bind("inbound plaintext", listeners.inbound_plaintext).await?,
            inbound: bind("inbound", listeners.inbound).await?,
            inputs,
        })
    }

    /// Serves until `shutdown` fires, then drains for at most `drain_timeout`.
    pub async fn serve(self, shutdown: CancellationToken, drain_timeout: Duration) {
        let tracker = TaskTracker::new();
        let force = CancellationToken::new();
        let inputs = &self.inputs;
        let outbound = accept_loop(&self.outbound, &shutdown, &tracker, &force, |tcp, peer| {
            let inputs = Arc::clone(inputs);
            async move { outbound::handle(&inputs, tcp, peer).await }
        });
        let plaintext = accept_loop(
            &self.inbound_plaintext,
            &shutdown,
            &tracker,
            &force,
            |tcp, peer| inbound_plaintext::handle(Arc::clone(inputs), tcp, peer),
        );
        let hbone = accept_loop(&self.inbound, &shutdown, &tracker, &force, |tcp, peer| {
            inbound::handle(Arc::clone(inputs), tcp, peer, shutdown.clone())
        });
        tokio::join!(outbound, plaintext, hbone);
        tracker.close();
        info!(open = tracker.len(), timeout = ?drain_timeout, "draining connections");
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = tracker.len(),
                "drain timeout reached; closing remaining connections"
            );
            force.cancel();
            tracker.wait().await;
        }
        info!("proxy stopped");
    }
}

async fn accept_loop<H, Fut>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    force: &CancellationToken,
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
                let connection = handler(tcp, peer);
                let force = force.clone();
                tracker.spawn(async move {
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
