//! The YAML shape of a policy in the local configuration file (`LOCAL_XDS_PATH`, under
//! `policies:`), as upstream ztunnel accepts it, and its conversion into the model.
//!
//! The shape is strict where a slip would change meaning: unknown fields are refused (a typo
//! such as `notPrincipal` would otherwise drop a condition and widen the policy), `rules` and
//! `action` are required (a missing `action` must not quietly mean ALLOW), and empty strings are
//! refused as Istio validation does (`namespaces: [""]` would otherwise match plaintext).
//! Syntax is checked while deserializing, so those errors carry a line and column; checks that
//! need the policy's name run in the conversion, so those errors name the policy and the entry.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{EntryError, FieldPath, InvalidPolicy, Problem, convert_rule};
use super::model::{
    Action, Authorization, Match, PolicyKey, Scope, ServiceAccountMatch, StringMatch,
};
use super::request::RequestMatch;

/// One entry of `policies:` in the local configuration file. Convert it with
/// [`Authorization::try_from`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPolicy {
    name: String,
    namespace: String,
    scope: LocalScope,
    action: LocalAction,
    #[serde(default)]
    dry_run: bool,
    /// Rules, each a list of clauses, each a list of matches.
    rules: Vec<Vec<Vec<LocalMatch>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum LocalScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum LocalAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct LocalMatch {
    namespaces: Vec<LocalStringMatch>,
    not_namespaces: Vec<LocalStringMatch>,
    service_accounts: Vec<LocalServiceAccount>,
    not_service_accounts: Vec<LocalServiceAccount>,
    principals: Vec<LocalStringMatch>,
    not_principals: Vec<LocalStringMatch>,
    source_ips: Vec<LocalCidr>,
    not_source_ips: Vec<LocalCidr>,
    destination_ips: Vec<LocalCidr>,
    not_destination_ips: Vec<LocalCidr>,
    destination_ports: Vec<u16>,
    not_destination_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalServiceAccount {
    namespace: String,
    service_account: String,
}

/// A string condition as written: a glob (`*`, `x*`, `*x`, else exact) or an explicit
/// `{exact|prefix|suffix: x}` / `{presence: {}}` map.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LocalStringMatch {
    Glob(String),
    Explicit(StringMatch),
}

/// An IP range written as a bare address (full-length prefix) or a CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalCidr(IpNet);

impl TryFrom<LocalPolicy> for Authorization {
    type Error = InvalidPolicy;

    fn try_from(local: LocalPolicy) -> Result<Self, Self::Error> {
        let fail = |field, problem| InvalidPolicy {
            policy: PolicyKey::new(&local.namespace, &local.name),
            field,
            problem,
        };
        for (field, value) in [
            (FieldPath::Name, &local.name),
            (FieldPath::Namespace, &local.namespace),
        ] {
            if value.is_empty() {
                return Err(fail(field, Problem::Empty));
            }
            if value.contains('/') {
                return Err(fail(field, Problem::Slash(value.clone())));
            }
        }
        let rules = local
            .rules
            .iter()
            .enumerate()
            .map(|(r, clauses)| convert_rule(r, clauses.iter().map(Vec::as_slice), convert_match))
            .collect::<Result<_, _>>()
            .map_err(|(field, problem)| fail(field, problem))?;
        Ok(Self {
            scope: match local.scope {
                LocalScope::Global => Scope::Global,
                LocalScope::Namespace => Scope::Namespace,
                LocalScope::WorkloadSelector => Scope::WorkloadSelector,
            },
            action: match local.action {
                LocalAction::Allow => Action::Allow,
                LocalAction::Deny => Action::Deny,
            },
            dry_run: local.dry_run,
            rules,
            name: local.name,
            namespace: local.namespace,
        })
    }
}

fn convert_match(m: &LocalMatch) -> Result<Match, EntryError> {
    let cidrs = |list: &[LocalCidr]| list.iter().map(|c| c.0).collect();
    Ok(Match {
        namespaces: strings("namespaces", &m.namespaces)?,
        not_namespaces: strings("notNamespaces", &m.not_namespaces)?,
        service_accounts: service_accounts("serviceAccounts", &m.service_accounts)?,
        not_service_accounts: service_accounts("notServiceAccounts", &m.not_service_accounts)?,
        principals: strings("principals", &m.principals)?,
        not_principals: strings("notPrincipals", &m.not_principals)?,
        source_ips: cidrs(&m.source_ips),
        not_source_ips: cidrs(&m.not_source_ips),
        destination_ips: cidrs(&m.destination_ips),
        not_destination_ips: cidrs(&m.not_destination_ips),
        destination_ports: m.destination_ports.clone(),
        not_destination_ports: m.not_destination_ports.clone(),
        request: RequestMatch::default(),
    })
}

fn strings(
    list: &'static str,
    values: &[LocalStringMatch],
) -> Result<Vec<StringMatch>, EntryError> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let converted = match value {
                LocalStringMatch::Glob(glob) => from_glob(glob),
                LocalStringMatch::Explicit(explicit) => explicit.clone(),
            };
            match &converted {
                StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Suffix(s)
                    if s.is_empty() =>
                {
                    Err((list, index, Problem::Empty))
                }
                _ => Ok(converted),
            }
        })
        .collect()
}

/// Istio's convention: `*` is presence, a leading `*` a suffix, a trailing `*` a prefix, and
/// anything else (including a `*` in the middle) an exact value.
fn from_glob(glob: &str) -> StringMatch {
    if glob == "*" {
        StringMatch::Presence
    } else if let Some(suffix) = glob.strip_prefix('*') {
        StringMatch::Suffix(suffix.to_owned())
    } else if let Some(prefix) = glob.strip_suffix('*') {
        StringMatch::Prefix(prefix.to_owned())
    } else {
        StringMatch::Exact(glob.to_owned())
    }
}

fn service_accounts(
    list: &'static str,
    values: &[LocalServiceAccount],
) -> Result<Vec<ServiceAccountMatch>, EntryError> {
    values
        .iter()
        .enumerate()
        .map(|(index, sa)| {
            if sa.namespace.is_empty() || sa.service_account.is_empty() {
                return Err((list, index, Problem::Empty));
            }
            Ok(ServiceAccountMatch {
                namespace: sa.namespace.clone(),
                service_account: sa.service_account.clone(),
            })
        })
        .collect()
}

impl<'de> Deserialize<'de> for LocalCidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let net = if text.contains('/') {
            text.parse::<IpNet>().ok()
        } else {
            text.parse::<IpAddr>().ok().map(IpNet::from)
        };
        net.map(Self)
            .ok_or_else(|| de::Error::custom(format_args!("{text:?} is not an IP address or CIDR")))
    }
}

impl<'de> Deserialize<'de> for LocalStringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringMatchVisitor)
    }
}

/// The keys of the explicit string-match form.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Presence,
}

struct StringMatchVisitor;

impl<'de> Visitor<'de> for StringMatchVisitor {
    type Value = LocalStringMatch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a string (`*`, `x*`, `*x` or an exact value) or a map with one key of \
             exact, prefix, suffix, presence",
        )
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(LocalStringMatch::Glob(value.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(kind) = map.next_key::<MatchKind>()? else {
            return Err(de::Error::custom(
                "string match map is empty; use one of exact, prefix, suffix, presence",
            ));
        };
        let matcher = match kind {
            MatchKind::Exact => StringMatch::Exact(map.next_value()?),
            MatchKind::Prefix => StringMatch::Prefix(map.next_value()?),
            MatchKind::Suffix => StringMatch::Suffix(map.next_value()?),
            MatchKind::Presence => {
                map.next_value::<Nothing>()?;
                StringMatch::Presence
            }
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "string match map must have exactly one of exact, prefix, suffix, presence",
            ));
        }
        Ok(LocalStringMatch::Explicit(matcher))
    }
}

/// The value of `presence`: `{}`, `[]` or null. Anything else is refused rather than ignored,
/// since a value there suggests the author meant another kind of match.
struct Nothing;

impl<'de> Deserialize<'de> for Nothing {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NothingVisitor)
    }
}

struct NothingVisitor;

impl<'de> Visitor<'de> for NothingVisitor {
    type Value = Nothing;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an empty value (`{}`) for presence")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Nothing, E> {
        Ok(Nothing)
    }

    fn visit_none<E: de::Error>(self) -> Result<Nothing, E> {
        Ok(Nothing)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nothing, A::Error> {
        match map.next_key::<IgnoredAny>()? {
            None => Ok(Nothing),
            Some(_) => Err(de::Error::custom(
                "presence takes no value; write `presence: {}`",
            )),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Nothing, A::Error> {
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(Nothing),
            Some(_) => Err(de::Error::custom(
                "presence takes no value; write `presence: {}`",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
