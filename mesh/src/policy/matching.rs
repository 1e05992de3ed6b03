//! Matching one connection against one policy (policy.md §2.4): rules OR, clauses AND, matches
//! OR, fields AND, empty matches skipped.
//!
//! The connection's identity is turned into comparable strings once per evaluation ([`Facts`]),
//! not once per condition, since a policy set can hold many principal and namespace checks.

use std::net::IpAddr;

use crate::identity::SpiffeId;

use super::eval::ConnectionAttrs;
use super::model::{Authorization, Clause, Match, Rule};
use super::request::{RequestAttrs, request_holds};

/// The connection's attributes in the form the matchers compare against, computed once per
/// evaluation rather than once per condition.
pub(super) struct Facts<'a> {
    /// The identity without `spiffe://`; `None` for plaintext.
    principal: Option<String>,
    /// The identity's namespace; empty for plaintext or a non-Istio identity.
    namespace: &'a str,
    /// `(namespace, service account)` of an Istio-shaped identity.
    service_account: Option<(&'a str, &'a str)>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    destination_port: u16,
    /// The HTTP request, at a waypoint.
    request: Option<&'a RequestAttrs<'a>>,
}

impl<'a> Facts<'a> {
    pub(super) fn of(attrs: &'a ConnectionAttrs) -> Self {
        Self::with_request(attrs, None)
    }

    pub(super) fn with_request(
        attrs: &'a ConnectionAttrs,
        request: Option<&'a RequestAttrs<'a>>,
    ) -> Self {
        let identity = attrs.source_identity.as_ref();
        let service_account = identity.and_then(SpiffeId::istio_parts);
        Self {
            principal: identity.map(SpiffeId::principal),
            namespace: service_account.map_or("", |(ns, _)| ns),
            service_account,
            // A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; compared as is, such an
            // address would escape every IPv4 range, including those of DENY policies.
            source_ip: attrs.source_ip.to_canonical(),
            destination_ip: attrs.destination_ip.to_canonical(),
            destination_port: attrs.destination_port,
            request,
        }
    }
}

pub(super) fn policy_matches(policy: &Authorization, facts: &Facts<'_>) -> bool {
    policy.rules.iter().any(|rule| rule_matches(rule, facts))
}

fn rule_matches(rule: &Rule, facts: &Facts<'_>) -> bool {
    rule.clauses
        .iter()
        .all(|clause| clause_matches(clause, facts))
}

fn clause_matches(clause: &Clause, facts: &Facts<'_>) -> bool {
    clause.matches.is_empty()
        || clause
            .matches
            .iter()
            .any(|m| !m.is_empty() && match_holds(m, facts))
}

fn match_holds(m: &Match, facts: &Facts<'_>) -> bool {
    let principal = facts.principal.as_deref();
    lists_hold(&m.namespaces, &m.not_namespaces, |s| {
        s.matches(facts.namespace)
    }) && lists_hold(&m.service_accounts, &m.not_service_accounts, |sa| {
        facts
            .service_account
            .is_some_and(|(ns, name)| sa.namespace == ns && sa.service_account == name)
    }) && lists_hold(&m.principals, &m.not_principals, |s| {
        principal.is_some_and(|p| s.matches(p))
    }) && lists_hold(&m.source_ips, &m.not_source_ips, |net| {
        net.contains(&facts.source_ip)
    }) && lists_hold(&m.destination_ips, &m.not_destination_ips, |net| {
        net.contains(&facts.destination_ip)
    }) && lists_hold(&m.destination_ports, &m.not_destination_ports, |port| {
        *port == facts.destination_port
    }) && request_holds(&m.request, facts.request)
}

/// A positive list holds when empty or when one element hits; a negative list holds when no
/// element hits. An absent attribute hits nothing, so it fails positives and passes negatives.
fn lists_hold<T>(positive: &[T], negative: &[T], hits: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hits)) && !negative.iter().any(hits)
}

#[cfg(test)]
mod tests;
