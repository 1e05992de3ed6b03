//! `istio.security.Authorization` (xDS) → model.
//!
//! Stricter than upstream ztunnel on purpose (xds.md §5.7): where upstream silently drops a
//! string match with no kind or a malformed address, or truncates a port to 16 bits, the policy
//! is refused whole. Dropping an entry from a list next to other fields removes a constraint,
//! which widens an ALLOW or narrows a DENY without anyone noticing; a NACK keeps the previous
//! version serving and tells the control plane why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use xds_proto::istio::security as pb;
use xds_proto::istio::security::string_match::MatchType;

use super::error::{EntryError, FieldPath, InvalidPolicy, Problem, convert_rule};
use super::model::{
    Action, Authorization, Match, PolicyKey, Scope, ServiceAccountMatch, StringMatch,
};
use super::request::RequestMatch;

impl TryFrom<&pb::Authorization> for Authorization {
    type Error = InvalidPolicy;

    fn try_from(wire: &pb::Authorization) -> Result<Self, Self::Error> {
        let fail = |field, problem| InvalidPolicy {
            policy: PolicyKey::new(&wire.namespace, &wire.name),
            field,
            problem,
        };
        let scope = match pb::Scope::try_from(wire.scope) {
            Ok(pb::Scope::Global) => Scope::Global,
            Ok(pb::Scope::Namespace) => Scope::Namespace,
            Ok(pb::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => return Err(fail(FieldPath::Scope, Problem::UnknownScope(wire.scope))),
        };
        let action = match pb::Action::try_from(wire.action) {
            Ok(pb::Action::Allow) => Action::Allow,
            Ok(pb::Action::Deny) => Action::Deny,
            Err(_) => return Err(fail(FieldPath::Action, Problem::UnknownAction(wire.action))),
        };
        let rules = wire
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                let clauses = rule.clauses.iter().map(|c| c.matches.as_slice());
                convert_rule(r, clauses, convert_match)
            })
            .collect::<Result<_, _>>()
            .map_err(|(field, problem)| fail(field, problem))?;
        Ok(Self {
            name: wire.name.clone(),
            namespace: wire.namespace.clone(),
            scope,
            action,
            rules,
            dry_run: wire.dry_run,
        })
    }
}

fn convert_match(wire: &pb::Match) -> Result<Match, EntryError> {
    Ok(Match {
        namespaces: list("namespaces", &wire.namespaces, string_match)?,
        not_namespaces: list("not_namespaces", &wire.not_namespaces, string_match)?,
        service_accounts: list("service_accounts", &wire.service_accounts, service_account)?,
        not_service_accounts: list(
            "not_service_accounts",
            &wire.not_service_accounts,
            service_account,
        )?,
        principals: list("principals", &wire.principals, string_match)?,
        not_principals: list("not_principals", &wire.not_principals, string_match)?,
        source_ips: list("source_ips", &wire.source_ips, address)?,
        not_source_ips: list("not_source_ips", &wire.not_source_ips, address)?,
        destination_ips: list("destination_ips", &wire.destination_ips, address)?,
        not_destination_ips: list("not_destination_ips", &wire.not_destination_ips, address)?,
        destination_ports: list("destination_ports", &wire.destination_ports, port)?,
        not_destination_ports: list("not_destination_ports", &wire.not_destination_ports, port)?,
        request: RequestMatch::default(),
    })
}

fn list<W, M>(
    name: &'static str,
    wire: &[W],
    convert: impl Fn(&W) -> Result<M, Problem>,
) -> Result<Vec<M>, EntryError> {
    wire.iter()
        .enumerate()
        .map(|(index, entry)| convert(entry).map_err(|problem| (name, index, problem)))
        .collect()
}

fn string_match(wire: &pb::StringMatch) -> Result<StringMatch, Problem> {
    match &wire.match_type {
        Some(MatchType::Exact(value)) => Ok(StringMatch::Exact(value.clone())),
        Some(MatchType::Prefix(value)) => Ok(StringMatch::Prefix(value.clone())),
        Some(MatchType::Suffix(value)) => Ok(StringMatch::Suffix(value.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(Problem::NoMatchKind),
    }
}

fn service_account(wire: &pb::ServiceAccountMatch) -> Result<ServiceAccountMatch, Problem> {
    Ok(ServiceAccountMatch {
        namespace: wire.namespace.clone(),
        service_account: wire.service_account.clone(),
    })
}

fn address(wire: &pb::Address) -> Result<IpNet, Problem> {
    let bytes = wire.address.as_slice();
    let ip = if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        IpAddr::V6(Ipv6Addr::from(v6))
    } else {
        return Err(Problem::AddressLength(bytes.len()));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let too_long = Problem::PrefixLength {
        length: wire.length,
        max,
    };
    let prefix = u8::try_from(wire.length).map_err(|_| too_long.clone())?;
    IpNet::new(ip, prefix).map_err(|_| too_long)
}

fn port(wire: &u32) -> Result<u16, Problem> {
    u16::try_from(*wire).map_err(|_| Problem::PortOutOfRange(*wire))
}

mod l7;

#[cfg(test)]
mod tests;
