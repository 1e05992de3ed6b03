use std::net::SocketAddr;

use super::*;
use crate::state::{LocalConfig, Snapshot};

const WORLD: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/web
  name: web
  namespace: shop
  serviceAccount: web
  workloadIps: ["10.0.0.2"]
  protocol: HBONE
  node: a
  services: {}
- uid: Kubernetes//Pod/shop/api
  name: api
  namespace: shop
  serviceAccount: api
  workloadIps: ["10.0.0.3"]
  protocol: HBONE
  node: b
  services:
    "shop/api.shop.svc.cluster.local":
      80: 8080
- uid: Kubernetes//Pod/legacy/db
  name: db
  namespace: legacy
  serviceAccount: db
  workloadIps: ["10.0.0.4"]
  protocol: TCP
  node: b
  services:
    "legacy/db.legacy.svc.cluster.local":
      5432: 5432
services:
- name: api
  namespace: shop
  hostname: api.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports:
    80: 8080
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/api-extra"]
- name: db
  namespace: legacy
  hostname: db.legacy.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports:
    5432: 5432
- name: empty
  namespace: shop
  hostname: empty.shop.svc.cluster.local
  vips: ["/10.96.0.30"]
  ports:
    80: 80
policies: []
"#;

fn snapshot() -> Snapshot {
    LocalConfig::parse(WORLD, "test").unwrap().into_snapshot()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn plans_for_each_kind_of_destination() {
    let snap = snapshot();
    let web = snap
        .workload_by_ip("", "10.0.0.2".parse().unwrap())
        .unwrap();
    let api_id = id("spiffe://cluster.local/ns/shop/sa/api");
    let cases: Vec<(&str, Result<Plan, String>)> = vec![
        (
            "10.0.0.3:8080",
            Ok(Plan::Hbone {
                next_hop: addr("10.0.0.3:15008"),
                authority: Authority::Addr(addr("10.0.0.3:8080")),
                expected: vec![api_id.clone()],
                service_host: None,
            }),
        ),
        (
            "10.96.0.10:80",
            Ok(Plan::Hbone {
                next_hop: addr("10.0.0.3:15008"),
                authority: Authority::Addr(addr("10.0.0.3:8080")),
                expected: vec![api_id, id("spiffe://cluster.local/ns/shop/sa/api-extra")],
                service_host: Some("api.shop.svc.cluster.local".into()),
            }),
        ),
        ("10.0.0.4:5432", Ok(Plan::Tcp(addr("10.0.0.4:5432")))),
        ("10.96.0.20:5432", Ok(Plan::Tcp(addr("10.0.0.4:5432")))),
        ("192.0.2.1:443", Ok(Plan::Tcp(addr("192.0.2.1:443")))),
        (
            "10.96.0.30:80",
            Err("service shop/empty.shop.svc.cluster.local has no healthy endpoint".into()),
        ),
        (
            "10.96.0.10:81",
            Err("service shop/api.shop.svc.cluster.local has no port 81".into()),
        ),
    ];
    for (dst, want) in cases {
        let original = addr(dst);
        let resolution = snap.resolve_destination("", original, Some(&web));
        let got = plan(&resolution, original).map_err(|e| e.to_string());
        assert_eq!(got, want, "destination {dst}");
    }
}
