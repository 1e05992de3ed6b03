//! Workload identity: SPIFFE IDs, workload certificates, CSRs, a local CA and the certificate
//! store that keeps one fresh certificate per identity.

mod certificate;
mod csr;
mod istio_ca;
mod local_ca;
mod spiffe;
mod store;
mod store_metrics;

pub use certificate::{
    CertSummary, CertificateError, LeafInfo, WorkloadCertificate, certs_from_pem, parse_leaf,
    summarize,
};
pub use csr::{CertificateRequest, CsrError, create_csr};
pub use istio_ca::{
    IMPERSONATED_IDENTITY, IstioCaClient, IstioCaError, IstioCaSettings, REQUEST_TIMEOUT, Token,
};
pub use local_ca::{
    CLOCK_SKEW_ALLOWANCE, CaError, CaLimits, DEFAULT_MAX_WORKLOAD_TTL, DEFAULT_WORKLOAD_TTL,
    IssuedChain, LocalCa,
};
pub use spiffe::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain};
pub use store::{
    CertState, CertStore, CertificateProvider, FetchError, ProviderFuture, RefreshPolicy,
    StoreError,
};
pub use store_metrics::CertStoreCollector;
