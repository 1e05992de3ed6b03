//! AuthorizationPolicy → `istio.security.Authorization`, as istiod converts it for ztunnel
//! (xds.md §5.3–5.4, policy.md §2.4–2.5).
//!
//! The one rule that matters most: the L4 result is never wider than the YAML meant. An ALLOW
//! rule that uses a field ztunnel cannot see is dropped whole (it allows less); a DENY rule keeps
//! only its L4 parts (it denies more), and an entry emptied that way becomes an empty Match,
//! which ztunnel never matches, so a DENY whose `to` is HTTP-only, or with an HTTP `when`, has
//! no effect at ztunnel, exactly as istiod and upstream ztunnel behave.

use std::collections::BTreeMap;

use ipnet::IpNet;
use xds_proto::istio::security as pb;
use xds_proto::istio::security::string_match::MatchType;

use super::{Note, NoteKind};
use crate::k8s::{
    AuthorizationAction, AuthorizationPolicy, Cluster, Condition, Kind, Labels, Operation, Rule,
    Source,
};

/// A sent WORKLOAD_SELECTOR policy, for filling `Workload.authorization_policies`.
#[derive(Debug, Clone)]
pub(super) struct SelectorPolicy {
    /// `<namespace>/<name>`.
    pub(super) key: String,
    /// The policy's namespace.
    pub(super) namespace: String,
    /// Its `matchLabels`.
    pub(super) selector: Labels,
}

/// The converted policies.
#[derive(Debug, Default)]
pub(super) struct Converted {
    /// Every policy sent to ztunnel, by resource name.
    pub(super) resources: BTreeMap<String, pb::Authorization>,
    /// The sent policies with a selector, by resource name.
    pub(super) selector_policies: Vec<SelectorPolicy>,
}

/// Converts every AuthorizationPolicy of the cluster, recording what istiod would report.
pub(super) fn convert_all(
    cluster: &Cluster,
    root_namespace: &str,
    notes: &mut Vec<Note>,
) -> Converted {
    let mut converted = Converted::default();
    for policy in cluster.authorization_policies() {
        let object = policy.meta.object_ref(Kind::AuthorizationPolicy);
        let mut note = |kind| {
            notes.push(Note {
                object: object.clone(),
                kind,
            });
        };
        let Some(resource) = convert(policy, root_namespace, &mut note) else {
            continue;
        };
        let key = format!("{}/{}", resource.namespace, resource.name);
        if let Some(selector) = &policy.selector {
            converted.selector_policies.push(SelectorPolicy {
                key: key.clone(),
                namespace: resource.namespace.clone(),
                selector: selector.clone(),
            });
        }
        converted.resources.insert(key, resource);
    }
    converted
}

/// Converts one policy; `None` when istiod does not send it to ztunnel.
pub(super) fn convert(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
    note: &mut impl FnMut(NoteKind),
) -> Option<pb::Authorization> {
    if !policy.target_refs.is_empty() {
        note(NoteKind::WaypointOnly);
        return None;
    }
    let action = match policy.action {
        AuthorizationAction::Allow => pb::Action::Allow,
        AuthorizationAction::Deny => pb::Action::Deny,
        // istiod does not send these to ztunnel; a CUSTOM provider is consulted (and fails
        // closed, policy.md §7) at the waypoint only.
        unsupported @ (AuthorizationAction::Audit | AuthorizationAction::Custom) => {
            note(NoteKind::UnsupportedAction(unsupported));
            return None;
        }
    };
    let namespace = policy.meta.namespace.as_str();
    let scope = match (&policy.selector, namespace == root_namespace) {
        (Some(_), _) => pb::Scope::WorkloadSelector,
        (None, true) => pb::Scope::Global,
        (None, false) => pb::Scope::Namespace,
    };
    let mut rules = Vec::new();
    let mut dropped = Vec::new();
    let mut found = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let unsupported = non_l4_fields(rule);
        if !unsupported.is_empty() && action == pb::Action::Allow {
            dropped.push(index);
            extend_unique(&mut found, unsupported);
            continue;
        }
        extend_unique(&mut found, unsupported);
        rules.push(convert_rule(rule, namespace));
    }
    if !dropped.is_empty() {
        note(NoteKind::AllowRulesDropped {
            rules: dropped,
            found,
        });
    } else if !found.is_empty() {
        let no_effect = !rules.iter().any(can_fire);
        note(NoteKind::DenyFieldsRemoved { found, no_effect });
    }
    Some(pb::Authorization {
        name: policy.meta.name.clone(),
        namespace: namespace.to_owned(),
        scope: scope.into(),
        action: action.into(),
        rules,
        dry_run: policy.dry_run,
        extensions: Vec::new(),
    })
}

fn extend_unique(found: &mut Vec<String>, more: Vec<String>) {
    for field in more {
        if !found.contains(&field) {
            found.push(field);
        }
    }
}

/// The fields (and `when` keys) of a rule that ztunnel cannot evaluate.
fn non_l4_fields(rule: &Rule) -> Vec<String> {
    let sources = rule.from.iter().flat_map(Source::non_l4_fields);
    let operations = rule.to.iter().flat_map(Operation::non_l4_fields);
    let mut found: Vec<String> = sources.chain(operations).map(str::to_owned).collect();
    for condition in &rule.when {
        if let Condition::Http { key, .. } = condition {
            found.push(key.clone());
        }
    }
    found
}

/// Whether a rule can match at ztunnel: every clause keeps a non-empty Match.
fn can_fire(rule: &pb::Rule) -> bool {
    rule.clauses.iter().all(|clause| {
        clause.matches.is_empty() || clause.matches.iter().any(|m| *m != pb::Match::default())
    })
}

/// One rule: a to-clause, a from-clause, then one clause per `when` (xds.md §5.3). HTTP-only
/// fields are left out; an entry with nothing else becomes an empty Match.
fn convert_rule(rule: &Rule, namespace: &str) -> pb::Rule {
    let mut clauses = Vec::new();
    if !rule.to.is_empty() {
        let matches = rule.to.iter().map(operation_match).collect();
        clauses.push(pb::Clause { matches });
    }
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|s| source_match(s, namespace))
            .collect();
        clauses.push(pb::Clause { matches });
    }
    for condition in &rule.when {
        clauses.push(pb::Clause {
            matches: vec![condition_match(condition)],
        });
    }
    pb::Rule { clauses }
}

pub(super) fn operation_match(operation: &Operation) -> pb::Match {
    pb::Match {
        destination_ports: ports(&operation.ports),
        not_destination_ports: ports(&operation.not_ports),
        ..pb::Match::default()
    }
}

pub(super) fn source_match(source: &Source, namespace: &str) -> pb::Match {
    pb::Match {
        source_ips: addresses(&source.ip_blocks),
        not_source_ips: addresses(&source.not_ip_blocks),
        namespaces: string_matches(&source.namespaces),
        not_namespaces: string_matches(&source.not_namespaces),
        service_accounts: service_accounts(&source.service_accounts, namespace),
        not_service_accounts: service_accounts(&source.not_service_accounts, namespace),
        principals: string_matches(&source.principals),
        not_principals: string_matches(&source.not_principals),
        ..pb::Match::default()
    }
}

pub(super) fn condition_match(condition: &Condition) -> pb::Match {
    match condition {
        Condition::SourceIp(v) => pb::Match {
            source_ips: addresses(&v.values),
            not_source_ips: addresses(&v.not_values),
            ..pb::Match::default()
        },
        Condition::SourceNamespace(v) => pb::Match {
            namespaces: string_matches(&v.values),
            not_namespaces: string_matches(&v.not_values),
            ..pb::Match::default()
        },
        Condition::SourcePrincipal(v) => pb::Match {
            principals: string_matches(&v.values),
            not_principals: string_matches(&v.not_values),
            ..pb::Match::default()
        },
        Condition::DestinationIp(v) => pb::Match {
            destination_ips: addresses(&v.values),
            not_destination_ips: addresses(&v.not_values),
            ..pb::Match::default()
        },
        Condition::DestinationPort(v) => pb::Match {
            destination_ports: ports(&v.values),
            not_destination_ports: ports(&v.not_values),
            ..pb::Match::default()
        },
        // Sent as an empty Match, which ztunnel never matches (xds.md §5.4).
        Condition::Http { .. } => pb::Match::default(),
    }
}

fn ports(ports: &[u16]) -> Vec<u32> {
    ports.iter().copied().map(u32::from).collect()
}

/// `*` → presence, `*x` → suffix, `x*` → prefix, else exact (istiod's order of checks).
pub(super) fn string_match(text: &str) -> pb::StringMatch {
    let match_type = if text == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = text.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = text.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(text.to_owned())
    };
    pb::StringMatch {
        match_type: Some(match_type),
    }
}

pub(super) fn string_matches(values: &[String]) -> Vec<pb::StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

/// `ns/sa` as written, or a bare `sa` in the policy's namespace.
pub(super) fn service_accounts(values: &[String], namespace: &str) -> Vec<pb::ServiceAccountMatch> {
    values
        .iter()
        .map(|value| {
            let (ns, name) = value.split_once('/').unwrap_or((namespace, value));
            pb::ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: name.to_owned(),
            }
        })
        .collect()
}

/// The address as written and its prefix length (a bare IP is a full-length prefix).
pub(super) fn address(net: &IpNet) -> pb::Address {
    let address = match net.addr() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    pb::Address {
        address,
        length: u32::from(net.prefix_len()),
    }
}

pub(super) fn addresses(nets: &[IpNet]) -> Vec<pb::Address> {
    nets.iter().map(address).collect()
}
