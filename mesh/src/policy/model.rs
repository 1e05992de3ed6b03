//! The authorization model (L4 conditions, plus the L7 ones of [`RequestMatch`]), independent of both the wire types and the local YAML shape.
//!
//! Everything that reaches this model has already been validated (by `from_xds` or `local`), so
//! evaluation never has to guess what a half-formed entry was meant to say: an IP range is a real
//! [`IpNet`], a port is a real `u16`, a string condition always has a kind.

use std::borrow::Borrow;
use std::fmt;

use ipnet::IpNet;

use super::request::RequestMatch;

/// A policy's resource name, `<namespace>/<name>`: the key in xDS, in a workload's
/// `authorization_policies` list, and in every log line that names a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey(String);

impl PolicyKey {
    /// Builds the key of the policy `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}"))
    }

    /// The key as `<namespace>/<name>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Lets a `PolicySet` be queried with the plain strings a workload lists, without building keys.
impl Borrow<str> for PolicyKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One L4 authorization policy as ztunnel enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Policy name.
    pub name: String,
    /// Policy namespace.
    pub namespace: String,
    /// Which workloads the policy applies to.
    pub scope: Scope,
    /// What happens when the policy matches.
    pub action: Action,
    /// Alternatives: the policy matches when any rule does. No rules: matches nothing.
    pub rules: Vec<Rule>,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
}

impl Authorization {
    /// The policy's resource name, `<namespace>/<name>`.
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(&self.namespace, &self.name)
    }
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that list the policy by name.
    WorkloadSelector,
    /// Bound by `targetRefs` to a waypoint's Gateway or to Services: never applies to a
    /// workload at ztunnel; the waypoint selects it by its targets.
    Targeted,
}

/// What a matching policy does. L4 has no AUDIT or CUSTOM: istiod never sends them to ztunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allow the connection.
    Allow,
    /// Deny the connection.
    Deny,
}

/// A rule matches when every clause does; a rule with no clauses matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Conditions, all required.
    pub clauses: Vec<Clause>,
}

/// A clause matches when any of its (non-empty) matches does; a clause with no matches matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clause {
    /// Alternatives.
    pub matches: Vec<Match>,
}

/// Conditions on one connection. Every non-empty list must hold: a positive list needs one
/// element to match, a negative (`not_`) list needs none to match. A `Match` with every list
/// empty never matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Source identity's namespace is one of these.
    pub namespaces: Vec<StringMatch>,
    /// Source identity's namespace is none of these.
    pub not_namespaces: Vec<StringMatch>,
    /// Source identity's namespace and service account are one of these.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source identity's namespace and service account are none of these.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Source principal (SPIFFE ID without `spiffe://`) is one of these.
    pub principals: Vec<StringMatch>,
    /// Source principal is none of these.
    pub not_principals: Vec<StringMatch>,
    /// Source IP is in one of these ranges.
    pub source_ips: Vec<IpNet>,
    /// Source IP is in none of these ranges.
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP is in one of these ranges.
    pub destination_ips: Vec<IpNet>,
    /// Destination IP is in none of these ranges.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination port is one of these.
    pub destination_ports: Vec<u16>,
    /// Destination port is none of these.
    pub not_destination_ports: Vec<u16>,
    /// HTTP conditions (waypoint only; never set by the ztunnel conversions).
    pub request: RequestMatch,
}

impl Match {
    /// Whether no condition is set. Such a match is skipped: it can never make its clause
    /// match. This is how an entry emptied of L7-only fields ends up at ztunnel.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
            && self.request.is_empty()
    }
}

/// A string condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Ends with this.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(want) => value == want,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

/// A namespace plus service account pair, compared exactly (no wildcards, trust domain ignored).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// A waypoint policy: an [`Authorization`] (scope [`Scope::Targeted`]) and what it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetedPolicy {
    /// The Gateways, Services or GatewayClass of `targetRefs`, in the policy's namespace.
    pub targets: Vec<PolicyTarget>,
    /// The policy itself.
    pub authorization: Authorization,
}

/// One `targetRefs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyTarget {
    /// What kind of object.
    pub kind: TargetKind,
    /// Its name, in the policy's namespace.
    pub name: String,
}

/// The kinds of object a waypoint policy can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// A waypoint's Gateway: everything it serves.
    Gateway,
    /// A Service: requests addressed to it.
    Service,
    /// The waypoint GatewayClass (root namespace only): every waypoint.
    GatewayClass,
}
