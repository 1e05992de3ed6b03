//! PeerAuthentication → Authorization (xds.md §5.6, policy.md §4).

use mesh::policy::{ConnectionAttrs, PolicySet, applicable, evaluate};
use xds_proto::istio::security as sec;
use xds_proto::istio::security::string_match::MatchType;

use super::super::Resources;
use super::{ambient_namespace, authorization, namespace, pod, translate_yaml, workload};

const UID: &str = "Kubernetes//Pod/n/p";
const STATIC: &str = "istio-system/istio_converted_static_strict";
const CONVERTED: &str = "n/converted_peer_authentication_wl";

fn peer(
    namespace: &str,
    name: &str,
    selector: bool,
    mode: &str,
    ports: &str,
    created: &str,
) -> String {
    let selector = if selector {
        "  selector: {matchLabels: {app: a}}\n"
    } else {
        ""
    };
    let mode = if mode.is_empty() {
        String::new()
    } else {
        format!("  mtls: {{mode: {mode}}}\n")
    };
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!("  portLevelMtls: {{{ports}}}\n")
    };
    let created = if created.is_empty() {
        String::new()
    } else {
        format!(", creationTimestamp: '{created}'")
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}{created}}}\nspec:\n{selector}{mode}{ports}---\n"
    )
}

fn world(peers: &[String]) -> String {
    format!(
        "{}{}{}{}",
        namespace("istio-system", ""),
        ambient_namespace(),
        pod("n", "p", "app: a", "10.0.0.1"),
        peers.concat()
    )
}

fn no_principal() -> sec::Match {
    sec::Match {
        not_principals: vec![sec::StringMatch {
            match_type: Some(MatchType::Presence(())),
        }],
        ..Default::default()
    }
}

fn clause(m: sec::Match) -> sec::Clause {
    sec::Clause { matches: vec![m] }
}

fn listed(resources: &Resources) -> Vec<String> {
    workload(resources, UID).authorization_policies.clone()
}

#[test]
fn without_peer_authentication_nothing_is_sent() {
    let (resources, _) = translate_yaml(&world(&[]));
    assert!(resources.authorizations.is_empty());
    assert!(listed(&resources).is_empty());
}

#[test]
fn the_static_strict_policy() {
    let (resources, _) = translate_yaml(&world(&[peer("n", "x", false, "PERMISSIVE", "", "")]));
    let want = sec::Authorization {
        name: "istio_converted_static_strict".to_owned(),
        namespace: "istio-system".to_owned(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![clause(no_principal())],
        }],
        dry_run: false,
        extensions: vec![],
    };
    assert_eq!(
        authorization(&resources, STATIC),
        &want,
        "sent whenever any exists"
    );
    assert!(
        listed(&resources).is_empty(),
        "but only listed where STRICT applies"
    );
}

#[test]
fn mode_precedence_and_listing() {
    // (mesh, namespace, workload (no ports)) → static policy listed
    let cases: &[(&str, &str, &str, bool)] = &[
        ("STRICT", "", "", true),
        ("STRICT", "PERMISSIVE", "", false),
        ("STRICT", "UNSET", "", true),
        ("", "STRICT", "", true),
        ("PERMISSIVE", "STRICT", "DISABLE", false),
        ("PERMISSIVE", "", "STRICT", true),
        ("STRICT", "", "UNSET", true),
    ];
    for (mesh, ns, wl, strict) in cases {
        let mut peers = Vec::new();
        if !mesh.is_empty() {
            peers.push(peer("istio-system", "mesh", false, mesh, "", ""));
        }
        if !ns.is_empty() {
            peers.push(peer("n", "ns", false, ns, "", ""));
        }
        if !wl.is_empty() {
            peers.push(peer("n", "wl", true, wl, "", ""));
        }
        let (resources, _) = translate_yaml(&world(&peers));
        let want: Vec<String> = if *strict {
            vec![STATIC.to_owned()]
        } else {
            vec![]
        };
        assert_eq!(
            listed(&resources),
            want,
            "mesh {mesh:?} ns {ns:?} workload {wl:?}"
        );
        assert!(!resources.authorizations.contains_key(CONVERTED));
    }
}

#[test]
fn converted_port_level_policies() {
    let exempt = |port| {
        clause(sec::Match {
            not_destination_ports: vec![port],
            ..Default::default()
        })
    };
    let strict_port = |port| sec::Rule {
        clauses: vec![clause(sec::Match {
            destination_ports: vec![port],
            ..no_principal()
        })],
    };
    // (mesh, namespace, workload, ports) → rules of the converted policy
    let cases: Vec<(&str, &str, &str, &str, Vec<sec::Rule>)> = vec![
        (
            "",
            "",
            "STRICT",
            "9090: {mode: PERMISSIVE}, 9091: {mode: DISABLE}, 9092: {mode: STRICT}",
            vec![sec::Rule {
                clauses: vec![clause(no_principal()), exempt(9090), exempt(9091)],
            }],
        ),
        (
            "STRICT",
            "",
            "STRICT",
            "9090: {mode: PERMISSIVE}",
            vec![sec::Rule {
                clauses: vec![clause(no_principal()), exempt(9090), clause(no_principal())],
            }],
        ),
        (
            "",
            "",
            "PERMISSIVE",
            "9090: {mode: STRICT}, 9091: {mode: PERMISSIVE}",
            vec![strict_port(9090)],
        ),
        (
            "",
            "PERMISSIVE",
            "",
            "9090: {mode: STRICT}",
            vec![strict_port(9090)],
        ),
        (
            "",
            "STRICT",
            "",
            "9090: {mode: PERMISSIVE}, 9091: {mode: STRICT}",
            vec![sec::Rule {
                clauses: vec![exempt(9090), clause(no_principal())],
            }],
        ),
        // Project deviations (see the peer_authn module doc): istiod emits nothing for these.
        (
            "STRICT",
            "",
            "DISABLE",
            "9090: {mode: STRICT}",
            vec![strict_port(9090)],
        ),
        (
            "STRICT",
            "UNSET",
            "",
            "9090: {mode: PERMISSIVE}",
            vec![sec::Rule {
                clauses: vec![exempt(9090), clause(no_principal())],
            }],
        ),
    ];
    for (mesh, ns, wl, ports, rules) in cases {
        let mut peers = vec![peer("n", "wl", true, wl, ports, "")];
        if !mesh.is_empty() {
            peers.push(peer("istio-system", "mesh", false, mesh, "", ""));
        }
        if !ns.is_empty() {
            peers.push(peer("n", "ns", false, ns, "", ""));
        }
        let (resources, _) = translate_yaml(&world(&peers));
        let context = format!("mesh {mesh:?} ns {ns:?} workload {wl:?} ports {{{ports}}}");
        let got = authorization(&resources, CONVERTED);
        assert_eq!(got.rules, rules, "{context}");
        assert_eq!(
            (got.scope, got.action),
            (
                sec::Scope::WorkloadSelector as i32,
                sec::Action::Deny as i32
            )
        );
        assert_eq!(
            listed(&resources),
            [CONVERTED],
            "{context}: listed instead of the static one"
        );
    }
    let (resources, _) = translate_yaml(&world(&[peer(
        "n",
        "wl",
        true,
        "STRICT",
        "9090: {mode: STRICT}",
        "",
    )]));
    assert!(
        !resources.authorizations.contains_key(CONVERTED),
        "all ports STRICT: the static one suffices"
    );
    assert_eq!(listed(&resources), [STATIC]);
}

#[test]
fn the_oldest_policy_of_a_level_wins() {
    let cases: Vec<(Vec<String>, bool, &str)> = vec![
        (
            vec![
                peer("n", "a", false, "PERMISSIVE", "", "2024-02-01T00:00:00Z"),
                peer("n", "b", false, "STRICT", "", "2024-01-01T00:00:00Z"),
            ],
            true,
            "older b wins over a",
        ),
        (
            vec![
                peer("n", "a", false, "PERMISSIVE", "", "2024-01-01T00:00:00Z"),
                peer("n", "b", false, "STRICT", "", ""),
            ],
            true,
            "no timestamp counts as oldest",
        ),
        (
            vec![
                peer("n", "a", false, "PERMISSIVE", "", ""),
                peer("n", "b", false, "STRICT", "", ""),
            ],
            false,
            "a tie goes to the smaller name",
        ),
        (
            vec![
                peer("n", "a", true, "STRICT", "", "2024-02-01T00:00:00Z"),
                peer("n", "b", true, "PERMISSIVE", "", "2024-01-01T00:00:00Z"),
            ],
            false,
            "workload level too",
        ),
        (
            vec![peer("istio-system", "sel", true, "STRICT", "", "")],
            false,
            "a root-namespace selector is ignored",
        ),
    ];
    for (peers, strict, context) in cases {
        let (resources, _) = translate_yaml(&world(&peers));
        assert_eq!(
            listed(&resources).contains(&STATIC.to_owned()),
            strict,
            "{context}"
        );
    }
}

/// The mode policy.md §4.2 gives port 9090 (and every other port): workload > namespace >
/// mesh, UNSET inherits, a port entry overrides, nothing = PERMISSIVE.
fn effective_strict(levels: &[&str], port: &str) -> (bool, bool) {
    let mut mode = "PERMISSIVE";
    for level in levels {
        if !level.is_empty() && *level != "UNSET" {
            mode = level;
        }
    }
    let port_mode = if port.is_empty() || port == "UNSET" {
        mode
    } else {
        port
    };
    (mode == "STRICT", port_mode == "STRICT")
}

#[test]
fn every_mode_combination_refuses_plaintext_exactly_where_strict() {
    const MODES: [&str; 5] = ["", "UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
    let mut checked = 0;
    for mesh in MODES {
        for ns in MODES {
            for wl in MODES {
                let port_modes: &[&str] = if wl.is_empty() { &[""] } else { &MODES };
                for port in port_modes {
                    check_combination(mesh, ns, wl, port);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 5 * (1 + 4 * 5));
}

fn check_combination(mesh: &str, ns: &str, wl: &str, port: &str) {
    let mut peers = Vec::new();
    // An absent mode is written as a policy without `mtls`, i.e. UNSET; "" means no policy.
    fn mode(m: &str) -> &str {
        if m == "UNSET" { "" } else { m }
    }
    if !mesh.is_empty() {
        peers.push(peer("istio-system", "mesh", false, mode(mesh), "", ""));
    }
    if !ns.is_empty() {
        peers.push(peer("n", "ns", false, mode(ns), "", ""));
    }
    if !wl.is_empty() {
        let ports = if port.is_empty() {
            String::new()
        } else {
            format!("9090: {{mode: {port}}}")
        };
        peers.push(peer("n", "wl", true, mode(wl), &ports, ""));
    }
    let (resources, _) = translate_yaml(&world(&peers));
    let mut set = PolicySet::new();
    for policy in resources.authorizations.values() {
        set.insert(mesh::policy::Authorization::try_from(policy).unwrap());
    }
    let target = workload(&resources, UID);
    let policies = applicable(&set, "n", &target.authorization_policies);
    let context = format!("mesh {mesh:?} ns {ns:?} workload {wl:?} port 9090 {port:?}");
    assert!(
        policies.unknown.is_empty(),
        "{context}: lists unsent {:?}",
        policies.unknown
    );
    let verdict = |identity: Option<&str>, destination_port| {
        let attrs = ConnectionAttrs {
            source_identity: identity.map(|id| id.parse().unwrap()),
            source_ip: "10.0.0.5".parse().unwrap(),
            destination_ip: "10.0.0.1".parse().unwrap(),
            destination_port,
        };
        evaluate(policies.policies.iter().copied(), &attrs)
            .verdict
            .is_allow()
    };
    let (other_strict, mut port_strict) = effective_strict(&[mesh, ns, wl], port);
    // Kept from istiod (it refuses more): under an inherited STRICT, a DISABLE port of an
    // UNSET workload with no PERMISSIVE port stays STRICT.
    let parent_strict = effective_strict(&[mesh, ns], "").0;
    if matches!(wl, "UNSET") && parent_strict && port == "DISABLE" {
        port_strict = true;
    }
    assert_eq!(
        !verdict(None, 8080),
        other_strict,
        "{context}: plaintext to 8080"
    );
    assert_eq!(
        !verdict(None, 9090),
        port_strict,
        "{context}: plaintext to 9090"
    );
    let mtls = Some("spiffe://cluster.local/ns/m/sa/x");
    assert!(
        verdict(mtls, 8080) && verdict(mtls, 9090),
        "{context}: mTLS always passes"
    );
}
