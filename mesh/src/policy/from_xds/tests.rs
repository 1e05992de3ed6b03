use super::*;
use crate::policy::model::{Clause, Rule};

fn wire_string(kind: MatchType) -> pb::StringMatch {
    pb::StringMatch {
        match_type: Some(kind),
    }
}

fn wire_address(bytes: &[u8], length: u32) -> pb::Address {
    pb::Address {
        address: bytes.to_vec(),
        length,
    }
}

fn wire_policy(matches: Vec<pb::Match>) -> pb::Authorization {
    pb::Authorization {
        name: "allow-web-to-api".to_owned(),
        namespace: "storefront".to_owned(),
        scope: pb::Scope::WorkloadSelector as i32,
        action: pb::Action::Allow as i32,
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause { matches }],
        }],
        dry_run: false,
        extensions: Vec::new(),
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn converts_every_field() {
    let wire_sa = |ns: &str, sa: &str| pb::ServiceAccountMatch {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    };
    let full = pb::Match {
        namespaces: vec![wire_string(MatchType::Exact("default".into()))],
        not_namespaces: vec![wire_string(MatchType::Suffix("-trusted".into()))],
        service_accounts: vec![wire_sa("ops", "robot")],
        not_service_accounts: vec![wire_sa("ops", "intruder")],
        principals: vec![wire_string(MatchType::Prefix("cluster.local/".into()))],
        not_principals: vec![wire_string(MatchType::Presence(()))],
        source_ips: vec![wire_address(&[192, 0, 2, 0], 24)],
        not_source_ips: vec![wire_address(&[10, 0, 0, 1], 32)],
        destination_ips: vec![wire_address(
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8,
        )],
        not_destination_ips: vec![wire_address(&[0; 16], 0)],
        destination_ports: vec![8080, 65535],
        not_destination_ports: vec![0],
        extensions: Vec::new(),
    };
    let mut wire = wire_policy(vec![full, pb::Match::default()]);
    wire.rules.push(pb::Rule::default());
    wire.action = pb::Action::Deny as i32;
    wire.dry_run = true;

    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    };
    let want = Authorization {
        name: "allow-web-to-api".to_owned(),
        namespace: "storefront".to_owned(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![
            Rule {
                clauses: vec![Clause {
                    matches: vec![
                        Match {
                            namespaces: vec![StringMatch::Exact("default".into())],
                            not_namespaces: vec![StringMatch::Suffix("-trusted".into())],
                            service_accounts: vec![sa("ops", "robot")],
                            not_service_accounts: vec![sa("ops", "intruder")],
                            principals: vec![StringMatch::Prefix("cluster.local/".into())],
                            not_principals: vec![StringMatch::Presence],
                            source_ips: vec![net("192.0.2.0/24")],
                            not_source_ips: vec![net("10.0.0.1/32")],
                            destination_ips: vec![net("fd00::/8")],
                            not_destination_ips: vec![net("::/0")],
                            destination_ports: vec![8080, 65535],
                            not_destination_ports: vec![0],
                            ..Match::default()
                        },
                        // An empty match survives conversion; evaluation skips it.
                        Match::default(),
                    ],
                }],
            },
            Rule::default(),
        ],
        dry_run: true,
    };
    assert_eq!(Authorization::try_from(&wire), Ok(want));
}

#[test]
fn converts_scopes_and_actions() {
    for (scope, want) in [
        (pb::Scope::Global, Scope::Global),
        (pb::Scope::Namespace, Scope::Namespace),
        (pb::Scope::WorkloadSelector, Scope::WorkloadSelector),
    ] {
        let mut wire = wire_policy(Vec::new());
        wire.scope = scope as i32;
        assert_eq!(Authorization::try_from(&wire).map(|p| p.scope), Ok(want));
    }
    for (action, want) in [
        (pb::Action::Allow, Action::Allow),
        (pb::Action::Deny, Action::Deny),
    ] {
        let mut wire = wire_policy(Vec::new());
        wire.action = action as i32;
        assert_eq!(Authorization::try_from(&wire).map(|p| p.action), Ok(want));
    }
    // No rules stays no rules (matches nothing); it is not an error.
    let mut wire = wire_policy(Vec::new());
    wire.rules.clear();
    assert_eq!(
        Authorization::try_from(&wire).map(|p| p.rules),
        Ok(Vec::new())
    );
}

#[test]
fn converts_address_edges() {
    let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    for (address, want) in [
        (wire_address(&[127, 0, 0, 2], 32), "127.0.0.2/32"),
        (wire_address(&[10, 1, 2, 3], 0), "10.1.2.3/0"),
        (wire_address(&v6, 128), "2001:db8::1/128"),
        (wire_address(&v6, 32), "2001:db8::1/32"),
    ] {
        let wire = wire_policy(vec![pb::Match {
            source_ips: vec![address],
            ..pb::Match::default()
        }]);
        let got = Authorization::try_from(&wire)
            .map(|p| p.rules[0].clauses[0].matches[0].source_ips.clone());
        assert_eq!(got, Ok(vec![net(want)]), "{want}");
    }
}

#[test]
fn rejects_what_upstream_would_drop() {
    let none = pb::StringMatch { match_type: None };
    let presence = wire_string(MatchType::Presence(()));
    let cases: Vec<(&str, pb::Match, &str, usize, Problem)> = vec![
        (
            "string match without kind",
            pb::Match {
                not_principals: vec![presence.clone(), none.clone()],
                ..pb::Match::default()
            },
            "not_principals",
            1,
            Problem::NoMatchKind,
        ),
        (
            "namespace without kind",
            pb::Match {
                namespaces: vec![none.clone()],
                ..pb::Match::default()
            },
            "namespaces",
            0,
            Problem::NoMatchKind,
        ),
        (
            "not namespace without kind",
            pb::Match {
                not_namespaces: vec![none.clone()],
                ..pb::Match::default()
            },
            "not_namespaces",
            0,
            Problem::NoMatchKind,
        ),
        (
            "principal without kind",
            pb::Match {
                principals: vec![none],
                ..pb::Match::default()
            },
            "principals",
            0,
            Problem::NoMatchKind,
        ),
        (
            "5-byte address",
            pb::Match {
                source_ips: vec![wire_address(&[1, 2, 3, 4, 5], 8)],
                ..pb::Match::default()
            },
            "source_ips",
            0,
            Problem::AddressLength(5),
        ),
        (
            "empty address",
            pb::Match {
                not_source_ips: vec![wire_address(&[], 0)],
                ..pb::Match::default()
            },
            "not_source_ips",
            0,
            Problem::AddressLength(0),
        ),
        (
            "v4 length 33",
            pb::Match {
                destination_ips: vec![wire_address(&[10, 0, 0, 0], 33)],
                ..pb::Match::default()
            },
            "destination_ips",
            0,
            Problem::PrefixLength {
                length: 33,
                max: 32,
            },
        ),
        (
            "v6 length 129",
            pb::Match {
                not_destination_ips: vec![wire_address(&[0; 16], 129)],
                ..pb::Match::default()
            },
            "not_destination_ips",
            0,
            Problem::PrefixLength {
                length: 129,
                max: 128,
            },
        ),
        (
            "length beyond u8",
            pb::Match {
                source_ips: vec![wire_address(&[10, 0, 0, 0], 256 + 8)],
                ..pb::Match::default()
            },
            "source_ips",
            0,
            Problem::PrefixLength {
                length: 264,
                max: 32,
            },
        ),
        (
            "port 65536",
            pb::Match {
                destination_ports: vec![80, 65536],
                ..pb::Match::default()
            },
            "destination_ports",
            1,
            Problem::PortOutOfRange(65536),
        ),
        (
            "not port u32::MAX",
            pb::Match {
                not_destination_ports: vec![u32::MAX],
                ..pb::Match::default()
            },
            "not_destination_ports",
            0,
            Problem::PortOutOfRange(u32::MAX),
        ),
    ];
    for (name, bad, list, index, problem) in cases {
        // The bad match sits at clause 1, match 1 of rule 1, behind valid entries.
        let mut wire = wire_policy(vec![pb::Match::default()]);
        wire.rules.push(pb::Rule {
            clauses: vec![
                pb::Clause {
                    matches: vec![pb::Match::default()],
                },
                pb::Clause {
                    matches: vec![pb::Match::default(), bad],
                },
            ],
        });
        let want = InvalidPolicy {
            policy: PolicyKey::new("storefront", "allow-web-to-api"),
            field: FieldPath::Entry {
                rule: 1,
                clause: 1,
                matched: 1,
                list,
                index,
            },
            problem,
        };
        assert_eq!(Authorization::try_from(&wire), Err(want), "{name}");
    }
}

#[test]
fn rejects_unknown_enums() {
    for (scope, action, field, problem) in [
        (3, 0, FieldPath::Scope, Problem::UnknownScope(3)),
        (-1, 0, FieldPath::Scope, Problem::UnknownScope(-1)),
        (0, 2, FieldPath::Action, Problem::UnknownAction(2)),
        (0, -7, FieldPath::Action, Problem::UnknownAction(-7)),
    ] {
        let mut wire = wire_policy(Vec::new());
        wire.scope = scope;
        wire.action = action;
        let err = Authorization::try_from(&wire).unwrap_err();
        assert_eq!(
            (err.field, err.problem),
            (field, problem),
            "scope {scope} action {action}"
        );
    }
}

#[test]
fn error_text_names_policy_and_entry() {
    let wire = wire_policy(vec![
        pb::Match::default(),
        pb::Match {
            source_ips: vec![wire_address(&[192, 0, 2, 0], 33)],
            ..pb::Match::default()
        },
    ]);
    let err = Authorization::try_from(&wire).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storefront/allow-web-to-api: rules[0].clauses[0].matches[1].source_ips[0]: \
         invalid CIDR length 33 (at most 32)"
    );
    let mut wire = wire_policy(Vec::new());
    wire.scope = 9;
    assert_eq!(
        Authorization::try_from(&wire).unwrap_err().to_string(),
        "storefront/allow-web-to-api: scope: unknown scope 9"
    );
}
