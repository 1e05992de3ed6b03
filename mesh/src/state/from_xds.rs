//! xDS resources (`istio.workload.Address`, `istio.security.Authorization`) → the model, and
//! [`XdsState`], what the control plane has delivered so far.
//!
//! The checks are the local config's (identities, ports, `namespace/hostname` keys, SPIFFE IDs)
//! plus what xds.md §3.6 and §5.7 reject on the wire: IPs that are not 4 or 16 bytes, CIDR
//! lengths past the address, enum numbers the schema does not define, `LEGACY_ISTIO_MTLS`,
//! `UNSPECIFIED_SCOPE` as a preference, gateways without a destination. A resource is refused
//! whole with an [`InvalidResource`] naming the field, so the xDS client can NACK it by name
//! while the previous version keeps serving.
//!
//! Some wire fields have no place in the model yet (network gateways, weighted
//! waypoints, application tunnels, capacity, network mode, IP families, visibility, CIDR VIPs).
//! They are validated like the rest, so what is accepted now stays acceptable once the model
//! grows them, and are otherwise left out; a comment at each says what leaving it out changes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::policy::{self, Authorization, PolicySet};
use xds_proto::istio::security as xds_security;
use xds_proto::istio::workload as xds;
use xds_proto::istio::workload::address::Type as AddressType;
use xds_proto::istio::workload::gateway_address::Destination;
use xds_proto::istio::workload::load_balancing::{
    HealthPolicy as XdsHealthPolicy, Mode as XdsMode, Scope as XdsScope,
};

use super::model::{
    DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ACCOUNT, GatewayAddress, GatewayDestination, HealthPolicy,
    HealthStatus, IdentityError, LoadBalancerMode, LoadBalancing, Locality, LocalityScope,
    NamespacedHostname, NamespacedHostnameError, NetworkAddress, PortMap, Service, TunnelProtocol,
    Workload, WorkloadType, default_trust_domain,
};
use super::snapshot::Snapshot;

/// A resource refused by the conversion: which one, where in it, and what is wrong, e.g.
/// `workload Kubernetes//Pod/shop/web-0: addresses[1]: 5 bytes is neither IPv4 nor IPv6`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {}{problem}", field_prefix(.field))]
pub struct InvalidResource {
    /// The refused resource.
    pub resource: ResourceId,
    /// Path of the offending field in the wire message (`services["ns/h"].ports[0].target_port`);
    /// empty when the problem is the resource as a whole.
    pub field: String,
    /// What is wrong there.
    pub problem: ResourceProblem,
}

impl InvalidResource {
    /// `field: problem` without the resource, for an xDS NACK that names the resource itself
    /// (`"<name>: <reason>"`, xds.md §2.2).
    pub fn detail(&self) -> String {
        format!("{}{}", field_prefix(&self.field), self.problem)
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Which resource an [`InvalidResource`] is about, by the key it would be stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceId {
    /// An Address holding neither a workload nor a service.
    Address,
    /// A workload, by uid.
    Workload(String),
    /// A service, by `namespace/hostname`.
    Service(String),
    /// An authorization policy, by `namespace/name`.
    Authorization(String),
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, key) = match self {
            Self::Address => return f.write_str("address"),
            Self::Workload(key) => ("workload", key),
            Self::Service(key) => ("service", key),
            Self::Authorization(key) => ("authorization", key),
        };
        if key.is_empty() {
            write!(f, "{kind} (no key)")
        } else {
            write!(f, "{kind} {key}")
        }
    }
}

/// The rule a field breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceProblem {
    /// The Address's `type` oneof is not set.
    #[error("neither workload nor service is set")]
    NoType,
    /// A required string is empty.
    #[error("must not be empty")]
    Empty,
    /// A `/` in a part of a `namespace/…` key, which would make the key ambiguous.
    #[error("{0:?} contains '/'")]
    Slash(String),
    /// An IP that is neither 4 nor 16 bytes.
    #[error("{0} bytes is neither IPv4 nor IPv6")]
    IpLength(usize),
    /// A CIDR prefix longer than its address.
    #[error("invalid CIDR length {length} (at most {max})")]
    PrefixLength {
        /// The length given.
        length: u32,
        /// The longest valid length for the address family.
        max: u8,
    },
    /// An enum number the schema does not define.
    #[error("{value} is not a known {enum_name} value")]
    UnknownEnum {
        /// The enum, as the schema names it.
        enum_name: &'static str,
        /// The number received.
        value: i32,
    },
    /// `LEGACY_ISTIO_MTLS`: sidecar mTLS, which ztunnel does not speak.
    #[error("LEGACY_ISTIO_MTLS is not supported (only NONE and HBONE)")]
    LegacyIstioMtls,
    /// `UNSPECIFIED_SCOPE` in a routing preference list.
    #[error("UNSPECIFIED_SCOPE is not a routing preference")]
    UnspecifiedScope,
    /// A gateway (or weighted waypoint) with no destination.
    #[error("no destination (neither hostname nor address)")]
    NoDestination,
    /// A port number outside its range.
    #[error("{value} is not a port ({range})")]
    Port {
        /// The number received.
        value: u32,
        /// The range allowed there.
        range: PortRange,
    },
    /// One service port listed twice with different targets.
    #[error("service port {port} maps to both {first} and {second}")]
    ConflictingPort {
        /// The service port.
        port: u16,
        /// The first target listed.
        first: u16,
        /// The other target.
        second: u16,
    },
    /// A `services` key that is not `namespace/hostname`.
    #[error(transparent)]
    ServiceKey(NamespacedHostnameError),
    /// A SPIFFE part that is not valid: a namespace or service account that cannot be a path
    /// segment, a trust domain, a subject alt name that is not a SPIFFE ID.
    #[error("{value:?} is not a valid {what}: {cause}")]
    Spiffe {
        /// What it should be (`SPIFFE path segment`, `trust domain`, `SPIFFE ID`).
        what: &'static str,
        /// The value given.
        value: String,
        /// The SPIFFE rule it breaks.
        cause: SpiffeIdError,
    },
    /// The xDS resource name is not the key its content is stored under (xds.md §2.7), so a
    /// later removal by that name would miss it.
    #[error("resource name {name:?} is not the resource's key {key:?}")]
    NameMismatch {
        /// `Resource.name`.
        name: String,
        /// The key of the content.
        key: String,
    },
    /// What the policy conversion refused (the field names its place in the policy).
    #[error(transparent)]
    Policy(policy::Problem),
}

/// The range of a port field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRange {
    /// 1–65535.
    NonZero,
    /// 0–65535, where 0 defers to each endpoint's mapping.
    Target,
    /// 0–65535, where 0 means unset.
    Optional,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NonZero => "1-65535",
            Self::Target => "0-65535, 0 = per endpoint",
            Self::Optional => "0-65535, 0 = unset",
        })
    }
}

/// What one Address resource holds, converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAddress {
    /// A workload (boxed, as is the service: both are large and a resource is one or the other).
    Workload(Box<Workload>),
    /// A service.
    Service(Box<Service>),
}

impl FromAddress {
    /// The resource name it must arrive under: the uid, or `namespace/hostname` (xds.md §2.7).
    pub fn key(&self) -> String {
        match self {
            Self::Workload(workload) => workload.uid.clone(),
            Self::Service(service) => service.key().to_string(),
        }
    }

    fn id(&self) -> ResourceId {
        match self {
            Self::Workload(_) => ResourceId::Workload(self.key()),
            Self::Service(_) => ResourceId::Service(self.key()),
        }
    }
}

/// A problem at a field, before the resource it belongs to is attached.
type FieldError = (String, ResourceProblem);

fn at(field: impl Into<String>, problem: ResourceProblem) -> FieldError {
    (field.into(), problem)
}

fn attach(resource: ResourceId) -> impl FnOnce(FieldError) -> InvalidResource {
    move |(field, problem)| InvalidResource {
        resource,
        field,
        problem,
    }
}

/// Converts an Address resource: its workload or its service.
pub fn address_from_xds(wire: &xds::Address) -> Result<FromAddress, InvalidResource> {
    match &wire.r#type {
        Some(AddressType::Workload(workload)) => {
            workload_from_xds(workload).map(|w| FromAddress::Workload(Box::new(w)))
        }
        Some(AddressType::Service(service)) => {
            service_from_xds(service).map(|s| FromAddress::Service(Box::new(s)))
        }
        None => Err(InvalidResource {
            resource: ResourceId::Address,
            field: "type".into(),
            problem: ResourceProblem::NoType,
        }),
    }
}

/// Converts a workload, applying the xDS defaults (trust domain `cluster.local`, service account
/// `default`, cluster `Kubernetes`, unknown `workload_type` → Deployment).
pub fn workload_from_xds(wire: &xds::Workload) -> Result<Workload, InvalidResource> {
    convert_workload(wire).map_err(attach(ResourceId::Workload(wire.uid.clone())))
}

fn convert_workload(wire: &xds::Workload) -> Result<Workload, FieldError> {
    if wire.uid.is_empty() {
        return Err(at("uid", ResourceProblem::Empty));
    }
    let trust_domain = if wire.trust_domain.is_empty() {
        default_trust_domain()
    } else {
        TrustDomain::parse(&wire.trust_domain).map_err(not_spiffe(
            "trust_domain",
            "trust domain",
            &wire.trust_domain,
        ))?
    };
    let service_account = or_default(&wire.service_account, DEFAULT_SERVICE_ACCOUNT);
    let mut workload = Workload::new(&wire.uid, trust_domain, &wire.namespace, service_account)
        .map_err(identity_error)?;
    workload.name = wire.name.clone();
    workload.ips = wire
        .addresses
        .iter()
        .enumerate()
        .map(|(i, bytes)| ip_from_bytes(bytes).map_err(|p| at(format!("addresses[{i}]"), p)))
        .collect::<Result<_, _>>()?;
    workload.hostname = wire.hostname.clone();
    workload.network = wire.network.clone();
    workload.protocol = match known("tunnel_protocol", "TunnelProtocol", wire.tunnel_protocol)? {
        xds::TunnelProtocol::None => TunnelProtocol::Tcp,
        xds::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
        xds::TunnelProtocol::LegacyIstioMtls => {
            return Err(at("tunnel_protocol", ResourceProblem::LegacyIstioMtls));
        }
    };
    workload.waypoint = wire
        .waypoint
        .as_ref()
        .map(|gateway| gateway_address("waypoint", gateway))
        .transpose()?;
    if let Some(gateway) = &wire.network_gateway {
        check_gateway("network_gateway", gateway)?;
    }
    workload.node = wire.node.clone();
    workload.canonical_name = wire.canonical_name.clone();
    workload.canonical_revision = wire.canonical_revision.clone();
    // xds.md §3.2: an unknown kind is a Deployment, not an error (telemetry only).
    workload.workload_type = match xds::WorkloadType::try_from(wire.workload_type) {
        Ok(xds::WorkloadType::Cronjob) => WorkloadType::CronJob,
        Ok(xds::WorkloadType::Pod) => WorkloadType::Pod,
        Ok(xds::WorkloadType::Job) => WorkloadType::Job,
        Ok(xds::WorkloadType::Deployment) | Err(_) => WorkloadType::Deployment,
    };
    workload.workload_name = wire.workload_name.clone();
    workload.native_tunnel = wire.native_tunnel;
    if let Some(tunnel) = &wire.application_tunnel {
        // Only waypoints ask for one; validated so a bad one is refused today as it will be
        // once inbound delivery honours it.
        known::<xds::application_tunnel::Protocol>(
            "application_tunnel.protocol",
            "ApplicationTunnel.Protocol",
            tunnel.protocol,
        )?;
        port_number("application_tunnel.port", tunnel.port, PortRange::Optional)?;
    }
    workload.services = wire
        .services
        .iter()
        .map(|(key, list)| {
            let field = format!("services[{key:?}]");
            let name = NamespacedHostname::parse(key)
                .map_err(|e| at(field.clone(), ResourceProblem::ServiceKey(e)))?;
            Ok((name, port_map(&format!("{field}."), &list.ports, true)?))
        })
        .collect::<Result<_, FieldError>>()?;
    workload.authorization_policies = wire.authorization_policies.clone();
    workload.status = match known("status", "WorkloadStatus", wire.status)? {
        xds::WorkloadStatus::Healthy => HealthStatus::Healthy,
        xds::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    workload.cluster_id = or_default(&wire.cluster_id, DEFAULT_CLUSTER_ID);
    if let Some(locality) = &wire.locality {
        workload.locality = Locality {
            region: locality.region.clone(),
            zone: locality.zone.clone(),
            subzone: locality.subzone.clone(),
        };
    }
    // HOST_NETWORK workloads keep their IPs although upstream leaves them out of its IP index:
    // the model has no network mode, and without IPs such a pod could not be dialed as a
    // service endpoint. Reached by IP, a host-network pod is plain TCP (the node agent never
    // enrolls one), which dials the original address just as an unknown destination does.
    known::<xds::NetworkMode>("network_mode", "NetworkMode", wire.network_mode)?;
    // `capacity` (endpoint weight) is left out: endpoints are picked uniformly.
    Ok(workload)
}

fn identity_error(error: IdentityError) -> FieldError {
    let (field, value, cause) = match error {
        IdentityError::Namespace { value, cause } => ("namespace", value, cause),
        IdentityError::ServiceAccount { value, cause } => ("service_account", value, cause),
    };
    not_spiffe(field, "SPIFFE path segment", &value)(cause)
}

fn not_spiffe(
    field: impl Into<String>,
    what: &'static str,
    value: &str,
) -> impl FnOnce(SpiffeIdError) -> FieldError {
    let (field, value) = (field.into(), value.to_owned());
    move |cause| at(field, ResourceProblem::Spiffe { what, value, cause })
}

fn or_default(value: &str, default: &str) -> String {
    let chosen = if value.is_empty() { default } else { value };
    chosen.to_owned()
}

/// Converts a service. Its key parts must be non-empty and free of `/`: the resource name and
/// every workload's `services` key spell it `namespace/hostname`.
pub fn service_from_xds(wire: &xds::Service) -> Result<Service, InvalidResource> {
    let key = format!("{}/{}", wire.namespace, wire.hostname);
    convert_service(wire).map_err(attach(ResourceId::Service(key)))
}

fn convert_service(wire: &xds::Service) -> Result<Service, FieldError> {
    key_part("namespace", &wire.namespace)?;
    key_part("hostname", &wire.hostname)?;
    let mut vips = Vec::with_capacity(wire.addresses.len());
    for (i, address) in wire.addresses.iter().enumerate() {
        // A CIDR VIP (a ServiceEntry range) is validated but not indexed: the model holds
        // exact VIPs only, and an address the index misses is dialed as it is, which is what
        // such ranges (resolution NONE) ask for.
        if let Some(vip) = network_address(&format!("addresses[{i}]"), address)? {
            vips.push(vip);
        }
    }
    let subject_alt_names = wire
        .subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, san)| {
            SpiffeId::parse(san).map_err(not_spiffe(
                format!("subject_alt_names[{i}]"),
                "SPIFFE ID",
                san,
            ))
        })
        .collect::<Result<_, _>>()?;
    let waypoint = wire
        .waypoint
        .as_ref()
        .map(|gateway| gateway_address("waypoint", gateway))
        .transpose()?;
    for (i, weighted) in wire.weighted_waypoints.iter().enumerate() {
        let field = format!("weighted_waypoints[{i}].destination");
        match &weighted.destination {
            Some(gateway) => check_gateway(&field, gateway)?,
            None => return Err(at(field, ResourceProblem::NoDestination)),
        }
    }
    known::<xds::IpFamilies>("ip_families", "IPFamilies", wire.ip_families)?;
    // `visibility` is not checked: xds.md §3.6 reads an unknown value as PUBLIC.
    Ok(Service {
        name: wire.name.clone(),
        namespace: wire.namespace.clone(),
        hostname: wire.hostname.clone(),
        vips,
        ports: port_map("", &wire.ports, false)?,
        subject_alt_names,
        load_balancing: match &wire.load_balancing {
            Some(lb) => load_balancing(lb)?,
            None => LoadBalancing::default(),
        },
        canonical: wire.canonical,
        waypoint,
    })
}

fn key_part(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(at(field, ResourceProblem::Empty));
    }
    if value.contains('/') {
        return Err(at(field, ResourceProblem::Slash(value.to_owned())));
    }
    Ok(())
}

fn load_balancing(wire: &xds::LoadBalancing) -> Result<LoadBalancing, FieldError> {
    let mode = match known("load_balancing.mode", "LoadBalancing.Mode", wire.mode)? {
        XdsMode::UnspecifiedMode => LoadBalancerMode::Standard,
        XdsMode::Strict => LoadBalancerMode::Strict,
        XdsMode::Failover => LoadBalancerMode::Failover,
        XdsMode::Passthrough => LoadBalancerMode::Passthrough,
    };
    let health_policy = match known(
        "load_balancing.health_policy",
        "LoadBalancing.HealthPolicy",
        wire.health_policy,
    )? {
        XdsHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy,
        XdsHealthPolicy::AllowAll => HealthPolicy::AllowAll,
    };
    let routing_preferences = wire
        .routing_preference
        .iter()
        .enumerate()
        .map(|(i, &scope)| {
            let field = format!("load_balancing.routing_preference[{i}]");
            Ok(match known(&field, "LoadBalancing.Scope", scope)? {
                XdsScope::UnspecifiedScope => {
                    return Err(at(field, ResourceProblem::UnspecifiedScope));
                }
                XdsScope::Region => LocalityScope::Region,
                XdsScope::Zone => LocalityScope::Zone,
                XdsScope::Subzone => LocalityScope::Subzone,
                XdsScope::Node => LocalityScope::Node,
                XdsScope::Cluster => LocalityScope::Cluster,
                XdsScope::Network => LocalityScope::Network,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(LoadBalancing {
        mode,
        routing_preferences,
        health_policy,
    })
}

/// Reads an enum field, refusing numbers the schema does not define (xds.md §3.6).
fn known<E: TryFrom<i32>>(
    field: &str,
    enum_name: &'static str,
    value: i32,
) -> Result<E, FieldError> {
    E::try_from(value).map_err(|_| at(field, ResourceProblem::UnknownEnum { enum_name, value }))
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, ResourceProblem> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(ResourceProblem::IpLength(bytes.len()))
    }
}

/// Validates a NetworkAddress at `field`: the address, or `None` for a CIDR shorter than a host
/// address (absent `length` or the full length is one host, xds.md §3.4).
fn network_address(
    field: &str,
    wire: &xds::NetworkAddress,
) -> Result<Option<NetworkAddress>, FieldError> {
    let ip = ip_from_bytes(&wire.address).map_err(|p| at(format!("{field}.address"), p))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    match wire.length {
        None => {}
        Some(length) if length == u32::from(max) => {}
        Some(length) if length < u32::from(max) => return Ok(None),
        Some(length) => {
            let problem = ResourceProblem::PrefixLength { length, max };
            return Err(at(format!("{field}.length"), problem));
        }
    }
    Ok(Some(NetworkAddress {
        network: wire.network.clone(),
        ip,
    }))
}

/// A waypoint at `field`, kept: outbound traffic to its workload or service goes through it.
fn gateway_address(field: &str, wire: &xds::GatewayAddress) -> Result<GatewayAddress, FieldError> {
    check_gateway(field, wire)?;
    let destination = match &wire.destination {
        Some(Destination::Hostname(name)) => GatewayDestination::Hostname(NamespacedHostname {
            namespace: name.namespace.clone(),
            hostname: name.hostname.clone(),
        }),
        Some(Destination::Address(address)) => {
            match network_address(&format!("{field}.address"), address)? {
                Some(address) => GatewayDestination::Address(address),
                None => return Err(at(field, ResourceProblem::NoDestination)),
            }
        }
        None => return Err(at(field, ResourceProblem::NoDestination)),
    };
    // 0 is "unset" on the wire; every waypoint listens for HBONE on 15008.
    let hbone_mtls_port = match u16::try_from(wire.hbone_mtls_port) {
        Ok(0) | Err(_) => crate::hbone::HBONE_PORT,
        Ok(port) => port,
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

/// Validates a network gateway (or a weighted waypoint) at `field`. Nothing of network
/// gateways or weighted waypoints is kept yet: the primary `waypoint` is what traffic follows.
fn check_gateway(field: &str, wire: &xds::GatewayAddress) -> Result<(), FieldError> {
    match &wire.destination {
        None => return Err(at(field, ResourceProblem::NoDestination)),
        Some(Destination::Hostname(name)) => {
            key_part(&format!("{field}.hostname.namespace"), &name.namespace)?;
            key_part(&format!("{field}.hostname.hostname"), &name.hostname)?;
        }
        Some(Destination::Address(address)) => {
            network_address(&format!("{field}.address"), address)?;
        }
    }
    let port_field = format!("{field}.hbone_mtls_port");
    port_number(&port_field, wire.hbone_mtls_port, PortRange::Optional)?;
    Ok(())
}

fn port_number(field: &str, value: u32, range: PortRange) -> Result<u16, FieldError> {
    match u16::try_from(value) {
        Ok(0) if range == PortRange::NonZero => {}
        Ok(port) => return Ok(port),
        Err(_) => {}
    }
    Err(at(field, ResourceProblem::Port { value, range }))
}

/// Service port → target port, from a Service's `ports` (`endpoint` false: a target of 0 defers
/// to the endpoint) or a workload's `services` entry (`endpoint` true). Listing a port twice
/// with the same target is harmless (istiod lists a TCP and a UDP port of one number); two
/// different targets are refused, since either choice could be the wrong one.
fn port_map(prefix: &str, ports: &[xds::Port], endpoint: bool) -> Result<PortMap, FieldError> {
    let mut map = PortMap::new();
    for (i, port) in ports.iter().enumerate() {
        let field = |name: &str| format!("{prefix}ports[{i}].{name}");
        let service_port = port_number(
            &field("service_port"),
            port.service_port,
            PortRange::NonZero,
        )?;
        let target = port_number(&field("target_port"), port.target_port, PortRange::Target)?;
        // An endpoint's 0 defers to the service's target, exactly as a missing entry does; the
        // model keeps no 0 in an endpoint's map.
        if endpoint && target == 0 {
            continue;
        }
        if let Some(first) = map.insert(service_port, target)
            && first != target
        {
            let problem = ResourceProblem::ConflictingPort {
                port: service_port,
                first,
                second: target,
            };
            return Err(at(field("target_port"), problem));
        }
    }
    Ok(map)
}

/// Converts an Authorization with the shared policy conversion, after the key checks the
/// local config applies too: a non-empty namespace and name without `/`, since `namespace/name`
/// is how workloads and removals name the policy.
pub fn authorization_from_xds(
    wire: &xds_security::Authorization,
) -> Result<Authorization, InvalidResource> {
    let resource = ResourceId::Authorization(format!("{}/{}", wire.namespace, wire.name));
    let checked = key_part("namespace", &wire.namespace)
        .and_then(|()| key_part("name", &wire.name))
        .and_then(|()| {
            Authorization::try_from(wire)
                .map_err(|e| at(e.field.to_string(), ResourceProblem::Policy(e.problem)))
        });
    checked.map_err(attach(resource))
}

/// Everything the xDS stream has delivered and accepted, by resource name. Each apply converts
/// resources one at a time: an invalid one is returned (for the NACK) and leaves its name's
/// previous value in place, the valid ones are applied (xds.md §2.2).
#[derive(Debug, Clone, Default)]
pub struct XdsState {
    /// By resource name (= uid).
    workloads: BTreeMap<String, Workload>,
    /// By resource name (= `namespace/hostname`).
    services: BTreeMap<String, Service>,
    /// By key (= resource name, `namespace/name`).
    policies: PolicySet,
}

impl XdsState {
    /// Nothing delivered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one Address response: upserts first, then removals (a name in both ends up
    /// removed). Returns the rejected upserts by resource name; a removal of an unknown name is
    /// not an error (istiod removes keys it cannot resolve).
    pub fn apply_addresses(
        &mut self,
        added: impl IntoIterator<Item = (String, xds::Address)>,
        removed: impl IntoIterator<Item = String>,
    ) -> Vec<(String, InvalidResource)> {
        let mut rejected = Vec::new();
        for (name, wire) in added {
            let converted = address_from_xds(&wire).and_then(|address| {
                check_name(&name, address.key(), address.id()).map(|()| address)
            });
            match converted {
                // One name is one resource, so a name that changes kind leaves the other map.
                Ok(FromAddress::Workload(workload)) => {
                    self.services.remove(&name);
                    self.workloads.insert(name, *workload);
                }
                Ok(FromAddress::Service(service)) => {
                    self.workloads.remove(&name);
                    self.services.insert(name, *service);
                }
                Err(error) => rejected.push((name, error)),
            }
        }
        for name in removed {
            self.workloads.remove(&name);
            self.services.remove(&name);
        }
        rejected
    }

    /// Applies one Authorization response, as [`XdsState::apply_addresses`] does.
    pub fn apply_authorizations(
        &mut self,
        added: impl IntoIterator<Item = (String, xds_security::Authorization)>,
        removed: impl IntoIterator<Item = String>,
    ) -> Vec<(String, InvalidResource)> {
        let mut rejected = Vec::new();
        for (name, wire) in added {
            let converted = authorization_from_xds(&wire).and_then(|policy| {
                let key = policy.key().to_string();
                let id = ResourceId::Authorization(key.clone());
                check_name(&name, key, id).map(|()| policy)
            });
            match converted {
                Ok(policy) => {
                    self.policies.insert(policy);
                }
                Err(error) => rejected.push((name, error)),
            }
        }
        for name in removed {
            self.policies.remove(&name);
        }
        rejected
    }

    /// The current contents as a snapshot with its indexes (built whole: the snapshot owns
    /// its entries, so every workload and service is copied).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.workloads.values().cloned(),
            self.services.values().cloned(),
            self.policies.clone(),
        )
    }
}

/// A resource is accepted under `name` only if that is its key: state is keyed by name, the
/// snapshot by content, and removals by name must reach what was stored.
fn check_name(name: &str, key: String, resource: ResourceId) -> Result<(), InvalidResource> {
    if key == name {
        return Ok(());
    }
    let name = name.to_owned();
    Err(InvalidResource {
        resource,
        field: String::new(),
        problem: ResourceProblem::NameMismatch { name, key },
    })
}

#[cfg(test)]
mod tests;
