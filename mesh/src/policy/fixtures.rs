//! Builders shared by the policy tests, so each table reads as the case it states.

use ipnet::IpNet;

use crate::identity::SpiffeId;

use super::eval::ConnectionAttrs;
use super::model::{Action, Authorization, Clause, Match, PolicyKey, Rule, Scope, StringMatch};

pub(super) const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
pub(super) const PROD_API: &str = "spiffe://cluster.local/ns/prod/sa/api";
pub(super) const NON_ISTIO: &str = "spiffe://cluster.local/custom/path";

pub(super) fn attrs(identity: Option<&str>, src: &str, dst: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_identity: identity.map(|id| SpiffeId::parse(id).unwrap()),
        source_ip: src.parse().unwrap(),
        destination_ip: dst.parse().unwrap(),
        destination_port: port,
    }
}

/// mTLS from `identity`, 10.0.0.1 → 10.0.0.2:`port`.
pub(super) fn mtls(identity: &str, port: u16) -> ConnectionAttrs {
    attrs(Some(identity), "10.0.0.1", "10.0.0.2", port)
}

/// Plaintext 10.0.0.1 → 10.0.0.2:`port`.
pub(super) fn plain(port: u16) -> ConnectionAttrs {
    attrs(None, "10.0.0.1", "10.0.0.2", port)
}

pub(super) fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

pub(super) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub(super) fn clause(matches: Vec<Match>) -> Clause {
    Clause { matches }
}

pub(super) fn rule(clauses: Vec<Clause>) -> Rule {
    Rule { clauses }
}

/// One rule, one clause, one match.
pub(super) fn only(m: Match) -> Vec<Rule> {
    vec![rule(vec![clause(vec![m])])]
}

pub(super) fn ports(list: &[u16]) -> Match {
    Match {
        destination_ports: list.to_vec(),
        ..Match::default()
    }
}

pub(super) fn no_principal() -> Match {
    Match {
        not_principals: vec![StringMatch::Presence],
        ..Match::default()
    }
}

pub(super) fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.to_owned(),
        namespace: "ns".to_owned(),
        scope: Scope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

pub(super) fn dry(mut policy: Authorization) -> Authorization {
    policy.dry_run = true;
    policy
}

pub(super) fn key(name: &str) -> PolicyKey {
    PolicyKey::new("ns", name)
}
