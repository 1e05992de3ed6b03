//! Inbound HBONE (15008): the destination pod's side of a tunnel. In visible phases: find the
//! pod the connection arrived for, prove its identity and verify the client's (mTLS), then per
//! CONNECT stream: check the target is this pod, authorize, connect the application from the
//! client's address, answer 200, copy — until the end, or until a policy change no longer
//! allows the tunnel (then it is reset and the application connection closed).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh::hbone::Authority;
use mesh::hbone::server::{IncomingTunnel, serve_connection};
use mesh::identity::SpiffeId;
use mesh::policy::ConnectionAttrs;
use mesh::tls::{self, TrustBundles};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::{ConnectionError, chain};
use super::observe::{ConnectionContext, ConnectionRecord, Peer};
use super::scope::Scope;
use super::socket::UpstreamSocket;
use super::tracked::{Protocol, Registration};
use super::{Inputs, authorize, connect_upstream, lock};
use crate::metrics::{Reporter, SecurityPolicy};
use crate::state::{Service, Snapshot, Workload};

/// Handles one accepted connection on 15008 until the client closes it or the proxy drains.
pub(super) async fn handle(
    inputs: Arc<Inputs>,
    scope: Scope,
    tcp: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
) {
    let local = match tcp.local_addr() {
        Ok(local) => super::socket::unmapped(local),
        Err(err) => {
            warn!(src = %peer, error = %err, "inbound connection failed: no local address");
            return;
        }
    };
    scope.await_known(&inputs.directory, &inputs.node).await;
    let (tls, client_id) = match handshake(&inputs, &scope, tcp, local).await {
        Ok(done) => done,
        Err(err) => {
            warn!(src = %peer, dst = %local, error = %chain(&err), "inbound connection failed");
            return;
        }
    };
    let context = Arc::new(TunnelContext {
        inputs: Arc::clone(&inputs),
        scope,
        peer,
        local: local.ip(),
        client_id,
    });
    let served = serve_connection(tls, inputs.inbound_h2, drain, move |tunnel| {
        let context = Arc::clone(&context);
        async move { context.serve_tunnel(tunnel).await }
    })
    .await;
    if let Err(err) = served {
        warn!(src = %peer, dst = %local, error = %chain(&err), "inbound HBONE connection ended with an error");
    }
}

/// Presents the certificate of the pod at `local` and verifies the client.
async fn handshake(
    inputs: &Inputs,
    scope: &Scope,
    tcp: TcpStream,
    local: SocketAddr,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, SpiffeId), ConnectionError> {
    let workload = local_workload(&inputs.directory.load(), inputs, scope, local)?;
    let config = server_config(inputs, &workload.identity()).await?;
    tls::accept(config, tcp).await.map_err(ConnectionError::Tls)
}

fn local_workload(
    snapshot: &Snapshot,
    inputs: &Inputs,
    scope: &Scope,
    local: SocketAddr,
) -> Result<Arc<Workload>, ConnectionError> {
    scope.workload_at(snapshot, &inputs.network, &inputs.node, local.ip(), || {
        ConnectionError::UnknownDestination(local)
    })
}

/// The TLS server configuration for `identity`, rebuilt only when its certificate changes.
async fn server_config(
    inputs: &Inputs,
    identity: &SpiffeId,
) -> Result<Arc<ServerConfig>, ConnectionError> {
    let cert = inputs
        .certs
        .get(identity)
        .await
        .map_err(ConnectionError::Certificate)?;
    let serial = &cert.leaf().serial;
    if let Some((cached_serial, config)) = lock(&inputs.server_configs).get(identity)
        && cached_serial == serial
    {
        return Ok(Arc::clone(config));
    }
    let bundles = TrustBundles::single(identity.trust_domain().clone(), cert.roots())
        .map_err(ConnectionError::TrustBundle)?;
    let config = tls::server_config(&cert, Arc::new(bundles)).map_err(ConnectionError::Tls)?;
    lock(&inputs.server_configs).insert(identity.clone(), (serial.clone(), Arc::clone(&config)));
    Ok(config)
}

struct TunnelContext {
    inputs: Arc<Inputs>,
    scope: Scope,
    /// The HBONE connection's TCP peer: the client pod (or waypoint).
    peer: SocketAddr,
    /// The pod address the HBONE connection arrived on.
    local: IpAddr,
    client_id: SpiffeId,
}

impl TunnelContext {
    async fn serve_tunnel(&self, tunnel: IncomingTunnel) {
        let authority = tunnel.authority().to_string();
        let mut record = None;
        let (mut upstream, registration) = match self
            .open_upstream(tunnel.authority(), &mut record)
            .await
        {
            Ok(opened) => opened,
            Err(err) => {
                let status = err.status();
                // With a record, the access log carries the failure; without one, this is
                // the only trace of it.
                if record.is_some() {
                    debug!(src = %self.peer, src_identity = %self.client_id, dst = %authority,
                            status = status.as_u16(), error = %chain(&err), "inbound tunnel refused");
                } else {
                    warn!(src = %self.peer, src_identity = %self.client_id, dst = %authority,
                            status = status.as_u16(), error = %chain(&err), "inbound tunnel refused");
                }
                tunnel.reject(status);
                if let Some(record) = record {
                    record.finish(Err(&err));
                }
                return;
            }
        };
        // From here on a record exists: it carries the outcome to metrics and the access log.
        let Some(record) = record else { return };
        let mut stream = match tunnel.accept(http::HeaderMap::new()) {
            Ok(stream) => stream,
            Err(err) => {
                let err = ConnectionError::Respond(err);
                debug!(src = %self.peer, src_identity = %self.client_id, dst = %authority, error = %chain(&err), "inbound tunnel failed");
                record.finish(Err(&err));
                return;
            }
        };
        let relayed = registration
            .relay(&mut record.meter(&mut stream), &mut upstream)
            .await;
        match relayed {
            Some(Ok(moved)) => {
                debug!(
                    src = %self.peer, src_identity = %self.client_id, dst = %authority,
                    sent = moved.received, received = moved.sent, "inbound connection complete"
                );
                record.finish(Ok(()));
            }
            Some(Err(err)) => {
                // One leg broke: the other is cut too, not closed as if complete.
                stream.abort();
                super::socket::reset_on_close(&upstream);
                let err = ConnectionError::Relay(err);
                debug!(src = %self.peer, src_identity = %self.client_id, dst = %authority, error = %chain(&err), "inbound tunnel failed");
                record.finish(Err(&err));
            }
            // The close was logged with its reason; both legs are reset.
            None => {
                stream.abort();
                super::socket::reset_on_close(&upstream);
                debug!(
                    src = %self.peer, src_identity = %self.client_id, dst = %authority,
                    "inbound tunnel reset after a policy change"
                );
                record.finish(Err(&ConnectionError::PolicyChanged));
            }
        }
    }

    /// Everything that must hold before the client may be told 200. The connection is recorded
    /// once its destination workload is known (so a denial is counted), and tracked once
    /// authorized, so a later policy change can close it.
    async fn open_upstream(
        &self,
        authority: &Authority,
        record: &mut Option<ConnectionRecord>,
    ) -> Result<(TcpStream, Registration), ConnectionError> {
        let target = match authority {
            Authority::Addr(addr) => *addr,
            Authority::Host { host, port } => {
                return Err(ConnectionError::HostnameAuthority(format!("{host}:{port}")));
            }
        };
        if target.ip() != self.local {
            return Err(ConnectionError::AuthorityMismatch {
                target,
                local: self.local,
            });
        }
        let snapshot = self.inputs.directory.load();
        let workload = local_workload(
            &snapshot,
            &self.inputs,
            &self.scope,
            SocketAddr::new(self.local, 0),
        )?;
        *record = Some(ConnectionRecord::open(
            &self.inputs.metrics,
            ConnectionContext {
                reporter: Reporter::Destination,
                security: SecurityPolicy::MutualTls,
                source: Peer {
                    workload: snapshot.workload_by_ip(&self.inputs.network, self.peer.ip()),
                    identity: Some(self.client_id.clone()),
                },
                destination: Peer {
                    identity: Some(workload.identity()),
                    workload: Some(Arc::clone(&workload)),
                },
                service: service_for_port(&snapshot, &workload, target.port()),
                src_addr: self.peer,
                dst_addr: SocketAddr::new(self.local, mesh::hbone::HBONE_PORT),
                hbone_addr: Some(target),
            },
        ));
        let attrs = ConnectionAttrs {
            source_identity: Some(self.client_id.clone()),
            source_ip: self.peer.ip(),
            destination_ip: target.ip(),
            destination_port: target.port(),
        };
        authorize(&snapshot, &workload, &attrs, &self.inputs.metrics)?;
        let authorized = snapshot.generation();
        drop(snapshot);
        // The application sees the client's address, unless client and pod are the same.
        let source = (self.peer.ip() != target.ip()).then_some(self.peer.ip());
        let how = UpstreamSocket { mark: true, source };
        let upstream = connect_upstream(target, how, &self.scope.origin()).await?;
        let registration = self
            .inputs
            .tracked
            .register(
                &self.inputs.directory,
                authorized,
                workload,
                attrs,
                Protocol::Hbone,
            )
            .map_err(|reason| reason.into_error(target))?;
        Ok((upstream, registration))
    }
}

/// The first of `workload`'s services that maps some port to `target_port`: the service an
/// inbound connection is reported under.
pub(super) fn service_for_port(
    snapshot: &Snapshot,
    workload: &Workload,
    target_port: u16,
) -> Option<Arc<Service>> {
    workload
        .services
        .iter()
        .filter(|(_, ports)| ports.values().any(|&port| port == target_port))
        .find_map(|(key, _)| snapshot.service(key))
}
