//! `/config_dump` in upstream's JSON shape (telemetry.md §c.3), so `istioctl ztunnel-config
//! workloads|services|policies|certificates` reads this proxy unchanged.
//!
//! istioctl decodes with Go's `encoding/json`: unknown keys are ignored, but a known key with
//! another type is a hard error. The types here are therefore the contract: IPs and gateway
//! destinations are strings, ports are numbers keyed by numeric strings, rules are nested
//! arrays. Optional keys are left out when empty, as upstream does, and keys come in upstream's
//! order, which is why the document is serialized straight from these structs rather than
//! through `serde_json::Value` (whose maps sort their keys). This module only turns the state
//! into the document; it does no I/O.

mod certs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use mesh::identity::{CertState, SpiffeId};
use mesh::policy::{Action, Authorization, Match, Scope, ServiceAccountMatch, StringMatch};
use serde::Serialize;

use self::certs::{CertsDump, certificates};
use crate::inpod::pods::PodState;
use crate::state::{
    GatewayAddress, HealthPolicy, HealthStatus, LoadBalancerMode, LocalityScope, Service, Snapshot,
    TunnelProtocol, Workload,
};

/// What the document is built from, read at the moment of the request.
pub struct Sources<'a> {
    /// The node's current state.
    pub snapshot: &'a Snapshot,
    /// Every identity the certificate store holds, sorted by identity.
    pub certificates: &'a [(SpiffeId, CertState)],
    /// The runtime configuration (camelCase keys; istioctl does not read it).
    pub config: &'a serde_json::Value,
    /// In-pod mode: the pods the node agent enrolled here (`None` in dedicated mode).
    pub pods: Option<&'a [PodState]>,
}

/// The whole document, borrowing from its [`Sources`]; serialize it to get the JSON.
pub fn document<'a>(sources: &Sources<'a>) -> Document<'a> {
    let snapshot = sources.snapshot;
    Document {
        workloads: snapshot.workloads().map(|w| workload(w)).collect(),
        services: services(snapshot),
        // The set is keyed by the `namespace/name` string, the order upstream sorts by.
        policies: snapshot.policies().iter().map(policy).collect(),
        staged_services: staged(snapshot),
        static_config: StaticConfig::default(),
        version: Version::current(),
        config: sources.config,
        certificates: sources
            .certificates
            .iter()
            .map(|(id, state)| certificates(id, state))
            .collect(),
        workload_state: sources.pods.map(workload_state),
    }
}

/// The document as the admin port serves it: pretty-printed JSON.
pub fn render(sources: &Sources<'_>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec_pretty(&document(sources))
}

/// The `/config_dump` document (telemetry.md §c.3); fields in upstream's key order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document<'a> {
    workloads: Vec<WorkloadDump<'a>>,
    services: Vec<ServiceDump<'a>>,
    policies: Vec<PolicyDump<'a>>,
    staged_services: BTreeMap<String, BTreeMap<&'a str, EndpointDump<'a>>>,
    static_config: StaticConfig,
    version: Version,
    config: &'a serde_json::Value,
    certificates: Vec<CertsDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload_state: Option<BTreeMap<&'a str, WorkloadStateDump<'a>>>,
}

/// `workloadState` entry: istioctl's `ztunnel-config connections` lists pods from it. The
/// per-pod connection lists are not kept yet, so `connections` is left out.
#[derive(Serialize)]
struct WorkloadStateDump<'a> {
    state: &'static str,
    info: PodInfoDump<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodInfoDump<'a> {
    name: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

fn workload_state(pods: &[PodState]) -> BTreeMap<&str, WorkloadStateDump<'_>> {
    pods.iter()
        .map(|pod| {
            let entry = WorkloadStateDump {
                state: if pod.up { "Up" } else { "Pending" },
                info: PodInfoDump {
                    name: &pod.info.name,
                    namespace: &pod.info.namespace,
                    service_account: &pod.info.service_account,
                },
            };
            (pod.uid.as_str(), entry)
        })
        .collect()
}

/// Upstream fills this from a local config file; ours folds such a file into the state above.
#[derive(Serialize, Default)]
struct StaticConfig {
    workloads: [(); 0],
    policies: [(); 0],
    services: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    version: &'static str,
    git_revision: &'static str,
    rust_version: &'static str,
    build_profile: &'static str,
    build_status: &'static str,
    istio_version: String,
    crypto_provider: &'static str,
}

impl Version {
    fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            git_revision: option_env!("GIT_REVISION").unwrap_or("unknown"),
            rust_version: option_env!("RUSTC_VERSION").unwrap_or("unknown"),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            build_status: option_env!("BUILD_STATUS").unwrap_or("unknown"),
            // The Istio release this build stands in for, as istio_build's tag says.
            istio_version: std::env::var("ISTIO_META_ISTIO_VERSION")
                .unwrap_or_else(|_| "unknown".to_owned()),
            crypto_provider: "tls-aws-lc",
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadDump<'a> {
    workload_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
    protocol: &'static str,
    network_mode: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    trust_domain: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    service_account: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    network: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    workload_name: &'a str,
    workload_type: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_revision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    node: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    native_tunnel: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    authorization_policies: &'a [String],
    status: &'static str,
    cluster_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<LocalityDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    capacity: u32,
}

#[derive(Serialize)]
struct LocalityDump<'a> {
    region: &'a str,
    zone: &'a str,
    subzone: &'a str,
}

fn status(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "Healthy",
        HealthStatus::Unhealthy => "Unhealthy",
    }
}

fn workload(w: &Workload) -> WorkloadDump<'_> {
    let locality = &w.locality;
    let has_locality =
        !(locality.region.is_empty() && locality.zone.is_empty() && locality.subzone.is_empty());
    WorkloadDump {
        workload_ips: w.ips.iter().map(ToString::to_string).collect(),
        waypoint: w.waypoint.as_ref().map(gateway),
        protocol: match w.protocol {
            TunnelProtocol::Tcp => "TCP",
            TunnelProtocol::Hbone => "HBONE",
        },
        network_mode: "Standard",
        uid: &w.uid,
        name: &w.name,
        namespace: w.namespace(),
        trust_domain: w.trust_domain().to_string(),
        service_account: w.service_account(),
        network: &w.network,
        workload_name: &w.workload_name,
        workload_type: w.workload_type.as_str(),
        canonical_name: &w.canonical_name,
        canonical_revision: &w.canonical_revision,
        hostname: &w.hostname,
        node: &w.node,
        native_tunnel: w.native_tunnel,
        authorization_policies: &w.authorization_policies,
        status: status(w.status),
        cluster_id: &w.cluster_id,
        locality: has_locality.then_some(LocalityDump {
            region: &locality.region,
            zone: &locality.zone,
            subzone: &locality.subzone,
        }),
        services: w.services.keys().map(ToString::to_string).collect(),
        capacity: 1,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDump<'a> {
    name: &'a str,
    namespace: &'a str,
    hostname: &'a str,
    vips: Vec<String>,
    ports: BTreeMap<String, u16>,
    endpoints: BTreeMap<&'a str, EndpointDump<'a>>,
    subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<LoadBalancerDump>,
    canonical: bool,
    visibility: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointDump<'a> {
    workload_uid: &'a str,
    port: BTreeMap<String, u16>,
    status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadBalancerDump {
    routing_preferences: Vec<&'static str>,
    mode: &'static str,
    health_policy: &'static str,
}

fn services(snapshot: &Snapshot) -> Vec<ServiceDump<'_>> {
    let mut all: Vec<ServiceDump<'_>> = snapshot
        .services()
        .map(|s| service(s, endpoints(snapshot, s)))
        .collect();
    all.sort_by(|a, b| (a.hostname, a.namespace).cmp(&(b.hostname, b.namespace)));
    all
}

fn endpoints<'a>(snapshot: &'a Snapshot, s: &Service) -> BTreeMap<&'a str, EndpointDump<'a>> {
    let key = s.key();
    snapshot
        .endpoints(&key)
        .iter()
        .map(|w| (w.uid.as_str(), endpoint(w, w.services.get(&key))))
        .collect()
}

fn endpoint<'a>(w: &'a Workload, ports: Option<&crate::state::PortMap>) -> EndpointDump<'a> {
    EndpointDump {
        workload_uid: &w.uid,
        port: ports.map(port_map).unwrap_or_default(),
        status: status(w.status),
    }
}

fn port_map(ports: &crate::state::PortMap) -> BTreeMap<String, u16> {
    ports.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn service<'a>(s: &'a Service, endpoints: BTreeMap<&'a str, EndpointDump<'a>>) -> ServiceDump<'a> {
    let lb = &s.load_balancing;
    let default_lb = lb.mode == LoadBalancerMode::Standard
        && lb.routing_preferences.is_empty()
        && lb.health_policy == HealthPolicy::OnlyHealthy;
    ServiceDump {
        name: &s.name,
        namespace: &s.namespace,
        hostname: &s.hostname,
        vips: s.vips.iter().map(ToString::to_string).collect(),
        ports: port_map(&s.ports),
        endpoints,
        subject_alt_names: s
            .subject_alt_names
            .iter()
            .map(ToString::to_string)
            .collect(),
        load_balancer: (!default_lb).then(|| LoadBalancerDump {
            routing_preferences: lb
                .routing_preferences
                .iter()
                .map(|p| scope_name(*p))
                .collect(),
            mode: match lb.mode {
                LoadBalancerMode::Standard => "Standard",
                LoadBalancerMode::Strict => "Strict",
                LoadBalancerMode::Failover => "Failover",
                LoadBalancerMode::Passthrough => "Passthrough",
            },
            health_policy: match lb.health_policy {
                HealthPolicy::OnlyHealthy => "OnlyHealthy",
                HealthPolicy::AllowAll => "AllowAll",
            },
        }),
        waypoint: s.waypoint.as_ref().map(gateway),
        canonical: s.canonical,
        // Namespace-local visibility is not modelled: every service is reachable mesh-wide.
        visibility: "Public",
    }
}

/// A waypoint; `destination` must be a string (`network/ip` or `namespace/hostname`): istioctl
/// decodes it into one and compares it with services' VIPs and keys.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayDump {
    destination: String,
    hbone_mtls_port: u16,
}

fn gateway(waypoint: &GatewayAddress) -> GatewayDump {
    GatewayDump {
        destination: waypoint.destination.to_string(),
        hbone_mtls_port: waypoint.hbone_mtls_port,
    }
}

fn scope_name(scope: LocalityScope) -> &'static str {
    match scope {
        LocalityScope::Region => "Region",
        LocalityScope::Zone => "Zone",
        LocalityScope::Subzone => "Subzone",
        LocalityScope::Node => "Node",
        LocalityScope::Cluster => "Cluster",
        LocalityScope::Network => "Network",
    }
}

/// Endpoints received before their service, keyed `"<ns>/<hostname>"` then by workload uid.
fn staged(snapshot: &Snapshot) -> BTreeMap<String, BTreeMap<&str, EndpointDump<'_>>> {
    snapshot
        .staged_endpoints()
        .map(|(key, workloads)| {
            let endpoints = workloads
                .iter()
                .map(|w| (w.uid.as_str(), endpoint(w, w.services.get(key))))
                .collect();
            (key.to_string(), endpoints)
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyDump<'a> {
    name: &'a str,
    namespace: &'a str,
    scope: &'static str,
    action: &'static str,
    rules: Vec<Vec<Vec<MatchDump<'a>>>>,
    dry_run: bool,
}

/// A single-key object, as upstream's serde enum encodes it: `{"Exact": "..."}`, and
/// `{"Presence": []}` for "any value".
#[derive(Serialize)]
enum StringMatchDump<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Presence([(); 0]),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceAccountDump<'a> {
    namespace: &'a str,
    service_account: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MatchDump<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_accounts: Vec<ServiceAccountDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_service_accounts: Vec<ServiceAccountDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    destination_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_destination_ips: Vec<String>,
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    destination_ports: &'a [u16],
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    not_destination_ports: &'a [u16],
}

fn strings(matches: &[StringMatch]) -> Vec<StringMatchDump<'_>> {
    matches
        .iter()
        .map(|m| match m {
            StringMatch::Exact(v) => StringMatchDump::Exact(v),
            StringMatch::Prefix(v) => StringMatchDump::Prefix(v),
            StringMatch::Suffix(v) => StringMatchDump::Suffix(v),
            StringMatch::Presence => StringMatchDump::Presence([]),
        })
        .collect()
}

fn accounts(matches: &[ServiceAccountMatch]) -> Vec<ServiceAccountDump<'_>> {
    matches
        .iter()
        .map(|m| ServiceAccountDump {
            namespace: &m.namespace,
            service_account: &m.service_account,
        })
        .collect()
}

fn nets<T: ToString>(nets: &[T]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

fn matcher(m: &Match) -> MatchDump<'_> {
    MatchDump {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: &m.destination_ports,
        not_destination_ports: &m.not_destination_ports,
    }
}

fn policy(p: &Authorization) -> PolicyDump<'_> {
    PolicyDump {
        name: &p.name,
        namespace: &p.namespace,
        scope: match p.scope {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
            Scope::Targeted => "Targeted",
        },
        action: match p.action {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
        },
        rules: p
            .rules
            .iter()
            .map(|rule| {
                rule.clauses
                    .iter()
                    .map(|clause| clause.matches.iter().map(matcher).collect())
                    .collect()
            })
            .collect(),
        dry_run: p.dry_run,
    }
}
