//! Service → `istio.workload.Service` (xds.md §4.4), and the port map a pod gets as an endpoint
//! of each service that selects it (`Workload.services`, xds.md §4.5).

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds_proto::istio::workload as pb;
use xds_proto::istio::workload::load_balancing::{HealthPolicy, Mode, Scope};

use super::waypoints::{Target, is_managed_waypoint_service};
use super::workloads::Context;
use crate::k8s::{
    Cluster, IpFamily, Pod, Protocol, Service, ServicePort, ServiceType, TargetPort, parse_go_bool,
    selects,
};

/// Annotation (on a Service, else its namespace) standing in for `spec.trafficDistribution`.
const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";
/// Label (on a Service, else its namespace) telling ingress gateways to use the waypoint.
const INGRESS_USE_WAYPOINT_LABEL: &str = "istio.io/ingress-use-waypoint";
/// Ports istiod treats as TCP when neither `appProtocol` nor the port name says otherwise.
const WELL_KNOWN_TCP_PORTS: [u16; 4] = [25, 53, 3306, 27017];

/// The services of each namespace that select pods, with their hostnames.
#[derive(Debug)]
pub(super) struct ServiceIndex<'a> {
    by_namespace: BTreeMap<&'a str, Vec<(&'a Service, String)>>,
}

impl<'a> ServiceIndex<'a> {
    pub(super) fn new(cluster: &'a Cluster, domain_suffix: &str) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<(&Service, String)>> = BTreeMap::new();
        for service in cluster.services() {
            if service.service_type == ServiceType::ExternalName || service.selector.is_empty() {
                continue;
            }
            by_namespace
                .entry(service.meta.namespace.as_str())
                .or_default()
                .push((service, hostname(service, domain_suffix)));
        }
        Self { by_namespace }
    }

    /// `Workload.services` for `pod`: `<ns>/<hostname>` → this endpoint's ports, for every
    /// service of its namespace whose selector matches its labels.
    pub(super) fn endpoint_of(&self, pod: &Pod) -> BTreeMap<String, pb::PortList> {
        let Some(services) = self.by_namespace.get(pod.meta.namespace.as_str()) else {
            return BTreeMap::new();
        };
        services
            .iter()
            .filter(|(service, _)| selects(&service.selector, &pod.meta.labels))
            .map(|(service, hostname)| {
                let ports = service
                    .ports
                    .iter()
                    .filter_map(|port| endpoint_port(port, pod))
                    .collect();
                (
                    format!("{}/{hostname}", service.meta.namespace),
                    pb::PortList { ports },
                )
            })
            .collect()
    }
}

/// `<name>.<namespace>.svc.<domain suffix>`.
pub(super) fn hostname(service: &Service, domain_suffix: &str) -> String {
    format!(
        "{}.{}.svc.{domain_suffix}",
        service.meta.name, service.meta.namespace
    )
}

/// One service port on one pod; a named target the pod does not declare (as a TCP port) is
/// omitted for that pod, as istiod does.
fn endpoint_port(port: &ServicePort, pod: &Pod) -> Option<pb::Port> {
    let target = match &port.target_port {
        TargetPort::Number(number) => *number,
        TargetPort::Name(name) => pod.named_tcp_port(name)?,
    };
    Some(pb::Port {
        service_port: u32::from(port.port),
        target_port: u32::from(target),
        app_protocol: pb::AppProtocol::Unknown.into(),
    })
}

/// The Address for a Service and its resource name; `None` for ExternalName services.
pub(super) fn service(service: &Service, context: &Context<'_>) -> Option<(String, pb::Address)> {
    if service.service_type == ServiceType::ExternalName {
        return None;
    }
    let namespace = context.cluster.namespace(&service.meta.namespace);
    let namespace_labels = namespace.map(|n| &n.meta.labels);
    let hostname = hostname(service, &context.options.domain_suffix);
    let waypoint = if is_managed_waypoint_service(service) {
        None
    } else {
        context.waypoints.for_object(
            &service.meta.labels,
            &service.meta.namespace,
            Target::Service,
        )
    };
    let ingress_use_waypoint = service
        .meta
        .labels
        .get(INGRESS_USE_WAYPOINT_LABEL)
        .or_else(|| namespace_labels.and_then(|l| l.get(INGRESS_USE_WAYPOINT_LABEL)))
        .and_then(|v| parse_go_bool(v))
        .unwrap_or(false);
    let namespace_distribution = namespace
        .and_then(|n| n.meta.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION))
        .map(String::as_str);
    let resource = pb::Service {
        name: service.meta.name.clone(),
        namespace: service.meta.namespace.clone(),
        hostname: hostname.clone(),
        addresses: service
            .cluster_ips
            .iter()
            .map(|ip| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(*ip),
                length: None,
            })
            .collect(),
        ports: service.ports.iter().map(service_port).collect(),
        // istiod sets these for ServiceEntries only, never for a Kubernetes Service.
        subject_alt_names: Vec::new(),
        waypoint,
        load_balancing: load_balancing(service, namespace_distribution),
        ip_families: ip_families(service).into(),
        extensions: Vec::new(),
        canonical: true,
        ingress_use_waypoint,
        weighted_waypoints: Vec::new(),
        visibility: pb::service::Visibility::Public.into(),
    };
    let key = format!("{}/{hostname}", service.meta.namespace);
    let address = pb::Address {
        r#type: Some(pb::address::Type::Service(resource)),
    };
    Some((key, address))
}

/// An IP as the 4 or 16 bytes the wire carries.
pub(super) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn service_port(port: &ServicePort) -> pb::Port {
    let target_port = match port.target_port {
        TargetPort::Number(number) => u32::from(number),
        // Resolved per endpoint (`Workload.services`).
        TargetPort::Name(_) => 0,
    };
    pb::Port {
        service_port: u32::from(port.port),
        target_port,
        app_protocol: app_protocol(port).into(),
    }
}

/// `appProtocol`, else the port name's prefix before `-`; well-known ports default to TCP.
pub(super) fn app_protocol(port: &ServicePort) -> pb::AppProtocol {
    if port.protocol != Protocol::Tcp {
        return pb::AppProtocol::Unknown;
    }
    let name = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let prefix = name.split('-').next().unwrap_or_default();
    match prefix {
        "http" => pb::AppProtocol::Http11,
        "http2" | "kubernetes.io/h2c" => pb::AppProtocol::Http2,
        "grpc" => pb::AppProtocol::Grpc,
        "tls" | "https" => pb::AppProtocol::Tls,
        "tcp" => pb::AppProtocol::Tcp,
        _ if WELL_KNOWN_TCP_PORTS.contains(&port.port) => pb::AppProtocol::Tcp,
        _ => pb::AppProtocol::Unknown,
    }
}

fn load_balancing(
    service: &Service,
    namespace_distribution: Option<&str>,
) -> Option<pb::LoadBalancing> {
    let health_policy = if service.publish_not_ready_addresses {
        HealthPolicy::AllowAll
    } else {
        HealthPolicy::OnlyHealthy
    };
    let distribution = service
        .traffic_distribution
        .as_deref()
        .or_else(|| {
            service
                .meta
                .annotations
                .get(TRAFFIC_DISTRIBUTION_ANNOTATION)
                .map(String::as_str)
        })
        .or(namespace_distribution);
    let (preference, mode) = if service.internal_traffic_local {
        (vec![Scope::Node], Mode::Strict)
    } else {
        match distribution {
            Some("PreferClose" | "PreferSameZone") => (
                vec![Scope::Network, Scope::Region, Scope::Zone],
                Mode::Failover,
            ),
            Some("PreferSameNode") => (
                vec![
                    Scope::Network,
                    Scope::Region,
                    Scope::Zone,
                    Scope::Subzone,
                    Scope::Node,
                ],
                Mode::Failover,
            ),
            _ if health_policy == HealthPolicy::AllowAll => (Vec::new(), Mode::UnspecifiedMode),
            _ => return None,
        }
    };
    Some(pb::LoadBalancing {
        routing_preference: preference.into_iter().map(Into::into).collect(),
        mode: mode.into(),
        health_policy: health_policy.into(),
    })
}

/// From `spec.ipFamilies`, else (as the API server would have defaulted it) the cluster IPs.
fn ip_families(service: &Service) -> pb::IpFamilies {
    let families: Vec<IpFamily> = if service.ip_families.is_empty() {
        service
            .cluster_ips
            .iter()
            .map(|ip| {
                if ip.is_ipv4() {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                }
            })
            .collect()
    } else {
        service.ip_families.clone()
    };
    let v4 = families.contains(&IpFamily::V4);
    let v6 = families.contains(&IpFamily::V6);
    match (v4, v6) {
        (true, true) => pb::IpFamilies::Dual,
        (true, false) => pb::IpFamilies::Ipv4Only,
        (false, true) => pb::IpFamilies::Ipv6Only,
        (false, false) => pb::IpFamilies::Automatic,
    }
}
