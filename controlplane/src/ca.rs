//! The workload CA: `IstioCertificateService/CreateCertificate` as istiod answers it, for
//! ztunnels (ours or upstream's) that authenticate with a bearer token.
//!
//! Standalone there is no TokenReview, so callers are known from a tokens file: each token
//! names a caller identity (namespace and service account) and the node it runs on. A caller
//! gets its own identity; a trusted node account (`CA_TRUSTED_NODE_ACCOUNTS`, by default
//! `istio-system/ztunnel`) may ask for another one with `ImpersonatedIdentity`, but only for a
//! service account that has a running pod on the caller's node — so a compromised node can
//! mint certificates only for what runs on it. Every configuration change and every issued
//! certificate is written to the audit log (target `audit`).

mod material;
mod tokens;

pub use material::{CaMaterial, MaterialError, load_or_create};
pub use tokens::{Caller, Tokens, TokensError};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh::identity::{CaError, LocalCa, SpiffeId, TrustDomain, parse_leaf};
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use xds_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use xds_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

/// Which service accounts run on which node: the facts impersonation is checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeWorkloads {
    by_node: BTreeMap<String, BTreeSet<(String, String)>>,
    /// `(namespace, service account)` of waypoint pods: callers that may open xDS streams
    /// besides the node proxies.
    waypoints: BTreeSet<(String, String)>,
}

impl NodeWorkloads {
    /// From `(node, namespace, service account)` of every pod that is not terminated.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Self {
        let mut by_node: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for (node, namespace, account) in pods {
            by_node
                .entry(node.to_owned())
                .or_default()
                .insert((namespace.to_owned(), account.to_owned()));
        }
        Self {
            by_node,
            waypoints: BTreeSet::new(),
        }
    }

    /// The same facts, with the accounts waypoint pods run as.
    pub fn with_waypoints<'a>(
        mut self,
        accounts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.waypoints = accounts
            .into_iter()
            .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            .collect();
        self
    }

    fn runs_on(&self, node: &str, namespace: &str, account: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|set| set.contains(&(namespace.to_owned(), account.to_owned())))
    }
}

/// The CA service.
pub struct CaService {
    ca: Arc<LocalCa>,
    trust_domain: TrustDomain,
    tokens: ArcSwap<Tokens>,
    trusted_node_accounts: BTreeSet<(String, String)>,
    workloads: ArcSwap<NodeWorkloads>,
}

const AUTHENTICATE_FAILURE: &str = "request authenticate failure";
const IMPERSONATION_FAILURE: &str = "request impersonation authentication failure";

impl CaService {
    /// A CA signing with `ca` for `trust_domain`, knowing callers by `tokens`, letting
    /// `trusted_node_accounts` (`namespace/serviceaccount`) impersonate workloads of their node.
    pub fn new(
        ca: Arc<LocalCa>,
        trust_domain: TrustDomain,
        tokens: Tokens,
        trusted_node_accounts: BTreeSet<(String, String)>,
    ) -> Self {
        info!(target: "audit", callers = tokens.len(),
            trusted_node_accounts = ?trusted_node_accounts, %trust_domain,
            "CA serving: callers and node accounts configured");
        Self {
            ca,
            trust_domain,
            tokens: ArcSwap::from_pointee(tokens),
            trusted_node_accounts,
            workloads: ArcSwap::from_pointee(NodeWorkloads::default()),
        }
    }

    /// Replaces the known callers (the tokens file changed).
    pub fn set_tokens(&self, tokens: Tokens) {
        info!(target: "audit", callers = tokens.len(), "CA callers changed");
        self.tokens.store(Arc::new(tokens));
    }

    /// Replaces which service accounts run where (the cluster's pods changed).
    pub fn set_workloads(&self, workloads: NodeWorkloads) {
        self.workloads.store(Arc::new(workloads));
    }

    /// Whether `caller` runs a waypoint pod, so it may receive configuration over xDS.
    pub fn is_waypoint(&self, caller: &Caller) -> bool {
        self.workloads
            .load()
            .waypoints
            .contains(&(caller.namespace.clone(), caller.service_account.clone()))
    }

    /// Decides whose certificate `request` may get, or why not.
    fn authorize(&self, caller: &Caller, impersonated: Option<&str>) -> Result<SpiffeId, Status> {
        let own = SpiffeId::istio(
            &self.trust_domain,
            &caller.namespace,
            &caller.service_account,
        )
        .map_err(|e| {
            warn!(caller = %caller.name, error = %e, "caller identity is not a SPIFFE id");
            Status::unauthenticated(AUTHENTICATE_FAILURE)
        })?;
        let Some(requested) = impersonated else {
            return Ok(own);
        };
        let refuse = |why: &str| {
            warn!(caller = %caller.name, node = %caller.node, requested, why,
                "impersonation refused");
            Status::unauthenticated(IMPERSONATION_FAILURE)
        };
        let account = (caller.namespace.clone(), caller.service_account.clone());
        if !self.trusted_node_accounts.contains(&account) {
            return Err(refuse("the caller is not a trusted node account"));
        }
        let identity = SpiffeId::parse(requested).map_err(|_| refuse("not a SPIFFE id"))?;
        let Some((namespace, account)) = identity.istio_parts() else {
            return Err(refuse("not of the form spiffe://<td>/ns/<ns>/sa/<sa>"));
        };
        if !self
            .workloads
            .load()
            .runs_on(&caller.node, namespace, account)
        {
            return Err(refuse(
                "no pod of that service account runs on the caller's node",
            ));
        }
        Ok(identity)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let caller = bearer
            .as_deref()
            .and_then(|token| self.tokens.load().caller(token))
            .ok_or_else(|| {
                warn!(
                    has_token = bearer.is_some(),
                    "CA request from an unknown caller"
                );
                Status::unauthenticated(AUTHENTICATE_FAILURE)
            })?;
        let request = request.into_inner();
        let impersonated = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(mesh::identity::IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
                _ => None,
            });
        let identity = self.authorize(&caller, impersonated)?;
        let ttl = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let issued = self
            .ca
            .sign_csr(&request.csr, &identity, ttl)
            .map_err(|e| {
                let detail = mesh::errors::chain(&e);
                warn!(caller = %caller.name, %identity, error = %detail, "CSR signing failed");
                match e {
                    CaError::BadCsr(_) | CaError::TtlTooLong { .. } => {
                        Status::invalid_argument(format!("CSR signing error ({detail})"))
                    }
                    _ => Status::internal(format!("CSR signing error ({detail})")),
                }
            })?;
        let serial = issued
            .chain
            .first()
            .and_then(|leaf| parse_leaf(leaf).ok())
            .map(|leaf| leaf.serial)
            .unwrap_or_default();
        info!(target: "audit", %serial, %identity, caller = %caller.name, node = %caller.node,
            impersonated = impersonated.is_some(), "certificate issued");
        let mut cert_chain: Vec<String> =
            issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        cert_chain.push(issued.roots.iter().map(|c| pem("CERTIFICATE", c)).collect());
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// One PEM block ending with a newline, as istiod writes each chain element.
pub fn pem(label: &str, der: &[u8]) -> String {
    let block = ::pem::Pem::new(label, der.to_vec());
    ::pem::encode_config(
        &block,
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests;
