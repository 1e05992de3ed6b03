//! gRPC to and from the control plane (xDS and the CA share it, as on istiod's port 15012):
//! TLS 1.3 with ALPN `h2`, the server proving a DNS name or IP address that chains to the roots
//! the client was given (`CA_ROOT_CA`), no client certificate — callers authenticate with a
//! bearer token instead.
//!
//! The TLS is ours (rustls, the same provider as HBONE) rather than tonic's, so one set of
//! rules and one crypto provider serve the whole process: [`channel`] gives tonic a connector
//! that dials TCP and completes the handshake; [`server_config`] is what the control plane
//! wraps its accepted connections in.

use std::error::Error as StdError;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{ALPN_H2, crypto_provider};

/// Longest a TCP connect to the control plane may take (upstream's value).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the TLS handshake with the control plane may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control-plane address or TLS setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The address does not parse as a URI.
    #[error("control plane address {address:?} is not a URI: {reason}")]
    Address {
        /// What was given.
        address: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The address has no host to dial.
    #[error("control plane address {0:?} names no host")]
    NoHost(String),
    /// No usable root certificate was given.
    #[error("no trust anchor for the control plane: {0}")]
    Roots(String),
    /// The server's certificate or key is unusable.
    #[error("control plane serving certificate rejected: {0}")]
    ServerCertificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected")]
    Config(#[source] rustls::Error),
}

/// Upstream's address rule: `https://` is assumed when no scheme is given
/// (`istiod.istio-system.svc:15012`).
pub fn parse_address(address: &str) -> Result<Uri, GrpcError> {
    let full = if address.contains("://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let uri: Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| GrpcError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(GrpcError::NoHost(address.to_owned()));
    }
    Ok(uri)
}

/// The name the server must prove: `alt_name` when given (upstream's `ALT_CA_HOSTNAME` /
/// `ALT_XDS_HOSTNAME`), else the host of `uri` (an IP address or a DNS name).
pub fn server_name(uri: &Uri, alt_name: Option<&str>) -> Result<ServerName<'static>, GrpcError> {
    let host = alt_name
        .or_else(|| uri.host())
        .ok_or_else(|| GrpcError::NoHost(uri.to_string()))?;
    // `[::1]` in a URI is the address `::1`.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| GrpcError::Address {
        address: host.to_owned(),
        reason: e.to_string(),
    })
}

/// The client side: verify the server against `roots` (WebPKI rules: name, validity, chain).
pub fn client_config(roots: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, GrpcError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| GrpcError::Roots(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(GrpcError::Roots("the root bundle is empty".into()));
    }
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(GrpcError::Config)?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The server side: present `chain` (leaf first) with `key`; no client certificate asked.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, GrpcError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(GrpcError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| GrpcError::ServerCertificate(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A lazily connecting channel to `uri`: `https` through our TLS, proving `name` against
/// `tls`'s roots; `http` in the clear (tests and local development only). Reconnects on its own
/// after a failure, each time with a fresh TCP connection and handshake.
pub fn channel(uri: Uri, tls: Arc<ClientConfig>, name: ServerName<'static>) -> Channel {
    let endpoint = Endpoint::from(uri.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if uri.scheme_str() == Some("http") {
        return endpoint.connect_lazy();
    }
    let connector = TlsConnector::from(tls);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |target: Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move { dial(&target, connector, name).await }
    }))
}

type BoxError = Box<dyn StdError + Send + Sync>;

async fn dial(
    target: &Uri,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, BoxError> {
    let host = target
        .host()
        .ok_or_else(|| io::Error::other(format!("{target}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = target.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {host}:{port}: {e}")))?;
    tcp.set_nodelay(true)?;
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake with {host}:{port} did not finish within {HANDSHAKE_TIMEOUT:?}"
                ),
            )
        })?
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS with {host}:{port} (expecting {name:?}): {e}"),
            )
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(format!("{host}:{port} did not negotiate ALPN h2").into());
    }
    Ok(TokioIo::new(tls))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_follow_upstream_rules() {
        let uri = parse_address("istiod.istio-system.svc:15012").unwrap();
        assert_eq!(uri.scheme_str(), Some("https"));
        assert_eq!(uri.port_u16(), Some(15012));
        assert_eq!(
            server_name(&uri, None).unwrap(),
            ServerName::try_from("istiod.istio-system.svc").unwrap()
        );
        let ip = parse_address("https://10.1.0.1:15012").unwrap();
        assert!(matches!(
            server_name(&ip, None).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            server_name(&ip, Some("istiod.example")).unwrap(),
            ServerName::try_from("istiod.example").unwrap()
        );
        assert!(parse_address("https://:15012").is_err());
        assert!(
            client_config(&[]).is_err(),
            "an empty bundle trusts nothing"
        );
    }
}
