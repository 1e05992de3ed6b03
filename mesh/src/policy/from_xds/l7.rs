//! `mesh.waypoint.v1.L7Authorization` (the project's own xDS type) → model, refused whole on
//! any bad entry, exactly as the L4 conversion is.

use xds_proto::istio::security as l4;
use xds_proto::mesh::waypoint::v1 as pb;

use super::{address, convert_match, list, string_match};
use crate::policy::error::{EntryError, FieldPath, InvalidPolicy, Problem, convert_rule};
use crate::policy::model::{
    Action, Authorization, Match, PolicyKey, PolicyTarget, Scope, StringMatch, TargetKind,
    TargetedPolicy,
};
use crate::policy::request::{ClaimMatch, HeaderMatch, PathMatch, PathTemplate, RequestMatch};

impl TryFrom<&pb::L7Authorization> for TargetedPolicy {
    type Error = InvalidPolicy;

    fn try_from(wire: &pb::L7Authorization) -> Result<Self, Self::Error> {
        let fail = |field, problem| InvalidPolicy {
            policy: PolicyKey::new(&wire.namespace, &wire.name),
            field,
            problem,
        };
        let action = match l4::Action::try_from(wire.action) {
            Ok(l4::Action::Allow) => Action::Allow,
            Ok(l4::Action::Deny) => Action::Deny,
            Err(_) => return Err(fail(FieldPath::Action, Problem::UnknownAction(wire.action))),
        };
        let targets = wire
            .targets
            .iter()
            .map(|target| {
                let kind = match pb::policy_target::Kind::try_from(target.kind) {
                    Ok(pb::policy_target::Kind::Gateway) => TargetKind::Gateway,
                    Ok(pb::policy_target::Kind::Service) => TargetKind::Service,
                    Ok(pb::policy_target::Kind::GatewayClass) => TargetKind::GatewayClass,
                    _ => return Err(fail(FieldPath::Scope, Problem::UnknownScope(target.kind))),
                };
                if target.name.is_empty() {
                    return Err(fail(FieldPath::Scope, Problem::Empty));
                }
                Ok(PolicyTarget {
                    kind,
                    name: target.name.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A policy bound to nothing would apply nowhere; saying so beats ignoring it quietly.
        if targets.is_empty() {
            return Err(fail(FieldPath::Scope, Problem::Empty));
        }
        let rules = wire
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                let clauses = rule.clauses.iter().map(|c| c.matches.as_slice());
                convert_rule(r, clauses, convert_l7_match)
            })
            .collect::<Result<_, _>>()
            .map_err(|(field, problem)| fail(field, problem))?;
        Ok(Self {
            targets,
            authorization: Authorization {
                name: wire.name.clone(),
                namespace: wire.namespace.clone(),
                scope: Scope::Targeted,
                action,
                rules,
                dry_run: wire.dry_run,
            },
        })
    }
}

fn convert_l7_match(wire: &pb::L7Match) -> Result<Match, EntryError> {
    let mut converted = match &wire.connection {
        Some(connection) => convert_match(connection)?,
        None => Match::default(),
    };
    converted.request = RequestMatch {
        methods: list("methods", &wire.methods, string_match)?,
        not_methods: list("not_methods", &wire.not_methods, string_match)?,
        paths: list("paths", &wire.paths, path_match)?,
        not_paths: list("not_paths", &wire.not_paths, path_match)?,
        hosts: list("hosts", &wire.hosts, host_match)?,
        not_hosts: list("not_hosts", &wire.not_hosts, host_match)?,
        request_principals: list("request_principals", &wire.request_principals, string_match)?,
        not_request_principals: list(
            "not_request_principals",
            &wire.not_request_principals,
            string_match,
        )?,
        headers: list("headers", &wire.headers, header_match)?,
        not_headers: list("not_headers", &wire.not_headers, header_match)?,
        claims: list("claims", &wire.claims, claim_match)?,
        not_claims: list("not_claims", &wire.not_claims, claim_match)?,
        audiences: list("audiences", &wire.audiences, string_match)?,
        not_audiences: list("not_audiences", &wire.not_audiences, string_match)?,
        presenters: list("presenters", &wire.presenters, string_match)?,
        not_presenters: list("not_presenters", &wire.not_presenters, string_match)?,
        remote_ips: list("remote_ips", &wire.remote_ips, address)?,
        not_remote_ips: list("not_remote_ips", &wire.not_remote_ips, address)?,
    };
    Ok(converted)
}

/// Hosts compare case-insensitively: the pattern is lowered here, the request's host at
/// evaluation.
fn host_match(wire: &l4::StringMatch) -> Result<StringMatch, Problem> {
    Ok(match string_match(wire)? {
        StringMatch::Exact(v) => StringMatch::Exact(v.to_ascii_lowercase()),
        StringMatch::Prefix(v) => StringMatch::Prefix(v.to_ascii_lowercase()),
        StringMatch::Suffix(v) => StringMatch::Suffix(v.to_ascii_lowercase()),
        StringMatch::Presence => StringMatch::Presence,
    })
}

fn path_match(wire: &pb::PathMatch) -> Result<PathMatch, Problem> {
    match &wire.kind {
        Some(pb::path_match::Kind::String(s)) => Ok(PathMatch::String(string_match(s)?)),
        Some(pb::path_match::Kind::Template(text)) => PathTemplate::parse(text)
            .map(PathMatch::Template)
            .map_err(|e| Problem::BadTemplate(e.0)),
        None => Err(Problem::NoMatchKind),
    }
}

fn header_match(wire: &pb::HeaderMatch) -> Result<HeaderMatch, Problem> {
    if wire.name.is_empty() {
        return Err(Problem::Empty);
    }
    let value = wire.value.as_ref().ok_or(Problem::NoMatchKind)?;
    Ok(HeaderMatch {
        name: wire.name.to_ascii_lowercase(),
        value: string_match(value)?,
    })
}

fn claim_match(wire: &pb::ClaimMatch) -> Result<ClaimMatch, Problem> {
    if wire.path.is_empty() || wire.path.iter().any(String::is_empty) {
        return Err(Problem::Empty);
    }
    let value = wire.value.as_ref().ok_or(Problem::NoMatchKind)?;
    Ok(ClaimMatch {
        path: wire.path.clone(),
        value: string_match(value)?,
    })
}
