//! AuthorizationPolicy → Authorization (xds.md §5.2–5.4, policy.md §2.4–2.5).

use xds_proto::istio::security as sec;
use xds_proto::istio::security::string_match::MatchType;

use super::super::NoteKind;
use super::{authorization, translate_yaml};
use crate::k8s::AuthorizationAction;

/// An AuthorizationPolicy `namespace/p` with `spec` (indented YAML).
fn policy(namespace: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: {namespace}, annotations: {{{annotations}}}}}\nspec:\n{spec}"
    )
}

fn translate_policy(spec: &str) -> (sec::Authorization, Vec<NoteKind>) {
    let (resources, notes) = translate_yaml(&policy("n", "", spec));
    let converted = authorization(&resources, "n/p").clone();
    (converted, notes.into_iter().map(|n| n.kind).collect())
}

fn exact(s: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(MatchType::Exact(s.to_owned())),
    }
}

fn addr(bytes: &[u8], length: u32) -> sec::Address {
    sec::Address {
        address: bytes.to_vec(),
        length,
    }
}

fn clause(matches: Vec<sec::Match>) -> sec::Clause {
    sec::Clause { matches }
}

#[test]
fn scope_action_name_and_dry_run() {
    let cases: &[(&str, &str, &str, sec::Scope, sec::Action, bool)] = &[
        (
            "istio-system",
            "",
            "  action: DENY\n  rules: [{}]\n",
            sec::Scope::Global,
            sec::Action::Deny,
            false,
        ),
        (
            "n",
            "",
            "  rules: [{}]\n",
            sec::Scope::Namespace,
            sec::Action::Allow,
            false,
        ),
        (
            "n",
            "",
            "  selector: {matchLabels: {a: b}}\n",
            sec::Scope::WorkloadSelector,
            sec::Action::Allow,
            false,
        ),
        (
            "istio-system",
            "",
            "  selector: {matchLabels: {a: b}}\n",
            sec::Scope::WorkloadSelector,
            sec::Action::Allow,
            false,
        ),
        (
            "n",
            "istio.io/dry-run: 'true'",
            "  rules: [{}]\n",
            sec::Scope::Namespace,
            sec::Action::Allow,
            true,
        ),
        (
            "n",
            "istio.io/dry-run: maybe",
            "  rules: [{}]\n",
            sec::Scope::Namespace,
            sec::Action::Allow,
            false,
        ),
    ];
    for (namespace, annotations, spec, scope, action, dry_run) in cases {
        let (resources, _) = translate_yaml(&policy(namespace, annotations, spec));
        let got = authorization(&resources, &format!("{namespace}/p"));
        let context = format!("{namespace} {{{annotations}}}\n{spec}");
        assert_eq!(
            (got.name.as_str(), got.namespace.as_str()),
            ("p", *namespace),
            "{context}"
        );
        assert_eq!(got.scope, *scope as i32, "{context}");
        assert_eq!(got.action, *action as i32, "{context}");
        assert_eq!(got.dry_run, *dry_run, "{context}");
    }
}

#[test]
fn policies_ztunnel_does_not_get() {
    let cases: &[(&str, NoteKind)] = &[
        (
            "  targetRefs: [{kind: Service, name: api}]\n",
            NoteKind::WaypointOnly,
        ),
        (
            "  action: AUDIT\n  rules: [{}]\n",
            NoteKind::UnsupportedAction(AuthorizationAction::Audit),
        ),
        (
            "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n",
            NoteKind::UnsupportedAction(AuthorizationAction::Custom),
        ),
    ];
    for (spec, note) in cases {
        let (resources, notes) = translate_yaml(&policy("n", "", spec));
        assert!(resources.authorizations.is_empty(), "{spec}");
        let kinds: Vec<NoteKind> = notes.into_iter().map(|n| n.kind).collect();
        assert_eq!(kinds, std::slice::from_ref(note), "{spec}");
    }
}

#[test]
fn rules_become_to_from_and_when_clauses() {
    let (got, notes) = translate_policy(
        "  rules:\n  - from:\n    - source: {principals: [\"*\"], notNamespaces: [\"x*\"], ipBlocks: [10.0.0.0/8]}\n\
         \x20   - source: {serviceAccounts: [api, other/db], notIpBlocks: [\"fd00::1\"]}\n\
         \x20   to:\n    - operation: {ports: [\"80\"]}\n    - operation: {notPorts: [\"9090\", \"9091\"]}\n\
         \x20   when:\n    - {key: source.ip, values: [10.1.0.0/16], notValues: [10.1.2.3]}\n\
         \x20   - {key: source.namespace, notValues: [\"*-dev\"]}\n\
         \x20   - {key: source.principal, values: [cluster.local/ns/a/sa/b]}\n\
         \x20   - {key: destination.ip, values: [10.2.0.1]}\n\
         \x20   - {key: destination.port, values: [\"8080\"], notValues: [\"8081\"]}\n\
         \x20 - {}\n",
    );
    assert!(notes.is_empty(), "{notes:?}");
    let presence = sec::StringMatch {
        match_type: Some(MatchType::Presence(())),
    };
    let prefix = sec::StringMatch {
        match_type: Some(MatchType::Prefix("x".to_owned())),
    };
    let suffix = sec::StringMatch {
        match_type: Some(MatchType::Suffix("-dev".to_owned())),
    };
    let account = |namespace: &str, name: &str| sec::ServiceAccountMatch {
        namespace: namespace.to_owned(),
        service_account: name.to_owned(),
    };
    let v6: Vec<u8> = "fd00::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    let want = vec![
        sec::Rule {
            clauses: vec![
                clause(vec![
                    sec::Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    },
                    sec::Match {
                        not_destination_ports: vec![9090, 9091],
                        ..Default::default()
                    },
                ]),
                clause(vec![
                    sec::Match {
                        principals: vec![presence],
                        not_namespaces: vec![prefix],
                        source_ips: vec![addr(&[10, 0, 0, 0], 8)],
                        ..Default::default()
                    },
                    sec::Match {
                        service_accounts: vec![account("n", "api"), account("other", "db")],
                        not_source_ips: vec![addr(&v6, 128)],
                        ..Default::default()
                    },
                ]),
                clause(vec![sec::Match {
                    source_ips: vec![addr(&[10, 1, 0, 0], 16)],
                    not_source_ips: vec![addr(&[10, 1, 2, 3], 32)],
                    ..Default::default()
                }]),
                clause(vec![sec::Match {
                    not_namespaces: vec![suffix],
                    ..Default::default()
                }]),
                clause(vec![sec::Match {
                    principals: vec![exact("cluster.local/ns/a/sa/b")],
                    ..Default::default()
                }]),
                clause(vec![sec::Match {
                    destination_ips: vec![addr(&[10, 2, 0, 1], 32)],
                    ..Default::default()
                }]),
                clause(vec![sec::Match {
                    destination_ports: vec![8080],
                    not_destination_ports: vec![8081],
                    ..Default::default()
                }]),
            ],
        },
        // `{}` matches everything: a rule with no clauses.
        sec::Rule::default(),
    ];
    assert_eq!(got.rules, want);
}

#[test]
fn string_values_become_exact_prefix_suffix_or_presence() {
    let cases: &[(&str, MatchType)] = &[
        ("abc", MatchType::Exact("abc".to_owned())),
        ("abc*", MatchType::Prefix("abc".to_owned())),
        ("*abc", MatchType::Suffix("abc".to_owned())),
        ("*", MatchType::Presence(())),
        ("a*b", MatchType::Exact("a*b".to_owned())),
        ("*a*", MatchType::Suffix("a*".to_owned())),
    ];
    for (value, want) in cases {
        let got = super::super::authz::string_match(value);
        assert_eq!(got.match_type.as_ref(), Some(want), "{value}");
    }
}

#[test]
fn no_rules_matches_nothing() {
    let (got, _) = translate_policy("  selector: {matchLabels: {a: b}}\n");
    assert!(got.rules.is_empty());
}

#[test]
fn allow_rules_with_http_fields_are_dropped_whole() {
    let (got, notes) = translate_policy(
        "  rules:\n  - from:\n    - source: {principals: [a]}\n    to:\n    - operation: {methods: [GET]}\n\
         \x20 - from:\n    - source: {principals: [b]}\n\
         \x20 - from:\n    - source: {principals: [c], trustDomains: [td]}\n\
         \x20 - when:\n    - {key: \"request.headers[x]\", values: [y]}\n\
         \x20 - from:\n    - source: {remoteIpBlocks: [10.0.0.1]}\n",
    );
    let want = vec![sec::Rule {
        clauses: vec![clause(vec![sec::Match {
            principals: vec![exact("b")],
            ..Default::default()
        }])],
    }];
    assert_eq!(got.rules, want, "only the L4-only rule is left");
    assert_eq!(
        notes,
        [NoteKind::AllowRulesDropped {
            rules: vec![0, 2, 3, 4],
            found: [
                "methods",
                "trustDomains",
                "request.headers[x]",
                "remoteIpBlocks"
            ]
            .map(str::to_owned)
            .to_vec(),
        }]
    );
    let (all_l7, _) = translate_policy("  rules:\n  - to:\n    - operation: {paths: [/a]}\n");
    assert!(
        all_l7.rules.is_empty(),
        "a policy whose rules are all L7 matches nothing"
    );
}

#[test]
fn deny_rules_keep_only_their_l4_parts() {
    let (got, notes) = translate_policy(
        "  action: DENY\n  rules:\n\
         \x20 - from:\n    - source: {principals: [a], notRequestPrincipals: [\"*\"], notTrustDomains: [x]}\n\
         \x20 - to:\n    - operation: {ports: [\"8080\"], methods: [POST]}\n",
    );
    let want = vec![
        sec::Rule {
            clauses: vec![clause(vec![sec::Match {
                principals: vec![exact("a")],
                ..Default::default()
            }])],
        },
        sec::Rule {
            clauses: vec![clause(vec![sec::Match {
                destination_ports: vec![8080],
                ..Default::default()
            }])],
        },
    ];
    assert_eq!(got.rules, want, "broader: all of a, all of 8080");
    assert_eq!(
        notes,
        [NoteKind::DenyFieldsRemoved {
            found: ["notRequestPrincipals", "notTrustDomains", "methods"]
                .map(str::to_owned)
                .to_vec(),
            no_effect: false,
        }]
    );
}

#[test]
fn deny_rules_left_with_an_empty_match_never_fire() {
    let (got, notes) = translate_policy(
        "  action: DENY\n  rules:\n\
         \x20 - from:\n    - source: {principals: [cluster.local/ns/n/sa/a]}\n    to:\n    - operation: {methods: [POST]}\n\
         \x20 - when:\n    - {key: \"request.headers[x]\", values: [y]}\n",
    );
    let empty = sec::Match::default();
    let want = vec![
        sec::Rule {
            clauses: vec![
                clause(vec![empty.clone()]),
                clause(vec![sec::Match {
                    principals: vec![exact("cluster.local/ns/n/sa/a")],
                    ..Default::default()
                }]),
            ],
        },
        sec::Rule {
            clauses: vec![clause(vec![empty])],
        },
    ];
    assert_eq!(got.rules, want);
    assert_eq!(
        notes,
        [NoteKind::DenyFieldsRemoved {
            found: ["methods", "request.headers[x]"]
                .map(str::to_owned)
                .to_vec(),
            no_effect: true,
        }]
    );
    // And the engine agrees: such a DENY matches nothing.
    let model = mesh::policy::Authorization::try_from(&got).unwrap();
    let attrs = mesh::policy::ConnectionAttrs {
        source_identity: Some("spiffe://cluster.local/ns/n/sa/a".parse().unwrap()),
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
    };
    assert!(mesh::policy::evaluate([&model], &attrs).verdict.is_allow());
}
