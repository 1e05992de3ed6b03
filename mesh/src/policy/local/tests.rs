use super::*;
use crate::policy::model::{Clause, Rule};

/// The part of the local configuration file this module owns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policies: Vec<LocalPolicy>,
}

/// Parses and converts; any error as text.
fn parse(yaml: &str) -> Result<Vec<Authorization>, String> {
    let file: File = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    file.policies
        .into_iter()
        .map(|p| Authorization::try_from(p).map_err(|e| e.to_string()))
        .collect()
}

/// Parses a policy whose only content is one match, given as YAML flow mapping text.
fn parse_match(fields: &str) -> Result<Match, String> {
    let yaml = format!(
        "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{{{fields}}}]]]\n"
    );
    let mut policies = parse(&yaml)?;
    let policy = policies.pop().ok_or("no policy")?;
    let mut rules = policy.rules;
    let mut clauses = rules.pop().ok_or("no rule")?.clauses;
    let mut matches = clauses.pop().ok_or("no clause")?.matches;
    assert_eq!(matches.len(), 1, "{fields}");
    matches.pop().ok_or_else(|| "no match".to_owned())
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn parses_the_documented_example() {
    let yaml = r#"
policies:
  - name: deny-9999
    namespace: default
    scope: Namespace
    action: Allow
    dryRun: false
    rules:
    - - - notDestinationPorts: [9999]
    - - - principals: ["cluster.local/ns/default/sa/web"]
          namespaces: ["default", "prod-*"]
          sourceIps: ["10.0.0.0/8", "127.0.0.2"]
          serviceAccounts: [{namespace: default, serviceAccount: web}]
  - name: strict
    namespace: istio-system
    scope: WorkloadSelector
    action: Deny
    dryRun: true
    rules: [[[{notPrincipals: ["*"]}], [{notDestinationPorts: [8080]}]]]
"#;
    let want = vec![
        Authorization {
            name: "deny-9999".into(),
            namespace: "default".into(),
            scope: Scope::Namespace,
            action: Action::Allow,
            rules: vec![
                Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            not_destination_ports: vec![9999],
                            ..Match::default()
                        }],
                    }],
                },
                Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            principals: vec![exact("cluster.local/ns/default/sa/web")],
                            namespaces: vec![exact("default"), StringMatch::Prefix("prod-".into())],
                            source_ips: vec![net("10.0.0.0/8"), net("127.0.0.2/32")],
                            service_accounts: vec![ServiceAccountMatch {
                                namespace: "default".into(),
                                service_account: "web".into(),
                            }],
                            ..Match::default()
                        }],
                    }],
                },
            ],
            dry_run: false,
        },
        Authorization {
            name: "strict".into(),
            namespace: "istio-system".into(),
            scope: Scope::WorkloadSelector,
            action: Action::Deny,
            rules: vec![Rule {
                clauses: vec![
                    Clause {
                        matches: vec![Match {
                            not_principals: vec![StringMatch::Presence],
                            ..Match::default()
                        }],
                    },
                    Clause {
                        matches: vec![Match {
                            not_destination_ports: vec![8080],
                            ..Match::default()
                        }],
                    },
                ],
            }],
            dry_run: true,
        },
    ];
    assert_eq!(parse(yaml), Ok(want));
}

#[test]
fn rule_shapes() {
    let base = "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: ";
    let cases: [(&str, Vec<Rule>); 4] = [
        ("[]", vec![]),
        // One rule without clauses: the allow-all / deny-all shape.
        ("[[]]", vec![Rule::default()]),
        (
            "[[[]]]",
            vec![Rule {
                clauses: vec![Clause::default()],
            }],
        ),
        (
            "[[[{}]]]",
            vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match::default()],
                }],
            }],
        ),
    ];
    for (rules, want) in cases {
        let got = parse(&format!("{base}{rules}}}\n")).map(|mut p| p.remove(0).rules);
        assert_eq!(got, Ok(want), "rules: {rules}");
    }
}

#[test]
fn string_match_forms() {
    let cases: [(&str, StringMatch); 13] = [
        ("'*'", StringMatch::Presence),
        ("web", exact("web")),
        ("'prod-*'", StringMatch::Prefix("prod-".into())),
        ("'*-trusted'", StringMatch::Suffix("-trusted".into())),
        // Only a leading or trailing `*` is a wildcard.
        ("'a*b'", exact("a*b")),
        ("'*a*'", StringMatch::Suffix("a*".into())),
        ("'**'", StringMatch::Suffix("*".into())),
        ("{exact: '*'}", exact("*")),
        ("{prefix: pro}", StringMatch::Prefix("pro".into())),
        ("{suffix: od}", StringMatch::Suffix("od".into())),
        ("{presence: {}}", StringMatch::Presence),
        ("{presence: []}", StringMatch::Presence),
        ("{presence: null}", StringMatch::Presence),
    ];
    for (written, want) in cases {
        for list in ["namespaces", "notNamespaces", "principals", "notPrincipals"] {
            let got = parse_match(&format!("{list}: [{written}]"));
            let got = got.map(|m| match list {
                "namespaces" => m.namespaces,
                "notNamespaces" => m.not_namespaces,
                "principals" => m.principals,
                _ => m.not_principals,
            });
            assert_eq!(got, Ok(vec![want.clone()]), "{list}: [{written}]");
        }
    }
}

#[test]
fn ip_and_port_forms() {
    let got = parse_match(
        "sourceIps: ['10.1.2.3', '10.0.0.0/8'], notSourceIps: ['fd00::1', 'fd00::/8'], \
         destinationIps: ['::ffff:0:0/96', '0.0.0.0/0'], notDestinationIps: ['2001:db8::/32'], \
         destinationPorts: [0, 80, 65535], notDestinationPorts: [9999]",
    );
    let want = Match {
        source_ips: vec![net("10.1.2.3/32"), net("10.0.0.0/8")],
        not_source_ips: vec![net("fd00::1/128"), net("fd00::/8")],
        destination_ips: vec![net("::ffff:0:0/96"), net("0.0.0.0/0")],
        not_destination_ips: vec![net("2001:db8::/32")],
        destination_ports: vec![0, 80, 65535],
        not_destination_ports: vec![9999],
        ..Match::default()
    };
    assert_eq!(got, Ok(want));
    let got = parse_match("notServiceAccounts: [{namespace: ops, serviceAccount: robot}]");
    assert_eq!(
        got.map(|m| m.not_service_accounts),
        Ok(vec![ServiceAccountMatch {
            namespace: "ops".into(),
            service_account: "robot".into(),
        }])
    );
}

#[test]
fn rejects_mistakes() {
    let policy = |body: &str| format!("policies:\n- {{{body}}}\n");
    let head = "name: p, namespace: ns, scope: Global, action: Allow";
    let with_match = |m: &str| policy(&format!("{head}, rules: [[[{{{m}}}]]]"));
    // (case, YAML, text the error must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown policy field",
            policy(&format!("{head}, rules: [], dryrun: true")),
            "unknown field `dryrun`",
        ),
        (
            "unknown match field",
            with_match("notPrincipal: ['*']"),
            "unknown field `notPrincipal`",
        ),
        (
            "snake_case match field",
            with_match("source_ips: ['10.0.0.1']"),
            "unknown field `source_ips`",
        ),
        (
            "missing action",
            policy("name: p, namespace: ns, scope: Global, rules: []"),
            "missing field `action`",
        ),
        (
            "missing rules",
            policy("name: p, namespace: ns, scope: Global, action: Deny"),
            "missing field `rules`",
        ),
        (
            "missing scope",
            policy("name: p, namespace: ns, action: Deny, rules: []"),
            "missing field `scope`",
        ),
        (
            "lower-case scope",
            policy("name: p, namespace: ns, scope: global, action: Allow, rules: []"),
            "unknown variant `global`",
        ),
        (
            "proto-style action",
            policy("name: p, namespace: ns, scope: Global, action: DENY, rules: []"),
            "unknown variant `DENY`",
        ),
        (
            "unknown string match kind",
            with_match("principals: [{regex: '.*'}]"),
            "unknown variant `regex`",
        ),
        (
            "two string match kinds",
            with_match("principals: [{exact: a, prefix: b}]"),
            "exactly one of",
        ),
        (
            "empty string match map",
            with_match("principals: [{}]"),
            "string match map is empty",
        ),
        (
            "presence with a value",
            with_match("principals: [{presence: {x: 1}}]"),
            "presence takes no value",
        ),
        (
            "presence with a list",
            with_match("principals: [{presence: [a]}]"),
            "presence takes no value",
        ),
        (
            "presence with a string",
            with_match("principals: [{presence: yes}]"),
            "an empty value",
        ),
        (
            "number as string match",
            with_match("namespaces: [7]"),
            "invalid type",
        ),
        (
            "bad IP",
            with_match("sourceIps: ['10.0.0.256']"),
            "\"10.0.0.256\" is not an IP address or CIDR",
        ),
        (
            "bad CIDR",
            with_match("destinationIps: ['10.0.0.0/33']"),
            "is not an IP address or CIDR",
        ),
        (
            "hostname as IP",
            with_match("notSourceIps: ['example.com']"),
            "is not an IP address or CIDR",
        ),
        (
            "port too large",
            with_match("destinationPorts: [70000]"),
            "70000",
        ),
        (
            "negative port",
            with_match("notDestinationPorts: [-1]"),
            "-1",
        ),
        (
            "service account typo",
            with_match("serviceAccounts: [{namespace: a, serviceaccount: b}]"),
            "unknown field `serviceaccount`",
        ),
        (
            "match not a map",
            policy(&format!("{head}, rules: [[['*']]]")),
            "invalid type",
        ),
        // Checks made in the conversion name the policy and the entry.
        (
            "empty glob",
            with_match("namespaces: [a, '']"),
            "ns/p: rules[0].clauses[0].matches[0].namespaces[1]: empty value",
        ),
        (
            "empty exact",
            with_match("notPrincipals: [{exact: ''}]"),
            "ns/p: rules[0].clauses[0].matches[0].notPrincipals[0]: empty value",
        ),
        (
            "empty prefix",
            with_match("principals: [{prefix: ''}]"),
            "principals[0]: empty value",
        ),
        (
            "empty suffix",
            with_match("notNamespaces: [{suffix: ''}]"),
            "notNamespaces[0]: empty value",
        ),
        (
            "empty service account",
            with_match("notServiceAccounts: [{namespace: a, serviceAccount: ''}]"),
            "notServiceAccounts[0]: empty value",
        ),
        (
            "empty name",
            policy("name: '', namespace: ns, scope: Global, action: Allow, rules: []"),
            "ns/: name: empty value",
        ),
        (
            "empty namespace",
            policy("name: p, namespace: '', scope: Global, action: Allow, rules: []"),
            "/p: namespace: empty value",
        ),
        (
            "slash in name",
            policy("name: a/b, namespace: ns, scope: Global, action: Allow, rules: []"),
            "name: \"a/b\" contains '/'",
        ),
    ];
    for (name, yaml, want) in cases {
        match parse(&yaml) {
            Ok(policies) => panic!("{name}: accepted as {policies:?}"),
            Err(err) => assert!(err.contains(want), "{name}: {err:?} lacks {want:?}"),
        }
    }
}

#[test]
fn later_entries_are_located() {
    let yaml = "policies:\n- {name: p, namespace: ns, scope: Global, action: Deny, rules: \
                [[[{}], [{destinationPorts: [1]}, {principals: [ok, {suffix: ''}]}]]]}\n";
    assert_eq!(
        parse(yaml),
        Err("ns/p: rules[0].clauses[1].matches[1].principals[1]: empty value".to_owned())
    );
}
