//! The L7 part of authorization: what the waypoint knows about one HTTP request beyond its
//! connection, the conditions a policy can put on it (policy.md §1.3–1.6), and how they match.
//!
//! Kept beside the L4 conditions rather than in a second engine, so a waypoint evaluates L7
//! policies in exactly ztunnel's order (DENY, then ALLOW, dry-run apart): a [`Match`](super::Match)
//! simply has more lists, and an evaluation without a request (ztunnel, or TCP at the waypoint)
//! treats every L7 attribute as absent.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::model::StringMatch;

/// Conditions on the HTTP request. Every non-empty list must hold, as in [`Match`](super::Match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// Method is one of these (case-sensitive).
    pub methods: Vec<StringMatch>,
    /// Method is none of these.
    pub not_methods: Vec<StringMatch>,
    /// Normalised, query-less path is one of these.
    pub paths: Vec<PathMatch>,
    /// Path is none of these.
    pub not_paths: Vec<PathMatch>,
    /// Host as sent (port included), compared in lower case; patterns are stored lower-cased.
    pub hosts: Vec<StringMatch>,
    /// Host is none of these.
    pub not_hosts: Vec<StringMatch>,
    /// `<iss>/<sub>` of the validated token, matched as policy.md §1.6 splits it.
    pub request_principals: Vec<StringMatch>,
    /// Request principal is none of these.
    pub not_request_principals: Vec<StringMatch>,
    /// `request.headers[...]`.
    pub headers: Vec<HeaderMatch>,
    /// No such header value.
    pub not_headers: Vec<HeaderMatch>,
    /// `request.auth.claims[...]`.
    pub claims: Vec<ClaimMatch>,
    /// No such claim value.
    pub not_claims: Vec<ClaimMatch>,
    /// `request.auth.audiences`.
    pub audiences: Vec<StringMatch>,
    /// Audience is none of these.
    pub not_audiences: Vec<StringMatch>,
    /// `request.auth.presenter`.
    pub presenters: Vec<StringMatch>,
    /// Presenter is none of these.
    pub not_presenters: Vec<StringMatch>,
    /// Original client address is in one of these.
    pub remote_ips: Vec<IpNet>,
    /// Original client address is in none of these.
    pub not_remote_ips: Vec<IpNet>,
}

impl RequestMatch {
    /// Whether no L7 condition is set.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.headers.is_empty()
            && self.not_headers.is_empty()
            && self.claims.is_empty()
            && self.not_claims.is_empty()
            && self.audiences.is_empty()
            && self.not_audiences.is_empty()
            && self.presenters.is_empty()
            && self.not_presenters.is_empty()
            && self.remote_ips.is_empty()
            && self.not_remote_ips.is_empty()
    }
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exact, prefix, suffix or presence.
    String(StringMatch),
    /// An Istio path template (`/api/{*}/items/{**}`), matched against the whole path.
    Template(PathTemplate),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::String(s) => s.matches(path),
            Self::Template(t) => t.matches(path),
        }
    }
}

/// A path template, parsed: literal text and the two operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `{*}`: one non-empty segment.
    Segment,
    /// `{**}`: any run of characters, `/` included.
    Rest,
}

/// Why a path template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a path template: operators are whole segments ({{*}}, {{**}}), {{**}} only as the last one"
)]
pub struct BadTemplate(pub String);

impl PathTemplate {
    /// Parses `text` as policy.md §1.6 defines templates.
    pub fn parse(text: &str) -> Result<Self, BadTemplate> {
        let bad = || BadTemplate(text.to_owned());
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut seen_rest = false;
        for (i, segment) in text.split('/').enumerate() {
            if i > 0 {
                literal.push('/');
            }
            let operator = match segment {
                "{*}" => Token::Segment,
                "{**}" => Token::Rest,
                _ if segment.contains(['{', '}']) => return Err(bad()),
                _ => {
                    literal.push_str(segment);
                    continue;
                }
            };
            if seen_rest {
                return Err(bad());
            }
            seen_rest = operator == Token::Rest;
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            tokens.push(operator);
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Self { tokens })
    }

    fn matches(&self, path: &str) -> bool {
        tokens_match(&self.tokens, path)
    }
}

/// Backtracking over at most one `{**}` and a few `{*}`: the templates are short.
fn tokens_match(tokens: &[Token], rest: &str) -> bool {
    let Some((token, more)) = tokens.split_first() else {
        return rest.is_empty();
    };
    match token {
        Token::Literal(literal) => rest
            .strip_prefix(literal.as_str())
            .is_some_and(|after| tokens_match(more, after)),
        Token::Segment => {
            let end = rest.find('/').unwrap_or(rest.len());
            rest[..end]
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .any(|n| tokens_match(more, &rest[n..]))
        }
        Token::Rest => (0..=rest.len())
            .filter(|i| rest.is_char_boundary(*i))
            .any(|i| tokens_match(more, &rest[i..])),
    }
}

/// A header (name in lower case) with a value that matches; repeated headers are joined with
/// `,` first, as Envoy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name, lower case.
    pub name: String,
    /// What its value must be.
    pub value: StringMatch,
}

/// A claim found by following `path` through nested objects; a list claim matches when one of
/// its elements does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMatch {
    /// `[org][team]` is `["org", "team"]`.
    pub path: Vec<String>,
    /// What the claim must be.
    pub value: StringMatch,
}

/// The HTTP attributes of one request, borrowed from it for one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// The method.
    pub method: &'a str,
    /// The normalised path without its query string.
    pub path: &'a str,
    /// `:authority` / `Host` as sent.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The original client address (`remote.ip`).
    pub remote_ip: IpAddr,
    /// The validated token, if one was presented and passed.
    pub auth: Option<&'a RequestAuth>,
}

/// What a validated JWT says, as authorization reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud` (a string claim is one element).
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The whole payload.
    pub claims: serde_json::Value,
}

/// Whether `m` holds for the request; `None` (no HTTP: ztunnel, or TCP at a waypoint) makes
/// every L7 attribute absent.
pub(super) fn request_holds(m: &RequestMatch, request: Option<&RequestAttrs<'_>>) -> bool {
    if m.is_empty() {
        return true;
    }
    let auth = request.and_then(|r| r.auth);
    let host = request.map(|r| r.host.to_ascii_lowercase());
    let method = request.map(|r| r.method);
    let path = request.map(|r| r.path);
    holds(&m.methods, &m.not_methods, |s| string_hits(s, method))
        && holds(&m.paths, &m.not_paths, |p| {
            path.is_some_and(|v| p.matches(v))
        })
        && holds(&m.hosts, &m.not_hosts, |s| string_hits(s, host.as_deref()))
        && holds(&m.request_principals, &m.not_request_principals, |s| {
            auth.is_some_and(|a| request_principal_matches(s, &a.issuer, &a.subject))
        })
        && holds(&m.headers, &m.not_headers, |h| {
            request.is_some_and(|r| header_matches(h, r.headers))
        })
        && holds(&m.claims, &m.not_claims, |c| {
            auth.is_some_and(|a| claim_matches(c, &a.claims))
        })
        && holds(&m.audiences, &m.not_audiences, |s| {
            auth.is_some_and(|a| a.audiences.iter().any(|aud| s.matches(aud)))
        })
        && holds(&m.presenters, &m.not_presenters, |s| {
            auth.and_then(|a| a.presenter.as_deref())
                .is_some_and(|p| s.matches(p))
        })
        && holds(&m.remote_ips, &m.not_remote_ips, |net| {
            request.is_some_and(|r| net.contains(&r.remote_ip.to_canonical()))
        })
}

fn string_hits(pattern: &StringMatch, value: Option<&str>) -> bool {
    value.is_some_and(|v| pattern.matches(v))
}

fn holds<T>(positive: &[T], negative: &[T], hits: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hits)) && !negative.iter().any(hits)
}

/// policy.md §1.6: the written value is split at its last `/` into an issuer part and a subject
/// part, each compared on its own, so `*example.com/alice` cannot be satisfied by a subject
/// that merely ends in `.com/alice`.
fn request_principal_matches(pattern: &StringMatch, issuer: &str, subject: &str) -> bool {
    match pattern {
        StringMatch::Presence => !issuer.is_empty() && !subject.is_empty(),
        StringMatch::Exact(value) => value
            .rsplit_once('/')
            .is_some_and(|(iss, sub)| iss == issuer && sub == subject),
        // Written `*<value>`.
        StringMatch::Suffix(value) => match value.rsplit_once('/') {
            Some((iss_suffix, sub)) => issuer.ends_with(iss_suffix) && sub == subject,
            None => subject.ends_with(value.as_str()),
        },
        // Written `<value>*`.
        StringMatch::Prefix(value) => match value.rsplit_once('/') {
            Some((iss, sub_prefix)) => iss == issuer && subject.starts_with(sub_prefix),
            None => issuer.starts_with(value.as_str()),
        },
    }
}

fn header_matches(m: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(m.name.as_str()).iter().peekable();
    if values.peek().is_none() {
        return false;
    }
    let joined = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    m.value.matches(&joined)
}

fn claim_matches(m: &ClaimMatch, claims: &serde_json::Value) -> bool {
    let found = m
        .path
        .iter()
        .try_fold(claims, |value, key| value.as_object()?.get(key));
    match found {
        Some(serde_json::Value::String(s)) => m.value.matches(s),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .any(|item| item.as_str().is_some_and(|s| m.value.matches(s))),
        // Envoy compares a number or boolean claim by its JSON text.
        Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            m.value.matches(&value.to_string())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
