//! Pod → `istio.workload.Workload` (xds.md §4.1–4.2, §4.5, §5.5).

use xds_proto::istio::workload as pb;

use super::authz::SelectorPolicy;
use super::peer_authn::PeerAuthn;
use super::services::{ServiceIndex, ip_bytes};
use super::waypoints::{Target, Waypoints, is_waypoint_pod};
use super::{DEFAULT_TRUST_DOMAIN, Options};
use crate::k8s::{Cluster, DATAPLANE_MODE_LABEL, Namespace, Pod, selects};

/// Pod label listing the tunnels a pod speaks itself (`http` = HBONE natively).
const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";
/// Annotation istio-cni sets once the pod's traffic is captured.
const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Annotation the sidecar injector sets; such pods are never captured by ztunnel.
const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const CANONICAL_NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const CANONICAL_REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];
/// Canonical revision when no label names one.
const DEFAULT_CANONICAL_REVISION: &str = "latest";

/// What every workload conversion looks up.
#[derive(Debug)]
pub(super) struct Context<'a> {
    pub(super) options: &'a Options,
    pub(super) cluster: &'a Cluster,
    pub(super) services: ServiceIndex<'a>,
    pub(super) waypoints: Waypoints<'a>,
    pub(super) selector_policies: &'a [SelectorPolicy],
    pub(super) peer_authn: &'a PeerAuthn<'a>,
}

/// The Address for a pod and its resource name (the uid); `None` for a pod that has finished
/// or has no IP yet, which istiod does not send.
pub(super) fn workload(pod: &Pod, context: &Context<'_>) -> Option<(String, pb::Address)> {
    if pod.phase.is_terminal() || pod.ips.is_empty() {
        return None;
    }
    let options = context.options;
    let meta = &pod.meta;
    let namespace = context.cluster.namespace(&meta.namespace);
    let uid = format!(
        "{}//Pod/{}/{}",
        options.cluster_id, meta.namespace, meta.name
    );
    let (tunnel_protocol, native_tunnel) = tunnel(pod, namespace);
    let trust_domain = options.trust_domain.as_str();
    let workload_name = workload_name(pod);
    let first_label = |keys: &[&str]| keys.iter().find_map(|key| meta.labels.get(*key)).cloned();
    let (waypoint, application_tunnel) = waypoint_fields(pod, &context.waypoints);
    let workload = pb::Workload {
        uid: uid.clone(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        addresses: pod.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: tunnel_protocol.into(),
        // Empty means cluster.local to ztunnel; istiod leaves it empty in that case.
        trust_domain: if trust_domain == DEFAULT_TRUST_DOMAIN {
            String::new()
        } else {
            trust_domain.to_owned()
        },
        service_account: pod.service_account.clone(),
        waypoint,
        network_gateway: None,
        node: pod.node_name.clone().unwrap_or_default(),
        canonical_name: first_label(&CANONICAL_NAME_LABELS)
            .unwrap_or_else(|| workload_name.clone()),
        canonical_revision: first_label(&CANONICAL_REVISION_LABELS)
            .unwrap_or_else(|| DEFAULT_CANONICAL_REVISION.to_owned()),
        workload_type: pb::WorkloadType::Pod.into(),
        workload_name,
        native_tunnel,
        application_tunnel,
        services: context.services.endpoint_of(pod),
        authorization_policies: authorization_policies(pod, context),
        status: status(pod).into(),
        cluster_id: options.cluster_id.clone(),
        locality: None,
        network_mode: if pod.host_network {
            pb::NetworkMode::HostNetwork
        } else {
            pb::NetworkMode::Standard
        }
        .into(),
        extensions: Vec::new(),
        capacity: None,
    };
    let address = pb::Address {
        r#type: Some(pb::address::Type::Workload(workload)),
    };
    Some((uid, address))
}

/// A waypoint pod gets no waypoint but its inbound binding; any other pod may be bound to a
/// workload waypoint.
fn waypoint_fields(
    pod: &Pod,
    waypoints: &Waypoints<'_>,
) -> (Option<pb::GatewayAddress>, Option<pb::ApplicationTunnel>) {
    if is_waypoint_pod(pod) {
        (None, waypoints.inbound_binding(pod))
    } else {
        let meta = &pod.meta;
        let waypoint = waypoints.for_object(&meta.labels, &meta.namespace, Target::Workload);
        (waypoint, None)
    }
}

/// HEALTHY iff Ready and not being deleted.
fn status(pod: &Pod) -> pb::WorkloadStatus {
    if pod.ready && !pod.meta.deleting {
        pb::WorkloadStatus::Healthy
    } else {
        pb::WorkloadStatus::Unhealthy
    }
}

/// Whether the pod is reached over HBONE, and whether it speaks HBONE itself.
///
/// istiod trusts istio-cni's redirection annotation; with no CNI behind a file, the enablement
/// rule istio-cni applies stands in for it (see the module doc of `translate`).
pub(super) fn tunnel(pod: &Pod, namespace: Option<&Namespace>) -> (pb::TunnelProtocol, bool) {
    let labels = &pod.meta.labels;
    let annotations = &pod.meta.annotations;
    let native = labels
        .get(TUNNEL_LABEL)
        .is_some_and(|list| list.split(',').any(|t| t.trim() == "http"));
    if native {
        return (pb::TunnelProtocol::Hbone, true);
    }
    if annotations.get(REDIRECTION_ANNOTATION).map(String::as_str) == Some("enabled") {
        return (pb::TunnelProtocol::Hbone, false);
    }
    if pod.host_network || annotations.contains_key(SIDECAR_STATUS_ANNOTATION) {
        return (pb::TunnelProtocol::None, false);
    }
    let enrolled = match labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => namespace.is_some_and(Namespace::is_ambient),
    };
    let protocol = if enrolled {
        pb::TunnelProtocol::Hbone
    } else {
        pb::TunnelProtocol::None
    };
    (protocol, false)
}

/// The owning workload's name: the `service.istio.io/workload-name` label, else the
/// controller's name (a ReplicaSet without its `-<pod-template-hash>`), else the pod's name.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.meta;
    if let Some(name) = meta.labels.get(WORKLOAD_NAME_LABEL) {
        return name.clone();
    }
    let Some(owner) = meta.owner_references.iter().find(|o| o.controller) else {
        return meta.name.clone();
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = meta.labels.get(POD_TEMPLATE_HASH_LABEL)
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return deployment.to_owned();
    }
    owner.name.clone()
}

/// The WORKLOAD_SELECTOR policies of the pod's namespace and of the root namespace whose
/// selector matches it (sorted), then the PeerAuthentication-derived names (xds.md §5.5).
fn authorization_policies(pod: &Pod, context: &Context<'_>) -> Vec<String> {
    let root = context.options.root_namespace.as_str();
    let mut names: Vec<String> = context
        .selector_policies
        .iter()
        .filter(|p| p.namespace == pod.meta.namespace || p.namespace == root)
        .filter(|p| selects(&p.selector, &pod.meta.labels))
        .map(|p| p.key.clone())
        .collect();
    names.sort();
    for name in context.peer_authn.policy_names(pod) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}
