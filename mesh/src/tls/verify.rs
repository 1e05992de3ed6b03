//! SPIFFE peer verification for HBONE handshakes, on both ends.
//!
//! Web PKI verification asks "is this certificate valid for that DNS name"; HBONE asks "which
//! SPIFFE identity is this, and did the right CA vouch for it". So the chain is checked against
//! the trust bundle of the *identity's own trust domain* (a CA of one trust domain cannot mint
//! identities of another), the leaf must carry exactly one SPIFFE URI SAN, and then:
//! - a client requires the server to be one of the identities it expected for the destination;
//! - a server requires the client to be in its own trust domain (upstream ztunnel's rule) and
//!   hands the verified identity to authorization.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError as RustlsCertError, DigitallySignedStruct, DistinguishedName};
use rustls::{OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::identity::{CertificateError, SpiffeId, TrustDomain, parse_leaf};

/// Why a peer's certificate was refused. Carried inside the rustls error so the side that
/// refused can report exactly which rule failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The leaf breaks a SPIFFE certificate rule (no URI SAN, two, not SPIFFE, CA:true...).
    #[error("peer certificate rejected")]
    Leaf(#[source] CertificateError),
    /// No trust bundle is configured for the identity's trust domain.
    #[error("no trust bundle for trust domain {0}")]
    UntrustedTrustDomain(TrustDomain),
    /// A client from another trust domain than this server's.
    #[error("peer trust domain {got} is not the local trust domain {want}")]
    WrongTrustDomain {
        /// The peer's trust domain.
        got: TrustDomain,
        /// The one this server accepts.
        want: TrustDomain,
    },
    /// The chain does not lead to a root of the identity's trust bundle: its issuer is unknown,
    /// or claims a trusted root's name without holding its key.
    #[error("peer certificate does not chain to a trusted root of {0}")]
    UnknownRoot(TrustDomain),
    /// Past `notAfter` (of the leaf or of a certificate on the path).
    #[error("peer certificate expired")]
    Expired,
    /// Before `notBefore`.
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    /// Any other path-building failure, as webpki named it.
    #[error("peer certificate chain invalid: {0}")]
    Chain(String),
    /// A valid certificate, but not of an identity this connection may reach.
    #[error("peer is {got}, expected one of [{}]", ids(.expected))]
    UnexpectedIdentity {
        /// What the peer proved.
        got: SpiffeId,
        /// What the caller allowed.
        expected: Vec<SpiffeId>,
    },
}

fn ids(list: &[SpiffeId]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<VerifyError> for rustls::Error {
    fn from(err: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(RustlsCertError::Other(OtherError(Arc::new(err))))
    }
}

/// Trust anchors per trust domain.
#[derive(Default, Clone)]
pub struct TrustBundles {
    by_domain: HashMap<TrustDomain, Vec<TrustAnchor<'static>>>,
}

impl TrustBundles {
    /// No trust domain trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bundles trusting `roots` for `trust_domain`.
    pub fn single(
        trust_domain: TrustDomain,
        roots: &[CertificateDer<'_>],
    ) -> Result<Self, CertificateError> {
        let mut bundles = Self::new();
        bundles.add(trust_domain, roots)?;
        Ok(bundles)
    }

    /// Trusts `roots` for identities of `trust_domain`, in addition to roots added before.
    pub fn add(
        &mut self,
        trust_domain: TrustDomain,
        roots: &[CertificateDer<'_>],
    ) -> Result<(), CertificateError> {
        if roots.is_empty() {
            return Err(CertificateError::NoRoots);
        }
        let anchors = roots
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| CertificateError::Malformed(format!("trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.by_domain
            .entry(trust_domain)
            .or_default()
            .extend(anchors);
        Ok(())
    }

    fn anchors(&self, trust_domain: &TrustDomain) -> Option<&[TrustAnchor<'static>]> {
        self.by_domain.get(trust_domain).map(Vec::as_slice)
    }
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (td, anchors) in &self.by_domain {
            map.entry(&td.as_str(), &anchors.len());
        }
        map.finish()
    }
}

/// Checks a workload chain (leaf first, then intermediates) as an HBONE peer would, against
/// `roots` for the leaf's own trust domain: what a CA can run on a certificate it just issued
/// to prove its key, signer and roots belong together before it serves anyone.
pub fn verify_workload_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<SpiffeId, VerifyError> {
    let (leaf_der, intermediates) = chain
        .split_first()
        .ok_or(VerifyError::Leaf(CertificateError::EmptyChain))?;
    let leaf = parse_leaf(leaf_der).map_err(VerifyError::Leaf)?;
    let bundles = TrustBundles::single(leaf.identity.trust_domain().clone(), roots)
        .map_err(VerifyError::Leaf)?;
    let algorithms = crate::tls::crypto_provider().signature_verification_algorithms;
    verify_peer(
        &bundles,
        &algorithms,
        leaf_der,
        intermediates,
        UnixTime::now(),
        KeyUsage::client_auth(),
        None,
    )
}

/// Checks the peer's leaf and chain; returns the proven identity.
fn verify_peer(
    bundles: &TrustBundles,
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
    required_trust_domain: Option<&TrustDomain>,
) -> Result<SpiffeId, VerifyError> {
    let leaf = parse_leaf(end_entity).map_err(VerifyError::Leaf)?;
    let trust_domain = leaf.identity.trust_domain();
    if let Some(want) = required_trust_domain
        && want != trust_domain
    {
        return Err(VerifyError::WrongTrustDomain {
            got: trust_domain.clone(),
            want: want.clone(),
        });
    }
    let anchors = bundles
        .anchors(trust_domain)
        .ok_or_else(|| VerifyError::UntrustedTrustDomain(trust_domain.clone()))?;
    let cert = EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::Leaf(CertificateError::Malformed(e.to_string())))?;
    cert.verify_for_usage(
        algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => VerifyError::Expired,
        webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid,
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UnknownRoot(trust_domain.clone())
        }
        webpki::Error::CaUsedAsEndEntity => VerifyError::Leaf(CertificateError::LeafIsCa),
        other => VerifyError::Chain(other.to_string()),
    })?;
    Ok(leaf.identity)
}

/// Client side: accepts a server only if it proves one of the expected identities.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: Arc<TrustBundles>,
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier for one destination; `expected` lists every identity it may prove.
    pub fn new(
        bundles: Arc<TrustBundles>,
        expected: Vec<SpiffeId>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            bundles,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // HBONE sends no SNI and checks no DNS name: the SPIFFE ID is the name.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = verify_peer(
            &self.bundles,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
            None,
        )?;
        if !self.expected.contains(&got) {
            return Err(VerifyError::UnexpectedIdentity {
                got,
                expected: self.expected.clone(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: requires a client certificate from the server's own trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<TrustBundles>,
    local_trust_domain: TrustDomain,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// A verifier for a server whose own identity is in `local_trust_domain`.
    pub fn new(
        bundles: Arc<TrustBundles>,
        local_trust_domain: TrustDomain,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            bundles,
            local_trust_domain,
            algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients have exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &self.bundles,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
            Some(&self.local_trust_domain),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
