use super::*;
use crate::policy::fixtures::*;
use crate::policy::model::Match;

fn allow_all(name: &str) -> Authorization {
    policy(name, Action::Allow, vec![rule(vec![])])
}

fn deny_port(name: &str, port: u16) -> Authorization {
    policy(name, Action::Deny, only(ports(&[port])))
}

fn allow_port(name: &str, port: u16) -> Authorization {
    policy(name, Action::Allow, only(ports(&[port])))
}

fn no_allow(names: &[&str]) -> Verdict {
    Verdict::Deny(DenyReason::NoAllowMatched {
        allow_policies: names.iter().map(|n| key(n)).collect(),
    })
}

fn denied_by(name: &str) -> Verdict {
    Verdict::Deny(DenyReason::DeniedBy(key(name)))
}

#[test]
fn enforced_decision() {
    let static_strict = policy("strict", Action::Deny, only(no_principal()));
    // A STRICT workload with port 8080 left PERMISSIVE (policy.md §4.3).
    let strict_but_8080 = policy(
        "strict-but-8080",
        Action::Deny,
        vec![rule(vec![
            clause(vec![no_principal()]),
            clause(vec![Match {
                not_destination_ports: vec![8080],
                ..Match::default()
            }]),
        ])],
    );
    let cases: Vec<(&str, Vec<Authorization>, ConnectionAttrs, Verdict)> = vec![
        ("no policies", vec![], plain(80), Verdict::Allow),
        (
            "deny matches",
            vec![deny_port("d", 80)],
            plain(80),
            denied_by("d"),
        ),
        (
            "deny misses, no allow",
            vec![deny_port("d", 80)],
            plain(81),
            Verdict::Allow,
        ),
        (
            "deny beats allow-all",
            vec![allow_all("a"), deny_port("d", 80)],
            plain(80),
            denied_by("d"),
        ),
        (
            "first matching deny named",
            vec![deny_port("d1", 80), deny_port("d2", 80)],
            plain(80),
            denied_by("d1"),
        ),
        (
            "deny without rules has no effect",
            vec![policy("d", Action::Deny, vec![])],
            plain(80),
            Verdict::Allow,
        ),
        (
            "deny-all",
            vec![
                policy("d", Action::Deny, vec![rule(vec![])]),
                allow_all("a"),
            ],
            plain(80),
            denied_by("d"),
        ),
        (
            "allow matches",
            vec![allow_port("a", 80)],
            plain(80),
            Verdict::Allow,
        ),
        (
            "allow present, none matches",
            vec![allow_port("a", 80)],
            plain(81),
            no_allow(&["a"]),
        ),
        (
            "two allows, none matches",
            vec![allow_port("a", 80), allow_port("b", 82)],
            plain(81),
            no_allow(&["a", "b"]),
        ),
        (
            "one of two allows matches",
            vec![allow_port("a", 80), allow_port("b", 81)],
            plain(81),
            Verdict::Allow,
        ),
        (
            "allow-nothing",
            vec![policy("a", Action::Allow, vec![])],
            mtls(WEB, 80),
            no_allow(&["a"]),
        ),
        (
            "allow-nothing beside allow-all",
            vec![policy("a", Action::Allow, vec![]), allow_all("b")],
            plain(80),
            Verdict::Allow,
        ),
        (
            "STRICT denies plaintext",
            vec![static_strict.clone()],
            plain(80),
            denied_by("strict"),
        ),
        (
            "STRICT allows mTLS",
            vec![static_strict.clone()],
            mtls(WEB, 80),
            Verdict::Allow,
        ),
        (
            "STRICT allows a non-Istio identity",
            vec![static_strict],
            mtls(NON_ISTIO, 80),
            Verdict::Allow,
        ),
        (
            "STRICT but 8080: plaintext to 8080",
            vec![strict_but_8080.clone()],
            plain(8080),
            Verdict::Allow,
        ),
        (
            "STRICT but 8080: plaintext to 80",
            vec![strict_but_8080.clone()],
            plain(80),
            denied_by("strict-but-8080"),
        ),
        (
            "STRICT but 8080: mTLS to 80",
            vec![strict_but_8080],
            mtls(WEB, 80),
            Verdict::Allow,
        ),
    ];
    for (name, policies, attrs, want) in cases {
        let decision = evaluate(&policies, &attrs);
        assert_eq!(decision.verdict, want, "{name}");
        assert_eq!(decision.dry_run, None, "{name}: no dry-run policy");
    }
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let report = |matched_denies: &[&str],
                  matched_allows: &[&str],
                  allow_set: Option<AllowSetOutcome>,
                  no_allow_matched: bool,
                  verdict: Verdict| DryRunReport {
        matched_denies: matched_denies.iter().map(|n| key(n)).collect(),
        matched_allows: matched_allows.iter().map(|n| key(n)).collect(),
        allow_set,
        no_allow_matched,
        verdict,
    };
    let allowed = |name: &str| Some(AllowSetOutcome::Allowed(key(name)));
    let cases: Vec<(
        &str,
        Vec<Authorization>,
        ConnectionAttrs,
        Verdict,
        DryRunReport,
    )> = vec![
        (
            "dry-run deny that would match",
            vec![dry(deny_port("dd", 80))],
            plain(80),
            Verdict::Allow,
            report(&["dd"], &[], None, false, denied_by("dd")),
        ),
        (
            "dry-run deny that would not match",
            vec![dry(deny_port("dd", 80))],
            plain(81),
            Verdict::Allow,
            report(&[], &[], None, false, Verdict::Allow),
        ),
        (
            "dry-run deny beside an enforced deny",
            vec![deny_port("d", 80), dry(deny_port("dd", 80))],
            plain(80),
            denied_by("d"),
            report(&["dd"], &[], None, false, denied_by("d")),
        ),
        (
            "dry-run allow missing, no enforced allow",
            vec![dry(allow_port("da", 80))],
            plain(81),
            Verdict::Allow,
            report(
                &[],
                &[],
                Some(AllowSetOutcome::Denied),
                true,
                no_allow(&["da"]),
            ),
        ),
        (
            "dry-run allow missing, enforced allow matching",
            vec![allow_all("a"), dry(allow_port("da", 80))],
            plain(81),
            Verdict::Allow,
            report(
                &[],
                &[],
                Some(AllowSetOutcome::Denied),
                false,
                Verdict::Allow,
            ),
        ),
        (
            "dry-run allow matching",
            vec![
                dry(allow_port("da1", 80)),
                dry(allow_port("da2", 81)),
                dry(allow_port("da3", 80)),
            ],
            plain(80),
            Verdict::Allow,
            report(&[], &["da1", "da3"], allowed("da1"), false, Verdict::Allow),
        ),
        (
            "dry-run allow matching where the enforced allow misses",
            vec![allow_port("a", 80), dry(allow_port("da", 81))],
            plain(81),
            no_allow(&["a"]),
            report(&[], &["da"], allowed("da"), false, Verdict::Allow),
        ),
        (
            "dry-run allow-nothing is not enforced",
            vec![dry(policy("da", Action::Allow, vec![]))],
            mtls(WEB, 80),
            Verdict::Allow,
            report(
                &[],
                &[],
                Some(AllowSetOutcome::Denied),
                true,
                no_allow(&["da"]),
            ),
        ),
        (
            "dry-run deny and allow together",
            vec![dry(deny_port("dd", 80)), dry(allow_port("da", 80))],
            plain(80),
            Verdict::Allow,
            report(&["dd"], &["da"], allowed("da"), false, denied_by("dd")),
        ),
    ];
    for (name, policies, attrs, want, want_report) in cases {
        let decision = evaluate(&policies, &attrs);
        assert_eq!(decision.verdict, want, "{name}");
        assert_eq!(decision.dry_run, Some(want_report), "{name}");
    }
}

#[test]
fn deny_reason_text() {
    assert_eq!(
        DenyReason::DeniedBy(PolicyKey::new(
            "istio-system",
            "istio_converted_static_strict"
        ))
        .to_string(),
        "explicitly denied by: istio-system/istio_converted_static_strict"
    );
    assert_eq!(
        DenyReason::NoAllowMatched {
            allow_policies: vec![key("a"), key("b")]
        }
        .to_string(),
        "allow policies exist, but none allowed (checked ns/a, ns/b)"
    );
    let many: Vec<PolicyKey> = (0..7).map(|i| key(&format!("p{i}"))).collect();
    assert!(
        DenyReason::NoAllowMatched {
            allow_policies: many
        }
        .to_string()
        .ends_with("ns/p3, ns/p4 and 2 more)")
    );
    assert!(Verdict::Allow.is_allow());
    assert!(!no_allow(&["a"]).is_allow());
}

#[test]
fn dry_run_counts_follow_the_report() {
    let report = DryRunReport {
        matched_denies: vec![key("d1"), key("d2")],
        matched_allows: vec![key("a1")],
        allow_set: Some(AllowSetOutcome::Allowed(key("a1"))),
        no_allow_matched: false,
        verdict: denied_by("d1"),
    };
    let counts: Vec<(&str, &str, String)> = report
        .counts()
        .into_iter()
        .map(|c| (c.action, c.result, c.policy))
        .collect();
    let name = |n: &str| key(n).to_string();
    assert_eq!(
        counts,
        [
            ("deny", "denied", name("d1")),
            ("deny", "denied", name("d2")),
            ("allow", "allowed", name("a1")),
        ]
    );
    assert_eq!(report.verdict.summary(), ("deny", name("d1")));
    let none_allowed = DryRunReport {
        matched_denies: Vec::new(),
        matched_allows: Vec::new(),
        allow_set: Some(AllowSetOutcome::Denied),
        no_allow_matched: true,
        verdict: Verdict::Allow,
    };
    let counts: Vec<_> = none_allowed
        .counts()
        .into_iter()
        .map(|c| (c.action, c.result, c.policy))
        .collect();
    assert_eq!(counts, [("allow", "denied", "none".to_owned())]);
    assert_eq!(none_allowed.verdict.summary(), ("allow", "none".to_owned()));
}
