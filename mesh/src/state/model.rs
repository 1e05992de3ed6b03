//! The workloads and services this node knows, as plain Rust values.
//!
//! These are not the YAML (or xDS) shapes: every source validates its input and builds these,
//! so the data path never re-checks an IP, a port or an identity. Defaults from the xDS spec
//! (`cluster.local`, `default`, `Kubernetes`) are applied by the sources, not here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain};

/// Service port → target port. On a [`Service`], a target of 0 means "the endpoint's own
/// mapping decides" (a named `targetPort`); on a workload's `services` entry it never is 0.
pub type PortMap = BTreeMap<u16, u16>;

/// Trust domain used when a workload names none (xds.md §3.2).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The [`DEFAULT_TRUST_DOMAIN`] as a value.
pub fn default_trust_domain() -> TrustDomain {
    // Not input: the constant above is lower-case letters and a dot (tested in state::tests).
    TrustDomain::parse(DEFAULT_TRUST_DOMAIN).expect("DEFAULT_TRUST_DOMAIN is a valid trust domain")
}

/// Service account used when a workload names none (xds.md §3.2).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster id used when a workload names none (xds.md §3.2).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// How a workload accepts mesh traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelProtocol {
    /// Not captured: peers dial it with plain TCP on the target port.
    #[default]
    Tcp,
    /// Enrolled: peers dial HBONE on `ip:15008`.
    Hbone,
}

/// Readiness; unhealthy endpoints are skipped by service load balancing unless the service
/// allows all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HealthStatus {
    /// Ready to serve.
    #[default]
    Healthy,
    /// Not ready.
    Unhealthy,
}

/// The kind of controller owning a workload (telemetry only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WorkloadType {
    /// A Deployment (also the fallback for unknown kinds, per xds.md §3.2).
    #[default]
    Deployment,
    /// A CronJob.
    CronJob,
    /// A bare Pod.
    Pod,
    /// A Job.
    Job,
}

impl WorkloadType {
    /// The lower-case name metrics use (`deployment`, `cronjob`, `pod`, `job`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::CronJob => "cronjob",
            Self::Pod => "pod",
            Self::Job => "job",
        }
    }

    /// Reads the lower-case name; anything else is a Deployment (xds.md §3.2 fallback).
    pub fn from_name(name: &str) -> Self {
        match name {
            "cronjob" => Self::CronJob,
            "pod" => Self::Pod,
            "job" => Self::Job,
            _ => Self::Deployment,
        }
    }
}

/// Where a workload runs; compared scope by scope by locality-aware load balancing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: String,
    /// Zone within the region.
    pub zone: String,
    /// Subzone within the zone.
    pub subzone: String,
}

/// A service by `namespace/hostname`, the key services are stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// The service's namespace.
    pub namespace: String,
    /// The service's hostname (FQDN).
    pub hostname: String,
}

/// Why a string is not `namespace/hostname`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not \"namespace/hostname\"")]
pub struct NamespacedHostnameError(pub String);

impl NamespacedHostname {
    /// Parses `namespace/hostname`: split at the first `/`, both sides non-empty, no second `/`.
    pub fn parse(text: &str) -> Result<Self, NamespacedHostnameError> {
        match text.split_once('/') {
            Some((namespace, hostname))
                if !namespace.is_empty() && !hostname.is_empty() && !hostname.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    hostname: hostname.to_owned(),
                })
            }
            _ => Err(NamespacedHostnameError(text.to_owned())),
        }
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// An IP on a network: the secondary key of workloads and services (`network/ip`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// Network name; empty is the default network.
    pub network: String,
    /// The address.
    pub ip: IpAddr,
}

/// Why a string is not `network/ip`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkAddressError {
    /// No `/` separating network and IP.
    #[error("{0:?} is not \"network/ip\"")]
    NoSlash(String),
    /// The part after the `/` is not an IP address.
    #[error("{0:?} is not \"network/ip\": {1:?} is not an IP address")]
    BadIp(String, String),
}

impl NetworkAddress {
    /// Parses `network/ip` (the network may be empty: `/10.0.0.1`). The network is what precedes
    /// the first `/`, so a CIDR such as `/10.0.0.0/24` is refused as "not an IP".
    pub fn parse(text: &str) -> Result<Self, NetworkAddressError> {
        let (network, ip) = text
            .split_once('/')
            .ok_or_else(|| NetworkAddressError::NoSlash(text.to_owned()))?;
        let ip = ip
            .parse()
            .map_err(|_| NetworkAddressError::BadIp(text.to_owned(), ip.to_owned()))?;
        Ok(Self {
            network: network.to_owned(),
            ip,
        })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.ip)
    }
}

/// Where a waypoint (or network gateway) is reached: a pod or service address, or a service
/// by name (xds.md `GatewayAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    /// `network/ip`: a waypoint pod, or its service's VIP.
    Address(NetworkAddress),
    /// `namespace/hostname` of the waypoint's service.
    Hostname(NamespacedHostname),
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Hostname(name) => name.fmt(f),
        }
    }
}

/// A waypoint in front of a workload or service: its destination and HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayAddress {
    /// Where it is.
    pub destination: GatewayDestination,
    /// Its HBONE port (15008 unless the control plane says otherwise).
    pub hbone_mtls_port: u16,
}

/// Which identity part does not fit in a SPIFFE path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The namespace is not a valid SPIFFE path segment.
    #[error("namespace {value:?} is not a valid SPIFFE path segment")]
    Namespace {
        /// The namespace as given.
        value: String,
        /// The SPIFFE rule it breaks.
        #[source]
        cause: SpiffeIdError,
    },
    /// The service account is not a valid SPIFFE path segment.
    #[error("service account {value:?} is not a valid SPIFFE path segment")]
    ServiceAccount {
        /// The service account as given.
        value: String,
        /// The SPIFFE rule it breaks.
        #[source]
        cause: SpiffeIdError,
    },
}

/// A workload (pod, or VM entry): where it is, how to reach it, who it is.
///
/// The identity parts (namespace, service account, trust domain) are private and fixed at
/// [`Workload::new`], so the SPIFFE ID computed there can never drift from them; everything
/// else is a public field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Unique id, e.g. `cluster1//v1/Pod/default/local`.
    pub uid: String,
    /// Pod name.
    pub name: String,
    namespace: String,
    service_account: String,
    trust_domain: TrustDomain,
    identity: SpiffeId,
    /// Addresses, looked up by `(network, ip)`.
    pub ips: Vec<IpAddr>,
    /// DNS name, for workloads without an IP.
    pub hostname: String,
    /// Network; empty is the default network.
    pub network: String,
    /// HBONE (enrolled) or plain TCP.
    pub protocol: TunnelProtocol,
    /// Node the workload runs on.
    pub node: String,
    /// Readiness.
    pub status: HealthStatus,
    /// Canonical service name (telemetry).
    pub canonical_name: String,
    /// Canonical revision (telemetry).
    pub canonical_revision: String,
    /// Owning controller's name (telemetry).
    pub workload_name: String,
    /// Owning controller's kind (telemetry).
    pub workload_type: WorkloadType,
    /// Cluster id.
    pub cluster_id: String,
    /// Region / zone / subzone, for locality-aware load balancing.
    pub locality: Locality,
    /// Accepts HBONE itself (unused by ztunnel, kept for fidelity).
    pub native_tunnel: bool,
    /// The services this workload is an endpoint of, each with this endpoint's port map.
    pub services: BTreeMap<NamespacedHostname, PortMap>,
    /// Names (`namespace/name`) of the WORKLOAD_SELECTOR policies attached to it.
    pub authorization_policies: Vec<String>,
    /// Traffic addressed to this pod's IP goes through this waypoint first.
    pub waypoint: Option<GatewayAddress>,
}

impl Workload {
    /// A workload with the given key and identity; every other field has its xDS default
    /// (TCP, healthy, default network, cluster [`DEFAULT_CLUSTER_ID`], no IPs, no services).
    /// Fails when the namespace or service account cannot be a SPIFFE path segment.
    pub fn new(
        uid: impl Into<String>,
        trust_domain: TrustDomain,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let namespace = namespace.into();
        let service_account = service_account.into();
        let identity = istio_identity(&trust_domain, &namespace, &service_account)?;
        Ok(Self {
            uid: uid.into(),
            name: String::new(),
            namespace,
            service_account,
            trust_domain,
            identity,
            ips: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: TunnelProtocol::default(),
            node: String::new(),
            status: HealthStatus::default(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_name: String::new(),
            workload_type: WorkloadType::default(),
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            locality: Locality::default(),
            native_tunnel: false,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            waypoint: None,
        })
    }

    /// The SPIFFE identity `spiffe://<td>/ns/<namespace>/sa/<service account>` its certificate
    /// carries.
    pub fn identity(&self) -> SpiffeId {
        self.identity.clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Whether the workload is ready to serve.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }

    /// Whether the uid names a Kubernetes Pod (`…//Pod/…`): such workloads win a shared IP
    /// (xds.md §3.2).
    pub fn is_pod(&self) -> bool {
        self.uid.contains("//Pod/")
    }
}

fn istio_identity(
    trust_domain: &TrustDomain,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, IdentityError> {
    // Checked one part at a time so the error names the part that is wrong; the fixed
    // counterpart ("default") is always a valid segment.
    SpiffeId::istio(trust_domain, namespace, DEFAULT_SERVICE_ACCOUNT).map_err(|cause| {
        IdentityError::Namespace {
            value: namespace.to_owned(),
            cause,
        }
    })?;
    SpiffeId::istio(trust_domain, namespace, service_account).map_err(|cause| {
        IdentityError::ServiceAccount {
            value: service_account.to_owned(),
            cause,
        }
    })
}

/// How a service picks endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancerMode {
    /// Ignore routing preferences.
    #[default]
    Standard,
    /// Only endpoints matching every preferred scope; none → no endpoint.
    Strict,
    /// Endpoints matching the most scopes (in order, until the first miss) win.
    Failover,
    /// No endpoint selection: dial the original address.
    Passthrough,
}

/// Whether unhealthy endpoints may be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HealthPolicy {
    /// Only healthy endpoints.
    #[default]
    OnlyHealthy,
    /// Healthy and unhealthy endpoints (e.g. `publishNotReadyAddresses`).
    AllowAll,
}

/// A locality scope a service prefers to keep traffic within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalityScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// A service's endpoint-selection settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LoadBalancing {
    /// Selection mode.
    pub mode: LoadBalancerMode,
    /// Ordered scopes for [`LoadBalancerMode::Strict`] and [`LoadBalancerMode::Failover`].
    pub routing_preferences: Vec<LocalityScope>,
    /// Whether unhealthy endpoints count.
    pub health_policy: HealthPolicy,
}

/// A service: VIPs that ztunnel translates to one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Service namespace (half of the key).
    pub namespace: String,
    /// FQDN (the other half of the key).
    pub hostname: String,
    /// Virtual IPs; empty for a headless service.
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port; a target of 0 defers to each endpoint's own mapping.
    pub ports: PortMap,
    /// Extra identities a TLS peer serving this service may present (ServiceEntry SANs).
    pub subject_alt_names: Vec<SpiffeId>,
    /// Endpoint selection.
    pub load_balancing: LoadBalancing,
    /// Preferred when several services claim the same VIP.
    pub canonical: bool,
    /// Traffic to this service's VIPs goes through this waypoint first.
    pub waypoint: Option<GatewayAddress>,
}

impl Service {
    /// The key the service is stored under.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }

    /// Whether connections to it skip endpoint selection and go to the original address.
    pub fn is_passthrough(&self) -> bool {
        self.load_balancing.mode == LoadBalancerMode::Passthrough
    }
}
