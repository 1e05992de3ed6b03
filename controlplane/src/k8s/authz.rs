//! `security.istio.io` `AuthorizationPolicy` (v1 and v1beta1 share one schema), validated as
//! istiod's webhook validates it (policy.md §1.1), so an object upstream refuses is refused here
//! too. Unknown fields are refused: ignoring a misspelt field could widen a policy.

use ipnet::IpNet;

use super::attachment::{Attachment, TargetRef, read_attachment};
use super::core_v1::one_of;
use super::error::{FieldError, Problem};
use super::meta::{Labels, ObjectMeta, parse_go_bool};
use super::yaml::{Cursor, Fields};

/// Annotation that makes a policy dry-run (policy.md §5.1).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Most rules Istio accepts in one policy.
pub const MAX_RULES: usize = 512;
/// Most `serviceAccounts` (or `notServiceAccounts`) Istio accepts in one source.
pub const MAX_SERVICE_ACCOUNTS: usize = 16;

/// An AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `spec.selector.matchLabels`; `None` when there is no selector.
    pub selector: Option<Labels>,
    /// `spec.targetRefs` (with a legacy `spec.targetRef` folded in).
    pub target_refs: Vec<TargetRef>,
    /// `spec.action`.
    pub action: AuthorizationAction,
    /// `spec.provider.name` (CUSTOM only).
    pub provider: Option<String>,
    /// `spec.rules`; empty matches nothing.
    pub rules: Vec<Rule>,
    /// The `istio.io/dry-run` annotation parsed as istiod does: an unparsable value is `false`.
    pub dry_run: bool,
}

/// `spec.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationAction {
    /// Allow matching requests (the default).
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for audit; never changes a verdict.
    Audit,
    /// Delegate matching requests to an extension provider.
    Custom,
}

impl AuthorizationAction {
    /// The action as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

/// One rule: `from` AND `to` AND every `when`; a missing part matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from[].source`: any one must match; empty = no constraint.
    pub from: Vec<Source>,
    /// `to[].operation`: any one must match; empty = no constraint.
    pub to: Vec<Operation>,
    /// `when[]`: all must match.
    pub when: Vec<Condition>,
}

/// `rules[].from[].source`: fields ANDed, values of one field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// `principals`.
    pub principals: Vec<String>,
    /// `notPrincipals`.
    pub not_principals: Vec<String>,
    /// `requestPrincipals` (L7).
    pub request_principals: Vec<String>,
    /// `notRequestPrincipals` (L7).
    pub not_request_principals: Vec<String>,
    /// `namespaces`.
    pub namespaces: Vec<String>,
    /// `notNamespaces`.
    pub not_namespaces: Vec<String>,
    /// `serviceAccounts` (`ns/sa`, or `sa` in the policy's namespace).
    pub service_accounts: Vec<String>,
    /// `notServiceAccounts`.
    pub not_service_accounts: Vec<String>,
    /// `ipBlocks`.
    pub ip_blocks: Vec<IpNet>,
    /// `notIpBlocks`.
    pub not_ip_blocks: Vec<IpNet>,
    /// `remoteIpBlocks` (L7).
    pub remote_ip_blocks: Vec<IpNet>,
    /// `notRemoteIpBlocks` (L7).
    pub not_remote_ip_blocks: Vec<IpNet>,
    /// `trustDomains` (not in the ztunnel wire format).
    pub trust_domains: Vec<String>,
    /// `notTrustDomains`.
    pub not_trust_domains: Vec<String>,
}

impl Source {
    /// The YAML names of the set fields ztunnel cannot evaluate: the L7 fields of policy.md
    /// §2.5, and `trustDomains`, which the ztunnel wire format cannot carry (project rule).
    pub fn non_l4_fields(&self) -> Vec<&'static str> {
        [
            ("requestPrincipals", self.request_principals.is_empty()),
            (
                "notRequestPrincipals",
                self.not_request_principals.is_empty(),
            ),
            ("remoteIpBlocks", self.remote_ip_blocks.is_empty()),
            ("notRemoteIpBlocks", self.not_remote_ip_blocks.is_empty()),
            ("trustDomains", self.trust_domains.is_empty()),
            ("notTrustDomains", self.not_trust_domains.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, empty)| (!empty).then_some(name))
        .collect()
    }
}

/// `rules[].to[].operation`: fields ANDed, values of one field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operation {
    /// `hosts` (L7).
    pub hosts: Vec<String>,
    /// `notHosts` (L7).
    pub not_hosts: Vec<String>,
    /// `ports`.
    pub ports: Vec<u16>,
    /// `notPorts`.
    pub not_ports: Vec<u16>,
    /// `methods` (L7).
    pub methods: Vec<String>,
    /// `notMethods` (L7).
    pub not_methods: Vec<String>,
    /// `paths` (L7).
    pub paths: Vec<String>,
    /// `notPaths` (L7).
    pub not_paths: Vec<String>,
}

impl Operation {
    /// The YAML names of the set L7 fields.
    pub fn non_l4_fields(&self) -> Vec<&'static str> {
        [
            ("hosts", self.hosts.is_empty()),
            ("notHosts", self.not_hosts.is_empty()),
            ("methods", self.methods.is_empty()),
            ("notMethods", self.not_methods.is_empty()),
            ("paths", self.paths.is_empty()),
            ("notPaths", self.not_paths.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, empty)| (!empty).then_some(name))
        .collect()
    }
}

/// `values` and `notValues` of one condition: both must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values<T> {
    /// `values`: the attribute matches one.
    pub values: Vec<T>,
    /// `notValues`: the attribute matches none.
    pub not_values: Vec<T>,
}

/// `rules[].when[]`, typed by key: the five L4 keys ztunnel enforces, and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `source.ip`.
    SourceIp(Values<IpNet>),
    /// `source.namespace`.
    SourceNamespace(Values<String>),
    /// `source.principal`.
    SourcePrincipal(Values<String>),
    /// `destination.ip`.
    DestinationIp(Values<IpNet>),
    /// `destination.port`.
    DestinationPort(Values<u16>),
    /// Any other valid key (headers, JWT claims, SNI, ...): only a waypoint evaluates it.
    Http {
        /// The key as written, e.g. `request.headers[x-env]`.
        key: String,
        /// Its values.
        values: Values<String>,
    },
}

const ACTIONS: &[&str] = &["ALLOW", "DENY", "AUDIT", "CUSTOM"];
const SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "action",
    "provider",
    "rules",
];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "trustDomains",
    "notTrustDomains",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

impl AuthorizationPolicy {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        // No spec is `spec: {}`: an ALLOW that matches nothing.
        let spec = object
            .with("spec", Cursor::mapping)?
            .unwrap_or_else(|| Fields::empty(object.path().field("spec")));
        spec.deny_unknown(SPEC_FIELDS)?;
        let Attachment {
            selector,
            target_refs,
        } = read_attachment(&spec)?;
        let (action, provider) = read_action(&spec)?;
        let rules = spec.list("rules", |c| read_rule(c))?;
        let rules_path = || spec.path().field("rules");
        if rules.len() > MAX_RULES {
            return Err(rules_path().error(Problem::TooMany {
                max: MAX_RULES,
                found: rules.len(),
            }));
        }
        let needs_rules = matches!(
            action,
            AuthorizationAction::Deny | AuthorizationAction::Custom
        );
        if rules.is_empty() && needs_rules {
            return Err(rules_path().error(Problem::RulesRequired(action.as_str())));
        }
        let dry_run = meta
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .and_then(|value| parse_go_bool(value))
            .unwrap_or(false);
        Ok(Self {
            meta,
            selector,
            target_refs,
            action,
            provider,
            rules,
            dry_run,
        })
    }
}

/// `action` and `provider`, which only CUSTOM has (and needs).
fn read_action(spec: &Fields<'_>) -> Result<(AuthorizationAction, Option<String>), FieldError> {
    let action = spec.with("action", |c| one_of(c, ACTIONS))?.map_or(
        AuthorizationAction::Allow,
        |a| match a {
            "DENY" => AuthorizationAction::Deny,
            "AUDIT" => AuthorizationAction::Audit,
            "CUSTOM" => AuthorizationAction::Custom,
            _ => AuthorizationAction::Allow,
        },
    );
    let provider = spec.with("provider", |c| {
        let provider = c.mapping()?;
        provider.deny_unknown(&["name"])?;
        provider.require("name", |c| c.non_empty_str().map(str::to_owned))
    })?;
    let problem = match (action, &provider) {
        (AuthorizationAction::Custom, None) => Problem::CustomWithoutProvider,
        (AuthorizationAction::Custom, Some(_)) | (_, None) => return Ok((action, provider)),
        (_, Some(_)) => Problem::ProviderWithoutCustom,
    };
    Err(spec.path().field("provider").error(problem))
}

fn read_rule(cursor: &Cursor<'_>) -> Result<Rule, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(RULE_FIELDS)?;
    let from = non_empty_list(&fields, "from", |c| {
        let entry = c.mapping()?;
        entry.deny_unknown(&["source"])?;
        entry.require("source", read_source)
    })?;
    let to = non_empty_list(&fields, "to", |c| {
        let entry = c.mapping()?;
        entry.deny_unknown(&["operation"])?;
        entry.require("operation", read_operation)
    })?;
    let when = non_empty_list(&fields, "when", read_condition)?;
    Ok(Rule { from, to, when })
}

/// A list that, when present, must have entries (`from: []` is refused by Istio).
fn non_empty_list<T>(
    fields: &Fields<'_>,
    key: &str,
    read: impl Fn(&Cursor<'_>) -> Result<T, FieldError>,
) -> Result<Vec<T>, FieldError> {
    match fields.opt_list(key, read)? {
        Some(items) if items.is_empty() => Err(fields.path().field(key).error(Problem::EmptyList)),
        items => Ok(items.unwrap_or_default()),
    }
}

fn read_source(cursor: &Cursor<'_>) -> Result<Source, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(SOURCE_FIELDS)?;
    let blocks = |key: &str| fields.list(key, read_ip_or_cidr);
    let source = Source {
        principals: fields.strings("principals")?,
        not_principals: fields.strings("notPrincipals")?,
        request_principals: fields.strings("requestPrincipals")?,
        not_request_principals: fields.strings("notRequestPrincipals")?,
        namespaces: fields.strings("namespaces")?,
        not_namespaces: fields.strings("notNamespaces")?,
        service_accounts: read_service_accounts(&fields, "serviceAccounts")?,
        not_service_accounts: read_service_accounts(&fields, "notServiceAccounts")?,
        ip_blocks: blocks("ipBlocks")?,
        not_ip_blocks: blocks("notIpBlocks")?,
        remote_ip_blocks: blocks("remoteIpBlocks")?,
        not_remote_ip_blocks: blocks("notRemoteIpBlocks")?,
        trust_domains: fields.strings("trustDomains")?,
        not_trust_domains: fields.strings("notTrustDomains")?,
    };
    if source == Source::default() {
        return Err(cursor.path().error(Problem::NoFields));
    }
    let accounts = !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
    let identities = [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ];
    if let Some((name, _)) = identities.iter().find(|(_, list)| !list.is_empty())
        && accounts
    {
        let field = if source.service_accounts.is_empty() {
            "notServiceAccounts"
        } else {
            "serviceAccounts"
        };
        return Err(cursor
            .path()
            .field(field)
            .error(Problem::Exclusive(field, name)));
    }
    Ok(source)
}

fn read_service_accounts(fields: &Fields<'_>, key: &str) -> Result<Vec<String>, FieldError> {
    let accounts = fields.list(key, |c| {
        let text = c.non_empty_str()?;
        let valid_part = |part: &str| !part.is_empty() && !part.contains('*');
        let valid = match text.split_once('/') {
            Some((namespace, name)) => {
                valid_part(namespace) && valid_part(name) && !name.contains('/')
            }
            None => valid_part(text),
        };
        if valid {
            Ok(text.to_owned())
        } else {
            Err(c.path().error(Problem::BadServiceAccount(text.to_owned())))
        }
    })?;
    if accounts.len() > MAX_SERVICE_ACCOUNTS {
        return Err(fields.path().field(key).error(Problem::TooMany {
            max: MAX_SERVICE_ACCOUNTS,
            found: accounts.len(),
        }));
    }
    Ok(accounts)
}

fn read_operation(cursor: &Cursor<'_>) -> Result<Operation, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(OPERATION_FIELDS)?;
    let paths = |key: &str| fields.list(key, read_path);
    let operation = Operation {
        hosts: fields.strings("hosts")?,
        not_hosts: fields.strings("notHosts")?,
        ports: fields.list("ports", read_port_string)?,
        not_ports: fields.list("notPorts", read_port_string)?,
        methods: fields.strings("methods")?,
        not_methods: fields.strings("notMethods")?,
        paths: paths("paths")?,
        not_paths: paths("notPaths")?,
    };
    if operation == Operation::default() {
        return Err(cursor.path().error(Problem::NoFields));
    }
    Ok(operation)
}

fn read_condition(cursor: &Cursor<'_>) -> Result<Condition, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(&["key", "values", "notValues"])?;
    let key = fields.require("key", |c| c.non_empty_str().map(str::to_owned))?;
    let key_path = cursor.path().field("key");
    let kind = classify_key(&key).map_err(|problem| key_path.error(problem))?;
    if !fields.has("values") && !fields.has("notValues") {
        return Err(cursor.path().error(Problem::ConditionWithoutValues));
    }
    fn values<T>(
        fields: &Fields<'_>,
        read: impl Fn(&Cursor<'_>) -> Result<T, FieldError>,
    ) -> Result<Values<T>, FieldError> {
        Ok(Values {
            values: fields.list("values", &read)?,
            not_values: fields.list("notValues", &read)?,
        })
    }
    let strings = |c: &Cursor<'_>| c.non_empty_str().map(str::to_owned);
    Ok(match kind {
        KeyKind::SourceIp => Condition::SourceIp(values(&fields, read_ip_or_cidr)?),
        KeyKind::SourceNamespace => Condition::SourceNamespace(values(&fields, strings)?),
        KeyKind::SourcePrincipal => Condition::SourcePrincipal(values(&fields, strings)?),
        KeyKind::DestinationIp => Condition::DestinationIp(values(&fields, read_ip_or_cidr)?),
        KeyKind::DestinationPort => Condition::DestinationPort(values(&fields, read_port_string)?),
        KeyKind::HttpIp => {
            // Validated as addresses, kept as text: only a waypoint reads them.
            let checked = |c: &Cursor<'_>| read_ip_or_cidr(c).and_then(|_| strings(c));
            Condition::Http {
                key,
                values: values(&fields, checked)?,
            }
        }
        KeyKind::Http => Condition::Http {
            key,
            values: values(&fields, strings)?,
        },
    })
}

/// What a condition key is, as far as value validation and ztunnel are concerned.
enum KeyKind {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// An L7 key whose values are addresses (`remote.ip`).
    HttpIp,
    Http,
}

/// Classifies a `when` key per policy.md §1.5; unknown and removed keys are refused.
fn classify_key(key: &str) -> Result<KeyKind, Problem> {
    let bracketed = |rest: &str, max_groups: usize| -> bool {
        // One or more `[name]` groups, each non-empty and without nested brackets.
        let mut groups = 0;
        let mut remaining = rest;
        while let Some(inner) = remaining.strip_prefix('[') {
            let Some((name, after)) = inner.split_once(']') else {
                return false;
            };
            if name.is_empty() || name.contains('[') {
                return false;
            }
            groups += 1;
            remaining = after;
        }
        remaining.is_empty() && (1..=max_groups).contains(&groups)
    };
    match key {
        "source.ip" => Ok(KeyKind::SourceIp),
        "source.namespace" => Ok(KeyKind::SourceNamespace),
        "source.principal" => Ok(KeyKind::SourcePrincipal),
        "destination.ip" => Ok(KeyKind::DestinationIp),
        "destination.port" => Ok(KeyKind::DestinationPort),
        "remote.ip" => Ok(KeyKind::HttpIp),
        "connection.sni"
        | "source.serviceAccount"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter" => Ok(KeyKind::Http),
        "destination.namespace" | "destination.name" | "destination.user" => {
            Err(Problem::RemovedConditionKey(key.to_owned()))
        }
        _ if key.starts_with("destination.labels[") => {
            Err(Problem::RemovedConditionKey(key.to_owned()))
        }
        _ => {
            let valid = if let Some(rest) = key.strip_prefix("request.headers") {
                bracketed(rest, 1)
            } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                bracketed(rest, usize::MAX)
            } else if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
                !rest.is_empty()
            } else {
                false
            };
            if valid {
                Ok(KeyKind::Http)
            } else {
                Err(Problem::UnknownConditionKey(key.to_owned()))
            }
        }
    }
}

/// An IP (read as a full-length prefix) or a CIDR.
fn read_ip_or_cidr(cursor: &Cursor<'_>) -> Result<IpNet, FieldError> {
    let text = cursor.non_empty_str()?;
    if text.contains('/') {
        text.parse::<IpNet>()
            .map_err(|_| cursor.path().error(Problem::NotCidr(text.to_owned())))
    } else {
        text.parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| cursor.path().error(Problem::NotIp(text.to_owned())))
    }
}

/// A port written as a string of digits, as the Istio schema has it.
fn read_port_string(cursor: &Cursor<'_>) -> Result<u16, FieldError> {
    let text = cursor.non_empty_str()?;
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u16>() {
        Ok(port) if digits => Ok(port),
        _ => Err(cursor.path().error(Problem::NotPort(text.to_owned()))),
    }
}

/// A path, or a path template whose operators are whole segments `{*}` / `{**}`, with nothing
/// after a `{**}` but literal segments.
fn read_path(cursor: &Cursor<'_>) -> Result<String, FieldError> {
    let text = cursor.non_empty_str()?;
    if !text.contains(['{', '}']) {
        return Ok(text.to_owned());
    }
    let mut seen_glob = false;
    for segment in text.split('/') {
        match segment {
            "{*}" | "{**}" if seen_glob => {
                return Err(cursor
                    .path()
                    .error(Problem::BadPathTemplate(text.to_owned())));
            }
            "{**}" => seen_glob = true,
            "{*}" => {}
            _ if segment.contains(['{', '}']) => {
                return Err(cursor
                    .path()
                    .error(Problem::BadPathTemplate(text.to_owned())));
            }
            _ => {}
        }
    }
    Ok(text.to_owned())
}
