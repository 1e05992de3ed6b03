//! Why a proxied connection failed, in one enum, with the HBONE status for each failure decided
//! in one exhaustive match: adding a variant forces a decision about what the client is told.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use mesh::hbone::AuthorityError;
use mesh::hbone::pool::PoolError;
use mesh::identity::StoreError;
use mesh::policy::DenyReason;
use mesh::tls::TlsError;

/// A connection's failure. Variants carry the facts the log line needs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The redirected connection's original destination could not be read.
    #[error("original destination unavailable")]
    OriginalDestination(#[source] io::Error),
    /// A captured connection from an address no local workload has.
    #[error("source {0} is not a workload on this node")]
    UnknownSource(IpAddr),
    /// A connection for an address no local workload has.
    #[error("destination {0} is not a workload on this node")]
    UnknownDestination(SocketAddr),
    /// An enrolled pod the config has no workload for (name, namespace and service account must
    /// all match, on this node).
    #[error(
        "pod {pod} (service account {service_account}) has no workload on this node in the config"
    )]
    PodNotInConfig {
        /// `namespace/name`.
        pod: String,
        /// Its service account.
        service_account: String,
    },
    /// A service VIP with no endpoint able to take the connection.
    #[error("service {service} has no healthy endpoint")]
    NoHealthyEndpoint {
        /// `namespace/hostname`.
        service: String,
    },
    /// The destination has a waypoint and none of its instances can be reached: refused, not
    /// sent around it.
    #[error("{destination} is served through waypoint {waypoint}, which has no healthy instance")]
    WaypointUnavailable {
        /// The waypoint (`network/ip`, `namespace/hostname` or an instance's uid).
        waypoint: String,
        /// What the client dialed.
        destination: String,
    },
    /// A service VIP on a port the service does not expose.
    #[error("service {service} has no port {port}")]
    NoServicePort {
        /// `namespace/hostname`.
        service: String,
        /// The port dialed.
        port: u16,
    },
    /// No certificate for the identity this connection must present.
    #[error("no certificate")]
    Certificate(#[source] StoreError),
    /// The certificate's roots cannot serve as trust anchors.
    #[error("trust bundle unusable")]
    TrustBundle(#[source] mesh::identity::CertificateError),
    /// The inbound mTLS handshake failed.
    #[error("TLS handshake failed")]
    Tls(#[source] TlsError),
    /// The outbound tunnel could not be opened.
    #[error("HBONE tunnel failed")]
    Tunnel(#[source] PoolError),
    /// The CONNECT authority is unreadable.
    #[error("bad CONNECT authority")]
    BadAuthority(#[source] AuthorityError),
    /// A hostname authority, which only double HBONE through a gateway uses.
    #[error("hostname authority {0} is not served here")]
    HostnameAuthority(String),
    /// The CONNECT targets an address other than the pod this connection reached.
    #[error("CONNECT target {target} is not this pod ({local})")]
    AuthorityMismatch {
        /// The authority's address.
        target: SocketAddr,
        /// The pod address the HBONE connection arrived on.
        local: IpAddr,
    },
    /// Authorization refused the connection.
    #[error("denied: {0}")]
    Denied(DenyReason),
    /// Connecting to the application (or plain-TCP destination) failed.
    #[error("connecting to {addr} failed")]
    Upstream {
        /// Where we tried to go.
        addr: SocketAddr,
        /// Why not.
        #[source]
        cause: io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    UpstreamTimeout {
        /// Where we tried to go.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// Sending the 200 failed (the client went away).
    #[error("answering the CONNECT failed")]
    Respond(#[source] mesh::hbone::server::RespondError),
    /// The byte copy failed mid-way.
    #[error("relay failed")]
    Relay(#[source] io::Error),
    /// Closed mid-stream: a configuration change no longer allows it.
    #[error("connection closed because it's no longer allowed after a policy update")]
    PolicyChanged,
}

impl ConnectionError {
    /// The status an inbound HBONE client is told, as upstream answers.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadAuthority(_) | Self::HostnameAuthority(_) | Self::AuthorityMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Denied(_) => StatusCode::UNAUTHORIZED,
            Self::UnknownDestination(_)
            | Self::PodNotInConfig { .. }
            | Self::Upstream { .. }
            | Self::UpstreamTimeout { .. }
            | Self::Certificate(_)
            | Self::TrustBundle(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Failures that happen before or after a CONNECT exists; never sent as a status.
            Self::OriginalDestination(_)
            | Self::UnknownSource(_)
            | Self::NoHealthyEndpoint { .. }
            | Self::WaypointUnavailable { .. }
            | Self::NoServicePort { .. }
            | Self::Tls(_)
            | Self::Tunnel(_)
            | Self::Respond(_)
            | Self::Relay(_)
            | Self::PolicyChanged => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

pub(crate) use mesh::errors::chain;
