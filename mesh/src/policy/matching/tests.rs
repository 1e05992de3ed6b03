use super::*;
use crate::policy::fixtures::*;
use crate::policy::model::{Action, ServiceAccountMatch, StringMatch};

fn matches(rules: &[Rule], attrs: &ConnectionAttrs) -> bool {
    let p = policy("p", Action::Allow, rules.to_vec());
    policy_matches(&p, &Facts::of(attrs))
}

#[test]
fn structure() {
    let port_8080_or_empty = vec![clause(vec![Match::default(), ports(&[8080])])];
    let cases: Vec<(&str, Vec<Rule>, ConnectionAttrs, bool)> = vec![
        ("no rules never matches", vec![], mtls(WEB, 80), false),
        (
            "rule without clauses matches all",
            vec![rule(vec![])],
            plain(1),
            true,
        ),
        (
            "clause without matches matches",
            vec![rule(vec![clause(vec![])])],
            plain(1),
            true,
        ),
        (
            "empty match is skipped",
            only(Match::default()),
            plain(1),
            false,
        ),
        (
            "clause of only empty matches never matches",
            vec![rule(vec![clause(vec![Match::default(), Match::default()])])],
            mtls(WEB, 80),
            false,
        ),
        (
            "empty match beside a matching one",
            vec![rule(port_8080_or_empty.clone())],
            plain(8080),
            true,
        ),
        (
            "empty match beside a failing one",
            vec![rule(port_8080_or_empty)],
            plain(9090),
            false,
        ),
        (
            "an empty-match clause sinks the rule",
            vec![rule(vec![
                clause(vec![ports(&[80])]),
                clause(vec![Match::default()]),
            ])],
            plain(80),
            false,
        ),
        (
            "clauses AND: both hold",
            vec![rule(vec![
                clause(vec![ports(&[8080])]),
                clause(vec![Match {
                    principals: vec![exact("cluster.local/ns/default/sa/web")],
                    ..Match::default()
                }]),
            ])],
            mtls(WEB, 8080),
            true,
        ),
        (
            "clauses AND: one fails",
            vec![rule(vec![
                clause(vec![ports(&[8080])]),
                clause(vec![Match {
                    principals: vec![exact("cluster.local/ns/default/sa/web")],
                    ..Match::default()
                }]),
            ])],
            mtls(PROD_API, 8080),
            false,
        ),
        (
            "rules OR",
            vec![
                rule(vec![clause(vec![ports(&[1])])]),
                rule(vec![clause(vec![ports(&[2])])]),
            ],
            plain(2),
            true,
        ),
        (
            "matches OR",
            vec![rule(vec![clause(vec![ports(&[1]), ports(&[2])])])],
            plain(2),
            true,
        ),
        (
            "fields in a match AND",
            only(Match {
                namespaces: vec![exact("default")],
                destination_ports: vec![8080],
                ..Match::default()
            }),
            mtls(WEB, 9090),
            false,
        ),
        (
            "positive list: any element",
            only(ports(&[80, 8080])),
            plain(8080),
            true,
        ),
        (
            "positive list: no element",
            only(ports(&[80, 8080])),
            plain(8081),
            false,
        ),
    ];
    for (name, rules, attrs, want) in cases {
        assert_eq!(matches(&rules, &attrs), want, "{name}");
    }
}

#[test]
fn conditions() {
    let principals = |list: Vec<StringMatch>| Match {
        principals: list,
        ..Match::default()
    };
    let not_principals = |list: Vec<StringMatch>| Match {
        not_principals: list,
        ..Match::default()
    };
    let namespaces = |list: Vec<StringMatch>| Match {
        namespaces: list,
        ..Match::default()
    };
    let not_namespaces = |list: Vec<StringMatch>| Match {
        not_namespaces: list,
        ..Match::default()
    };
    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    };
    let source = |list: &[&str]| Match {
        source_ips: list.iter().map(|s| net(s)).collect(),
        ..Match::default()
    };
    let v4 = |src: &str| attrs(Some(WEB), src, "10.0.0.2", 80);
    let cases: Vec<(&str, Match, ConnectionAttrs, bool)> = vec![
        // Principals: the identity without `spiffe://`.
        (
            "principal exact",
            principals(vec![exact("cluster.local/ns/default/sa/web")]),
            mtls(WEB, 80),
            true,
        ),
        (
            "principal other",
            principals(vec![exact("cluster.local/ns/default/sa/web")]),
            mtls(PROD_API, 80),
            false,
        ),
        (
            "principal written with spiffe://",
            principals(vec![exact(WEB)]),
            mtls(WEB, 80),
            false,
        ),
        (
            "principal prefix",
            principals(vec![StringMatch::Prefix(
                "cluster.local/ns/default/".into(),
            )]),
            mtls(WEB, 80),
            true,
        ),
        (
            "principal suffix",
            principals(vec![StringMatch::Suffix("/sa/api".into())]),
            mtls(PROD_API, 80),
            true,
        ),
        (
            "principal presence, mTLS",
            principals(vec![StringMatch::Presence]),
            mtls(WEB, 80),
            true,
        ),
        (
            "principal presence, plaintext",
            principals(vec![StringMatch::Presence]),
            plain(80),
            false,
        ),
        (
            "principal exact, plaintext",
            principals(vec![exact("")]),
            plain(80),
            false,
        ),
        (
            "not principal presence, plaintext",
            not_principals(vec![StringMatch::Presence]),
            plain(80),
            true,
        ),
        (
            "not principal presence, mTLS",
            not_principals(vec![StringMatch::Presence]),
            mtls(WEB, 80),
            false,
        ),
        (
            "not principal exact, plaintext",
            not_principals(vec![exact("x")]),
            plain(80),
            true,
        ),
        (
            "not principal exact, other id",
            not_principals(vec![exact("cluster.local/ns/default/sa/web")]),
            mtls(PROD_API, 80),
            true,
        ),
        (
            "not principal exact, same id",
            not_principals(vec![exact("cluster.local/ns/default/sa/web")]),
            mtls(WEB, 80),
            false,
        ),
        (
            "non-Istio principal",
            principals(vec![exact("cluster.local/custom/path")]),
            mtls(NON_ISTIO, 80),
            true,
        ),
        // Namespaces: the identity's namespace segment, "" without one.
        (
            "namespace exact",
            namespaces(vec![exact("default")]),
            mtls(WEB, 80),
            true,
        ),
        (
            "namespace other",
            namespaces(vec![exact("default")]),
            mtls(PROD_API, 80),
            false,
        ),
        (
            "namespace prefix",
            namespaces(vec![StringMatch::Prefix("pro".into())]),
            mtls(PROD_API, 80),
            true,
        ),
        (
            "namespace, plaintext",
            namespaces(vec![exact("default")]),
            plain(80),
            false,
        ),
        (
            "namespace presence, plaintext",
            namespaces(vec![StringMatch::Presence]),
            plain(80),
            false,
        ),
        (
            "namespace presence, non-Istio id",
            namespaces(vec![StringMatch::Presence]),
            mtls(NON_ISTIO, 80),
            false,
        ),
        (
            "not namespace, plaintext",
            not_namespaces(vec![exact("default")]),
            plain(80),
            true,
        ),
        (
            "not namespace, same",
            not_namespaces(vec![exact("default")]),
            mtls(WEB, 80),
            false,
        ),
        (
            "namespace in and not in",
            Match {
                namespaces: vec![StringMatch::Prefix("pro".into())],
                not_namespaces: vec![exact("prod")],
                ..Match::default()
            },
            mtls(PROD_API, 80),
            false,
        ),
        // Service accounts: exact namespace and name.
        (
            "service account",
            Match {
                service_accounts: vec![sa("default", "web")],
                ..Match::default()
            },
            mtls(WEB, 80),
            true,
        ),
        (
            "service account, other ns",
            Match {
                service_accounts: vec![sa("prod", "web")],
                ..Match::default()
            },
            mtls(WEB, 80),
            false,
        ),
        (
            "service account, plaintext",
            Match {
                service_accounts: vec![sa("default", "web")],
                ..Match::default()
            },
            plain(80),
            false,
        ),
        (
            "service account, non-Istio id",
            Match {
                service_accounts: vec![sa("custom", "path")],
                ..Match::default()
            },
            mtls(NON_ISTIO, 80),
            false,
        ),
        (
            "not service account, plaintext",
            Match {
                not_service_accounts: vec![sa("default", "web")],
                ..Match::default()
            },
            plain(80),
            true,
        ),
        (
            "not service account, same",
            Match {
                not_service_accounts: vec![sa("default", "web")],
                ..Match::default()
            },
            mtls(WEB, 80),
            false,
        ),
        // Source IPs: CIDR containment; a bare IP is a full-length prefix.
        (
            "v4 CIDR in",
            source(&["10.0.0.0/8"]),
            v4("10.200.3.4"),
            true,
        ),
        (
            "v4 CIDR out",
            source(&["10.0.0.0/8"]),
            v4("11.0.0.1"),
            false,
        ),
        (
            "v4 /32",
            source(&["192.168.1.7/32"]),
            v4("192.168.1.7"),
            true,
        ),
        (
            "v4 /32 neighbour",
            source(&["192.168.1.7/32"]),
            v4("192.168.1.8"),
            false,
        ),
        ("v4 /0", source(&["0.0.0.0/0"]), v4("203.0.113.9"), true),
        (
            "v4-mapped v6 peer in v4 CIDR",
            source(&["10.0.0.0/8"]),
            v4("::ffff:10.1.1.1"),
            true,
        ),
        ("v6 CIDR in", source(&["fd00::/8"]), v4("fd12::1"), true),
        ("v6 CIDR out", source(&["fd00::/8"]), v4("fe80::1"), false),
        ("v4 peer, v6 CIDR", source(&["::/0"]), v4("10.0.0.1"), false),
        (
            "second CIDR",
            source(&["fd00::/8", "10.0.0.0/8"]),
            v4("10.0.0.1"),
            true,
        ),
        (
            "not source in",
            Match {
                not_source_ips: vec![net("10.0.0.0/8")],
                ..Match::default()
            },
            v4("10.0.0.1"),
            false,
        ),
        (
            "not source out",
            Match {
                not_source_ips: vec![net("10.0.0.0/8")],
                ..Match::default()
            },
            v4("172.16.0.1"),
            true,
        ),
        // Destination IPs and ports.
        (
            "destination CIDR",
            Match {
                destination_ips: vec![net("10.0.0.2/32")],
                ..Match::default()
            },
            plain(80),
            true,
        ),
        (
            "destination CIDR out",
            Match {
                destination_ips: vec![net("10.0.1.0/24")],
                ..Match::default()
            },
            plain(80),
            false,
        ),
        (
            "not destination CIDR",
            Match {
                not_destination_ips: vec![net("10.0.0.0/24")],
                ..Match::default()
            },
            plain(80),
            false,
        ),
        ("port", ports(&[80]), plain(80), true),
        (
            "not port, listed",
            Match {
                not_destination_ports: vec![9999],
                ..Match::default()
            },
            plain(9999),
            false,
        ),
        (
            "not port, other",
            Match {
                not_destination_ports: vec![9999],
                ..Match::default()
            },
            plain(80),
            true,
        ),
        (
            "port in and not in",
            Match {
                destination_ports: vec![80, 81],
                not_destination_ports: vec![81],
                ..Match::default()
            },
            plain(81),
            false,
        ),
    ];
    for (name, m, attrs, want) in cases {
        assert_eq!(matches(&only(m), &attrs), want, "{name}");
    }
}
