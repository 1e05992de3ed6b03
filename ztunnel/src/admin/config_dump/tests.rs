//! The document's exact JSON for each kind of entry, built from the local config format (nearly
//! the shape upstream dumps: only string matches are lower-case there), and the certificate
//! encodings istioctl parses.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use mesh::identity::{CaLimits, CertState, FetchError, LocalCa, SpiffeId, TrustDomain};
use serde_json::{Value, json};

use super::certs::{civil_from_days, decimal, rfc3339};
use super::{Sources, document, policy, render, service, workload};
use crate::capture::zds::message::PodInfo;
use crate::inpod::pods::PodState;
use crate::state::{LocalConfig, Snapshot};

const STATE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/shop/web-1
  name: web-1
  namespace: shop
  serviceAccount: web
  workloadIps: ["10.0.0.5"]
  protocol: HBONE
  node: node-a
  canonicalName: web
  canonicalRevision: v1
  workloadName: web
  services:
    "shop/web.shop.svc.cluster.local":
      80: 8080
- uid: cluster1//v1/Pod/shop/legacy-1
  name: legacy-1
  namespace: shop
  workloadIps: ["10.0.0.6"]
  protocol: TCP
  status: Unhealthy
  services:
    "shop/gone.shop.svc.cluster.local":
      81: 9090
policies:
- name: only-web
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: true
  rules:
  - - - principals: [{exact: cluster.local/ns/shop/sa/web}, {presence: []}]
        notPrincipals: [{prefix: cluster.local/ns/evil/}]
    - - destinationPorts: [8080]
        sourceIps: ["10.0.0.0/8"]
- name: eu-only
  namespace: shop-eu
  scope: Namespace
  action: Deny
  rules:
  - - - notNamespaces: [{suffix: "-eu"}]
        destinationIps: ["10.1.0.0/16", "fd00::/8"]
        notDestinationPorts: [22, 9090]
- name: deny-all
  namespace: istio-system
  scope: Global
  action: Deny
  rules: [[[{serviceAccounts: [{namespace: partner, serviceAccount: outsider}]}]]]
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports:
    80: 8080
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web"]
  canonical: true
"#;

fn snapshot() -> Snapshot {
    let config: LocalConfig = STATE.parse().unwrap_or_else(|e| panic!("fixture: {e}"));
    config.into_snapshot()
}

fn dump(snapshot: &Snapshot, certificates: &[(SpiffeId, CertState)]) -> Value {
    let config = json!({"nodeName": "node-a"});
    let doc = document(&Sources {
        snapshot,
        certificates,
        config: &config,
        pods: None,
    });
    serde_json::to_value(doc).unwrap_or_else(|e| panic!("encoding: {e}"))
}

/// Compact JSON of one entry, keys in the order they are written (a `Value` would sort them).
fn text(entry: &impl serde::Serialize) -> String {
    serde_json::to_string(entry).unwrap_or_else(|e| panic!("encoding: {e}"))
}

#[test]
fn workloads_are_sorted_by_uid_with_optional_keys_left_out() {
    let doc = dump(&snapshot(), &[]);
    assert_eq!(
        doc["workloads"],
        json!([
            {
                "workloadIps": ["10.0.0.6"], "protocol": "TCP", "networkMode": "Standard",
                "uid": "cluster1//v1/Pod/shop/legacy-1", "name": "legacy-1", "namespace": "shop",
                "trustDomain": "cluster.local", "serviceAccount": "default",
                "workloadType": "deployment", "status": "Unhealthy", "clusterId": "Kubernetes",
                "services": ["shop/gone.shop.svc.cluster.local"], "capacity": 1
            },
            {
                "workloadIps": ["10.0.0.5"], "protocol": "HBONE", "networkMode": "Standard",
                "uid": "cluster1//v1/Pod/shop/web-1", "name": "web-1", "namespace": "shop",
                "trustDomain": "cluster.local", "serviceAccount": "web", "workloadName": "web",
                "workloadType": "deployment", "canonicalName": "web", "canonicalRevision": "v1",
                "node": "node-a", "status": "Healthy", "clusterId": "Kubernetes",
                "services": ["shop/web.shop.svc.cluster.local"], "capacity": 1
            }
        ])
    );
    assert_eq!(doc["config"], json!({"nodeName": "node-a"}));
    assert_eq!(doc["certificates"], json!([]));
    assert_eq!(
        doc["staticConfig"],
        json!({"workloads": [], "policies": [], "services": []})
    );
    for key in [
        "version",
        "gitRevision",
        "rustVersion",
        "buildProfile",
        "istioVersion",
    ] {
        assert!(
            doc["version"][key].is_string(),
            "version.{key}: {}",
            doc["version"]
        );
    }
}

#[test]
fn services_carry_numeric_ports_and_their_endpoints() {
    let doc = dump(&snapshot(), &[]);
    assert_eq!(
        doc["services"],
        json!([{
            "name": "web", "namespace": "shop", "hostname": "web.shop.svc.cluster.local",
            "vips": ["/10.96.0.10"], "ports": {"80": 8080},
            "endpoints": {"cluster1//v1/Pod/shop/web-1": {
                "workloadUid": "cluster1//v1/Pod/shop/web-1", "port": {"80": 8080}, "status": "Healthy"
            }},
            "subjectAltNames": ["spiffe://cluster.local/ns/shop/sa/web"],
            "canonical": true, "visibility": "Public"
        }])
    );
    // legacy-1 names a service nobody sent: its endpoint waits, staged.
    assert_eq!(
        doc["stagedServices"],
        json!({"shop/gone.shop.svc.cluster.local": {"cluster1//v1/Pod/shop/legacy-1": {
            "workloadUid": "cluster1//v1/Pod/shop/legacy-1", "port": {"81": 9090}, "status": "Unhealthy"
        }}})
    );
}

#[test]
fn policies_come_back_in_the_shape_they_were_written() {
    let doc = dump(&snapshot(), &[]);
    assert_eq!(
        doc["policies"],
        json!([
            {
                "name": "deny-all", "namespace": "istio-system", "scope": "Global", "action": "Deny",
                "rules": [[[{"serviceAccounts": [{"namespace": "partner", "serviceAccount": "outsider"}]}]]],
                "dryRun": false
            },
            {
                "name": "eu-only", "namespace": "shop-eu", "scope": "Namespace", "action": "Deny",
                "rules": [[[{
                    "notNamespaces": [{"Suffix": "-eu"}],
                    "destinationIps": ["10.1.0.0/16", "fd00::/8"],
                    "notDestinationPorts": [22, 9090]
                }]]],
                "dryRun": false
            },
            {
                "name": "only-web", "namespace": "shop", "scope": "WorkloadSelector", "action": "Allow",
                "rules": [[
                    [{"principals": [{"Exact": "cluster.local/ns/shop/sa/web"}, {"Presence": []}],
                      "notPrincipals": [{"Prefix": "cluster.local/ns/evil/"}]}],
                    [{"sourceIps": ["10.0.0.0/8"], "destinationPorts": [8080]}]
                ]],
                "dryRun": true
            }
        ])
    );
}

#[test]
fn certificates_are_base64_pem_with_decimal_serials_and_rfc3339_times() {
    let ca = LocalCa::generate_root(
        "cluster.local",
        Duration::from_secs(48 * 3600),
        CaLimits::default(),
    )
    .expect("root");
    let td = TrustDomain::parse("cluster.local").expect("trust domain");
    let web = SpiffeId::istio(&td, "shop", "web").expect("id");
    let cert = ca
        .issue_workload(&web, None, &mesh::tls::crypto_provider())
        .expect("issued");
    let broken = SpiffeId::istio(&td, "shop", "broken").expect("id");
    let states = [
        (
            broken.clone(),
            CertState::Unavailable(Arc::new(FetchError::Unreachable(
                "connection refused".into(),
            ))),
        ),
        (
            web.clone(),
            CertState::Available {
                cert: Arc::new(cert.clone()),
                expires_at: tokio::time::Instant::now() + Duration::from_secs(3600),
            },
        ),
    ];
    let doc = dump(&Snapshot::empty(), &states);
    let unavailable = &doc["certificates"][0];
    assert_eq!(unavailable["identity"], broken.to_string());
    assert!(
        unavailable["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("Unavailable: ") && s.contains("connection refused")),
        "{unavailable}"
    );
    assert_eq!(unavailable["certChain"], json!([]));

    let available = &doc["certificates"][1];
    assert_eq!(available["identity"], web.to_string());
    assert_eq!(available["state"], "Available");
    // Held past its end (the store would refuse to serve it): not available.
    let expired = [(
        web.clone(),
        CertState::Available {
            cert: Arc::new(cert.clone()),
            expires_at: tokio::time::Instant::now(),
        },
    )];
    assert_eq!(
        dump(&Snapshot::empty(), &expired)["certificates"][0]["state"],
        "Unavailable: expired"
    );
    let leaf = &available["certChain"][0];
    let pem = base64::engine::general_purpose::STANDARD
        .decode(leaf["pem"].as_str().expect("pem is a string"))
        .expect("pem is base64");
    let pem = String::from_utf8(pem).expect("PEM text");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"), "{pem}");
    assert!(!pem.contains('\r'), "LF line endings: {pem:?}");
    let decoded = pem::parse(&pem).expect("PEM parses");
    assert_eq!(
        decoded.contents(),
        cert.chain()[0].as_ref(),
        "the leaf's DER"
    );
    let hex = &cert.leaf().serial;
    let serial = leaf["serialNumber"].as_str().expect("serial is a string");
    assert!(serial.bytes().all(|b| b.is_ascii_digit()), "{serial}");
    let from_hex: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(
        serial,
        decimal(&from_hex),
        "the serial is the leaf's, in decimal"
    );
    assert_eq!(leaf["expirationTime"], rfc3339(cert.leaf().not_after));
    assert_eq!(leaf["validFrom"], rfc3339(cert.leaf().not_before));
    assert_eq!(available["rootCerts"].as_array().map(Vec::len), Some(1));
}

#[test]
fn serials_are_written_in_base_ten() {
    assert_eq!(decimal(&[]), "0");
    assert_eq!(decimal(&[0x01, 0x00]), "256");
    assert_eq!(
        decimal(&[1, 0, 0, 0, 0, 0, 0, 0, 0]),
        "18446744073709551616"
    );
    assert_eq!(
        decimal(&[
            0xe5, 0xdf, 0xb5, 0x91, 0x50, 0xb2, 0xba, 0x7f, 0x10, 0x8d, 0x93, 0xdc, 0xec, 0x5a,
            0xa6, 0x13
        ]),
        "305554775863395697262503895661564044819"
    );
}

#[test]
fn times_are_utc_whole_seconds() {
    let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
    assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(at(1_714_557_600)), "2024-05-01T10:00:00Z");
    assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(at(4_107_542_399)), "2100-02-28T23:59:59Z");
    assert_eq!(civil_from_days(59), (1970, 3, 1));
}

#[test]
fn entries_keep_upstreams_key_order() {
    let snapshot = snapshot();
    let web = snapshot
        .workload("cluster1//v1/Pod/shop/web-1")
        .expect("fixture workload");
    assert_eq!(
        text(&workload(&web)),
        concat!(
            r#"{"workloadIps":["10.0.0.5"],"protocol":"HBONE","networkMode":"Standard","#,
            r#""uid":"cluster1//v1/Pod/shop/web-1","name":"web-1","namespace":"shop","#,
            r#""trustDomain":"cluster.local","serviceAccount":"web","workloadName":"web","#,
            r#""workloadType":"deployment","canonicalName":"web","canonicalRevision":"v1","#,
            r#""node":"node-a","status":"Healthy","clusterId":"Kubernetes","#,
            r#""services":["shop/web.shop.svc.cluster.local"],"capacity":1}"#
        )
    );
    let svc = snapshot.services().next().expect("fixture service");
    assert_eq!(
        text(&service(svc, super::endpoints(&snapshot, svc))),
        concat!(
            r#"{"name":"web","namespace":"shop","hostname":"web.shop.svc.cluster.local","#,
            r#""vips":["/10.96.0.10"],"ports":{"80":8080},"endpoints":{"#,
            r#""cluster1//v1/Pod/shop/web-1":{"workloadUid":"cluster1//v1/Pod/shop/web-1","#,
            r#""port":{"80":8080},"status":"Healthy"}},"#,
            r#""subjectAltNames":["spiffe://cluster.local/ns/shop/sa/web"],"#,
            r#""canonical":true,"visibility":"Public"}"#
        )
    );
    let only_web = snapshot
        .policies()
        .get("shop/only-web")
        .expect("fixture policy");
    assert_eq!(
        text(&policy(only_web)),
        concat!(
            r#"{"name":"only-web","namespace":"shop","scope":"WorkloadSelector","action":"Allow","#,
            r#""rules":[[[{"principals":[{"Exact":"cluster.local/ns/shop/sa/web"},{"Presence":[]}],"#,
            r#""notPrincipals":[{"Prefix":"cluster.local/ns/evil/"}]}],"#,
            r#"[{"sourceIps":["10.0.0.0/8"],"destinationPorts":[8080]}]]],"dryRun":true}"#
        )
    );
}

#[test]
fn the_served_document_is_pretty_json_with_the_top_level_keys_in_order() {
    let snapshot = snapshot();
    let config = json!({});
    let body = render(&Sources {
        snapshot: &snapshot,
        certificates: &[],
        config: &config,
        pods: None,
    })
    .expect("rendered");
    let body = String::from_utf8(body).expect("UTF-8");
    let positions: Vec<usize> = [
        "workloads",
        "services",
        "policies",
        "stagedServices",
        "staticConfig",
        "version",
        "config",
        "certificates",
    ]
    .iter()
    .map(|key| {
        body.find(&format!("\n  \"{key}\": "))
            .unwrap_or_else(|| panic!("top-level {key} missing:\n{body}"))
    })
    .collect();
    assert!(positions.is_sorted(), "{positions:?}\n{body}");
    let parsed: Value = serde_json::from_str(&body).expect("valid JSON");
    assert_eq!(parsed["version"]["cryptoProvider"], "tls-aws-lc");
    assert_eq!(parsed["version"]["version"], env!("CARGO_PKG_VERSION"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(parsed["version"]["buildProfile"], profile);
}

#[test]
fn in_pod_mode_adds_each_enrolled_pod_and_whether_its_proxy_serves() {
    let pod = |uid: &str, up, name: &str| PodState {
        uid: uid.to_owned(),
        up,
        info: PodInfo {
            name: name.to_owned(),
            namespace: "shop".to_owned(),
            service_account: "web".to_owned(),
        },
    };
    let pods = [pod("uid-a", true, "web-1"), pod("uid-b", false, "web-2")];
    let snapshot = Snapshot::empty();
    let config = json!({});
    let doc = serde_json::to_value(document(&Sources {
        snapshot: &snapshot,
        certificates: &[],
        config: &config,
        pods: Some(&pods),
    }))
    .expect("encoded");
    assert_eq!(
        doc["workloadState"],
        json!({
            "uid-a": {"state": "Up", "info": {"name": "web-1", "namespace": "shop", "serviceAccount": "web"}},
            "uid-b": {"state": "Pending", "info": {"name": "web-2", "namespace": "shop", "serviceAccount": "web"}}
        })
    );
    assert!(
        dump(&snapshot, &[]).get("workloadState").is_none(),
        "dedicated mode has no workloadState"
    );
}

#[test]
fn waypoints_are_written_as_string_destinations() {
    let config: LocalConfig = r#"
workloads:
- uid: c1//Pod/shop/api
  name: api
  namespace: shop
  workloadIps: ["10.0.0.3"]
  waypoint: {destination: shop/waypoint.shop.svc.cluster.local}
services:
- name: api
  namespace: shop
  hostname: api.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  waypoint: {destination: /10.96.0.50, hboneMtlsPort: 15008}
"#
    .parse()
    .unwrap_or_else(|e| panic!("fixture: {e}"));
    let snapshot = config.into_snapshot();
    let api = snapshot.workload("c1//Pod/shop/api").expect("api");
    let written = text(&workload(&api));
    assert!(
        written.starts_with(r#"{"workloadIps":["10.0.0.3"],"waypoint":{"destination":"shop/waypoint.shop.svc.cluster.local","hboneMtlsPort":15008},"protocol":"TCP""#),
        "{written}"
    );
    let doc = dump(&snapshot, &[]);
    assert_eq!(
        doc["services"][0]["waypoint"],
        json!({"destination": "/10.96.0.50", "hboneMtlsPort": 15008})
    );
}
