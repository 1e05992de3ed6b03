//! Parsing and validating the local config file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::identity::{SpiffeId, SpiffeIdError};

use super::super::local::{InvalidReason, LocalConfig, LocalConfigError};
use super::super::model::{
    DEFAULT_TRUST_DOMAIN, HealthPolicy, HealthStatus, LoadBalancerMode, LocalityScope,
    NamespacedHostname, NetworkAddress, TunnelProtocol, WorkloadType, default_trust_domain,
};
use super::{UPSTREAM_EXAMPLE, parse};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn key(text: &str) -> NamespacedHostname {
    NamespacedHostname::parse(text).unwrap()
}

#[test]
fn upstream_example_parses_verbatim() {
    let config = parse(UPSTREAM_EXAMPLE);

    let [workload] = config.workloads.as_slice() else {
        panic!("one workload expected: {:?}", config.workloads)
    };
    assert_eq!(workload.uid, "cluster1//v1/Pod/default/local");
    assert_eq!(workload.name, "local");
    assert_eq!(workload.namespace(), "default");
    assert_eq!(workload.service_account(), "default");
    assert_eq!(workload.trust_domain().as_str(), "cluster.local");
    assert_eq!(workload.ips, vec![ip("127.0.0.1")]);
    assert_eq!(workload.protocol, TunnelProtocol::Hbone);
    assert_eq!(workload.node, "local");
    assert_eq!(workload.network, "");
    assert_eq!(workload.status, HealthStatus::Healthy);
    assert_eq!(workload.cluster_id, "Kubernetes");
    assert_eq!(
        workload.services,
        BTreeMap::from([(key("default/example.com"), BTreeMap::from([(80, 8080)]))])
    );
    assert_eq!(
        workload.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );

    let [service] = config.services.as_slice() else {
        panic!("one service expected: {:?}", config.services)
    };
    assert_eq!(service.key(), key("default/example.com"));
    assert_eq!(service.name, "local");
    assert_eq!(
        service.vips,
        vec![NetworkAddress {
            network: String::new(),
            ip: ip("127.10.0.1")
        }]
    );
    assert_eq!(service.ports, BTreeMap::from([(80, 8080)]));
    assert_eq!(
        service.subject_alt_names,
        vec![SpiffeId::parse("spiffe://cluster.local/ns/default/sa/local").unwrap()]
    );
    assert!(!service.is_passthrough());

    assert_eq!(config.policies.len(), 1);
    assert!(config.policies.get("default/deny-9999").is_some());
}

#[test]
fn optional_fields_and_defaults() {
    let config = parse(
        r#"
workloads:
- uid: u1
  namespace: ns
  workloadType: cronjob
- uid: u2
  name: p2
  namespace: ns
  serviceAccount: sa2
  trustDomain: example.org
  status: Unhealthy
  canonicalName: app
  canonicalRevision: v2
  workloadName: app-v2
  workloadType: mystery
  clusterId: c2
  hostname: vm.example.org
  nativeTunnel: true
  authorizationPolicies: [ns/allow-web]
  locality: {region: r, zone: z}
  protocol: TCP
- uid: u3
  namespace: ns
  trustDomain: ""
services:
- name: s
  namespace: ns
  hostname: s.ns.svc.cluster.local
  ports: {"443": 0}
  canonical: true
  loadBalancer:
    mode: Failover
    routingPreferences: [Network, Node]
    healthPolicy: AllowAll
"#,
    );
    let [first, second, third] = config.workloads.as_slice() else {
        panic!("three workloads expected")
    };
    assert_eq!(first.trust_domain().as_str(), DEFAULT_TRUST_DOMAIN);
    assert_eq!(first.service_account(), "default");
    assert_eq!(first.cluster_id, "Kubernetes");
    assert_eq!(first.protocol, TunnelProtocol::Tcp);
    assert_eq!(first.workload_type, WorkloadType::CronJob);
    assert!(first.services.is_empty() && first.ips.is_empty());

    assert_eq!(
        second.identity().to_string(),
        "spiffe://example.org/ns/ns/sa/sa2"
    );
    assert_eq!(
        third.trust_domain().as_str(),
        DEFAULT_TRUST_DOMAIN,
        "\"\" means the default"
    );
    assert_eq!(second.status, HealthStatus::Unhealthy);
    assert_eq!(
        (
            second.canonical_name.as_str(),
            second.canonical_revision.as_str()
        ),
        ("app", "v2")
    );
    assert_eq!(second.workload_name, "app-v2");
    assert_eq!(
        second.workload_type,
        WorkloadType::Deployment,
        "unknown kind falls back"
    );
    assert_eq!(second.cluster_id, "c2");
    assert_eq!(second.hostname, "vm.example.org");
    assert!(second.native_tunnel);
    assert_eq!(second.authorization_policies, vec!["ns/allow-web"]);
    assert_eq!(
        (
            second.locality.region.as_str(),
            second.locality.zone.as_str(),
            second.locality.subzone.as_str()
        ),
        ("r", "z", "")
    );

    let [service] = config.services.as_slice() else {
        panic!("one service expected")
    };
    assert_eq!(
        service.ports,
        BTreeMap::from([(443, 0)]),
        "target 0 = per endpoint"
    );
    assert!(service.canonical && service.vips.is_empty());
    assert_eq!(service.load_balancing.mode, LoadBalancerMode::Failover);
    assert_eq!(
        service.load_balancing.routing_preferences,
        vec![LocalityScope::Network, LocalityScope::Node]
    );
    assert_eq!(service.load_balancing.health_policy, HealthPolicy::AllowAll);
}

#[test]
fn decode_errors_name_field_value_and_line() {
    let workload = |extra: &str| format!("workloads:\n- uid: u\n  namespace: ns\n  {extra}\n");
    let service =
        |extra: &str| format!("services:\n- name: s\n  namespace: ns\n  hostname: h\n  {extra}\n");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            workload("workloadIps: [\"10.0.0.1\", \"10.0.0.x\"]"),
            vec![
                "workloads[0].workloadIps[1]",
                "\"10.0.0.x\" is not an IP address",
                "line 4",
            ],
        ),
        (
            workload("services: {web: {80: 8080}}"),
            vec![
                "workloads[0].services",
                "\"web\" is not \"namespace/hostname\"",
            ],
        ),
        (
            workload("protocol: HBONEE"),
            vec!["workloads[0].protocol", "unknown variant `HBONEE`"],
        ),
        (
            workload("status: Ready"),
            vec!["workloads[0].status", "unknown variant `Ready`"],
        ),
        (
            workload("services: {ns/web: {http: 8080}}"),
            vec!["workloads[0].services", "\"http\" is not a port (1-65535)"],
        ),
        (
            workload("services: {ns/web: {80: 0}}"),
            vec!["workloads[0].services", "0 is not a port (1-65535)"],
        ),
        (
            workload("trustDomain: Cluster.Local"),
            vec![
                "workloads[0].trustDomain",
                "\"Cluster.Local\" is not a trust domain",
            ],
        ),
        (
            workload("workloadIP: [\"10.0.0.1\"]"),
            vec!["workloads[0]", "unknown field `workloadIP`"],
        ),
        (
            workload("waypoint: {destination: /10.0.0.9, hbonheMtlsPort: 15008}"),
            vec!["workloads[0].waypoint", "unknown field `hbonheMtlsPort`"],
        ),
        (
            service("ports: {0: 80}"),
            vec!["services[0].ports", "0 is not a port (1-65535)"],
        ),
        (
            service("ports: {80: 70000}"),
            vec![
                "services[0].ports",
                "70000 is not a port (0-65535, 0 = per endpoint)",
            ],
        ),
        (
            service("ports: {-1: 80}"),
            vec!["services[0].ports", "-1 is not a port (1-65535)"],
        ),
        (
            service("vips: [10.96.0.1]"),
            vec!["services[0].vips[0]", "\"10.96.0.1\" is not \"network/ip\""],
        ),
        (
            service("vips: [/10.96.0.0/16]"),
            vec![
                "services[0].vips[0]",
                "\"10.96.0.0/16\" is not an IP address",
            ],
        ),
        (
            service("subjectAltNames: [cluster.local/ns/a/sa/b]"),
            vec![
                "services[0].subjectAltNames[0]",
                "\"cluster.local/ns/a/sa/b\" is not a SPIFFE ID",
            ],
        ),
        (
            service("loadBalancer: {mode: RoundRobin}"),
            vec![
                "services[0].loadBalancer.mode",
                "unknown variant `RoundRobin`",
            ],
        ),
        (
            "workloads: {}\n".to_owned(),
            vec!["workloads", "invalid type"],
        ),
        ("workloads: [\n".to_owned(), vec!["line"]),
    ];
    for (yaml, wants) in cases {
        match yaml.parse::<LocalConfig>() {
            Err(e @ LocalConfigError::Decode { line, .. }) => {
                let shown = e.to_string();
                assert!(line.is_some(), "no line for {shown}");
                assert!(shown.starts_with("<inline>: "), "{shown}");
                for want in &wants {
                    assert!(shown.contains(want), "{shown:?} lacks {want:?}\n{yaml}");
                }
            }
            other => panic!("want a decode error for\n{yaml}\ngot {other:?}"),
        }
    }
}

#[test]
fn cross_field_errors_name_field_and_value() {
    let cases: Vec<(&str, &str, &str, InvalidReason)> = vec![
        (
            "workloads: [{uid: a, namespace: ns}, {uid: b, namespace: ns}, {uid: a, namespace: ns}]",
            "workloads[2].uid",
            "a",
            InvalidReason::DuplicateUid { first: 0 },
        ),
        (
            "workloads: [{uid: '', namespace: ns}]",
            "workloads[0].uid",
            "",
            InvalidReason::Empty,
        ),
        (
            "workloads: [{uid: a, namespace: 'a b'}]",
            "workloads[0].namespace",
            "a b",
            InvalidReason::Identity(SpiffeIdError::PathChar(' ')),
        ),
        (
            "services: [{name: s, namespace: ns, hostname: h}, {name: t, namespace: ns, hostname: h}]",
            "services[1]",
            "ns/h",
            InvalidReason::DuplicateService { first: 0 },
        ),
        (
            "services: [{name: s, namespace: '', hostname: h}]",
            "services[0].namespace",
            "",
            InvalidReason::Empty,
        ),
    ];
    for (yaml, want_field, want_value, want_reason) in cases {
        match yaml.parse::<LocalConfig>() {
            Err(LocalConfigError::Invalid {
                origin,
                field,
                value,
                reason,
            }) => {
                assert_eq!(origin, "<inline>", "{yaml}");
                assert_eq!(field, want_field, "{yaml}");
                assert_eq!(value, want_value, "{yaml}");
                assert_eq!(reason, want_reason, "{yaml}");
            }
            other => panic!("want an invalid error for {yaml}, got {other:?}"),
        }
    }
}

#[test]
fn bad_service_account_is_named() {
    let err = "workloads: [{uid: a, namespace: ns, serviceAccount: 'x/y'}]"
        .parse::<LocalConfig>()
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with(
            "<inline>: workloads[0].serviceAccount: \"x/y\": not a valid SPIFFE path segment: "
        ),
        "{shown}"
    );
}

#[test]
fn empty_text_is_refused_but_empty_mapping_is_fine() {
    for blank in ["", "  \n", "# only a comment\n", "---\n"] {
        assert!(
            matches!(
                blank.parse::<LocalConfig>(),
                Err(LocalConfigError::Empty { .. })
            ),
            "{blank:?}"
        );
    }
    let empty = parse("{}");
    assert!(empty.workloads.is_empty() && empty.services.is_empty());
}

#[test]
fn from_path_names_the_file() {
    let missing = Path::new("/nonexistent/state-test/config.yaml");
    let err = LocalConfig::from_path(missing).unwrap_err();
    assert!(matches!(err, LocalConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/state-test/config.yaml: ")
    );

    let path = std::env::temp_dir().join(format!("state-from-path-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "workloads: [{uid: a, namespace: ns, workloadIps: [x]}]\n",
    )
    .unwrap();
    let result = LocalConfig::from_path(&path);
    std::fs::remove_file(&path).unwrap();
    let shown = result.unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}: ", path.display())),
        "{shown}"
    );
    assert!(shown.contains("\"x\" is not an IP address"), "{shown}");
}

#[test]
fn key_and_address_parsing() {
    for (text, ok) in [
        ("ns/host", true),
        ("ns/a.b.svc.cluster.local", true),
        ("host", false),
        ("/host", false),
        ("ns/", false),
        ("ns/a/b", false),
    ] {
        assert_eq!(NamespacedHostname::parse(text).is_ok(), ok, "{text:?}");
    }
    for (text, want) in [
        ("/10.0.0.1", Some(("", "10.0.0.1"))),
        ("net1/fd00::1", Some(("net1", "fd00::1"))),
        ("10.0.0.1", None),
        ("net1/", None),
        ("net1/10.0.0.0/8", None),
    ] {
        let got = NetworkAddress::parse(text).ok();
        let want = want.map(|(network, ip)| NetworkAddress {
            network: network.to_owned(),
            ip: ip.parse().unwrap(),
        });
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn defaults_are_valid_and_kinds_round_trip() {
    assert_eq!(default_trust_domain().as_str(), DEFAULT_TRUST_DOMAIN);
    for kind in [
        WorkloadType::Deployment,
        WorkloadType::CronJob,
        WorkloadType::Pod,
        WorkloadType::Job,
    ] {
        assert_eq!(WorkloadType::from_name(kind.as_str()), kind);
    }
}

#[test]
fn policies_are_decoded_and_bad_or_duplicate_ones_refused() {
    let policy = |name: &str, principal: &str| {
        format!(
            "- name: {name}\n  namespace: shop\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - principals: [\"{principal}\"]\n"
        )
    };
    let ok = format!("policies:\n{}", policy("a", "cluster.local/ns/x/sa/y"));
    let config = LocalConfig::parse(&ok, "t").unwrap();
    assert!(config.policies.get("shop/a").is_some());

    let empty_value = format!("policies:\n{}", policy("a", ""));
    match LocalConfig::parse(&empty_value, "t") {
        Err(LocalConfigError::Invalid {
            field,
            reason: InvalidReason::Policy(_),
            ..
        }) => {
            assert_eq!(field, "policies[0]");
        }
        other => panic!("expected an invalid policy, got {other:?}"),
    }
    let twice = format!("policies:\n{}{}", policy("a", "p"), policy("a", "q"));
    match LocalConfig::parse(&twice, "t") {
        Err(LocalConfigError::Invalid {
            field,
            value,
            reason: InvalidReason::DuplicatePolicy,
            ..
        }) => {
            assert_eq!((field.as_str(), value.as_str()), ("policies[1]", "shop/a"));
        }
        other => panic!("expected a duplicate policy, got {other:?}"),
    }
    let unknown_field = "policies:\n- name: a\n  namespace: shop\n  scope: Namespace\n  action: Allow\n  rules: []\n  sourceIP: x\n";
    assert!(matches!(
        LocalConfig::parse(unknown_field, "t"),
        Err(LocalConfigError::Decode { .. })
    ));
}
