//! rustls configurations for HBONE and the handshakes that use them.
//!
//! Both ends: TLS 1.3 only, AES-GCM suites only, ALPN exactly `h2`, mutual authentication with
//! SPIFFE certificates ([`verify`]), no session resumption (every connection proves its identity
//! afresh, and no ticket key has to be shared or rotated). The client sends no SNI.
//!
//! The crypto backend is aws-lc-rs: it has the fastest AES-GCM and P-256 on x86-64 among the
//! rustls providers, which is where HBONE spends its cycles.

mod verify;

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::server::NoServerSessionStorage;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::identity::{SpiffeId, WorkloadCertificate, parse_leaf};
pub use verify::{
    SpiffeClientVerifier, SpiffeServerVerifier, TrustBundles, VerifyError, verify_workload_chain,
};

/// The one ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Longest a TLS handshake may take before the connection is dropped. A handshake is two round
/// trips plus signing; ten seconds only ever passes for a dead or hostile peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a configuration could not be built or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (a bug in how it was assembled).
    #[error("building the TLS configuration failed")]
    Config(#[source] rustls::Error),
    /// The peer's certificate was refused; the variant says which rule.
    #[error("peer certificate refused")]
    PeerRejected(#[source] VerifyError),
    /// The client presented no certificate to a server that requires one.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer cannot speak what we require (TLS 1.3, our suites or groups).
    #[error("peer is incompatible: {0:?}")]
    Incompatible(rustls::PeerIncompatible),
    /// The peer did not agree on ALPN `h2` (`None`: it offered no ALPN at all).
    #[error("peer did not negotiate ALPN h2 (negotiated {0:?})")]
    Alpn(Option<String>),
    /// The peer rejected our certificate or the handshake (its alert).
    #[error("peer sent alert {0:?}")]
    PeerAlert(rustls::AlertDescription),
    /// Any other TLS or transport failure during the handshake.
    #[error("TLS handshake failed")]
    Handshake(#[source] io::Error),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
}

impl TlsError {
    /// Sorts a handshake's I/O error into what went wrong.
    fn from_handshake(err: io::Error) -> Self {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Self::Handshake(err);
        };
        match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                match other.0.downcast_ref::<VerifyError>() {
                    Some(verify) => Self::PeerRejected(verify.clone()),
                    None => Self::Handshake(err),
                }
            }
            rustls::Error::NoCertificatesPresented => Self::NoPeerCertificate,
            rustls::Error::PeerIncompatible(why) => Self::Incompatible(why.clone()),
            rustls::Error::NoApplicationProtocol => Self::Alpn(None),
            rustls::Error::AlertReceived(alert) => Self::PeerAlert(*alert),
            _ => Self::Handshake(err),
        }
    }
}

/// aws-lc-rs restricted to the HBONE cipher suites, built once.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                cipher_suite::TLS13_AES_256_GCM_SHA384,
                cipher_suite::TLS13_AES_128_GCM_SHA256,
            ],
            ..aws_lc_rs::default_provider()
        })
    }))
}

/// The server end of HBONE for the workload whose certificate is `cert`: requires a client
/// certificate of the same trust domain that chains to `bundles`.
pub fn server_config(
    cert: &WorkloadCertificate,
    bundles: Arc<TrustBundles>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = SpiffeClientVerifier::new(
        bundles,
        cert.identity().trust_domain().clone(),
        provider.signature_verification_algorithms,
    );
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client end of HBONE: presents `cert` and accepts only a server proving one of
/// `expected` through `bundles`.
pub fn client_config(
    cert: &WorkloadCertificate,
    bundles: Arc<TrustBundles>,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = SpiffeServerVerifier::new(
        bundles,
        expected,
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Completes a server handshake and returns the stream with the client's verified identity.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    stream: IO,
) -> Result<(server::TlsStream<IO>, SpiffeId), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = TlsAcceptor::from(config).accept(stream);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TlsError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(TlsError::from_handshake)?;
    let (_, conn) = tls.get_ref();
    require_h2(conn.alpn_protocol())?;
    let peer = peer_identity(conn.peer_certificates())?;
    Ok((tls, peer))
}

/// Completes a client handshake to `addr` and returns the stream with the server's verified
/// identity.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    addr: IpAddr,
    stream: IO,
) -> Result<(client::TlsStream<IO>, SpiffeId), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Not sent (SNI is off); rustls needs a name to key its state by.
    let name = ServerName::IpAddress(addr.into());
    let handshake = TlsConnector::from(config).connect(name, stream);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TlsError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(TlsError::from_handshake)?;
    let (_, conn) = tls.get_ref();
    require_h2(conn.alpn_protocol())?;
    let peer = peer_identity(conn.peer_certificates())?;
    Ok((tls, peer))
}

fn require_h2(negotiated: Option<&[u8]>) -> Result<(), TlsError> {
    match negotiated {
        Some(ALPN_H2) => Ok(()),
        other => Err(TlsError::Alpn(
            other.map(|p| String::from_utf8_lossy(p).into_owned()),
        )),
    }
}

/// The identity in a verified peer chain. The verifier has already applied every rule, so this
/// only re-reads the leaf.
fn peer_identity(
    chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
) -> Result<SpiffeId, TlsError> {
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    parse_leaf(leaf)
        .map(|info| info.identity)
        .map_err(|e| TlsError::PeerRejected(VerifyError::Leaf(e)))
}
