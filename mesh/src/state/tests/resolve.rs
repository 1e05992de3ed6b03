//! Indexes and routing decisions over a fixed snapshot.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;

use super::super::model::{NamespacedHostname, TunnelProtocol, Workload};
use super::super::resolve::{Resolution, RoundRobin, choose, random_pick};
use super::super::snapshot::Snapshot;
use super::snapshot;

const POD_A: &str = "c1//Pod/default/pod-a";
const POD_B: &str = "c1//Pod/default/pod-b";
const POD_C: &str = "c1//Pod/default/pod-c";

/// `web` (VIP 10.96.0.1): port 80 → 9090 and 443 → per endpoint. pod-a maps both itself,
/// pod-b relies on the service's mapping (so it cannot take 443), pod-c is unhealthy.
const MESH: &str = r#"
workloads:
- uid: c1//Pod/default/pod-a
  namespace: default
  serviceAccount: web
  workloadIps: [10.0.0.1]
  protocol: HBONE
  node: n1
  services: {default/web.default.svc.cluster.local: {80: 8080, 443: 8443}}
- uid: c1//Pod/default/pod-b
  namespace: default
  serviceAccount: web
  workloadIps: [10.0.0.2]
  protocol: TCP
  node: n2
  services: {default/web.default.svc.cluster.local: {}}
- uid: c1//Pod/default/pod-c
  namespace: default
  workloadIps: [10.0.0.3]
  status: Unhealthy
  node: n1
  services:
    default/web.default.svc.cluster.local: {80: 7070}
    default/sick: {80: 7070}
    default/sick-ok: {80: 7070}
- uid: c2//Pod/default/far
  namespace: default
  network: net2
  workloadIps: [10.0.0.1]
  services: {default/web.default.svc.cluster.local: {80: 8080}}
- uid: c1/networking.istio.io/WorkloadEntry/default/vm
  namespace: default
  workloadIps: [10.0.0.9, 10.0.0.10]
  protocol: HBONE
- uid: c1//Pod/default/shared
  namespace: default
  workloadIps: [10.0.0.9]
- uid: c1/networking.istio.io/WorkloadEntry/default/vm2
  namespace: default
  workloadIps: [10.0.0.10]
- uid: c1//Pod/default/orphan
  namespace: default
  services: {default/later: {80: 80}}
services:
- name: web
  namespace: default
  hostname: web.default.svc.cluster.local
  vips: [/10.96.0.1, net2/10.96.0.1]
  ports: {80: 9090, 443: 0}
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/extra, spiffe://cluster.local/ns/default/sa/web]
- {name: empty, namespace: default, hostname: empty, vips: [/10.96.0.2], ports: {80: 80}}
- {name: sick, namespace: default, hostname: sick, vips: [/10.96.0.3], ports: {80: 80}}
- name: sick-ok
  namespace: default
  hostname: sick-ok
  vips: [/10.96.0.4]
  ports: {80: 80}
  loadBalancer: {healthPolicy: AllowAll}
- name: external
  namespace: default
  hostname: example.org
  vips: [/10.96.0.5]
  ports: {443: 443}
  loadBalancer: {mode: Passthrough}
"#;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn uid_of(resolution: &Resolution) -> Option<&str> {
    match resolution {
        Resolution::Workload { workload, .. } => Some(&workload.uid),
        Resolution::Service { endpoint, .. } => Some(&endpoint.uid),
        _ => None,
    }
}

fn service_of(resolution: &Resolution) -> Option<&str> {
    match resolution {
        Resolution::Service { service, .. }
        | Resolution::NoHealthyEndpoint { service }
        | Resolution::NoPort { service, .. }
        | Resolution::Passthrough {
            service: Some(service),
        } => Some(&service.name),
        _ => None,
    }
}

#[test]
fn pod_ips_resolve_to_their_workload_with_its_protocol() {
    let snap = snapshot(MESH);
    for (network, dst, want_uid, want_protocol) in [
        ("", "10.0.0.1:8080", POD_A, TunnelProtocol::Hbone),
        ("", "10.0.0.2:9090", POD_B, TunnelProtocol::Tcp),
        (
            "net2",
            "10.0.0.1:8080",
            "c2//Pod/default/far",
            TunnelProtocol::Tcp,
        ),
    ] {
        match snap.resolve_destination(network, addr(dst), None) {
            Resolution::Workload { workload, port } => {
                assert_eq!(workload.uid, want_uid, "{network}/{dst}");
                assert_eq!(workload.protocol, want_protocol, "{network}/{dst}");
                assert_eq!(port, addr(dst).port());
            }
            other => panic!("{network}/{dst}: {other:?}"),
        }
    }
}

#[test]
fn networks_scope_every_lookup() {
    let snap = snapshot(MESH);
    let ip = "10.0.0.2".parse().unwrap();
    assert!(snap.workload_by_ip("", ip).is_some());
    assert!(snap.workload_by_ip("net2", ip).is_none());
    assert!(snap.workload_by_ip("net3", ip).is_none());
    assert_eq!(
        snap.resolve_destination("net2", addr("10.0.0.2:80"), None),
        Resolution::Passthrough { service: None }
    );
    // The web VIP exists on net2 too, but only "far" is on net2: the default-network
    // endpoints are unreachable from there.
    let from_net2 = snap.resolve_destination_with("net2", addr("10.96.0.1:80"), None, |_| 0);
    assert_eq!(uid_of(&from_net2), Some("c2//Pod/default/far"));
}

#[test]
fn shared_ips_prefer_pods_then_hbone() {
    let snap = snapshot(MESH);
    for (ip, want) in [
        ("10.0.0.9", "c1//Pod/default/shared"),
        (
            "10.0.0.10",
            "c1/networking.istio.io/WorkloadEntry/default/vm",
        ),
    ] {
        let got = snap.workload_by_ip("", ip.parse().unwrap()).unwrap();
        assert_eq!(got.uid, want, "{ip}");
    }
}

#[test]
fn vips_translate_to_an_endpoint_and_its_target_port() {
    let snap = snapshot(MESH);
    // (destination, pick index, endpoint, target port, candidates offered to the picker).
    // Candidates for web:80 are pod-a then pod-b (by uid): pod-c is unhealthy, far is on net2.
    let cases = [
        ("10.96.0.1:80", 0, POD_A, 8080, 2), // the endpoint's mapping beats the service's 9090
        ("10.96.0.1:80", 1, POD_B, 9090, 2), // no endpoint mapping: the service's
        ("10.96.0.1:80", 2, POD_A, 8080, 2), // out of range wraps
        ("10.96.0.1:443", 0, POD_A, 8443, 1), // service target 0: only pod-a maps 443
        ("10.96.0.1:443", 7, POD_A, 8443, 1),
    ];
    for (dst, index, want_uid, want_port, want_candidates) in cases {
        let offered = Cell::new(0);
        let got = snap.resolve_destination_with("", addr(dst), None, |n| {
            offered.set(n);
            index
        });
        match got {
            Resolution::Service {
                service,
                endpoint,
                target_port,
            } => {
                assert_eq!(service.name, "web");
                assert_eq!(
                    (endpoint.uid.as_str(), target_port),
                    (want_uid, want_port),
                    "{dst} #{index}"
                );
            }
            other => panic!("{dst} #{index}: {other:?}"),
        }
        assert_eq!(
            offered.get(),
            want_candidates,
            "{dst}: unusable endpoints skipped"
        );
    }
}

#[test]
fn vips_without_a_usable_endpoint_or_port() {
    let snap = snapshot(MESH);
    let cases = [
        ("10.96.0.1:81", "NoPort", Some("web")),
        ("10.96.0.2:80", "NoHealthyEndpoint", Some("empty")),
        ("10.96.0.3:80", "NoHealthyEndpoint", Some("sick")),
        ("10.96.0.4:80", "Service", Some("sick-ok")), // AllowAll takes the unhealthy pod
        ("10.96.0.5:443", "Passthrough", Some("external")),
        ("10.96.0.5:8443", "Passthrough", Some("external")), // ports don't matter
        ("192.0.2.1:80", "Passthrough", None),
    ];
    for (dst, want_kind, want_service) in cases {
        let got = snap.resolve_destination("", addr(dst), None);
        let kind = match &got {
            Resolution::Workload { .. } => "Workload",
            Resolution::Service { .. } => "Service",
            Resolution::NoHealthyEndpoint { .. } => "NoHealthyEndpoint",
            Resolution::NoPort { .. } => "NoPort",
            Resolution::Passthrough { .. } => "Passthrough",
            Resolution::Waypoint { .. } => "Waypoint",
            Resolution::WaypointUnavailable { .. } => "WaypointUnavailable",
        };
        assert_eq!(kind, want_kind, "{dst}: {got:?}");
        assert_eq!(service_of(&got), want_service, "{dst}");
    }
    match snap.resolve_destination("", addr("10.96.0.4:80"), None) {
        Resolution::Service {
            endpoint,
            target_port,
            ..
        } => assert_eq!((endpoint.uid.as_str(), target_port), (POD_C, 7070)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expected_identities_per_resolution() {
    let snap = snapshot(MESH);
    let id = |text: &str| SpiffeId::parse(text).unwrap();
    let web_sa = id("spiffe://cluster.local/ns/default/sa/web");
    let extra = id("spiffe://cluster.local/ns/default/sa/extra");
    let default_sa = id("spiffe://cluster.local/ns/default/sa/default");
    let cases: [(&str, Vec<SpiffeId>); 4] = [
        // Endpoint identity first, then the service SANs without repeating it.
        ("10.96.0.1:80", vec![web_sa.clone(), extra]),
        ("10.0.0.3:80", vec![default_sa]),
        ("10.96.0.2:80", vec![]),
        ("192.0.2.1:80", vec![]),
    ];
    for (dst, want) in cases {
        let got = snap.resolve_destination_with("", addr(dst), None, |_| 0);
        assert_eq!(got.expected_identities(), want, "{dst}");
    }
}

#[test]
fn locality_preferences_filter_or_rank_endpoints() {
    let base = MESH.replace(
        "ports: {80: 9090, 443: 0}",
        "ports: {80: 9090, 443: 0}\n  loadBalancer: {mode: MODE, routingPreferences: [Node]}",
    );
    let source_on = |snap: &Snapshot, uid: &str| -> Arc<Workload> { snap.workload(uid).unwrap() };
    for (mode, source_uid, want) in [
        ("Strict", Some(POD_A), Some(vec![POD_A])), // n1: only pod-a (pod-c is unhealthy)
        ("Strict", Some(POD_B), Some(vec![POD_B])),
        ("Strict", Some(POD_C), Some(vec![POD_A])),
        ("Strict", None, None), // unknown source: fail closed
        ("Failover", Some(POD_A), Some(vec![POD_A])),
        ("Failover", None, Some(vec![POD_A, POD_B])),
        ("Standard", Some(POD_A), Some(vec![POD_A, POD_B])),
    ] {
        let snap = snapshot(&base.replace("MODE", mode));
        let source = source_uid.map(|uid| source_on(&snap, uid));
        let mut seen = Vec::new();
        let mut none = false;
        for index in 0..2 {
            match snap
                .resolve_destination_with("", addr("10.96.0.1:80"), source.as_deref(), |_| index)
            {
                Resolution::Service { endpoint, .. } => seen.push(endpoint.uid.clone()),
                Resolution::NoHealthyEndpoint { .. } => none = true,
                other => panic!("{mode}: {other:?}"),
            }
        }
        seen.dedup();
        seen.sort();
        let got = if none { None } else { Some(seen) };
        let want = want.map(|uids| uids.into_iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(got, want, "{mode} from {source_uid:?}");
    }
}

#[test]
fn pickers_are_deterministic_or_in_range() {
    let rr = RoundRobin::new();
    let turns: Vec<usize> = (0..5).map(|_| rr.pick(2)).collect();
    assert_eq!(turns, vec![0, 1, 0, 1, 0]);
    assert_eq!(rr.pick(0), 0, "no candidates never divides by zero");
    for len in 1..20 {
        assert!(random_pick(len) < len);
    }
    assert_eq!(random_pick(0), 0);
    let empty: [u8; 0] = [];
    assert_eq!(choose(&empty, |_| 3), None);
    assert_eq!(choose(&[10, 20, 30], |n| n + 1), Some(&20));
}

#[test]
fn snapshot_queries() {
    let snap = snapshot(MESH);
    let on_n1: Vec<&str> = snap.local_workloads("n1").map(|w| w.uid.as_str()).collect();
    assert_eq!(on_n1, vec![POD_A, POD_C]);
    assert_eq!(snap.local_workloads("nowhere").count(), 0);
    assert_eq!((snap.workload_count(), snap.service_count()), (8, 5));

    let web = NamespacedHostname::parse("default/web.default.svc.cluster.local").unwrap();
    let endpoints: Vec<&str> = snap
        .endpoints(&web)
        .iter()
        .map(|w| w.uid.as_str())
        .collect();
    assert_eq!(endpoints, vec![POD_A, POD_B, POD_C, "c2//Pod/default/far"]);
    assert_eq!(snap.service(&web).unwrap().name, "web");
    // Endpoints of a service not (yet) known are kept.
    let later = NamespacedHostname::parse("default/later").unwrap();
    assert!(snap.service(&later).is_none());
    assert_eq!(snap.endpoints(&later).len(), 1);
    assert!(
        snap.endpoints(&NamespacedHostname::parse("x/y").unwrap())
            .is_empty()
    );
    assert!(
        Snapshot::empty()
            .workload_by_ip("", "10.0.0.1".parse().unwrap())
            .is_none()
    );
}

#[test]
fn canonical_service_wins_a_shared_vip() {
    let yaml = r#"
services:
- {name: a, namespace: a, hostname: h, vips: [/10.96.0.9]}
- {name: b, namespace: b, hostname: h, vips: [/10.96.0.9], canonical: true}
- {name: c, namespace: c, hostname: h, vips: [/10.96.0.9]}
- {name: d, namespace: d, hostname: h, vips: [/10.96.0.8]}
- {name: e, namespace: e, hostname: h, vips: [/10.96.0.8]}
"#;
    let snap = snapshot(yaml);
    let owner = |ip: &str| {
        snap.service_by_vip("", ip.parse().unwrap())
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(owner("10.96.0.9"), "b");
    assert_eq!(
        owner("10.96.0.8"),
        "d",
        "no canonical: smallest namespace/hostname"
    );
}
