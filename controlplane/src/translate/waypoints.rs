//! Which waypoint a pod or service uses, and the waypoint pods' inbound binding (xds.md §4.3).
//!
//! Binding: the object's `istio.io/use-waypoint` label (gateway namespace from
//! `istio.io/use-waypoint-namespace`, else the object's own; `none` opts out), else the same
//! labels on its namespace. The Gateway must exist, take the traffic type (`istio.io/waypoint-for`
//! on the Gateway; `service` when absent, the `istio-waypoint` class default) and have an HBONE
//! listener admitting the object's namespace.

use xds_proto::istio::workload as pb;
use xds_proto::istio::workload::application_tunnel::Protocol as TunnelProtocol;
use xds_proto::istio::workload::gateway_address::Destination;

use super::services::ip_bytes;
use crate::k8s::{
    AllowedNamespaces, Cluster, Gateway, GatewayStatusAddress, Kind, Labels, Object, ObjectRef,
    Pod, Service, selects,
};

const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label on waypoint pods (and services) naming their Gateway.
pub(super) const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const MANAGED_LABEL: &str = "gateway.istio.io/managed";
const MANAGED_BY_MESH: &str = "istio.io-mesh-controller";
const INBOUND_BINDING_ANNOTATION: &str = "ambient.istio.io/waypoint-inbound-binding";
/// The port istiod always gives for a waypoint's HBONE listener.
const HBONE_PORT: u32 = 15008;

/// What a waypoint is asked to carry for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// Traffic addressed to a pod.
    Workload,
    /// Traffic addressed to a service.
    Service,
}

/// The waypoint's own Service (managed by the mesh controller) gets no waypoint.
pub(super) fn is_managed_waypoint_service(service: &Service) -> bool {
    service.meta.labels.get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_BY_MESH)
}

/// Whether a pod is a waypoint's own pod (which gets no waypoint).
pub(super) fn is_waypoint_pod(pod: &Pod) -> bool {
    pod.meta.labels.contains_key(GATEWAY_NAME_LABEL)
}

/// Looks up waypoints in a cluster.
#[derive(Debug)]
pub(super) struct Waypoints<'a> {
    cluster: &'a Cluster,
    domain_suffix: &'a str,
}

/// What an object's (or namespace's) labels say about its waypoint.
enum Binding<'l> {
    OptedOut,
    Gateway { namespace: &'l str, name: &'l str },
}

fn binding<'l>(labels: &'l Labels, default_namespace: &'l str) -> Option<Binding<'l>> {
    let name = labels.get(USE_WAYPOINT_LABEL)?;
    if name == "none" {
        return Some(Binding::OptedOut);
    }
    let namespace = labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .map_or(default_namespace, String::as_str);
    Some(Binding::Gateway { namespace, name })
}

impl<'a> Waypoints<'a> {
    pub(super) fn new(cluster: &'a Cluster, domain_suffix: &'a str) -> Self {
        Self {
            cluster,
            domain_suffix,
        }
    }

    fn gateway(&self, namespace: &str, name: &str) -> Option<&'a Gateway> {
        let key = ObjectRef {
            kind: Kind::Gateway,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match self.cluster.get(&key) {
            Some(Object::Gateway(gateway)) => Some(gateway),
            _ => None,
        }
    }

    /// The waypoint for an object with `labels` in `namespace`, if it is bound to one that
    /// takes `target` traffic and admits the namespace.
    pub(super) fn for_object(
        &self,
        labels: &Labels,
        namespace: &str,
        target: Target,
    ) -> Option<pb::GatewayAddress> {
        let namespace_labels = self.cluster.namespace(namespace).map(|n| &n.meta.labels);
        let bound = binding(labels, namespace)
            .or_else(|| namespace_labels.and_then(|l| binding(l, namespace)))?;
        let Binding::Gateway {
            namespace: gateway_namespace,
            name,
        } = bound
        else {
            return None;
        };
        let gateway = self.gateway(gateway_namespace, name)?;
        let traffic = gateway
            .meta
            .labels
            .get(WAYPOINT_FOR_LABEL)
            .map_or("service", String::as_str);
        let takes = match target {
            Target::Workload => matches!(traffic, "workload" | "all"),
            Target::Service => matches!(traffic, "service" | "all"),
        };
        let empty = Labels::new();
        let admits = gateway.listeners.iter().any(|listener| {
            listener.protocol == "HBONE"
                && match &listener.allowed_namespaces {
                    AllowedNamespaces::Same => gateway.meta.namespace == namespace,
                    AllowedNamespaces::All => true,
                    AllowedNamespaces::Selector(selector) => {
                        selects(selector, namespace_labels.unwrap_or(&empty))
                    }
                }
        });
        (takes && admits).then(|| self.address(gateway))
    }

    /// The first status Hostname, else the first status IP, else (no status writer here) the
    /// Gateway's in-cluster service name.
    fn address(&self, gateway: &Gateway) -> pb::GatewayAddress {
        let hostname = gateway.addresses.iter().find_map(|a| match a {
            GatewayStatusAddress::Hostname(host) => Some(host.clone()),
            GatewayStatusAddress::Ip(_) => None,
        });
        let ip = gateway.addresses.iter().find_map(|a| match a {
            GatewayStatusAddress::Ip(ip) => Some(*ip),
            GatewayStatusAddress::Hostname(_) => None,
        });
        let destination = match (hostname, ip) {
            (None, Some(ip)) => Destination::Address(pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(ip),
                length: None,
            }),
            (hostname, _) => Destination::Hostname(pb::NamespacedHostname {
                namespace: gateway.meta.namespace.clone(),
                hostname: hostname.unwrap_or_else(|| {
                    format!(
                        "{}.{}.svc.{}",
                        gateway.meta.name, gateway.meta.namespace, self.domain_suffix
                    )
                }),
            }),
        };
        pb::GatewayAddress {
            destination: Some(destination),
            hbone_mtls_port: HBONE_PORT,
        }
    }

    /// A waypoint pod's `application_tunnel`, from its Gateway's
    /// `ambient.istio.io/waypoint-inbound-binding` annotation (`PROXY` or `NONE`, optionally
    /// `/<port>`); an unparsable value gives none.
    pub(super) fn inbound_binding(&self, pod: &Pod) -> Option<pb::ApplicationTunnel> {
        let gateway_name = pod.meta.labels.get(GATEWAY_NAME_LABEL)?;
        let gateway = self.gateway(&pod.meta.namespace, gateway_name)?;
        let value = gateway.meta.annotations.get(INBOUND_BINDING_ANNOTATION)?;
        let (protocol, port) = match value.split_once('/') {
            Some((protocol, port)) => (protocol, port.parse::<u16>().ok()?),
            None => (value.as_str(), 0),
        };
        let protocol = match protocol {
            "PROXY" => TunnelProtocol::Proxy,
            "NONE" => TunnelProtocol::None,
            _ => return None,
        };
        Some(pb::ApplicationTunnel {
            protocol: protocol.into(),
            port: u32::from(port),
        })
    }
}
