//! Inbound plaintext (15006): a connection to a local pod that did not come over HBONE. It has
//! no peer identity, so STRICT mTLS (a DENY on "no principal") refuses it; PERMISSIVE lets it
//! through to the application, from the client's own address. A connection a later policy
//! change no longer allows is closed, on both legs.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh::policy::ConnectionAttrs;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::error::{ConnectionError, chain};
use super::inbound::service_for_port;
use super::observe::{ConnectionContext, ConnectionRecord, Peer};
use super::scope::Scope;
use super::socket::{self, UpstreamSocket};
use super::tracked::Protocol;
use super::{Inputs, authorize, connect_upstream};
use crate::metrics::{Reporter, SecurityPolicy};

/// Handles one captured plaintext connection to its end. Once its destination workload is
/// known the access log and metrics record its outcome; a refusal before that is logged here.
pub(super) async fn handle(
    inputs: Arc<Inputs>,
    scope: Scope,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let mut record = None;
    let outcome = proxy(&inputs, &scope, &mut downstream, peer, &mut record).await;
    match &outcome {
        Ok(()) => debug!(src = %peer, "inbound plaintext connection complete"),
        // Returning drops both sockets, reset: client and application see the connection cut.
        Err(ConnectionError::PolicyChanged) => {
            socket::reset_on_close(&downstream);
            debug!(src = %peer, "inbound plaintext connection closed after a policy change");
        }
        Err(err) => {
            if matches!(err, ConnectionError::Relay(_)) {
                socket::reset_on_close(&downstream);
            }
            if record.is_some() {
                debug!(src = %peer, error = %chain(err), "inbound plaintext connection refused");
            } else {
                warn!(src = %peer, error = %chain(err), "inbound plaintext connection refused");
            }
        }
    }
    if let Some(record) = record {
        record.finish(outcome.as_ref().map(|_| ()));
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
    let workload = scope.workload_at(
        &snapshot,
        &inputs.network,
        &inputs.node,
        original.ip(),
        || ConnectionError::UnknownDestination(original),
    )?;
    let record = record.insert(ConnectionRecord::open(
        &inputs.metrics,
        ConnectionContext {
            reporter: Reporter::Destination,
            security: SecurityPolicy::None,
            source: Peer {
                workload: snapshot.workload_by_ip(&inputs.network, peer.ip()),
                identity: None,
            },
            destination: Peer {
                identity: Some(workload.identity()),
                workload: Some(Arc::clone(&workload)),
            },
            service: service_for_port(&snapshot, &workload, original.port()),
            src_addr: peer,
            dst_addr: original,
            hbone_addr: None,
        },
    ));
    let attrs = ConnectionAttrs {
        source_identity: None,
        source_ip: peer.ip(),
        destination_ip: original.ip(),
        destination_port: original.port(),
    };
    authorize(&snapshot, &workload, &attrs, &inputs.metrics)?;
    let authorized = snapshot.generation();
    drop(snapshot);
    let source = (peer.ip() != original.ip()).then_some(peer.ip());
    let how = UpstreamSocket { mark: true, source };
    let mut upstream = connect_upstream(original, how, &scope.origin()).await?;
    let registration = inputs
        .tracked
        .register(
            &inputs.directory,
            authorized,
            workload,
            attrs,
            Protocol::Plaintext,
        )
        .map_err(|reason| reason.into_error(original))?;
    match registration
        .relay(&mut record.meter(downstream), &mut upstream)
        .await
    {
        Some(moved) => moved.map(|_| ()).map_err(ConnectionError::Relay),
        None => {
            socket::reset_on_close(&upstream);
            Err(ConnectionError::PolicyChanged)
        }
    }
}
