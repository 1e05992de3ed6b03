//! AuthorizationPolicy and RequestAuthentication with `targetRefs` → the waypoint's own
//! resources (`mesh.waypoint.v1`, docs/waypoint.md). Unlike the ztunnel conversion nothing is
//! dropped for being HTTP: the waypoint evaluates every field. What the waypoint cannot do is
//! named in a [`Note`], and handled on the side that never widens access: a CUSTOM policy is
//! sent as DENY (its provider is not reachable, so matching requests fail closed).

use std::collections::BTreeMap;

use xds_proto::istio::security as l4;
use xds_proto::mesh::waypoint::v1 as pb;

use super::authz::{
    addresses, condition_match, operation_match, source_match, string_match, string_matches,
};
use super::{Note, NoteKind};
use crate::k8s::{
    AuthorizationAction, AuthorizationPolicy, Cluster, Condition, Kind, Operation,
    RequestAuthentication, Rule, Source, TargetRef,
};

/// The waypoint resources of a cluster, by `<namespace>/<name>`.
#[derive(Debug, Default)]
pub(super) struct WaypointPolicies {
    pub(super) authorizations: BTreeMap<String, pb::L7Authorization>,
    pub(super) authentications: BTreeMap<String, pb::JwtAuthentication>,
}

pub(super) fn convert_all(
    cluster: &Cluster,
    root_namespace: &str,
    notes: &mut Vec<Note>,
) -> WaypointPolicies {
    let mut out = WaypointPolicies::default();
    for policy in cluster.authorization_policies() {
        if policy.target_refs.is_empty() {
            continue;
        }
        let object = policy.meta.object_ref(Kind::AuthorizationPolicy);
        let mut note = |kind| {
            notes.push(Note {
                object: object.clone(),
                kind,
            });
        };
        if let Some(resource) = authorization(policy, root_namespace, &mut note) {
            out.authorizations.insert(
                format!("{}/{}", resource.namespace, resource.name),
                resource,
            );
        }
    }
    for authn in cluster.request_authentications() {
        if authn.target_refs.is_empty() {
            continue;
        }
        let object = authn.meta.object_ref(Kind::RequestAuthentication);
        let mut note = |kind| {
            notes.push(Note {
                object: object.clone(),
                kind,
            });
        };
        if let Some(resource) = authentication(authn, root_namespace, &mut note) {
            out.authentications.insert(
                format!("{}/{}", resource.namespace, resource.name),
                resource,
            );
        }
    }
    out
}

fn targets(
    refs: &[TargetRef],
    namespace: &str,
    root_namespace: &str,
    note: &mut impl FnMut(NoteKind),
) -> Vec<pb::PolicyTarget> {
    use pb::policy_target::Kind as K;
    let mut out = Vec::new();
    for target in refs {
        let kind = match (target.group.as_str(), target.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => K::Gateway,
            ("" | "core", "Service") => K::Service,
            ("gateway.networking.k8s.io", "GatewayClass") if namespace == root_namespace => {
                K::GatewayClass
            }
            _ => {
                note(NoteKind::UnsupportedTarget(format!(
                    "{}/{} {}",
                    target.group, target.kind, target.name
                )));
                continue;
            }
        };
        out.push(pb::PolicyTarget {
            kind: kind.into(),
            name: target.name.clone(),
        });
    }
    out
}

fn authorization(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
    note: &mut impl FnMut(NoteKind),
) -> Option<pb::L7Authorization> {
    let namespace = policy.meta.namespace.as_str();
    let action = match policy.action {
        AuthorizationAction::Allow => l4::Action::Allow,
        AuthorizationAction::Deny => l4::Action::Deny,
        AuthorizationAction::Custom => {
            note(NoteKind::CustomFailsClosed);
            l4::Action::Deny
        }
        // Never changes a verdict, and the waypoint has no audit sink.
        AuthorizationAction::Audit => return None,
    };
    let targets = targets(&policy.target_refs, namespace, root_namespace, note);
    if targets.is_empty() {
        return None;
    }
    Some(pb::L7Authorization {
        name: policy.meta.name.clone(),
        namespace: namespace.to_owned(),
        targets,
        action: action.into(),
        rules: policy
            .rules
            .iter()
            .map(|rule| l7_rule(rule, namespace))
            .collect(),
        dry_run: policy.dry_run,
    })
}

/// The same clause layout as the ztunnel conversion: `to`, then `from`, then one per `when`.
fn l7_rule(rule: &Rule, namespace: &str) -> pb::L7Rule {
    let mut clauses = Vec::new();
    if !rule.to.is_empty() {
        let matches = rule.to.iter().map(to_match).collect();
        clauses.push(pb::L7Clause { matches });
    }
    if !rule.from.is_empty() {
        let matches = rule.from.iter().map(|s| from_match(s, namespace)).collect();
        clauses.push(pb::L7Clause { matches });
        // Trust domains are a prefix of the principal; kept in a clause of their own so they
        // AND with `principals` rather than widening it.
        let domains: Vec<&Source> = rule
            .from
            .iter()
            .filter(|s| !s.trust_domains.is_empty() || !s.not_trust_domains.is_empty())
            .collect();
        if !domains.is_empty() {
            let matches = domains.iter().map(|s| trust_domain_match(s)).collect();
            clauses.push(pb::L7Clause { matches });
        }
    }
    for condition in &rule.when {
        clauses.push(when_clause(condition, namespace));
    }
    pb::L7Rule { clauses }
}

fn to_match(operation: &Operation) -> pb::L7Match {
    let lower = |v: &[String]| -> Vec<l4::StringMatch> {
        v.iter()
            .map(|h| string_match(&h.to_ascii_lowercase()))
            .collect()
    };
    pb::L7Match {
        connection: Some(operation_match(operation)),
        methods: string_matches(&operation.methods),
        not_methods: string_matches(&operation.not_methods),
        paths: path_matches(&operation.paths),
        not_paths: path_matches(&operation.not_paths),
        hosts: lower(&operation.hosts),
        not_hosts: lower(&operation.not_hosts),
        ..pb::L7Match::default()
    }
}

/// A path with a `{...}` operator is a template (validated when the policy was read); any
/// other is an ordinary string match with Istio's `*` rules.
fn path_matches(paths: &[String]) -> Vec<pb::PathMatch> {
    paths
        .iter()
        .map(|path| pb::PathMatch {
            kind: Some(if path.contains('{') {
                pb::path_match::Kind::Template(path.clone())
            } else {
                pb::path_match::Kind::String(string_match(path))
            }),
        })
        .collect()
}

fn from_match(source: &Source, namespace: &str) -> pb::L7Match {
    pb::L7Match {
        connection: Some(source_match(source, namespace)),
        request_principals: string_matches(&source.request_principals),
        not_request_principals: string_matches(&source.not_request_principals),
        remote_ips: addresses(&source.remote_ip_blocks),
        not_remote_ips: addresses(&source.not_remote_ip_blocks),
        ..pb::L7Match::default()
    }
}

fn domain_prefixes(domains: &[String]) -> Vec<l4::StringMatch> {
    domains
        .iter()
        .map(|d| {
            if d == "*" {
                string_match("*")
            } else {
                string_match(&format!("{d}/*"))
            }
        })
        .collect()
}

fn trust_domain_match(source: &Source) -> pb::L7Match {
    pb::L7Match {
        connection: Some(l4::Match {
            principals: domain_prefixes(&source.trust_domains),
            not_principals: domain_prefixes(&source.not_trust_domains),
            ..l4::Match::default()
        }),
        ..pb::L7Match::default()
    }
}

/// One `when` condition as a clause. A key the waypoint cannot see (`connection.sni` — HBONE
/// carries no SNI — and Envoy filter metadata) never matches its `values`; with only
/// `notValues` it always holds.
fn when_clause(condition: &Condition, namespace: &str) -> pb::L7Clause {
    let Condition::Http { key, values } = condition else {
        let connection = Some(condition_match(condition));
        return pb::L7Clause {
            matches: vec![pb::L7Match {
                connection,
                ..pb::L7Match::default()
            }],
        };
    };
    let (yes, no) = (&values.values, &values.not_values);
    let single = |m: pb::L7Match| pb::L7Clause { matches: vec![m] };
    if let Some(name) = bracketed(key, "request.headers") {
        let header = |v: &[String]| -> Vec<pb::HeaderMatch> {
            v.iter()
                .map(|value| pb::HeaderMatch {
                    name: name.join("").to_ascii_lowercase(),
                    value: Some(string_match(value)),
                })
                .collect()
        };
        return single(pb::L7Match {
            headers: header(yes),
            not_headers: header(no),
            ..pb::L7Match::default()
        });
    }
    if let Some(path) = bracketed(key, "request.auth.claims") {
        let claim = |v: &[String]| -> Vec<pb::ClaimMatch> {
            v.iter()
                .map(|value| pb::ClaimMatch {
                    path: path.clone(),
                    value: Some(string_match(value)),
                })
                .collect()
        };
        return single(pb::L7Match {
            claims: claim(yes),
            not_claims: claim(no),
            ..pb::L7Match::default()
        });
    }
    let m = match key.as_str() {
        "request.auth.principal" => pb::L7Match {
            request_principals: string_matches(yes),
            not_request_principals: string_matches(no),
            ..pb::L7Match::default()
        },
        "request.auth.audiences" => pb::L7Match {
            audiences: string_matches(yes),
            not_audiences: string_matches(no),
            ..pb::L7Match::default()
        },
        "request.auth.presenter" => pb::L7Match {
            presenters: string_matches(yes),
            not_presenters: string_matches(no),
            ..pb::L7Match::default()
        },
        "remote.ip" => pb::L7Match {
            remote_ips: addresses(&parse_nets(yes)),
            not_remote_ips: addresses(&parse_nets(no)),
            ..pb::L7Match::default()
        },
        "source.serviceAccount" => pb::L7Match {
            connection: Some(l4::Match {
                service_accounts: super::authz::service_accounts(yes, namespace),
                not_service_accounts: super::authz::service_accounts(no, namespace),
                ..l4::Match::default()
            }),
            ..pb::L7Match::default()
        },
        "source.trustDomain" => pb::L7Match {
            connection: Some(l4::Match {
                principals: domain_prefixes(yes),
                not_principals: domain_prefixes(no),
                ..l4::Match::default()
            }),
            ..pb::L7Match::default()
        },
        // connection.sni, experimental.*: an empty match never matches; no match at all holds.
        _ if yes.is_empty() => return pb::L7Clause { matches: vec![] },
        _ => pb::L7Match::default(),
    };
    single(m)
}

/// `request.headers[x-env]` → `["x-env"]`; `request.auth.claims[org][team]` → `["org", "team"]`.
fn bracketed(key: &str, prefix: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let (part, after) = inner.split_once(']')?;
        parts.push(part.to_owned());
        rest = after;
    }
    (rest.is_empty() && !parts.is_empty()).then_some(parts)
}

/// Values were validated as IPs or CIDRs when the policy was read.
fn parse_nets(values: &[String]) -> Vec<ipnet::IpNet> {
    values
        .iter()
        .filter_map(|v| {
            v.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| v.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect()
}

fn authentication(
    authn: &RequestAuthentication,
    root_namespace: &str,
    note: &mut impl FnMut(NoteKind),
) -> Option<pb::JwtAuthentication> {
    let namespace = authn.meta.namespace.as_str();
    let targets = targets(&authn.target_refs, namespace, root_namespace, note);
    if targets.is_empty() {
        return None;
    }
    let rules = authn
        .jwt_rules
        .iter()
        .map(|rule| pb::JwtRule {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys: match (&rule.jwks, &rule.jwks_uri) {
                (Some(jwks), _) => Some(pb::jwt_rule::Keys::Jwks(jwks.clone())),
                (None, Some(uri)) => Some(pb::jwt_rule::Keys::JwksUri(uri.clone())),
                (None, None) => None,
            },
            from_headers: rule
                .from_headers
                .iter()
                .map(|h| pb::JwtHeader {
                    name: h.name.clone(),
                    prefix: h.prefix.clone().unwrap_or_default(),
                })
                .collect(),
            from_params: rule.from_params.clone(),
            output_payload_to_header: rule.output_payload_to_header.clone().unwrap_or_default(),
            forward_original_token: rule.forward_original_token,
            output_claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| pb::ClaimToHeader {
                    header: c.header.clone(),
                    claim: c.claim.clone(),
                })
                .collect(),
            jwks_fetch_timeout_ms: rule.timeout.as_deref().and_then(millis).unwrap_or(0),
        })
        .collect();
    Some(pb::JwtAuthentication {
        name: authn.meta.name.clone(),
        namespace: namespace.to_owned(),
        targets,
        rules,
    })
}

/// `5s`, `500ms`, `1m` → milliseconds; anything else: the waypoint's default.
fn millis(text: &str) -> Option<u32> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u32 = number.parse().ok()?;
    match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    }
}
