//! A certificate authority held in memory: a generated or loaded root, optionally an intermediate
//! below it, signing workload CSRs the way istiod's CA does.
//!
//! What the issued leaf carries is decided here, not by the CSR: the CSR contributes only its
//! public key (its signature is checked), and the identity comes from the caller, who has already
//! decided the requester may have it. That is what stops a CSR from asking for someone else's
//! SAN.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::certificate::{CertificateError, WorkloadCertificate, certs_from_pem};
use super::csr::{CsrError, create_csr};
use super::spiffe::SpiffeId;
use super::store::{CertificateProvider, FetchError, ProviderFuture};

/// Lifetime of a workload certificate when the request names none: 24 hours, as istiod.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate issued unless configured otherwise: 90 days, istiod's default
/// `MAX_WORKLOAD_CERT_TTL`. Longer requests are refused, not shortened, so a client learns.
pub const DEFAULT_MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// `notBefore` is set this far in the past so a peer whose clock runs a little behind still
/// accepts a certificate issued a moment ago (istiod uses the same allowance).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(120);

/// Why the CA could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR does not parse or its signature does not verify.
    #[error("CSR rejected")]
    BadCsr(#[source] rcgen::Error),
    /// The request asked for longer than the configured maximum.
    #[error("requested TTL {requested:?} is greater than the max allowed TTL {max:?}")]
    TtlTooLong {
        /// What the request asked for.
        requested: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// The signing certificate is no longer valid, so nothing it signs would be.
    #[error("signing certificate expired at {not_after:?}")]
    SignerExpired {
        /// The signer's `notAfter`.
        not_after: SystemTime,
    },
    /// Key generation or signing failed in the crypto backend.
    #[error("signing failed")]
    Sign(#[source] rcgen::Error),
    /// A loaded signing certificate or key is unusable.
    #[error("CA material rejected: {0}")]
    Material(String),
    /// Loaded PEM did not hold what was expected.
    #[error("CA material rejected")]
    Pem(#[source] CertificateError),
    /// Building a CSR for a locally issued workload certificate failed.
    #[error("creating the CSR failed")]
    Csr(#[source] CsrError),
    /// The certificate just issued was rejected when assembled (a bug if it ever happens).
    #[error("issued certificate rejected")]
    Issued(#[source] CertificateError),
}

/// Lifetimes the CA applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaLimits {
    /// Used when a request names no TTL (or zero).
    pub default_ttl: Duration,
    /// Requests above this are refused.
    pub max_ttl: Duration,
}

impl Default for CaLimits {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_MAX_WORKLOAD_TTL,
        }
    }
}

/// A signed workload certificate as a CA returns it.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    /// Leaf first, then every intermediate up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The root bundle.
    pub roots: Vec<CertificateDer<'static>>,
}

/// An in-memory CA: a signing key and certificate, the intermediates above it and the roots.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    signer_not_after: SystemTime,
    /// The signer's own certificate (when it is not the root) and the intermediates above it.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    limits: CaLimits,
}

impl LocalCa {
    /// Generates a self-signed ECDSA P-256 root named after `organization` (by convention the
    /// trust domain), valid for `validity`.
    pub fn generate_root(
        organization: &str,
        validity: Duration,
        limits: CaLimits,
    ) -> Result<Self, CaError> {
        Self::generate_root_with_pem(organization, validity, limits).map(|(ca, _, _)| ca)
    }

    /// [`LocalCa::generate_root`], also returning the root certificate and its PKCS#8 key as
    /// PEM, for a CA that must sign with the same root after a restart.
    pub fn generate_root_with_pem(
        organization: &str,
        validity: Duration,
        limits: CaLimits,
    ) -> Result<(Self, String, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let params = ca_params(organization, "root CA", SystemTime::now() + validity)?;
        let cert = params.self_signed(&key).map_err(CaError::Sign)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let ca = Self {
            issuer: Issuer::new(params, key),
            signer_not_after: SystemTime::now() + validity,
            intermediates: Vec::new(),
            roots: vec![cert.der().clone()],
            limits,
        };
        Ok((ca, cert_pem, key_pem))
    }

    /// Creates an intermediate CA signed by this one; its `notAfter` never outlives this CA.
    pub fn issue_intermediate(
        &self,
        organization: &str,
        validity: Duration,
    ) -> Result<Self, CaError> {
        let not_after = (SystemTime::now() + validity).min(self.signer_not_after);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let params = ca_params(organization, "intermediate CA", not_after)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Sign)?;
        let mut intermediates = vec![cert.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(Self {
            issuer: Issuer::new(params, key),
            signer_not_after: not_after,
            intermediates,
            roots: self.roots.clone(),
            limits: self.limits,
        })
    }

    /// Loads CA material: the signing certificate and its PKCS#8 key, the intermediates above the
    /// signer (may be empty) and the root bundle. When the signer is itself the root, pass the
    /// same certificate as `roots_pem` and an empty `intermediates_pem`.
    pub fn from_pem(
        signer_cert_pem: &str,
        signer_key_pem: &str,
        intermediates_pem: &str,
        roots_pem: &str,
        limits: CaLimits,
    ) -> Result<Self, CaError> {
        let signer = certs_from_pem(signer_cert_pem)
            .map_err(CaError::Pem)?
            .into_iter()
            .next()
            .ok_or(CaError::Pem(CertificateError::EmptyChain))?;
        let key = KeyPair::from_pem(signer_key_pem)
            .map_err(|e| CaError::Material(format!("signing key: {e}")))?;
        let signer_not_after = ca_not_after(&signer)?;
        let issuer = Issuer::from_ca_cert_der(&signer, key)
            .map_err(|e| CaError::Material(format!("signing certificate: {e}")))?;
        let roots = certs_from_pem(roots_pem).map_err(CaError::Pem)?;
        let mut intermediates = Vec::new();
        if !roots.contains(&signer) {
            intermediates.push(signer);
        }
        if !intermediates_pem.trim().is_empty() {
            intermediates.extend(certs_from_pem(intermediates_pem).map_err(CaError::Pem)?);
        }
        Ok(Self {
            issuer,
            signer_not_after,
            intermediates,
            roots,
            limits,
        })
    }

    /// The root bundle clients must trust.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The limits in force.
    pub fn limits(&self) -> CaLimits {
        self.limits
    }

    /// Signs `csr_pem` for `identity`. `requested_ttl` of `None` or zero means the default; above
    /// the maximum is refused.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
    ) -> Result<IssuedChain, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let ttl = match requested_ttl {
            None => self.limits.default_ttl,
            Some(ttl) if ttl.is_zero() => self.limits.default_ttl,
            Some(ttl) if ttl > self.limits.max_ttl => {
                return Err(CaError::TtlTooLong {
                    requested: ttl,
                    max: self.limits.max_ttl,
                });
            }
            Some(ttl) => ttl,
        };
        let now = SystemTime::now();
        if now >= self.signer_not_after {
            return Err(CaError::SignerExpired {
                not_after: self.signer_not_after,
            });
        }
        let params = leaf_params(identity, now, (now + ttl).min(self.signer_not_after))?;
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(IssuedChain {
            chain,
            roots: self.roots.clone(),
        })
    }

    /// Issues the control plane's own serving certificate (what istiod presents on 15012): a
    /// fresh P-256 key, the given DNS names and addresses as SANs, serverAuth only. Returns the
    /// chain (leaf first, then intermediates) and the key.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        addresses: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let now = SystemTime::now();
        if now >= self.signer_not_after {
            return Err(CaError::SignerExpired {
                not_after: self.signer_not_after,
            });
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            dns_names.first().map_or("controlplane", String::as_str),
        );
        params.distinguished_name = name;
        let mut sans = Vec::new();
        for dns in dns_names {
            let dns = dns.clone().try_into().map_err(CaError::Sign)?;
            sans.push(SanType::DnsName(dns));
        }
        sans.extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from((now + ttl).min(self.signer_not_after));
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Sign)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    /// Issues a workload certificate for `identity` through the same CSR path a remote client
    /// takes, so the local CA exercises what istiod would.
    pub fn issue_workload(
        &self,
        identity: &SpiffeId,
        ttl: Option<Duration>,
        provider: &CryptoProvider,
    ) -> Result<WorkloadCertificate, CaError> {
        let request = create_csr(identity).map_err(CaError::Csr)?;
        let issued = self.sign_csr(&request.csr_pem, identity, ttl)?;
        WorkloadCertificate::new(request.key, issued.chain, issued.roots, provider)
            .map_err(CaError::Issued)
    }
}

fn ca_params(
    organization: &str,
    common_name: &str,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(SystemTime::now() - CLOCK_SKEW_ALLOWANCE);
    params.not_after = OffsetDateTime::from(not_after);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn leaf_params(
    identity: &SpiffeId,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    // Empty subject, so the SAN is critical (RFC 5280 §4.2.1.6), as istiod issues it.
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(CaError::Sign)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // One certificate serves both ends of HBONE.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
    params.not_after = OffsetDateTime::from(not_after);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Serials must be unpredictable (CA/Browser Forum: at least 64 bits from a CSPRNG); the
    // backend's generator only fails if the OS has no entropy, and then the fallback below still
    // keeps serials unique within the process.
    if crate::tls::crypto_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        bytes = std::array::from_fn(|_| fastrand::u8(..));
    }
    // Positive and without a leading zero octet, as RFC 5280 §4.1.2.2 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn ca_not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| CaError::Material(format!("signing certificate: {e}")))?;
    let is_ca = parsed
        .basic_constraints()
        .map_err(|e| CaError::Material(format!("signing certificate: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(CaError::Material(
            "signing certificate is not a CA (basicConstraints CA:true missing)".into(),
        ));
    }
    let secs = parsed.validity().not_after.timestamp();
    let secs = u64::try_from(secs)
        .map_err(|_| CaError::Material("signing certificate expires before 1970".into()))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl CertificateProvider for LocalCa {
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> ProviderFuture<'a> {
        Box::pin(async move {
            self.issue_workload(identity, None, &crate::tls::crypto_provider())
                .map_err(|e| FetchError::Refused(crate::errors::chain(&e)))
        })
    }
}

#[cfg(test)]
mod tests;
