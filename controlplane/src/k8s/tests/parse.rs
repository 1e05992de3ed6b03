//! What is read from valid documents, and the defaults applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::super::*;
use super::{parse, world_path};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn reads_the_conformance_world() {
    let cluster = load_file(&world_path()).unwrap();
    assert!(cluster.warnings().is_empty(), "{:?}", cluster.warnings());
    assert_eq!(cluster.namespaces().count(), 5);
    assert_eq!(cluster.service_accounts().count(), 7);
    assert_eq!(cluster.pods().count(), 8);
    assert_eq!(cluster.services().count(), 4);
    assert_eq!(cluster.gateways().count(), 1);
    assert_eq!(cluster.request_authentications().count(), 1);
    assert!(cluster.namespace("payments").unwrap().is_ambient());
    assert!(!cluster.namespace("legacy").unwrap().is_ambient());

    let api = cluster.pods().find(|p| p.meta.name == "api-0").unwrap();
    assert_eq!(api.meta.namespace, "payments");
    assert_eq!(
        api.meta.labels,
        labels(&[("app", "api"), ("version", "v1")])
    );
    assert_eq!(api.service_account, "api");
    assert_eq!(api.node_name.as_deref(), Some("node-a"));
    assert_eq!(api.ips, vec![ip("10.20.2.10")]);
    assert_eq!(api.phase, PodPhase::Running);
    assert!(api.ready);
    assert_eq!(api.named_tcp_port("grpc"), Some(9090));
    assert_eq!(api.named_tcp_port("nope"), None);

    let service = cluster.services().find(|s| s.meta.name == "api").unwrap();
    assert_eq!(service.cluster_ips, vec![ip("10.96.2.10")]);
    assert_eq!(service.selector, labels(&[("app", "api")]));
    let targets: Vec<_> = service
        .ports
        .iter()
        .map(|p| (p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        targets,
        vec![
            (80, TargetPort::Name("http".to_owned())),
            (9090, TargetPort::Number(9090))
        ]
    );

    let gateway = cluster.gateways().next().unwrap();
    assert_eq!(gateway.class_name, "istio-waypoint");
    assert_eq!(gateway.listeners[0].protocol, "HBONE");
    assert_eq!(
        gateway.listeners[0].allowed_namespaces,
        AllowedNamespaces::Same
    );

    let authn = cluster.request_authentications().next().unwrap();
    assert_eq!(authn.target_refs[0].kind, "Gateway");
    assert_eq!(authn.jwt_rules[0].issuer, "https://auth.example.com");
    assert_eq!(authn.jwt_rules[0].audiences, vec!["payments".to_owned()]);
    assert!(
        authn.jwt_rules[0]
            .jwks
            .as_deref()
            .unwrap()
            .contains("conformance-trusted-1")
    );
}

#[test]
fn skips_empty_documents_and_warns_about_unknown_kinds() {
    let cluster = parse(
        "# a comment only\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
         apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
    )
    .unwrap();
    assert_eq!(cluster.len(), 1);
    let messages: Vec<String> = cluster.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    // A comment before the first `---` is not a document; the empty one after it is.
    assert_eq!(
        messages[0],
        "t.yaml: document 2: skipped: kind \"Deployment\" of apiVersion \"apps/v1\" is not supported"
    );
    assert!(
        messages[1].starts_with("t.yaml: document 4: ")
            && messages[1].contains("security.istio.io/v2")
    );
}

#[test]
fn applies_kubernetes_defaults() {
    let cluster = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
         status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\n\
         spec: {clusterIP: None, ports: [{port: 80}, {port: 81, targetPort: '8081'}]}\n",
    )
    .unwrap();
    let pod = cluster.pods().next().unwrap();
    assert_eq!(pod.meta.namespace, DEFAULT_NAMESPACE);
    assert_eq!(pod.service_account, DEFAULT_SERVICE_ACCOUNT);
    assert_eq!(pod.phase, PodPhase::Pending, "no phase reads as Pending");
    assert!(!pod.ready);
    assert_eq!(
        pod.ips,
        vec![ip("10.0.0.2"), ip("fd00::2")],
        "podIPs wins over podIP"
    );
    let service = cluster.services().next().unwrap();
    assert!(service.cluster_ips.is_empty(), "None is headless");
    assert_eq!(service.service_type, ServiceType::ClusterIp);
    assert_eq!(
        service.ports[0].target_port,
        TargetPort::Number(80),
        "targetPort defaults to port"
    );
    assert_eq!(service.ports[1].target_port, TargetPort::Number(8081));
    assert_eq!(service.ports[0].protocol, Protocol::Tcp);
}

#[test]
fn reads_authorization_policies() {
    let cluster = parse(
        r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: p, namespace: payments}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["a"], notIpBlocks: ["10.0.0.0/8", "fd00::1"]}
    to:
    - operation: {ports: ["80"], methods: [GET], paths: ["/a/{*}/b/{**}"]}
    when:
    - {key: destination.port, notValues: ["81"]}
    - {key: "request.auth.claims[org][team]", values: [x]}
    - {key: remote.ip, values: ["10.0.0.1"]}
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: q, namespace: payments}
spec:
  targetRef: {kind: Service, group: "", name: api}
  action: CUSTOM
  provider: {name: ext}
  rules: [{}]
"#,
    )
    .unwrap();
    let mut policies = cluster.authorization_policies();
    let p = policies.next().unwrap();
    assert_eq!(p.selector, Some(labels(&[("app", "api")])));
    assert_eq!(p.action, AuthorizationAction::Deny);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[1], Rule::default());
    let rule = &p.rules[0];
    assert_eq!(rule.from[0].principals, vec!["a".to_owned()]);
    assert_eq!(
        rule.from[0].not_ip_blocks,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::1/128".parse().unwrap()
        ]
    );
    assert_eq!(rule.to[0].ports, vec![80]);
    assert_eq!(rule.to[0].non_l4_fields(), vec!["methods", "paths"]);
    assert_eq!(
        rule.when[0],
        Condition::DestinationPort(Values {
            values: vec![],
            not_values: vec![81]
        })
    );
    assert!(
        matches!(&rule.when[1], Condition::Http { key, .. } if key == "request.auth.claims[org][team]")
    );
    assert!(matches!(&rule.when[2], Condition::Http { key, .. } if key == "remote.ip"));
    let q = policies.next().unwrap();
    assert_eq!(
        q.target_refs.len(),
        1,
        "targetRef is a one-element targetRefs"
    );
    assert_eq!(q.provider.as_deref(), Some("ext"));
    assert_eq!(q.action, AuthorizationAction::Custom);
}

#[test]
fn dry_run_annotation_is_parsed_like_go() {
    for (value, want, warns) in [
        ("true", true, false),
        ("1", true, false),
        ("True", true, false),
        ("false", false, false),
        ("F", false, false),
        ("", false, false),
        ("yes", false, true),
    ] {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p, annotations: {{istio.io/dry-run: {value:?}}}}}\n"
        );
        let cluster = parse(&text).unwrap();
        let policy = cluster.authorization_policies().next().unwrap();
        assert_eq!(policy.dry_run, want, "value {value:?}");
        assert_eq!(!cluster.warnings().is_empty(), warns, "value {value:?}");
    }
}

#[test]
fn reads_peer_authentications() {
    let cluster = parse(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: p, namespace: n, creationTimestamp: '2024-05-01T10:00:00Z'}\n\
         spec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n\
         \x20 portLevelMtls:\n    9090: {mode: PERMISSIVE}\n    '8080': {mode: DISABLE}\n    81: {}\n\
         ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: q}\n",
    )
    .unwrap();
    let mut policies = cluster.peer_authentications();
    let q = policies.next().unwrap();
    assert_eq!(
        (q.mode, q.selector.clone()),
        (MtlsMode::Unset, None),
        "an empty spec is UNSET"
    );
    let p = policies.next().unwrap();
    assert_eq!(p.mode, MtlsMode::Strict);
    let want: BTreeMap<u16, MtlsMode> = [
        (81, MtlsMode::Unset),
        (8080, MtlsMode::Disable),
        (9090, MtlsMode::Permissive),
    ]
    .into();
    assert_eq!(p.port_level, want);
    assert_eq!(
        p.meta.creation_timestamp,
        Timestamp::parse("2024-05-01T10:00:00Z")
    );
}

#[test]
fn timestamps_order_chronologically() {
    let parse = |s: &str| Timestamp::parse(s);
    assert!(parse("2024-01-01T00:00:00Z") < parse("2024-01-01T00:00:00.5Z"));
    assert!(parse("2023-12-31T23:59:59.999Z") < parse("2024-01-01T00:00:00Z"));
    assert_eq!(
        parse("2024-01-01T00:00:00.5Z"),
        parse("2024-01-01T00:00:00.500Z")
    );
    for bad in [
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00+02:00",
        "2024-13-01T00:00:00Z",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T24:00:00Z",
        "２０２４-01-01T00:00:00Z",
    ] {
        assert_eq!(parse(bad), None, "{bad}");
    }
}

#[test]
fn overlay_replaces_and_merge_refuses_duplicates() {
    let namespace = |labels: &str| {
        parse(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{labels}}}}}\n"
        ))
        .unwrap()
    };
    let mut world = namespace("x: '1'");
    world.overlay(namespace("x: '2'"));
    assert_eq!(world.len(), 1);
    assert_eq!(
        world.namespace("a").unwrap().meta.labels,
        labels(&[("x", "2")])
    );
    let error = world.merge(namespace("x: '3'")).unwrap_err().to_string();
    assert_eq!(
        error,
        "t.yaml: document 1: Namespace a is already defined in t.yaml: document 1"
    );
}

#[test]
fn never_panics_on_damaged_input() {
    // Every prefix of the world (cut mid-token, mid-document) and deterministic byte flips:
    // each must be read or refused, never panic.
    let world = std::fs::read_to_string(world_path()).unwrap();
    let bytes = world.as_bytes();
    for end in (0..bytes.len()).step_by(5) {
        if let Ok(text) = std::str::from_utf8(&bytes[..end]) {
            let _ = parse(text);
        }
    }
    let mut state: u32 = 0x9e37_79b9;
    for _ in 0..400 {
        let mut damaged = bytes.to_vec();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let at = usize::try_from(state).unwrap() % damaged.len();
            let replacements = b"{}[]:-'\"\n #*&!|>%@`9a";
            damaged[at] = replacements[usize::try_from(state >> 8).unwrap() % replacements.len()];
        }
        if let Ok(text) = std::str::from_utf8(&damaged) {
            let _ = parse(text);
        }
    }
}
