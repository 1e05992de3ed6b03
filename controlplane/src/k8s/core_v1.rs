//! The core kinds: `Namespace`, `ServiceAccount`, `Pod`, `Service`. Only the fields that feed
//! `Address` resources are read; other fields (container images, probes, ...) are ignored, as
//! they have no bearing on the mesh.

use std::net::IpAddr;

use super::error::{FieldError, Problem};
use super::meta::{Labels, NameRule, ObjectMeta, validate_name};
use super::yaml::{Cursor, Fields};

/// Label that enrolls a namespace (or a pod) in ambient mode, or (`none`) opts a pod out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Metadata; `labels` carries [`DATAPLANE_MODE_LABEL`] and waypoint bindings.
    pub meta: ObjectMeta,
}

impl Namespace {
    /// Whether the namespace is labelled `istio.io/dataplane-mode: ambient`.
    pub fn is_ambient(&self) -> bool {
        self.meta
            .labels
            .get(DATAPLANE_MODE_LABEL)
            .map(String::as_str)
            == Some("ambient")
    }
}

/// A service account (only its existence is recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Metadata.
    pub meta: ObjectMeta,
}

/// Service account a pod runs as when it names none, as Kubernetes defaults it.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `spec.serviceAccountName` (else the deprecated `spec.serviceAccount`), else `default`.
    pub service_account: String,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.containers`.
    pub containers: Vec<Container>,
    /// `spec.initContainers`.
    pub init_containers: Vec<Container>,
    /// `status.podIPs`, else `status.podIP`.
    pub ips: Vec<IpAddr>,
    /// `status.phase`; `Pending` when absent.
    pub phase: PodPhase,
    /// Whether `status.conditions` has `Ready` = `"True"`.
    pub ready: bool,
}

/// A pod's lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Accepted, not all containers running yet.
    Pending,
    /// Bound to a node, containers running.
    Running,
    /// Terminated successfully.
    Succeeded,
    /// Terminated with a failure.
    Failed,
    /// State could not be obtained.
    Unknown,
}

impl PodPhase {
    /// Whether the pod has finished for good (istiod drops such pods).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// A container and the ports it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `ports`.
    pub ports: Vec<ContainerPort>,
    /// `restartPolicy`; `Always` on an init container makes it a sidecar that keeps running.
    pub restart_policy: Option<String>,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// `name`, which a Service's named `targetPort` refers to.
    pub name: Option<String>,
    /// `containerPort`.
    pub container_port: u16,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
}

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn read_protocol(fields: &Fields<'_>) -> Result<Protocol, FieldError> {
    let protocol = fields.with("protocol", |c| {
        one_of(c, PROTOCOLS).map(|p| match p {
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => Protocol::Tcp,
        })
    })?;
    Ok(protocol.unwrap_or(Protocol::Tcp))
}

/// Reads a string that must be one of `allowed`.
pub(crate) fn one_of<'a>(
    cursor: &Cursor<'a>,
    allowed: &'static [&'static str],
) -> Result<&'a str, FieldError> {
    let text = cursor.str()?;
    if allowed.contains(&text) {
        Ok(text)
    } else {
        Err(cursor.path().error(Problem::NotOneOf {
            value: text.to_owned(),
            allowed,
        }))
    }
}

/// Reads an IP address string.
pub(crate) fn read_ip(cursor: &Cursor<'_>) -> Result<IpAddr, FieldError> {
    let text = cursor.non_empty_str()?;
    text.parse()
        .map_err(|_| cursor.path().error(Problem::NotIp(text.to_owned())))
}

/// Reads a port that must not be 0.
fn read_nonzero_port(cursor: &Cursor<'_>) -> Result<u16, FieldError> {
    match cursor.port()? {
        0 => Err(cursor.path().error(Problem::NotPort("0".to_owned()))),
        port => Ok(port),
    }
}

impl Pod {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        let spec = object.with("spec", Cursor::mapping)?;
        let status = object.with("status", Cursor::mapping)?;
        let (service_account, node_name, host_network, containers, init_containers) = match &spec {
            Some(spec) => {
                let account = match spec.with("serviceAccountName", |c| {
                    validate_name(c, NameRule::Subdomain)
                })? {
                    Some(account) => Some(account),
                    None => {
                        spec.with("serviceAccount", |c| validate_name(c, NameRule::Subdomain))?
                    }
                };
                (
                    account,
                    spec.opt_name("nodeName")?,
                    spec.flag("hostNetwork")?,
                    spec.list("containers", read_container)?,
                    spec.list("initContainers", read_container)?,
                )
            }
            None => (None, None, false, Vec::new(), Vec::new()),
        };
        let (ips, phase, ready) = match &status {
            Some(status) => (
                read_pod_ips(status)?,
                read_phase(status)?,
                read_ready(status)?,
            ),
            None => (Vec::new(), PodPhase::Pending, false),
        };
        Ok(Self {
            meta,
            service_account: service_account.unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
            node_name,
            host_network,
            containers,
            init_containers,
            ips,
            phase,
            ready,
        })
    }

    /// The TCP port named `name` in the containers (and init containers that keep running),
    /// which a Service's named `targetPort` resolves to.
    pub fn named_tcp_port(&self, name: &str) -> Option<u16> {
        let sidecars = self
            .init_containers
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        self.containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| &c.ports)
            .find(|p| p.protocol == Protocol::Tcp && p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }
}

fn read_container(cursor: &Cursor<'_>) -> Result<Container, FieldError> {
    let fields = cursor.mapping()?;
    Ok(Container {
        name: fields.require("name", |c| c.non_empty_str().map(str::to_owned))?,
        ports: fields.list("ports", |c| {
            let port = c.mapping()?;
            Ok(ContainerPort {
                name: port.opt_name("name")?,
                container_port: port.require("containerPort", read_nonzero_port)?,
                protocol: read_protocol(&port)?,
            })
        })?,
        restart_policy: fields.opt_name("restartPolicy")?,
    })
}

fn read_pod_ips(status: &Fields<'_>) -> Result<Vec<IpAddr>, FieldError> {
    let listed = status.list("podIPs", |c| c.mapping()?.require("ip", read_ip))?;
    let mut ips = if listed.is_empty() {
        status.with("podIP", read_ip)?.into_iter().collect()
    } else {
        listed
    };
    ips.dedup();
    Ok(ips)
}

const PHASES: &[&str] = &["Pending", "Running", "Succeeded", "Failed", "Unknown"];

fn read_phase(status: &Fields<'_>) -> Result<PodPhase, FieldError> {
    let phase = status.with("phase", |c| {
        one_of(c, PHASES).map(|p| match p {
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            "Unknown" => PodPhase::Unknown,
            _ => PodPhase::Pending,
        })
    })?;
    Ok(phase.unwrap_or(PodPhase::Pending))
}

fn read_ready(status: &Fields<'_>) -> Result<bool, FieldError> {
    let conditions = status.list("conditions", |c| {
        let condition = c.mapping()?;
        let kind = condition.require("type", |c| c.str().map(str::to_owned))?;
        let value = condition.require("status", |c| c.str().map(str::to_owned))?;
        Ok(kind == "Ready" && value == "True")
    })?;
    Ok(conditions.contains(&true))
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.selector`; empty when the service selects no pods itself.
    pub selector: Labels,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.clusterIPs` (else `spec.clusterIP`), without empty and `None` entries.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies`.
    pub ip_families: Vec<IpFamily>,
    /// `spec.internalTrafficPolicy` is `Local`.
    pub internal_traffic_local: bool,
    /// `spec.publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<String>,
}

/// `spec.type` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// A virtual IP inside the cluster (the default).
    ClusterIp,
    /// A cluster IP plus a port on every node.
    NodePort,
    /// A node port plus an external load balancer.
    LoadBalancer,
    /// A DNS alias; not part of the mesh's address space (istiod skips it).
    ExternalName,
}

/// An IP family of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`.
    pub name: Option<String>,
    /// `port`: the port on the VIP.
    pub port: u16,
    /// `targetPort`; the service port when absent, as Kubernetes defaults it.
    pub target_port: TargetPort,
    /// `protocol`.
    pub protocol: Protocol,
    /// `appProtocol`.
    pub app_protocol: Option<String>,
}

/// Where a service port goes on each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];

impl Service {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        let spec = object.with("spec", Cursor::mapping)?;
        let Some(spec) = spec else {
            return Ok(Self {
                meta,
                service_type: ServiceType::ClusterIp,
                selector: Labels::new(),
                ports: Vec::new(),
                cluster_ips: Vec::new(),
                ip_families: Vec::new(),
                internal_traffic_local: false,
                publish_not_ready_addresses: false,
                traffic_distribution: None,
            });
        };
        let service_type = spec
            .with("type", |c| {
                one_of(c, SERVICE_TYPES).map(|t| match t {
                    "NodePort" => ServiceType::NodePort,
                    "LoadBalancer" => ServiceType::LoadBalancer,
                    "ExternalName" => ServiceType::ExternalName,
                    _ => ServiceType::ClusterIp,
                })
            })?
            .unwrap_or(ServiceType::ClusterIp);
        Ok(Self {
            meta,
            service_type,
            selector: spec.string_map("selector")?,
            ports: spec.list("ports", read_service_port)?,
            cluster_ips: read_cluster_ips(&spec)?,
            ip_families: spec.list("ipFamilies", |c| {
                one_of(c, IP_FAMILIES).map(|f| {
                    if f == "IPv6" {
                        IpFamily::V6
                    } else {
                        IpFamily::V4
                    }
                })
            })?,
            internal_traffic_local: spec
                .with("internalTrafficPolicy", |c| one_of(c, TRAFFIC_POLICIES))?
                == Some("Local"),
            publish_not_ready_addresses: spec.flag("publishNotReadyAddresses")?,
            traffic_distribution: spec.opt_name("trafficDistribution")?,
        })
    }
}

fn read_service_port(cursor: &Cursor<'_>) -> Result<ServicePort, FieldError> {
    let fields = cursor.mapping()?;
    let port = fields.require("port", read_nonzero_port)?;
    let target_port = fields
        .with("targetPort", |c| {
            if !c.is_str() {
                return read_nonzero_port(c).map(TargetPort::Number);
            }
            let text = c.non_empty_str()?;
            // A digit-only string is read as the number it spells, not as a port name.
            Ok(match text.parse::<u16>() {
                Ok(number) if number > 0 => TargetPort::Number(number),
                _ => TargetPort::Name(text.to_owned()),
            })
        })?
        .unwrap_or(TargetPort::Number(port));
    Ok(ServicePort {
        name: fields.opt_name("name")?,
        port,
        target_port,
        protocol: read_protocol(&fields)?,
        app_protocol: fields.opt_name("appProtocol")?,
    })
}

fn read_cluster_ips(spec: &Fields<'_>) -> Result<Vec<IpAddr>, FieldError> {
    let listed = spec.list("clusterIPs", |c| read_cluster_ip(c))?;
    let ips = if listed.is_empty() {
        spec.with("clusterIP", read_cluster_ip)?
            .flatten()
            .into_iter()
            .collect()
    } else {
        listed.into_iter().flatten().collect()
    };
    Ok(ips)
}

/// A cluster IP entry: an address, or `None`/empty (headless or not yet allocated).
fn read_cluster_ip(cursor: &Cursor<'_>) -> Result<Option<IpAddr>, FieldError> {
    match cursor.str()? {
        "" | "None" => Ok(None),
        _ => read_ip(cursor).map(Some),
    }
}
