//! Routing through waypoints (hbone.md §8): the client tunnels to a waypoint instance with the
//! original destination as the CONNECT target, the waypoint's own traffic goes direct, and a
//! destination whose waypoint has no instance is refused rather than reached around it.

use std::net::SocketAddr;

use super::*;
use crate::state::{LocalConfig, Resolution, Snapshot};

const WORLD: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/web
  name: web
  namespace: shop
  serviceAccount: web
  workloadIps: ["10.0.0.2"]
  protocol: HBONE
- uid: Kubernetes//Pod/shop/waypoint-1
  name: waypoint-1
  namespace: shop
  serviceAccount: waypoint
  workloadIps: ["10.0.0.50"]
  protocol: HBONE
  services:
    "shop/waypoint.shop.svc.cluster.local": {15008: 15008}
- uid: Kubernetes//Pod/shop/waypoint-2
  name: waypoint-2
  namespace: shop
  serviceAccount: waypoint
  workloadIps: ["10.0.0.51"]
  protocol: HBONE
  status: Unhealthy
  services:
    "shop/waypoint.shop.svc.cluster.local": {15008: 15008}
- uid: Kubernetes//Pod/shop/api
  name: api
  namespace: shop
  serviceAccount: api
  workloadIps: ["10.0.0.3"]
  protocol: HBONE
  services:
    "shop/api.shop.svc.cluster.local": {80: 8080}
  waypoint: {destination: shop/waypoint.shop.svc.cluster.local, hboneMtlsPort: 15008}
- uid: Kubernetes//Pod/shop/db
  name: db
  namespace: shop
  serviceAccount: db
  workloadIps: ["10.0.0.4"]
  protocol: HBONE
  waypoint: {destination: /10.0.0.50}
- uid: Kubernetes//Pod/shop/lonely
  name: lonely
  namespace: shop
  workloadIps: ["10.0.0.5"]
  protocol: HBONE
  waypoint: {destination: shop/gone.shop.svc.cluster.local}
services:
- name: waypoint
  namespace: shop
  hostname: waypoint.shop.svc.cluster.local
  vips: ["/10.96.0.50"]
  ports: {15008: 15008}
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/waypoint-extra"]
- name: api
  namespace: shop
  hostname: api.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
  waypoint: {destination: /10.96.0.50, hboneMtlsPort: 15008}
policies: []
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn plan_from(snap: &Snapshot, source_ip: &str, dst: &str) -> Result<Plan, String> {
    let source = snap.workload_by_ip("", source_ip.parse().unwrap()).unwrap();
    let original = addr(dst);
    let resolution = snap.resolve_destination("", original, Some(&source));
    plan(&resolution, original).map_err(|e| e.to_string())
}

#[test]
fn clients_tunnel_to_the_waypoint_with_the_original_destination() {
    let snap = LocalConfig::parse(WORLD, "test").unwrap().into_snapshot();
    let waypoint = id("spiffe://cluster.local/ns/shop/sa/waypoint");
    let extra = id("spiffe://cluster.local/ns/shop/sa/waypoint-extra");
    let cases: Vec<(&str, &str, Result<Plan, String>)> = vec![
        (
            "service VIP: to the waypoint of the service, VIP untranslated",
            "10.96.0.10:80",
            Ok(Plan::Hbone {
                next_hop: addr("10.0.0.50:15008"),
                authority: Authority::Addr(addr("10.96.0.10:80")),
                expected: vec![waypoint.clone(), extra.clone()],
                service_host: Some("api.shop.svc.cluster.local".into()),
            }),
        ),
        (
            "pod IP: to the workload's waypoint, named by hostname",
            "10.0.0.3:8080",
            Ok(Plan::Hbone {
                next_hop: addr("10.0.0.50:15008"),
                authority: Authority::Addr(addr("10.0.0.3:8080")),
                expected: vec![waypoint.clone(), extra],
                service_host: None,
            }),
        ),
        (
            "pod IP: a waypoint given as its pod's address",
            "10.0.0.4:5432",
            Ok(Plan::Hbone {
                next_hop: addr("10.0.0.50:15008"),
                authority: Authority::Addr(addr("10.0.0.4:5432")),
                expected: vec![waypoint],
                service_host: None,
            }),
        ),
        (
            "a waypoint with no instance: refused, never bypassed",
            "10.0.0.5:80",
            Err("Kubernetes//Pod/shop/lonely is served through waypoint shop/gone.shop.svc.cluster.local, which has no healthy instance".into()),
        ),
    ];
    for (what, dst, want) in cases {
        assert_eq!(plan_from(&snap, "10.0.0.2", dst), want, "{what}");
    }
}

#[test]
fn an_unready_waypoint_instance_takes_no_traffic() {
    let snap = LocalConfig::parse(WORLD, "test").unwrap().into_snapshot();
    let web = snap
        .workload_by_ip("", "10.0.0.2".parse().unwrap())
        .unwrap();
    for pick in 0..4 {
        let resolution =
            snap.resolve_destination_with("", addr("10.96.0.10:80"), Some(&web), |_| pick);
        match resolution {
            Resolution::Waypoint { waypoint, .. } => assert_eq!(waypoint.name, "waypoint-1"),
            other => panic!("pick {pick}: {other:?}"),
        }
    }
}

#[test]
fn a_waypoint_named_by_hostname_is_found_on_the_callers_network() {
    let on_net1 = WORLD
        .replace(
            "  protocol: HBONE\n",
            "  protocol: HBONE\n  network: net1\n",
        )
        .replace("\"/10.96.", "\"net1/10.96.")
        .replace("destination: /10.", "destination: net1/10.");
    let snap = LocalConfig::parse(&on_net1, "test")
        .unwrap()
        .into_snapshot();
    let web = snap
        .workload_by_ip("net1", "10.0.0.2".parse().unwrap())
        .unwrap();
    let original = addr("10.0.0.3:8080");
    let resolution = snap.resolve_destination("net1", original, Some(&web));
    match &resolution {
        Resolution::Waypoint { waypoint, .. } => assert_eq!(waypoint.name, "waypoint-1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_waypoint_itself_goes_straight_to_the_destination() {
    let snap = LocalConfig::parse(WORLD, "test").unwrap().into_snapshot();
    let api = id("spiffe://cluster.local/ns/shop/sa/api");
    // An instance that is not ready is still the waypoint: its traffic does not loop.
    let from_unready = plan_from(&snap, "10.0.0.51", "10.0.0.3:8080");
    assert!(
        matches!(&from_unready, Ok(Plan::Hbone { next_hop, .. }) if *next_hop == addr("10.0.0.3:15008")),
        "{from_unready:?}"
    );
    assert_eq!(
        plan_from(&snap, "10.0.0.50", "10.96.0.10:80"),
        Ok(Plan::Hbone {
            next_hop: addr("10.0.0.3:15008"),
            authority: Authority::Addr(addr("10.0.0.3:8080")),
            expected: vec![api.clone()],
            service_host: Some("api.shop.svc.cluster.local".into()),
        }),
        "the service's endpoint, translated, as without a waypoint"
    );
    assert_eq!(
        plan_from(&snap, "10.0.0.50", "10.0.0.3:8080"),
        Ok(Plan::Hbone {
            next_hop: addr("10.0.0.3:15008"),
            authority: Authority::Addr(addr("10.0.0.3:8080")),
            expected: vec![api],
            service_host: None,
        })
    );
}

#[test]
fn a_waypoint_destination_that_is_neither_address_nor_name_is_refused_where_it_is() {
    let yaml = "workloads:\n- uid: u\n  namespace: shop\n  waypoint: {destination: nonsense}\n";
    let err = LocalConfig::parse(yaml, "test")
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("waypoint")
            && err.contains("neither \"network/ip\" nor \"namespace/hostname\""),
        "{err}"
    );
}
