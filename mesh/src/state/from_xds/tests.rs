//! The xDS conversion: the upstream-encoded golden responses converted and compared with their
//! JSON field by field, one table row per rejection rule, and `XdsState`'s partial applies.

// tests: a panic is a failure report
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::identity::{SpiffeId, TrustDomain};
use crate::policy::{self, Action, Clause, Match, Rule, ServiceAccountMatch, StringMatch};
use prost::Message;
use serde_yaml_ng::Value;
use xds_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use xds_proto::istio::security as xsec;
use xds_proto::istio::workload::{self as xds, address::Type, gateway_address::Destination};
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::super::model::{
    HealthPolicy, HealthStatus, LoadBalancerMode, LoadBalancing, Locality, LocalityScope,
    NamespacedHostname, NetworkAddress, Service, TunnelProtocol, Workload, WorkloadType,
    default_trust_domain,
};
use super::super::resolve::Resolution;
use super::*;

// ---------------------------------------------------------------------------------------------
// Golden vectors, and reading their JSON (YAML is a superset of it; no JSON crate needed here)
// ---------------------------------------------------------------------------------------------

fn golden_path(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(file)
}

fn golden(name: &str) -> (DeltaDiscoveryResponse, Value) {
    let bin = std::fs::read(golden_path(&format!("{name}.bin"))).unwrap();
    let json = std::fs::read_to_string(golden_path(&format!("{name}.json"))).unwrap();
    let response = DeltaDiscoveryResponse::decode(bin.as_slice()).unwrap();
    (response, serde_yaml_ng::from_str(&json).unwrap())
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    v.get(key).unwrap_or(&NULL)
}
fn text(v: &Value, key: &str) -> String {
    get(v, key).as_str().unwrap_or_default().to_owned()
}
fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key).as_sequence().map_or(&[], Vec::as_slice)
}
fn texts(v: &Value, key: &str) -> Vec<String> {
    list(v, key)
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}
fn number(v: &Value, key: &str) -> u16 {
    u16::try_from(get(v, key).as_u64().unwrap_or(0)).unwrap()
}

fn base64(encoded: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut held, mut out) = (0u32, 0u32, Vec::new());
    for c in encoded.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    out
}

fn ip_of(encoded: &str) -> IpAddr {
    let bytes = base64(encoded);
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
        n => panic!("{n}-byte address in the JSON"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn key(text: &str) -> NamespacedHostname {
    NamespacedHostname::parse(text).unwrap()
}

/// The waypoint the JSON of a `GatewayAddress` describes (`null`: none).
fn expected_waypoint(j: &Value) -> Option<GatewayAddress> {
    if j.is_null() {
        return None;
    }
    let destination = match (get(j, "hostname"), get(j, "address")) {
        (name, _) if !name.is_null() => GatewayDestination::Hostname(NamespacedHostname {
            namespace: text(name, "namespace"),
            hostname: text(name, "hostname"),
        }),
        (_, address) => GatewayDestination::Address(NetworkAddress {
            network: text(address, "network"),
            ip: ip_of(&text(address, "address")),
        }),
    };
    Some(GatewayAddress {
        destination,
        hbone_mtls_port: number(j, "hbone_mtls_port"),
    })
}

/// The model value the JSON of a workload describes, with xds.md §3.2's defaults.
fn expected_workload(j: &Value) -> Workload {
    let trust_domain = match text(j, "trust_domain").as_str() {
        "" => default_trust_domain(),
        td => TrustDomain::parse(td).unwrap(),
    };
    let sa = Some(text(j, "service_account")).filter(|s| !s.is_empty());
    let sa = sa.unwrap_or_else(|| "default".into());
    let mut w = Workload::new(text(j, "uid"), trust_domain, text(j, "namespace"), sa).unwrap();
    w.name = text(j, "name");
    w.ips = texts(j, "addresses").iter().map(|a| ip_of(a)).collect();
    w.hostname = text(j, "hostname");
    w.network = text(j, "network");
    w.protocol = match text(j, "tunnel_protocol").as_str() {
        "HBONE" => TunnelProtocol::Hbone,
        "" | "NONE" => TunnelProtocol::Tcp,
        other => panic!("tunnel_protocol {other}"),
    };
    w.node = text(j, "node");
    w.status = match text(j, "status").as_str() {
        "UNHEALTHY" => HealthStatus::Unhealthy,
        _ => HealthStatus::Healthy,
    };
    w.canonical_name = text(j, "canonical_name");
    w.canonical_revision = text(j, "canonical_revision");
    w.workload_name = text(j, "workload_name");
    w.workload_type = WorkloadType::from_name(&text(j, "workload_type").to_lowercase());
    w.cluster_id = Some(text(j, "cluster_id"))
        .filter(|c| !c.is_empty())
        .unwrap_or("Kubernetes".into());
    let locality = get(j, "locality");
    w.locality = Locality {
        region: text(locality, "region"),
        zone: text(locality, "zone"),
        subzone: text(locality, "subzone"),
    };
    w.native_tunnel = get(j, "native_tunnel").as_bool().unwrap_or(false);
    w.authorization_policies = texts(j, "authorization_policies");
    w.waypoint = expected_waypoint(get(j, "waypoint"));
    for (name, ports) in get(j, "services").as_mapping().into_iter().flatten() {
        let ports = list(ports, "ports").iter();
        let map = ports.map(|p| (number(p, "service_port"), number(p, "target_port")));
        w.services
            .insert(key(name.as_str().unwrap()), map.collect());
    }
    w
}

/// The model value the JSON of a service describes.
fn expected_service(j: &Value) -> Service {
    let lb = get(j, "load_balancing");
    let scope = |s: &String| match s.as_str() {
        "REGION" => LocalityScope::Region,
        "ZONE" => LocalityScope::Zone,
        "SUBZONE" => LocalityScope::Subzone,
        "NODE" => LocalityScope::Node,
        "CLUSTER" => LocalityScope::Cluster,
        "NETWORK" => LocalityScope::Network,
        other => panic!("scope {other}"),
    };
    Service {
        name: text(j, "name"),
        namespace: text(j, "namespace"),
        hostname: text(j, "hostname"),
        vips: list(j, "addresses")
            .iter()
            .map(|a| {
                assert!(
                    get(a, "length").is_null(),
                    "the golden VIPs are host addresses"
                );
                let ip = ip_of(&text(a, "address"));
                NetworkAddress {
                    network: text(a, "network"),
                    ip,
                }
            })
            .collect(),
        ports: list(j, "ports")
            .iter()
            .map(|p| (number(p, "service_port"), number(p, "target_port")))
            .collect(),
        subject_alt_names: texts(j, "subject_alt_names")
            .iter()
            .map(|s| SpiffeId::parse(s).unwrap())
            .collect(),
        load_balancing: LoadBalancing {
            mode: match text(lb, "mode").as_str() {
                "" => LoadBalancerMode::Standard,
                "STRICT" => LoadBalancerMode::Strict,
                "FAILOVER" => LoadBalancerMode::Failover,
                "PASSTHROUGH" => LoadBalancerMode::Passthrough,
                other => panic!("mode {other}"),
            },
            routing_preferences: texts(lb, "routing_preference").iter().map(scope).collect(),
            health_policy: match text(lb, "health_policy").as_str() {
                "ALLOW_ALL" => HealthPolicy::AllowAll,
                _ => HealthPolicy::OnlyHealthy,
            },
        },
        canonical: get(j, "canonical").as_bool().unwrap_or(false),
        waypoint: expected_waypoint(get(j, "waypoint")),
    }
}

fn named_addresses(response: &DeltaDiscoveryResponse) -> Vec<(String, xds::Address)> {
    let decode = |r: &xds_proto::envoy::service::discovery::v3::Resource| {
        let any = r.resource.as_ref().unwrap();
        assert_eq!(any.type_url, ADDRESS_TYPE_URL);
        (
            r.name.clone(),
            xds::Address::decode(any.value.as_slice()).unwrap(),
        )
    };
    response.resources.iter().map(decode).collect()
}

#[test]
fn golden_addresses_convert_field_by_field() {
    let (response, json) = golden("xds-delta-response-addresses");
    assert_eq!(response.type_url, ADDRESS_TYPE_URL);
    let want = list(&json, "resources");
    let addresses = named_addresses(&response);
    assert_eq!(addresses.len(), want.len());
    for ((name, address), want) in addresses.iter().zip(want) {
        assert_eq!(*name, text(want, "name"));
        let body = get(want, "resource");
        let converted = address_from_xds(address).unwrap();
        assert_eq!(converted.key(), *name, "resource name is the key");
        match converted {
            FromAddress::Workload(w) => assert_eq!(*w, expected_workload(get(body, "workload"))),
            FromAddress::Service(s) => assert_eq!(*s, expected_service(get(body, "service"))),
        }
    }

    // A few values spelled out, so a misreading shared by both sides above cannot hide.
    let FromAddress::Workload(api) = address_from_xds(&addresses[1].1).unwrap() else {
        panic!("second resource is a workload")
    };
    assert_eq!(api.ips, vec![ip("10.244.2.7"), ip("fd00:10:244:2::7")]);
    assert_eq!(
        api.identity().to_string(),
        "spiffe://cluster.local/ns/storefront/sa/api"
    );
    assert_eq!(api.protocol, TunnelProtocol::Hbone);
    assert_eq!(api.workload_type, WorkloadType::Pod);
    let FromAddress::Workload(billing) = address_from_xds(&addresses[2].1).unwrap() else {
        panic!("third resource is a workload")
    };
    assert_eq!(
        (billing.protocol, billing.status),
        (TunnelProtocol::Tcp, HealthStatus::Unhealthy)
    );
    let FromAddress::Service(svc) = address_from_xds(&addresses[3].1).unwrap() else {
        panic!("fourth resource is a service")
    };
    assert_eq!(svc.ports, BTreeMap::from([(80, 8080), (9090, 0)]));
    assert_eq!(svc.vips[0].ip, ip("10.96.0.10"));
}

#[test]
fn golden_addresses_through_state_reach_the_snapshot_indexes() {
    let (response, _) = golden("xds-delta-response-addresses");
    let old_uid = "Kubernetes//Pod/storefront/web-7d4b9-old00";
    assert_eq!(response.removed_resources, vec![old_uid.to_owned()]);
    let mut state = XdsState::new();
    let mut old = web();
    old.uid = old_uid.into();
    old.addresses = vec![vec![10, 244, 1, 99]];
    assert!(
        state
            .apply_addresses([(old_uid.into(), workload(old))], [])
            .is_empty()
    );

    let rejected = state.apply_addresses(
        named_addresses(&response),
        response.removed_resources.clone(),
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    let snapshot = state.snapshot();
    assert_eq!(
        (snapshot.workload_count(), snapshot.service_count()),
        (3, 1)
    );
    assert!(snapshot.workload(old_uid).is_none());
    assert!(snapshot.workload_by_ip("", ip("10.244.1.99")).is_none());

    let web = snapshot.workload_by_ip("", ip("10.244.1.5")).unwrap();
    assert_eq!(web.uid, "Kubernetes//Pod/storefront/web-7d4b9-x2x1");
    let api_uid = "Kubernetes//Pod/storefront/api-5f6c8-abcde";
    assert_eq!(
        snapshot
            .workload_by_ip("", ip("fd00:10:244:2::7"))
            .unwrap()
            .uid,
        api_uid
    );
    assert!(
        snapshot
            .workload_by_ip("other-network", ip("10.244.1.5"))
            .is_none()
    );
    let api_key = key("storefront/api.storefront.svc.cluster.local");
    let service = snapshot.service_by_vip("", ip("10.96.0.10")).unwrap();
    assert_eq!(service.key(), api_key);
    let uids = |k: NamespacedHostname| {
        snapshot
            .endpoints(&k)
            .iter()
            .map(|w| w.uid.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(uids(api_key), vec![api_uid.to_owned()]);
    // web's service has not arrived: its endpoint is staged (xds.md §3.3).
    assert_eq!(
        uids(key("storefront/web.storefront.svc.cluster.local")),
        vec![web.uid.clone()]
    );

    // The golden api service sits behind a waypoint at 10.96.0.99 that the golden does not
    // hold: refused rather than sent around it. Without the waypoint, the VIP resolves to api.
    let dst = SocketAddr::new(ip("10.96.0.10"), 80);
    match snapshot.resolve_destination_with("", dst, Some(web.as_ref()), |_| 0) {
        Resolution::WaypointUnavailable { waypoint, .. } => assert_eq!(waypoint, "/10.96.0.99"),
        other => panic!("a waypoint without instances refuses, got {other:?}"),
    }
    let mut state = XdsState::new();
    let mut addresses = named_addresses(&response);
    for (_, address) in &mut addresses {
        if let Some(AddressType::Service(service)) = &mut address.r#type {
            service.waypoint = None;
        }
    }
    assert!(state.apply_addresses(addresses, Vec::new()).is_empty());
    let snapshot = state.snapshot();
    match snapshot.resolve_destination_with("", dst, Some(web.as_ref()), |_| 0) {
        Resolution::Service {
            endpoint,
            target_port,
            ..
        } => {
            assert_eq!((endpoint.uid.as_str(), target_port), (api_uid, 8080));
        }
        other => panic!("VIP resolves to its endpoint, got {other:?}"),
    }
}

fn expected_policy(j: &Value) -> policy::Authorization {
    let strings = |m: &Value, k: &str| -> Vec<StringMatch> {
        let one = |s: &Value| match ["exact", "prefix", "suffix"].map(|k| text(s, k)) {
            _ if !get(s, "presence").is_null() => StringMatch::Presence,
            [e, _, _] if !e.is_empty() => StringMatch::Exact(e),
            [_, p, _] if !p.is_empty() => StringMatch::Prefix(p),
            [_, _, s] => StringMatch::Suffix(s),
        };
        list(m, k).iter().map(one).collect()
    };
    let accounts = |m: &Value, k: &str| -> Vec<ServiceAccountMatch> {
        let one = |s: &Value| ServiceAccountMatch {
            namespace: text(s, "namespace"),
            service_account: text(s, "serviceAccount"),
        };
        list(m, k).iter().map(one).collect()
    };
    let cidrs = |m: &Value, k: &str| {
        let one = |a: &Value| {
            let ip = ip_of(&text(a, "address"));
            format!("{ip}/{}", get(a, "length").as_u64().unwrap_or(0))
                .parse()
                .unwrap()
        };
        list(m, k).iter().map(one).collect()
    };
    let ports = |m: &Value, k: &str| {
        list(m, k)
            .iter()
            .map(|p| p.as_u64().unwrap() as u16)
            .collect()
    };
    let matched = |m: &Value| Match {
        namespaces: strings(m, "namespaces"),
        not_namespaces: strings(m, "not_namespaces"),
        service_accounts: accounts(m, "service_accounts"),
        not_service_accounts: accounts(m, "not_service_accounts"),
        principals: strings(m, "principals"),
        not_principals: strings(m, "not_principals"),
        source_ips: cidrs(m, "source_ips"),
        not_source_ips: cidrs(m, "not_source_ips"),
        destination_ips: cidrs(m, "destination_ips"),
        not_destination_ips: cidrs(m, "not_destination_ips"),
        destination_ports: ports(m, "destination_ports"),
        not_destination_ports: ports(m, "not_destination_ports"),
        ..Match::default()
    };
    let clause = |c: &Value| Clause {
        matches: list(c, "matches").iter().map(matched).collect(),
    };
    let rule = |r: &Value| Rule {
        clauses: list(r, "clauses").iter().map(clause).collect(),
    };
    policy::Authorization {
        name: text(j, "name"),
        namespace: text(j, "namespace"),
        scope: match text(j, "scope").as_str() {
            "" | "GLOBAL" => policy::Scope::Global,
            "NAMESPACE" => policy::Scope::Namespace,
            "WORKLOAD_SELECTOR" => policy::Scope::WorkloadSelector,
            other => panic!("scope {other}"),
        },
        action: if text(j, "action") == "DENY" {
            Action::Deny
        } else {
            Action::Allow
        },
        rules: list(j, "rules").iter().map(rule).collect(),
        dry_run: get(j, "dry_run").as_bool().unwrap_or(false),
    }
}

#[test]
fn golden_authorizations_through_state_reach_the_policy_set() {
    let (response, json) = golden("xds-delta-response-authorization");
    assert_eq!(response.type_url, AUTHORIZATION_TYPE_URL);
    let added = response.resources.iter().map(|r| {
        let any = r.resource.as_ref().unwrap();
        assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
        (
            r.name.clone(),
            xsec::Authorization::decode(any.value.as_slice()).unwrap(),
        )
    });
    let mut state = XdsState::new();
    let rejected =
        state.apply_authorizations(added.collect::<Vec<_>>(), response.removed_resources);
    assert!(rejected.is_empty(), "{rejected:?}");
    let snapshot = state.snapshot();
    let want = list(&json, "resources");
    assert_eq!(snapshot.policies().len(), want.len());
    for want in want {
        let got = snapshot.policies().get(&text(want, "name")).unwrap();
        assert_eq!(*got, expected_policy(get(want, "resource")));
    }
    let deny = snapshot
        .policies()
        .get("istio-system/deny-outsiders")
        .unwrap();
    assert_eq!((deny.action, deny.dry_run), (Action::Deny, true));
    let source: Vec<_> = deny.rules[0].clauses[0].matches[0]
        .source_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(source, ["192.0.2.0/24"]);
    let ns = snapshot.policies().get("legacy/ns-deny-all").unwrap();
    assert_eq!((ns.scope, ns.rules.len()), (policy::Scope::Namespace, 0));
}

// ---------------------------------------------------------------------------------------------
// Rejection rules
// ---------------------------------------------------------------------------------------------

const WEB_UID: &str = "Kubernetes//Pod/shop/web-0";
const API_KEY: &str = "shop/api.shop.svc.cluster.local";

fn port(service_port: u32, target_port: u32) -> xds::Port {
    xds::Port {
        service_port,
        target_port,
        ..Default::default()
    }
}

fn gateway(destination: Option<Destination>) -> xds::GatewayAddress {
    xds::GatewayAddress {
        destination,
        hbone_mtls_port: 15008,
    }
}

fn web() -> xds::Workload {
    xds::Workload {
        uid: WEB_UID.into(),
        name: "web-0".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: xds::TunnelProtocol::Hbone as i32,
        services: BTreeMap::from([(
            API_KEY.into(),
            xds::PortList {
                ports: vec![port(80, 8080)],
            },
        )]),
        ..Default::default()
    }
}

fn api() -> xds::Service {
    let vip = xds::NetworkAddress {
        address: vec![10, 96, 0, 1],
        ..Default::default()
    };
    xds::Service {
        name: "api".into(),
        namespace: "shop".into(),
        hostname: "api.shop.svc.cluster.local".into(),
        addresses: vec![vip],
        ports: vec![port(80, 0)],
        ..Default::default()
    }
}

fn workload(w: xds::Workload) -> xds::Address {
    xds::Address {
        r#type: Some(Type::Workload(w)),
    }
}

fn service(s: xds::Service) -> xds::Address {
    xds::Address {
        r#type: Some(Type::Service(s)),
    }
}

fn unknown(enum_name: &'static str, value: i32) -> ResourceProblem {
    ResourceProblem::UnknownEnum { enum_name, value }
}

fn bad_port(value: u32, range: PortRange) -> ResourceProblem {
    ResourceProblem::Port { value, range }
}

/// A workload table's mutation, boxed (written through a function so the closure's argument
/// type is known where it is written).
fn wfn(mutate: impl Fn(&mut xds::Workload) + 'static) -> Box<dyn Fn(&mut xds::Workload)> {
    Box::new(mutate)
}

/// A service table's mutation, boxed.
fn sfn(mutate: impl Fn(&mut xds::Service) + 'static) -> Box<dyn Fn(&mut xds::Service)> {
    Box::new(mutate)
}

fn segment_error(namespace: &str, sa: &str) -> crate::identity::SpiffeIdError {
    SpiffeId::istio(&default_trust_domain(), namespace, sa).unwrap_err()
}

#[test]
fn the_error_names_resource_field_and_problem() {
    let mut w = web();
    w.addresses.push(vec![1, 2, 3, 4, 5]);
    let error = workload_from_xds(&w).unwrap_err();
    assert_eq!(
        error.to_string(),
        "workload Kubernetes//Pod/shop/web-0: addresses[1]: 5 bytes is neither IPv4 nor IPv6"
    );
    assert_eq!(
        error.detail(),
        "addresses[1]: 5 bytes is neither IPv4 nor IPv6"
    );
    let error = address_from_xds(&xds::Address { r#type: None }).unwrap_err();
    assert_eq!(
        error.to_string(),
        "address: type: neither workload nor service is set"
    );
}

#[test]
fn workload_rejections() {
    let gw_addr = |address| {
        Some(Destination::Address(xds::NetworkAddress {
            address,
            ..Default::default()
        }))
    };
    let hostname = |namespace: &str| {
        let name = xds::NamespacedHostname {
            namespace: namespace.into(),
            hostname: "wp".into(),
        };
        Some(Destination::Hostname(name))
    };
    #[rustfmt::skip]
    let cases = [
        (wfn(|w| w.addresses.push(vec![1, 2, 3, 4, 5])), "addresses[1]", ResourceProblem::IpLength(5)),
        (wfn(|w| w.addresses[0].clear()), "addresses[0]", ResourceProblem::IpLength(0)),
        (wfn(|w| w.uid.clear()), "uid", ResourceProblem::Empty),
        (wfn(|w| w.tunnel_protocol = 2), "tunnel_protocol", ResourceProblem::LegacyIstioMtls),
        (wfn(|w| w.tunnel_protocol = 7), "tunnel_protocol", unknown("TunnelProtocol", 7)),
        (wfn(|w| w.status = 2), "status", unknown("WorkloadStatus", 2)),
        (wfn(|w| w.network_mode = 9), "network_mode", unknown("NetworkMode", 9)),
        (wfn(|w| w.application_tunnel = Some(xds::ApplicationTunnel { protocol: 4, port: 0 })),
            "application_tunnel.protocol", unknown("ApplicationTunnel.Protocol", 4)),
        (wfn(|w| w.application_tunnel = Some(xds::ApplicationTunnel { protocol: 1, port: 65536 })),
            "application_tunnel.port", bad_port(65536, PortRange::Optional)),
        (wfn(|w| w.waypoint = Some(gateway(None))), "waypoint", ResourceProblem::NoDestination),
        (wfn(|w| w.network_gateway = Some(gateway(None))), "network_gateway", ResourceProblem::NoDestination),
        (wfn(move |w| w.waypoint = Some(gateway(gw_addr(vec![10, 0, 0])))),
            "waypoint.address.address", ResourceProblem::IpLength(3)),
        (wfn(move |w| w.waypoint = Some(gateway(hostname("")))), "waypoint.hostname.namespace", ResourceProblem::Empty),
        (wfn(move |w| w.waypoint = Some(xds::GatewayAddress { hbone_mtls_port: 70000, ..gateway(hostname("ns")) })),
            "waypoint.hbone_mtls_port", bad_port(70000, PortRange::Optional)),
        (wfn(|w| { w.services.insert("no-slash".into(), xds::PortList::default()); }),
            "services[\"no-slash\"]", ResourceProblem::ServiceKey(NamespacedHostnameError("no-slash".into()))),
        (wfn(|w| { w.services.insert("ns/".into(), xds::PortList::default()); }),
            "services[\"ns/\"]", ResourceProblem::ServiceKey(NamespacedHostnameError("ns/".into()))),
        (wfn(|w| w.services.get_mut(API_KEY).unwrap().ports.push(port(0, 80))),
            "services[\"shop/api.shop.svc.cluster.local\"].ports[1].service_port", bad_port(0, PortRange::NonZero)),
        (wfn(|w| w.services.get_mut(API_KEY).unwrap().ports.push(port(65536, 80))),
            "services[\"shop/api.shop.svc.cluster.local\"].ports[1].service_port", bad_port(65536, PortRange::NonZero)),
        (wfn(|w| w.services.get_mut(API_KEY).unwrap().ports.push(port(81, 65536))),
            "services[\"shop/api.shop.svc.cluster.local\"].ports[1].target_port", bad_port(65536, PortRange::Target)),
        (wfn(|w| w.services.get_mut(API_KEY).unwrap().ports.push(port(80, 9090))),
            "services[\"shop/api.shop.svc.cluster.local\"].ports[1].target_port",
            ResourceProblem::ConflictingPort { port: 80, first: 8080, second: 9090 }),
        (wfn(|w| w.namespace = "a/b".into()), "namespace",
            ResourceProblem::Spiffe { what: "SPIFFE path segment", value: "a/b".into(), cause: segment_error("a/b", "default") }),
        (wfn(|w| w.namespace.clear()), "namespace",
            ResourceProblem::Spiffe { what: "SPIFFE path segment", value: String::new(), cause: segment_error("", "default") }),
        (wfn(|w| w.service_account = "web sa".into()), "service_account",
            ResourceProblem::Spiffe { what: "SPIFFE path segment", value: "web sa".into(), cause: segment_error("shop", "web sa") }),
        (wfn(|w| w.trust_domain = "Cluster.Local".into()), "trust_domain",
            ResourceProblem::Spiffe { what: "trust domain", value: "Cluster.Local".into(), cause: TrustDomain::parse("Cluster.Local").unwrap_err() }),
    ];
    for (mutate, field, problem) in cases {
        let mut wire = web();
        mutate(&mut wire);
        let expected = InvalidResource {
            resource: ResourceId::Workload(wire.uid.clone()),
            field: field.into(),
            problem,
        };
        assert_eq!(address_from_xds(&workload(wire)), Err(expected));
    }
}

#[test]
fn service_rejections() {
    let vip = |address: Vec<u8>, length| xds::NetworkAddress {
        address,
        length,
        ..Default::default()
    };
    let lb = |mode, health_policy, routing_preference| {
        Some(xds::LoadBalancing {
            routing_preference,
            mode,
            health_policy,
        })
    };
    let weighted = |destination| xds::WeightedWaypoint {
        destination,
        weight: 1,
    };
    #[rustfmt::skip]
    let cases = [
        (sfn(move |s| s.addresses.push(vip(vec![1, 2, 3, 4, 5], None))), "addresses[1].address", ResourceProblem::IpLength(5)),
        (sfn(move |s| s.addresses.push(vip(vec![10, 96, 0, 0], Some(33)))),
            "addresses[1].length", ResourceProblem::PrefixLength { length: 33, max: 32 }),
        (sfn(move |s| s.addresses.push(vip(vec![0xfd; 16], Some(129)))),
            "addresses[1].length", ResourceProblem::PrefixLength { length: 129, max: 128 }),
        (sfn(|s| s.namespace.clear()), "namespace", ResourceProblem::Empty),
        (sfn(|s| s.hostname.clear()), "hostname", ResourceProblem::Empty),
        (sfn(|s| s.hostname = "api/x".into()), "hostname", ResourceProblem::Slash("api/x".into())),
        (sfn(|s| s.ports.push(port(0, 80))), "ports[1].service_port", bad_port(0, PortRange::NonZero)),
        (sfn(|s| s.ports.push(port(70000, 80))), "ports[1].service_port", bad_port(70000, PortRange::NonZero)),
        (sfn(|s| s.ports.push(port(81, 65536))), "ports[1].target_port", bad_port(65536, PortRange::Target)),
        (sfn(|s| s.ports.push(port(80, 8080))), "ports[1].target_port",
            ResourceProblem::ConflictingPort { port: 80, first: 0, second: 8080 }),
        (sfn(|s| s.subject_alt_names.push("api.example.com".into())), "subject_alt_names[0]",
            ResourceProblem::Spiffe { what: "SPIFFE ID", value: "api.example.com".into(), cause: SpiffeId::parse("api.example.com").unwrap_err() }),
        (sfn(move |s| s.load_balancing = lb(9, 0, vec![])), "load_balancing.mode", unknown("LoadBalancing.Mode", 9)),
        (sfn(move |s| s.load_balancing = lb(0, 2, vec![])), "load_balancing.health_policy", unknown("LoadBalancing.HealthPolicy", 2)),
        (sfn(move |s| s.load_balancing = lb(1, 0, vec![1, 0])), "load_balancing.routing_preference[1]", ResourceProblem::UnspecifiedScope),
        (sfn(move |s| s.load_balancing = lb(2, 0, vec![42])), "load_balancing.routing_preference[0]", unknown("LoadBalancing.Scope", 42)),
        (sfn(|s| s.ip_families = 4), "ip_families", unknown("IPFamilies", 4)),
        (sfn(|s| s.waypoint = Some(gateway(None))), "waypoint", ResourceProblem::NoDestination),
        (sfn(move |s| s.weighted_waypoints = vec![weighted(None)]), "weighted_waypoints[0].destination", ResourceProblem::NoDestination),
        (sfn(move |s| s.weighted_waypoints = vec![weighted(Some(gateway(None)))]),
            "weighted_waypoints[0].destination", ResourceProblem::NoDestination),
    ];
    for (mutate, field, problem) in cases {
        let mut wire = api();
        mutate(&mut wire);
        let id = ResourceId::Service(format!("{}/{}", wire.namespace, wire.hostname));
        let expected = InvalidResource {
            resource: id,
            field: field.into(),
            problem,
        };
        assert_eq!(address_from_xds(&service(wire)), Err(expected));
    }
}

#[test]
fn what_is_accepted_without_a_place_in_the_model() {
    let mut w = web();
    w.workload_type = 99; // unknown kind → Deployment (xds.md §3.2)
    w.network_mode = xds::NetworkMode::HostNetwork as i32;
    w.capacity = Some(0);
    w.services
        .get_mut(API_KEY)
        .unwrap()
        .ports
        .extend([port(80, 8080), port(443, 0)]);
    let converted = workload_from_xds(&w).unwrap();
    assert_eq!(converted.workload_type, WorkloadType::Deployment);
    assert_eq!(
        converted.ips,
        vec![ip("10.0.0.1")],
        "host-network pods stay dialable"
    );
    // The repeated identical mapping merges; an endpoint's 0 defers to the service.
    assert_eq!(
        converted.services[&key(API_KEY)],
        BTreeMap::from([(80, 8080)])
    );

    let mut s = api();
    s.visibility = 7; // unknown → PUBLIC (xds.md §3.6)
    s.ip_families = xds::IpFamilies::Dual as i32;
    let cidr = |address, length| xds::NetworkAddress {
        address,
        length: Some(length),
        ..Default::default()
    };
    s.addresses
        .extend([cidr(vec![10, 96, 0, 2], 32), cidr(vec![192, 0, 2, 0], 24)]);
    let waypoint = Destination::Address(cidr(vec![10, 96, 0, 99], 32));
    s.waypoint = Some(gateway(Some(waypoint)));
    let converted = service_from_xds(&s).unwrap();
    let vips: Vec<_> = converted.vips.iter().map(|v| v.ip).collect();
    assert_eq!(
        vips,
        [ip("10.96.0.1"), ip("10.96.0.2")],
        "a CIDR VIP is not an exact VIP"
    );
}

// ---------------------------------------------------------------------------------------------
// XdsState
// ---------------------------------------------------------------------------------------------

fn web_at(last: u8) -> xds::Address {
    let mut w = web();
    w.addresses = vec![vec![10, 0, 0, last]];
    workload(w)
}

#[test]
fn a_rejected_resource_keeps_its_old_value_and_the_rest_applies() {
    let mut state = XdsState::new();
    assert!(
        state
            .apply_addresses([(WEB_UID.into(), web_at(1))], [])
            .is_empty()
    );
    let mut bad = web();
    bad.tunnel_protocol = 2;
    let batch = [
        (WEB_UID.to_owned(), workload(bad)),
        (API_KEY.to_owned(), service(api())),
    ];
    let rejected = state.apply_addresses(batch, []);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, WEB_UID);
    assert_eq!(rejected[0].1.problem, ResourceProblem::LegacyIstioMtls);
    let snapshot = state.snapshot();
    assert_eq!(
        snapshot.workload(WEB_UID).unwrap().protocol,
        TunnelProtocol::Hbone
    );
    assert!(snapshot.workload_by_ip("", ip("10.0.0.1")).is_some());
    assert!(snapshot.service_by_vip("", ip("10.96.0.1")).is_some());

    // A good update replaces the value: the old IP leaves the index.
    assert!(
        state
            .apply_addresses([(WEB_UID.into(), web_at(2))], [])
            .is_empty()
    );
    let snapshot = state.snapshot();
    assert!(snapshot.workload_by_ip("", ip("10.0.0.1")).is_none());
    assert_eq!(
        snapshot.workload_by_ip("", ip("10.0.0.2")).unwrap().uid,
        WEB_UID
    );
}

#[test]
fn a_resource_must_arrive_under_its_key() {
    let mut state = XdsState::new();
    let batch = [
        ("web".to_owned(), web_at(1)),
        ("shop/api".to_owned(), service(api())),
    ];
    let rejected = state.apply_addresses(batch, []);
    let problems: Vec<_> = rejected
        .iter()
        .map(|(name, e)| (name.as_str(), e.to_string()))
        .collect();
    assert_eq!(
        problems,
        [
            (
                "web",
                format!(
                    "workload {WEB_UID}: resource name \"web\" is not the resource's key \"{WEB_UID}\""
                )
            ),
            (
                "shop/api",
                format!(
                    "service {API_KEY}: resource name \"shop/api\" is not the resource's key \"{API_KEY}\""
                )
            ),
        ]
    );
    assert_eq!(
        state.snapshot().workload_count() + state.snapshot().service_count(),
        0
    );
}

#[test]
fn removal_of_a_workload_and_a_service() {
    let mut state = XdsState::new();
    let batch = [
        (WEB_UID.to_owned(), web_at(1)),
        (API_KEY.to_owned(), service(api())),
    ];
    assert!(state.apply_addresses(batch, []).is_empty());
    assert_eq!(state.snapshot().endpoints(&key(API_KEY)).len(), 1);

    let unknown_name = "Kubernetes//Pod/shop/never-sent".to_owned();
    assert!(
        state
            .apply_addresses([], [WEB_UID.to_owned(), API_KEY.to_owned(), unknown_name])
            .is_empty()
    );
    let snapshot = state.snapshot();
    assert!(snapshot.workload(WEB_UID).is_none() && snapshot.service(&key(API_KEY)).is_none());
    assert!(snapshot.workload_by_ip("", ip("10.0.0.1")).is_none());
    assert!(snapshot.service_by_vip("", ip("10.96.0.1")).is_none());
    assert!(snapshot.endpoints(&key(API_KEY)).is_empty());

    // Upserts apply before removals, so a name in both ends up removed (xds.md §2.2).
    assert!(
        state
            .apply_addresses([(WEB_UID.into(), web_at(1))], [WEB_UID.to_owned()])
            .is_empty()
    );
    assert!(state.snapshot().workload(WEB_UID).is_none());
}

fn allow(namespace: &str, name: &str) -> xsec::Authorization {
    xsec::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

#[test]
fn authorization_rejections_keep_the_old_policy() {
    let mut state = XdsState::new();
    let key = "shop/allow-web";
    assert!(
        state
            .apply_authorizations([(key.into(), allow("shop", "allow-web"))], [])
            .is_empty()
    );

    let bad_cidr = xsec::Address {
        address: vec![10, 0, 0, 0],
        length: 33,
    };
    let bad_match = xsec::Match {
        source_ips: vec![bad_cidr],
        ..Default::default()
    };
    let bad_rule = xsec::Rule {
        clauses: vec![xsec::Clause {
            matches: vec![bad_match],
        }],
    };
    let cases = [
        (
            xsec::Authorization {
                action: 1,
                rules: vec![bad_rule],
                ..allow("shop", "allow-web")
            },
            key,
            "authorization shop/allow-web: rules[0].clauses[0].matches[0].source_ips[0]: invalid CIDR length 33 (at most 32)",
        ),
        (
            xsec::Authorization {
                scope: 7,
                ..allow("shop", "allow-web")
            },
            key,
            "authorization shop/allow-web: scope: unknown scope 7",
        ),
        (
            allow("shop", ""),
            "shop/",
            "authorization shop/: name: must not be empty",
        ),
        (
            allow("shop", "a/b"),
            "shop/a/b",
            "authorization shop/a/b: name: \"a/b\" contains '/'",
        ),
        (
            allow("", "x"),
            "/x",
            "authorization /x: namespace: must not be empty",
        ),
        (
            allow("shop", "other"),
            key,
            "authorization shop/other: resource name \"shop/allow-web\" is not the resource's key \"shop/other\"",
        ),
    ];
    for (wire, name, message) in cases {
        let rejected = state.apply_authorizations([(name.to_owned(), wire)], []);
        let got: Vec<_> = rejected
            .iter()
            .map(|(n, e)| (n.as_str(), e.to_string()))
            .collect();
        assert_eq!(got, [(name, message.to_owned())]);
    }
    let snapshot = state.snapshot();
    assert_eq!(snapshot.policies().len(), 1);
    assert_eq!(
        *snapshot.policies().get(key).unwrap(),
        policy::Authorization::try_from(&allow("shop", "allow-web")).unwrap()
    );

    assert!(state.apply_authorizations([], [key.to_owned()]).is_empty());
    assert!(state.snapshot().policies().is_empty());
}
