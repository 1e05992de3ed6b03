//! Inbound plaintext (15006): a connection to a local pod that did not come over HBONE. It has
//! no peer identity, so STRICT mTLS (a DENY on "no principal") refuses it; PERMISSIVE lets it
//! through to the application, from the client's own address. A connection a later policy
//! change no longer allows is closed, on both legs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh::policy::ConnectionAttrs;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::error::{ConnectionError, chain};
use super::relay::Transferred;
use super::scope::Scope;
use super::socket::{self, UpstreamSocket};
use super::tracked::Protocol;
use super::{Inputs, authorize, connect_upstream};

/// How a relayed connection ended.
enum Ended {
    /// Both directions finished.
    Complete(Transferred),
    /// A policy change no longer allows it (logged with the reason where it was decided).
    Closed,
}

/// Handles one captured plaintext connection to its end, logging the outcome once.
pub(super) async fn handle(
    inputs: Arc<Inputs>,
    scope: Scope,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    match proxy(&inputs, &scope, &mut downstream, peer).await {
        Ok((dst, Ended::Complete(moved))) => info!(
            src = %peer, dst = %dst, sent = moved.received, received = moved.sent,
            duration_ms = started.elapsed().as_millis(), "inbound plaintext connection complete"
        ),
        // Returning drops both sockets, reset: client and application see the connection cut.
        Ok((dst, Ended::Closed)) => {
            socket::reset_on_close(&downstream);
            debug!(
                src = %peer, dst = %dst, duration_ms = started.elapsed().as_millis(),
                "inbound plaintext connection closed after a policy change"
            )
        }
        Err(err) => {
            if matches!(err, ConnectionError::Relay(_)) {
                socket::reset_on_close(&downstream);
            }
            warn!(src = %peer, error = %chain(&err), "inbound plaintext connection refused")
        }
    }
}

async fn proxy(
    inputs: &Inputs,
    scope: &Scope,
    downstream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(SocketAddr, Ended), ConnectionError> {
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
    let attrs = ConnectionAttrs {
        source_identity: None,
        source_ip: peer.ip(),
        destination_ip: original.ip(),
        destination_port: original.port(),
    };
    authorize(&snapshot, &workload, &attrs)?;
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
    match registration.relay(downstream, &mut upstream).await {
        Some(moved) => Ok((
            original,
            Ended::Complete(moved.map_err(ConnectionError::Relay)?),
        )),
        None => {
            socket::reset_on_close(&upstream);
            Ok((original, Ended::Closed))
        }
    }
}
