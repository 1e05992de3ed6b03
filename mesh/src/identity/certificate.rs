//! Workload certificates: a private key, its chain (leaf first) and the roots that vouch for it,
//! with the facts the rest of the mesh needs read once from the leaf: the SPIFFE identity and the
//! validity window.
//!
//! The leaf rules live here ([`parse_leaf`]) so the certificate store and the TLS verifier judge
//! a certificate by the same code: exactly one URI SAN, a valid SPIFFE ID, not a CA.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate cannot serve as a workload certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The DER does not parse as one X.509 certificate.
    #[error("certificate is not valid X.509: {0}")]
    Malformed(String),
    /// The leaf has no URI SAN (for example only DNS names).
    #[error("certificate has no URI SAN, so it carries no SPIFFE identity")]
    NoUriSan,
    /// More than one URI SAN: which identity is meant would be ambiguous.
    #[error("certificate has {count} URI SANs; a SPIFFE certificate carries exactly one")]
    MultipleUriSans {
        /// How many URI SANs the leaf carries.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID")]
    NotSpiffe {
        /// The URI as found in the certificate.
        uri: String,
        /// The rule it broke.
        #[source]
        cause: SpiffeIdError,
    },
    /// The leaf says CA:true; a signing certificate must never stand for a workload.
    #[error("leaf certificate is a CA certificate (basicConstraints CA:true)")]
    LeafIsCa,
    /// No certificate at all where a chain was expected.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// No root certificate to verify against.
    #[error("no root certificates")]
    NoRoots,
    /// PEM text that holds no usable block of the expected kind.
    #[error("PEM input has no {0}")]
    Pem(&'static str),
    /// The private key could not be loaded, or does not belong to the leaf.
    #[error("private key unusable: {0}")]
    Key(String),
}

/// What the mesh needs to know about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The SPIFFE identity from the single URI SAN.
    pub identity: SpiffeId,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lower-case hex.
    pub serial: String,
}

/// Parses a leaf certificate and applies the SPIFFE X.509-SVID rules to it.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, CertificateError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateError::Malformed(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CertificateError::Malformed(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(CertificateError::LeafIsCa);
    }
    let identity = spiffe_id_of(&cert)?;
    let validity = cert.validity();
    Ok(LeafInfo {
        identity,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        serial: hex(cert.raw_serial()),
    })
}

/// What an operator reads about any certificate of a chain (leaf, intermediate or root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Serial number as unsigned big-endian bytes (leading zero bytes removed).
    pub serial: Vec<u8>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Serial and validity of a DER certificate, whatever its role.
pub fn summarize(der: &[u8]) -> Result<CertSummary, CertificateError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let validity = cert.validity();
    Ok(CertSummary {
        serial: raw[first..].to_vec(),
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
    })
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertificateError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertificateError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|cause| CertificateError::NotSpiffe {
            uri: (*uri).to_owned(),
            cause,
        }),
        many => Err(CertificateError::MultipleUriSans { count: many.len() }),
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        // Before 1970: only ever seen in test certificates; treat as the epoch.
        Err(_) => UNIX_EPOCH,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A workload's certificate and key, ready for TLS.
///
/// Built once per issuance; the rustls [`CertifiedKey`] is prepared here so handshakes never
/// re-parse the key.
#[derive(Clone)]
pub struct WorkloadCertificate {
    leaf: LeafInfo,
    certified_key: Arc<CertifiedKey>,
    roots: Vec<CertificateDer<'static>>,
}

impl WorkloadCertificate {
    /// Assembles a workload certificate. `chain` is leaf first, then intermediates; `roots` are
    /// the trust anchors of the issuing CA. Fails if the leaf breaks the SPIFFE rules or the key
    /// does not match it.
    pub fn new(
        key: PrivateKeyDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
        provider: &CryptoProvider,
    ) -> Result<Self, CertificateError> {
        let leaf_der = chain.first().ok_or(CertificateError::EmptyChain)?;
        let leaf = parse_leaf(leaf_der)?;
        if roots.is_empty() {
            return Err(CertificateError::NoRoots);
        }
        let certified_key = CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| CertificateError::Key(e.to_string()))?;
        Ok(Self {
            leaf,
            certified_key: Arc::new(certified_key),
            roots,
        })
    }

    /// Assembles a workload certificate from PEM text: a PKCS#8 key, the chain (leaf first) and
    /// the root bundle.
    pub fn from_pem(
        key_pem: &str,
        chain_pem: &str,
        roots_pem: &str,
        provider: &CryptoProvider,
    ) -> Result<Self, CertificateError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| CertificateError::Pem("private key"))?;
        Self::new(
            key,
            certs_from_pem(chain_pem)?,
            certs_from_pem(roots_pem)?,
            provider,
        )
    }

    /// The identity the certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.leaf.identity
    }

    /// Validity and serial of the leaf.
    pub fn leaf(&self) -> &LeafInfo {
        &self.leaf
    }

    /// Leaf first, then intermediates: what a handshake sends.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// The trust anchors of the CA that issued this certificate.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The chain and key as rustls wants them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified_key)
    }

    /// Whether the leaf is past its `notAfter` at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.leaf.not_after
    }
}

impl fmt::Debug for WorkloadCertificate {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.leaf.identity.to_string())
            .field("serial", &self.leaf.serial)
            .field("not_before", &self.leaf.not_before)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.chain().len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertificateError::Pem("readable CERTIFICATE block"))?;
    if certs.is_empty() {
        return Err(CertificateError::Pem("CERTIFICATE block"));
    }
    Ok(certs)
}
