//! Certificate signing requests for workload identities, shaped as Istio's CA expects: a fresh
//! ECDSA P-256 key per request, an empty subject and one critical URI SAN.
//!
//! A new key per request means a refresh never reuses key material, and the key never leaves
//! memory.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::spiffe::SpiffeId;

/// Why a CSR could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key generation failed (the crypto backend refused).
    #[error("generating a P-256 key failed")]
    KeyGeneration(#[source] rcgen::Error),
    /// The identity could not be encoded as a URI SAN.
    #[error("identity {0} cannot be encoded as a URI SAN")]
    San(String, #[source] rcgen::Error),
    /// Serializing or signing the request failed.
    #[error("serializing the CSR failed")]
    Serialize(#[source] rcgen::Error),
}

/// A CSR and the private key it was made for.
pub struct CertificateRequest {
    /// PEM `CERTIFICATE REQUEST`, what `IstioCertificateRequest.csr` carries.
    pub csr_pem: String,
    /// The request's private key, PKCS#8.
    pub key: PrivateKeyDer<'static>,
}

/// Builds a CSR for `identity` with a new ECDSA P-256 key.
pub fn create_csr(identity: &SpiffeId) -> Result<CertificateRequest, CsrError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CsrError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    // Empty subject: rcgen then marks the SAN extension critical, as RFC 5280 requires.
    params.distinguished_name = DistinguishedName::new();
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e| CsrError::San(identity.to_string(), e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(CsrError::Serialize)?;
    let csr_pem = csr.pem().map_err(CsrError::Serialize)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(CertificateRequest { csr_pem, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::cri_attributes::ParsedCriAttribute;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_has_empty_subject_and_one_critical_uri_san() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/storefront/sa/web").unwrap();
        let req = create_csr(&id).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(req.csr_pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let extensions: Vec<_> = csr
            .certification_request_info
            .iter_attributes()
            .filter_map(|attr| match attr.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(req) => Some(req.extensions.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(extensions.len(), 1, "exactly one requested extension");
        assert!(extensions[0].critical, "the SAN must be critical");
        let ParsedExtension::SubjectAlternativeName(san) = extensions[0].parsed_extension() else {
            panic!("the extension is not a SAN: {:?}", extensions[0]);
        };
        assert_eq!(san.general_names, vec![GeneralName::URI(&id.to_string())]);
        // Two requests never share a key.
        let again = create_csr(&id).unwrap();
        assert_ne!(req.key.secret_der(), again.key.secret_der());
    }
}
