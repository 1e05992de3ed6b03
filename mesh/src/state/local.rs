//! The local config file (upstream ztunnel's `LOCAL_XDS_PATH` format): its YAML shape, and the
//! checks that turn it into model values or an error naming file, field and value.
//!
//! Field names match upstream exactly and unknown fields are refused, so a typo (or a feature we
//! do not implement, such as `waypoint`) fails loudly instead of being silently ignored. Where
//! upstream requires a field that has an obvious empty value (`services: {}`, `vips: []`), we
//! default it: every file upstream accepts is accepted here too.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use crate::identity::SpiffeIdError;
use crate::policy::{Authorization, InvalidPolicy, LocalPolicy, PolicySet};
use serde::Deserialize;

use super::model::{
    DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ACCOUNT, GatewayAddress, HealthPolicy, HealthStatus,
    IdentityError, LoadBalancerMode, LoadBalancing, Locality, LocalityScope, PortMap, Service,
    TunnelProtocol, Workload, WorkloadType, default_trust_domain,
};
use super::scalars::{
    GatewayDestinationScalar, IpScalar, PortScalar, SanScalar, ServiceKey, TargetPortScalar,
    TrustDomainScalar, VipScalar,
};
use super::snapshot::Snapshot;

/// Largest local config file read, in bytes. A bigger file is refused with
/// [`LocalConfigError::TooLarge`] (and the last good snapshot kept) rather than read into
/// memory; 16 MiB is far above any node's share of a cluster.
pub const MAX_LOCAL_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Name used for configs that did not come from a file.
const INLINE_ORIGIN: &str = "<inline>";

/// Why a local config was refused. Each variant names where it came from (`origin`: the file
/// path, or `<inline>`).
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the local config")]
    Read {
        /// File path.
        origin: String,
        /// What the OS said.
        #[source]
        cause: io::Error,
    },
    /// The file is bigger than [`MAX_LOCAL_CONFIG_BYTES`].
    #[error("{origin}: {len} bytes, more than the {MAX_LOCAL_CONFIG_BYTES} allowed")]
    TooLarge {
        /// File path.
        origin: String,
        /// Size found (at least).
        len: u64,
    },
    /// The file holds no YAML document. Refused because a half-written file looks like this;
    /// an intentionally empty config is `{}`.
    #[error("{origin}: empty local config (write `{{}}` for an empty one)")]
    Empty {
        /// File path.
        origin: String,
    },
    /// The YAML does not decode into the config shape: a syntax error, an unknown field, a
    /// wrong type or a bad scalar (IP, port, VIP, SPIFFE ID, enum value). `detail` is the
    /// decoder's message, which names the field path, the value and the line/column.
    #[error("{origin}: {detail}")]
    Decode {
        /// File path.
        origin: String,
        /// 1-based line of the offending value, when known.
        line: Option<usize>,
        /// 1-based column of the offending value, when known.
        column: Option<usize>,
        /// The decoder's message.
        detail: String,
    },
    /// The YAML decoded but breaks a rule spanning fields (duplicates, identities).
    #[error("{origin}: {field}: {value:?}: {reason}")]
    Invalid {
        /// File path.
        origin: String,
        /// Field path, e.g. `workloads[1].uid`.
        field: String,
        /// The offending value.
        value: String,
        /// The rule broken.
        reason: InvalidReason,
    },
}

/// The cross-field rule a decoded config breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    /// A required key is empty.
    #[error("must not be empty")]
    Empty,
    /// Two workloads share a uid.
    #[error("duplicate workload uid (also workloads[{first}])")]
    DuplicateUid {
        /// Index of the first workload with that uid.
        first: usize,
    },
    /// Two services share `namespace/hostname`.
    #[error("duplicate service namespace/hostname (also services[{first}])")]
    DuplicateService {
        /// Index of the first service with that key.
        first: usize,
    },
    /// An authorization policy breaks a rule (empty value, bad name...).
    #[error("invalid policy")]
    Policy(#[source] Box<InvalidPolicy>),
    /// Two policies share `namespace/name`.
    #[error("duplicate policy namespace/name")]
    DuplicatePolicy,
    /// Namespace or service account is not a SPIFFE path segment, so no identity can be
    /// formed.
    #[error("not a valid SPIFFE path segment: {0}")]
    Identity(SpiffeIdError),
}

/// A decoded, validated local config.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    /// Workloads, in file order.
    pub workloads: Vec<Workload>,
    /// Services, in file order.
    pub services: Vec<Service>,
    /// Authorization policies, keyed by `namespace/name`.
    pub policies: PolicySet,
}

impl LocalConfig {
    /// Reads and validates a local config file (blocking; meant for start-up).
    pub fn from_path(path: &Path) -> Result<Self, LocalConfigError> {
        let origin = path.display().to_string();
        let text = read_capped(path).map_err(|cause| LocalConfigError::Read {
            origin: origin.clone(),
            cause,
        })?;
        match text {
            FileText::Text(text) => Self::parse(&text, &origin),
            FileText::TooLarge(len) => Err(LocalConfigError::TooLarge { origin, len }),
        }
    }

    /// Decodes and validates YAML text; `origin` (a path, or any label) prefixes errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, LocalConfigError> {
        if is_blank(text) {
            return Err(LocalConfigError::Empty {
                origin: origin.to_owned(),
            });
        }
        let shape: ConfigYaml =
            serde_yaml_ng::from_str(text).map_err(|e| LocalConfigError::Decode {
                origin: origin.to_owned(),
                line: e.location().map(|l| l.line()),
                column: e.location().map(|l| l.column()),
                detail: e.to_string(),
            })?;
        shape.validate().map_err(|e| e.at(origin))
    }

    /// Builds the indexed snapshot.
    pub fn into_snapshot(self) -> Snapshot {
        Snapshot::new(self.workloads, self.services, self.policies)
    }
}

impl FromStr for LocalConfig {
    type Err = LocalConfigError;

    /// Same as [`LocalConfig::parse`] with origin `<inline>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text, INLINE_ORIGIN)
    }
}

/// What reading the file produced: its text, or the size that made us stop.
pub(super) enum FileText {
    Text(String),
    TooLarge(u64),
}

/// Reads at most [`MAX_LOCAL_CONFIG_BYTES`] (+1 to detect overflow) of a file.
pub(super) fn read_capped(path: &Path) -> io::Result<FileText> {
    let file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > MAX_LOCAL_CONFIG_BYTES {
        return Ok(FileText::TooLarge(size));
    }
    // Still capped: the file may grow between the size check and the read.
    let mut text = String::new();
    file.take(MAX_LOCAL_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if len > MAX_LOCAL_CONFIG_BYTES {
        return Ok(FileText::TooLarge(len));
    }
    Ok(FileText::Text(text))
}

/// True when the text holds no YAML content: only whitespace and comments.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#') || line == "---")
}

/// A cross-field error before the origin is known.
struct FieldError {
    field: String,
    value: String,
    reason: InvalidReason,
}

impl FieldError {
    fn at(self, origin: &str) -> LocalConfigError {
        LocalConfigError::Invalid {
            origin: origin.to_owned(),
            field: self.field,
            value: self.value,
            reason: self.reason,
        }
    }
}

fn non_empty(field: String, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError {
            field,
            value: String::new(),
            reason: InvalidReason::Empty,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigYaml {
    #[serde(default)]
    workloads: Vec<WorkloadYaml>,
    #[serde(default)]
    policies: Vec<LocalPolicy>,
    #[serde(default)]
    services: Vec<ServiceYaml>,
}

impl ConfigYaml {
    fn validate(self) -> Result<LocalConfig, FieldError> {
        let mut uids = BTreeMap::new();
        let mut workloads = Vec::with_capacity(self.workloads.len());
        for (i, shape) in self.workloads.into_iter().enumerate() {
            let field = format!("workloads[{i}].uid");
            non_empty(field.clone(), &shape.uid)?;
            if let Some(&first) = uids.get(&shape.uid) {
                return Err(FieldError {
                    field,
                    value: shape.uid,
                    reason: InvalidReason::DuplicateUid { first },
                });
            }
            uids.insert(shape.uid.clone(), i);
            workloads.push(shape.into_workload(i)?);
        }
        let mut keys = BTreeMap::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, shape) in self.services.into_iter().enumerate() {
            let service = shape.into_service(i)?;
            let key = service.key();
            if let Some(&first) = keys.get(&key) {
                return Err(FieldError {
                    field: format!("services[{i}]"),
                    value: key.to_string(),
                    reason: InvalidReason::DuplicateService { first },
                });
            }
            keys.insert(key, i);
            services.push(service);
        }
        let mut policies = PolicySet::new();
        for (i, shape) in self.policies.into_iter().enumerate() {
            let field = format!("policies[{i}]");
            let policy = Authorization::try_from(shape).map_err(|e| FieldError {
                field: field.clone(),
                value: e.policy.to_string(),
                reason: InvalidReason::Policy(Box::new(e)),
            })?;
            let key = policy.key().to_string();
            if policies.insert(policy).is_some() {
                return Err(FieldError {
                    field,
                    value: key,
                    reason: InvalidReason::DuplicatePolicy,
                });
            }
        }
        Ok(LocalConfig {
            workloads,
            services,
            policies,
        })
    }
}

#[derive(Deserialize, Default)]
enum ProtocolYaml {
    #[serde(rename = "HBONE")]
    Hbone,
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

#[derive(Deserialize, Default)]
enum StatusYaml {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct LocalityYaml {
    region: String,
    zone: String,
    subzone: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadYaml {
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: TrustDomainScalar,
    #[serde(default)]
    workload_ips: Vec<IpScalar>,
    #[serde(default)]
    protocol: ProtocolYaml,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    status: StatusYaml,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    locality: LocalityYaml,
    #[serde(default)]
    native_tunnel: bool,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    services: BTreeMap<ServiceKey, BTreeMap<PortScalar, PortScalar>>,
    #[serde(default)]
    waypoint: Option<GatewayYaml>,
}

/// A waypoint, in `/config_dump`'s shape: `{destination: "network/ip" | "ns/hostname",
/// hboneMtlsPort: 15008}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayYaml {
    destination: GatewayDestinationScalar,
    #[serde(default)]
    hbone_mtls_port: Option<PortScalar>,
}

impl GatewayYaml {
    fn into_model(self) -> GatewayAddress {
        GatewayAddress {
            destination: self.destination.0,
            hbone_mtls_port: self
                .hbone_mtls_port
                .map_or(crate::hbone::HBONE_PORT, |p| p.0),
        }
    }
}

impl WorkloadYaml {
    fn into_workload(self, i: usize) -> Result<Workload, FieldError> {
        let trust_domain = match self.trust_domain.0 {
            Some(td) => td,
            None => default_trust_domain(),
        };
        let service_account = or_default(self.service_account, DEFAULT_SERVICE_ACCOUNT);
        let mut workload = Workload::new(self.uid, trust_domain, self.namespace, service_account)
            .map_err(|e| identity_error(i, e))?;
        workload.name = self.name;
        workload.ips = self.workload_ips.into_iter().map(|ip| ip.0).collect();
        workload.hostname = self.hostname;
        workload.network = self.network;
        workload.protocol = match self.protocol {
            ProtocolYaml::Hbone => TunnelProtocol::Hbone,
            ProtocolYaml::Tcp => TunnelProtocol::Tcp,
        };
        workload.node = self.node;
        workload.status = match self.status {
            StatusYaml::Healthy => HealthStatus::Healthy,
            StatusYaml::Unhealthy => HealthStatus::Unhealthy,
        };
        workload.canonical_name = self.canonical_name;
        workload.canonical_revision = self.canonical_revision;
        workload.workload_name = self.workload_name;
        workload.workload_type = WorkloadType::from_name(&self.workload_type);
        workload.cluster_id = or_default(self.cluster_id, DEFAULT_CLUSTER_ID);
        workload.locality = Locality {
            region: self.locality.region,
            zone: self.locality.zone,
            subzone: self.locality.subzone,
        };
        workload.native_tunnel = self.native_tunnel;
        workload.authorization_policies = self.authorization_policies;
        workload.waypoint = self.waypoint.map(GatewayYaml::into_model);
        workload.services = self
            .services
            .into_iter()
            .map(|(key, ports)| {
                let ports: PortMap = ports.into_iter().map(|(s, t)| (s.0, t.0)).collect();
                (key.0, ports)
            })
            .collect();
        Ok(workload)
    }
}

fn identity_error(i: usize, error: IdentityError) -> FieldError {
    let (field, value, cause) = match error {
        IdentityError::Namespace { value, cause } => ("namespace", value, cause),
        IdentityError::ServiceAccount { value, cause } => ("serviceAccount", value, cause),
    };
    FieldError {
        field: format!("workloads[{i}].{field}"),
        value,
        reason: InvalidReason::Identity(cause),
    }
}

fn or_default(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

#[derive(Deserialize, Default)]
enum ModeYaml {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Deserialize, Default)]
enum HealthPolicyYaml {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Deserialize)]
enum ScopeYaml {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerYaml {
    routing_preferences: Vec<ScopeYaml>,
    mode: ModeYaml,
    health_policy: HealthPolicyYaml,
}

impl LoadBalancerYaml {
    fn into_model(self) -> LoadBalancing {
        LoadBalancing {
            mode: match self.mode {
                ModeYaml::Standard => LoadBalancerMode::Standard,
                ModeYaml::Strict => LoadBalancerMode::Strict,
                ModeYaml::Failover => LoadBalancerMode::Failover,
                ModeYaml::Passthrough => LoadBalancerMode::Passthrough,
            },
            routing_preferences: self
                .routing_preferences
                .into_iter()
                .map(|scope| match scope {
                    ScopeYaml::Region => LocalityScope::Region,
                    ScopeYaml::Zone => LocalityScope::Zone,
                    ScopeYaml::Subzone => LocalityScope::Subzone,
                    ScopeYaml::Node => LocalityScope::Node,
                    ScopeYaml::Cluster => LocalityScope::Cluster,
                    ScopeYaml::Network => LocalityScope::Network,
                })
                .collect(),
            health_policy: match self.health_policy {
                HealthPolicyYaml::OnlyHealthy => HealthPolicy::OnlyHealthy,
                HealthPolicyYaml::AllowAll => HealthPolicy::AllowAll,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceYaml {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<VipScalar>,
    #[serde(default)]
    ports: BTreeMap<PortScalar, TargetPortScalar>,
    #[serde(default)]
    subject_alt_names: Vec<SanScalar>,
    #[serde(default)]
    load_balancer: Option<LoadBalancerYaml>,
    #[serde(default)]
    canonical: bool,
    #[serde(default)]
    waypoint: Option<GatewayYaml>,
}

impl ServiceYaml {
    fn into_service(self, i: usize) -> Result<Service, FieldError> {
        non_empty(format!("services[{i}].namespace"), &self.namespace)?;
        non_empty(format!("services[{i}].hostname"), &self.hostname)?;
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips: self.vips.into_iter().map(|vip| vip.0).collect(),
            ports: self.ports.into_iter().map(|(s, t)| (s.0, t.0)).collect(),
            subject_alt_names: self
                .subject_alt_names
                .into_iter()
                .map(|san| san.0)
                .collect(),
            load_balancing: self
                .load_balancer
                .map(LoadBalancerYaml::into_model)
                .unwrap_or_default(),
            canonical: self.canonical,
            waypoint: self.waypoint.map(GatewayYaml::into_model),
        })
    }
}
