//! Inbound plaintext (15006): a connection to a local pod that did not come over HBONE. It has
//! no peer identity, so STRICT mTLS (a DENY on "no principal") refuses it; PERMISSIVE lets it
//! through to the application, from the client's own address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh::policy::ConnectionAttrs;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::error::{ConnectionError, chain};
use super::relay::{Transferred, relay};
use super::scope::Scope;
use super::socket::{self, UpstreamSocket};
use super::{Inputs, authorize, connect_upstream};

/// Handles one captured plaintext connection to its end, logging the outcome once.
pub(super) async fn handle(
    inputs: Arc<Inputs>,
    scope: Scope,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    match proxy(&inputs, &scope, &mut downstream, peer).await {
        Ok((dst, moved)) => info!(
            src = %peer, dst = %dst, sent = moved.received, received = moved.sent,
            duration_ms = started.elapsed().as_millis(), "inbound plaintext connection complete"
        ),
        Err(err) => {
            warn!(src = %peer, error = %chain(&err), "inbound plaintext connection refused")
        }
    }
}

async fn proxy(
    inputs: &Inputs,
    scope: &Scope,
    downstream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(SocketAddr, Transferred), ConnectionError> {
    let original =
        socket::original_destination(downstream).map_err(ConnectionError::OriginalDestination)?;
    let workload = scope.workload_at(
        &inputs.directory.load(),
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
    authorize(inputs, &workload, &attrs)?;
    let source = (peer.ip() != original.ip()).then_some(peer.ip());
    let how = UpstreamSocket { mark: true, source };
    let mut upstream = connect_upstream(original, how, &scope.origin()).await?;
    let moved = relay(downstream, &mut upstream)
        .await
        .map_err(ConnectionError::Relay)?;
    Ok((original, moved))
}
