//! The client of Istio's CA protocol (`istio.v1.auth.IstioCertificateService`): what ztunnel
//! uses against istiod or this project's control plane. Each fetch makes a new key and CSR; in
//! shared (in-pod) mode the request names the workload's identity in `ImpersonatedIdentity`, and
//! a returned leaf for anyone else is refused.
//!
//! The response chain is read the way upstream reads it: element 0 is the leaf, the middle
//! elements one intermediate each, and the last element the root bundle (possibly several
//! roots) — the trust anchors HBONE then uses for that identity.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost_types::{Struct, Value, value};
use rustls::crypto::CryptoProvider;
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::transport::Channel;
use xds_proto::istio::v1::auth::IstioCertificateRequest;
use xds_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;

use super::certificate::{WorkloadCertificate, certs_from_pem};
use super::csr::create_csr;
use super::spiffe::SpiffeId;
use super::store::{CertificateProvider, FetchError, ProviderFuture};

/// The metadata key that asks for another workload's certificate (exact spelling matters).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Requests in flight at once, as upstream limits them.
const MAX_IN_FLIGHT: usize = 8;

/// Longest one `CreateCertificate` may take before the store retries with backoff.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the bearer token comes from (upstream's `AUTH_TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Read from this file on every request, so a rotated projected token is picked up.
    File(PathBuf),
    /// A fixed token.
    Static(String),
    /// No `authorization` header at all.
    None,
}

impl Token {
    /// The token now (a file is read on every call, so a rotated token is picked up).
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            Self::None => Ok(None),
            Self::Static(token) => Ok(Some(token.clone())),
            Self::File(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the token {}: {e}", path.display()))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(format!("the token file {} is empty", path.display()));
                }
                Ok(Some(token.to_owned()))
            }
        }
    }

    /// What kind of token, for logs (never the token itself).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Static(_) => "static",
            Self::None => "none",
        }
    }
}

/// How to reach and talk to the CA.
#[derive(Debug, Clone)]
pub struct IstioCaSettings {
    /// Bearer token.
    pub token: Token,
    /// Sent as `clusterid` (upstream's `CLUSTER_ID`, default `Kubernetes`).
    pub cluster_id: String,
    /// Requested lifetime (`SECRET_TTL`, default 24 h).
    pub ttl: Duration,
    /// Ask for the workload's identity as a node proxy (shared mode); off in dedicated mode,
    /// where the caller's own identity is what is issued.
    pub impersonate: bool,
    /// Extra request headers (`CA_HEADER_<name>`).
    pub headers: BTreeMap<String, String>,
}

/// Why the client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum IstioCaError {
    /// A header name or value cannot be sent.
    #[error("CA request header {0:?} cannot be sent")]
    Header(String),
}

/// The CA client. Cheap to share; the channel reconnects by itself.
pub struct IstioCaClient {
    client: IstioCertificateServiceClient<Channel>,
    settings: IstioCaSettings,
    headers: Vec<(MetadataKey<tonic::metadata::Ascii>, AsciiMetadataValue)>,
    in_flight: Semaphore,
    provider: Arc<CryptoProvider>,
}

impl IstioCaClient {
    /// A client over `channel` (see [`crate::grpc::channel`]).
    pub fn new(channel: Channel, settings: IstioCaSettings) -> Result<Self, IstioCaError> {
        let mut headers = Vec::new();
        for (name, value) in &settings.headers {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| IstioCaError::Header(name.clone()))?;
            let value = value
                .parse::<AsciiMetadataValue>()
                .map_err(|_| IstioCaError::Header(name.clone()))?;
            headers.push((key, value));
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel),
            settings,
            headers,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            provider: crate::tls::crypto_provider(),
        })
    }

    fn token(&self) -> Result<Option<String>, FetchError> {
        self.settings.token.read().map_err(FetchError::Refused)
    }

    async fn request(&self, identity: &SpiffeId) -> Result<WorkloadCertificate, FetchError> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| FetchError::Unreachable("CA client is shutting down".into()))?;
        let csr =
            create_csr(identity).map_err(|e| FetchError::Refused(crate::errors::chain(&e)))?;
        let metadata = self.settings.impersonate.then(|| Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue(identity.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: i64::try_from(self.settings.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        request.set_timeout(REQUEST_TIMEOUT);
        let headers = request.metadata_mut();
        if let Some(token) = self.token()? {
            let bearer = format!("Bearer {token}")
                .parse::<AsciiMetadataValue>()
                .map_err(|_| FetchError::Refused("the token is not valid header text".into()))?;
            headers.insert("authorization", bearer);
        }
        if let Ok(cluster) = self.settings.cluster_id.parse::<AsciiMetadataValue>() {
            headers.insert("clusterid", cluster);
        }
        for (key, value) in &self.headers {
            headers.insert(key.clone(), value.clone());
        }
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| {
                let text = format!(
                    "signing gRPC error ({:?}): {}",
                    status.code(),
                    status.message()
                );
                match status.code() {
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                        FetchError::Unreachable(text)
                    }
                    _ => FetchError::Refused(text),
                }
            })?
            .into_inner();
        let (chain, roots) = split_chain(identity, &response.cert_chain)?;
        let certificate = WorkloadCertificate::new(csr.key, chain, roots, &self.provider)
            .map_err(FetchError::Invalid)?;
        if certificate.identity() != identity {
            return Err(FetchError::WrongIdentity {
                got: certificate.identity().clone(),
                want: identity.clone(),
            });
        }
        Ok(certificate)
    }
}

type Chain = Vec<rustls_pki_types::CertificateDer<'static>>;

/// `[leaf, intermediate…, root bundle]` into (leaf + intermediates, roots).
fn split_chain(identity: &SpiffeId, elements: &[String]) -> Result<(Chain, Chain), FetchError> {
    let (bundle, certificates) = match elements {
        [] => {
            return Err(FetchError::Refused(format!(
                "chain returned from CA is empty for: {identity}"
            )));
        }
        [_] => {
            return Err(FetchError::Refused(format!(
                "no root certificate present in the CA's answer for {identity}"
            )));
        }
        [certificates @ .., bundle] => (bundle, certificates),
    };
    let mut chain = Vec::with_capacity(certificates.len());
    for element in certificates {
        let first = certs_from_pem(element)
            .map_err(FetchError::Invalid)?
            .into_iter()
            .next()
            .ok_or_else(|| FetchError::Refused("an empty element in the CA's chain".into()))?;
        chain.push(first);
    }
    let roots = certs_from_pem(bundle).map_err(FetchError::Invalid)?;
    Ok((chain, roots))
}

impl CertificateProvider for IstioCaClient {
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> ProviderFuture<'a> {
        Box::pin(self.request(identity))
    }
}
