//! Outbound (15001): a captured connection from a local workload. Identify the source by its
//! address, resolve the original destination, then tunnel over HBONE or pass through as TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh::hbone::headers::connect_headers;
use mesh::hbone::pool::PoolKey;
use mesh::hbone::{Authority, Baggage};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::error::{ConnectionError, chain};
use super::observe::{ConnectionContext, ConnectionRecord, Peer};
use super::relay::relay;
use super::route::{Plan, plan};
use super::scope::Scope;
use super::socket::{self, UpstreamSocket};
use super::{Inputs, connect_upstream};
use crate::metrics::{Reporter, SecurityPolicy};
use crate::state::{Resolution, Workload};

/// Handles one captured outbound connection to its end. Once it is routed, the access log and
/// metrics record its outcome; a connection refused before that is logged here.
pub(super) async fn handle(
    inputs: &Inputs,
    scope: &Scope,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let mut record = None;
    let outcome = proxy(inputs, scope, &mut downstream, peer, &mut record).await;
    if let Err(err) = &outcome
        && matches!(err, ConnectionError::Relay(_))
    {
        // The far side was cut mid-stream: the application must not take the end of its
        // connection for a complete answer.
        socket::reset_on_close(&downstream);
    }
    match record {
        Some(record) => {
            if let Err(err) = &outcome {
                debug!(src = %peer, error = %chain(err), "outbound connection failed");
            }
            record.finish(outcome.as_ref().map(|_| ()));
        }
        None => {
            if let Err(err) = &outcome {
                warn!(src = %peer, error = %chain(err), "outbound connection failed");
            }
        }
    }
}

async fn proxy(
    inputs: &Inputs,
    scope: &Scope,
    downstream: &mut TcpStream,
    peer: SocketAddr,
    record: &mut Option<ConnectionRecord>,
) -> Result<(), ConnectionError> {
    let original =
        socket::original_destination(downstream).map_err(ConnectionError::OriginalDestination)?;
    scope.await_known(&inputs.directory, &inputs.node).await;
    let snapshot = inputs.directory.load();
    let source = scope.workload_at(&snapshot, &inputs.network, &inputs.node, peer.ip(), || {
        ConnectionError::UnknownSource(peer.ip())
    })?;
    let resolution = snapshot.resolve_destination(&inputs.network, original, Some(&source));
    let route = plan(&resolution, original)?;
    drop(snapshot);
    debug!(src = %peer, dst = %original, ?route, "outbound route");
    let (destination, service) = match &resolution {
        Resolution::Workload { workload, .. } => (Some(Arc::clone(workload)), None),
        Resolution::Service {
            service, endpoint, ..
        } => (Some(Arc::clone(endpoint)), Some(Arc::clone(service))),
        // The next hop is the waypoint; the service is still the one the client meant.
        Resolution::Waypoint {
            waypoint, service, ..
        } => (Some(Arc::clone(waypoint)), service.clone()),
        _ => (None, None),
    };
    let (dst_addr, hbone_addr, security) = match &route {
        Plan::Hbone {
            next_hop,
            authority,
            ..
        } => (
            *next_hop,
            authority_addr(authority),
            SecurityPolicy::MutualTls,
        ),
        Plan::Tcp(addr) => (*addr, None, SecurityPolicy::Unknown),
    };
    let record = record.insert(ConnectionRecord::open(
        &inputs.metrics,
        ConnectionContext {
            reporter: Reporter::Source,
            security,
            source: Peer {
                identity: Some(source.identity()),
                workload: Some(Arc::clone(&source)),
            },
            destination: Peer {
                identity: destination.as_ref().map(|w| w.identity()),
                workload: destination,
            },
            service,
            src_addr: peer,
            dst_addr,
            hbone_addr,
        },
    ));
    match route {
        Plan::Hbone {
            next_hop,
            authority,
            expected,
            service_host,
        } => {
            let origin = scope.origin();
            let key = PoolKey::new(source.identity(), Some(peer.ip()), next_hop, expected)
                .with_origin(origin.pool_origin());
            let headers = connect_headers(
                &baggage(&source, &inputs.cluster_id),
                peer,
                service_host.as_deref(),
            );
            let mut tunnel = inputs
                .pool
                .open(&key, &authority, headers, &origin)
                .await
                .map_err(ConnectionError::Tunnel)?;
            relay(&mut record.meter(downstream), &mut tunnel)
                .await
                .map_err(ConnectionError::Relay)?;
        }
        Plan::Tcp(addr) => {
            // From the source's own address, as if the application had dialed directly: inside
            // its pod that is the natural source; in dedicated mode it is bound explicitly.
            let how = UpstreamSocket {
                mark: true,
                source: matches!(scope, Scope::Node).then_some(peer.ip()),
            };
            let mut upstream = connect_upstream(addr, how, &scope.origin()).await?;
            relay(&mut record.meter(downstream), &mut upstream)
                .await
                .map_err(ConnectionError::Relay)?;
        }
    }
    Ok(())
}

fn authority_addr(authority: &Authority) -> Option<SocketAddr> {
    match authority {
        Authority::Addr(addr) => Some(*addr),
        Authority::Host { .. } => None,
    }
}

/// The source workload as upstream describes it in `baggage`.
pub(super) fn baggage(workload: &Workload, default_cluster: &str) -> Baggage {
    let cluster = if workload.cluster_id.is_empty() {
        default_cluster
    } else {
        &workload.cluster_id
    };
    Baggage {
        cluster: cluster.to_owned(),
        namespace: workload.namespace().to_owned(),
        workload_type: workload.workload_type.as_str().to_owned(),
        workload_name: if workload.workload_name.is_empty() {
            workload.name.clone()
        } else {
            workload.workload_name.clone()
        },
        service_name: workload.canonical_name.clone(),
        service_version: workload.canonical_revision.clone(),
        region: workload.locality.region.clone(),
        zone: workload.locality.zone.clone(),
    }
}
