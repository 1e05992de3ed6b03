//! `jwtRules` from xDS, validated once when the resource arrives, so a bad rule is rejected
//! (and the last good config kept) instead of failing requests one by one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};
use xds_proto::mesh::waypoint::v1 as pb;

use super::keys::{JwksError, KeySet};

/// Where a rule with neither `from_headers` nor `from_params` looks (Istio's default).
const DEFAULT_HEADER: HeaderName = http::header::AUTHORIZATION;
const DEFAULT_PREFIX: &str = "Bearer ";
const DEFAULT_PARAM: &str = "access_token";

/// Validated rules, from the xDS resources that apply to one request.
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    rules: Vec<Rule>,
    /// Every rule's locations without repeats, in rule order: the order tokens are looked for.
    locations: Vec<Location>,
}

/// A `jwtRules` entry the waypoint cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("jwt rule {index} (issuer {issuer:?}) field {field}")]
pub struct InvalidJwtRule {
    /// Position in the list given to [`JwtRules::from_xds`].
    pub index: usize,
    /// The rule's issuer, as configured.
    pub issuer: String,
    /// The offending field, e.g. `from_headers[1].name`.
    pub field: String,
    /// What is wrong with it.
    #[source]
    pub problem: RuleProblem,
}

/// What is wrong with one field of a rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleProblem {
    /// A field that must be set is empty.
    #[error("is empty")]
    Empty,
    /// Neither `jwks` nor `jwks_uri` is set.
    #[error("neither jwks nor jwks_uri is set")]
    NoKeys,
    /// The inline JWKS cannot be used.
    #[error("is not a usable JWKS")]
    Jwks(#[source] JwksError),
    /// `jwks_uri` is not an `http` or `https` URL with a host.
    #[error("{uri:?} is not an http or https URL with a host")]
    BadUri {
        /// The value, as configured.
        uri: String,
    },
    /// Not a valid HTTP header name.
    #[error("{name:?} is not a valid HTTP header name")]
    BadHeaderName {
        /// The value, as configured.
        name: String,
    },
}

/// A place a token may be: a header (its value after `prefix`) or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header { name, .. } => write!(f, "header {name}"),
            Self::Param(name) => write!(f, "query parameter {name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) issuer: String,
    /// Normalised as Envoy compares them (see [`normalise_audience`]).
    pub(crate) audiences: Vec<String>,
    pub(crate) keys: Keys,
    pub(crate) locations: Vec<Location>,
    pub(crate) payload_header: Option<HeaderName>,
    pub(crate) forward_original_token: bool,
    pub(crate) claim_headers: Vec<ClaimHeader>,
}

#[derive(Debug, Clone)]
pub(crate) enum Keys {
    Inline(Arc<KeySet>),
    Remote(RemoteJwks),
}

#[derive(Debug, Clone)]
pub(crate) struct RemoteJwks {
    pub(crate) uri: Uri,
    /// `None`: the authenticator's default.
    pub(crate) fetch_timeout: Option<Duration>,
}

/// `output_claim_to_headers` entry; `path` is the claim name split at dots, as Envoy reads
/// nested claims (`org.team`).
#[derive(Debug, Clone)]
pub(crate) struct ClaimHeader {
    pub(crate) header: HeaderName,
    pub(crate) path: Vec<String>,
}

impl JwtRules {
    /// Validates every rule; the first bad one fails the whole list, naming its index, issuer
    /// and field.
    pub fn from_xds(rules: &[pb::JwtRule]) -> Result<Self, InvalidJwtRule> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Rule::from_xds(rule).map_err(|e| e.at(index, &rule.issuer)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut locations: Vec<Location> = Vec::new();
        for location in rules.iter().flat_map(|rule| &rule.locations) {
            if !locations.contains(location) {
                locations.push(location.clone());
            }
        }
        Ok(Self { rules, locations })
    }

    /// No rules: nothing to authenticate (every request is [`super::Outcome::NoToken`]).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub(crate) fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// The rules a token found at `location` with issuer `issuer` answers to: as in Envoy, a
    /// rule only vouches for tokens in the places it names.
    pub(crate) fn for_token(&self, location: &Location, issuer: &str) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.issuer == issuer && rule.locations.contains(location))
            .collect()
    }
}

/// A field's problem before the rule's index and issuer are known.
struct FieldError {
    field: String,
    problem: RuleProblem,
}

impl FieldError {
    fn new(field: impl Into<String>, problem: RuleProblem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }

    fn at(self, index: usize, issuer: &str) -> InvalidJwtRule {
        InvalidJwtRule {
            index,
            issuer: issuer.to_owned(),
            field: self.field,
            problem: self.problem,
        }
    }
}

impl Rule {
    fn from_xds(rule: &pb::JwtRule) -> Result<Self, FieldError> {
        if rule.issuer.is_empty() {
            return Err(FieldError::new("issuer", RuleProblem::Empty));
        }
        let keys = match &rule.keys {
            None => return Err(FieldError::new("jwks", RuleProblem::NoKeys)),
            Some(pb::jwt_rule::Keys::Jwks(text)) => Keys::Inline(Arc::new(
                KeySet::parse(text.as_bytes())
                    .map_err(|e| FieldError::new("jwks", RuleProblem::Jwks(e)))?,
            )),
            Some(pb::jwt_rule::Keys::JwksUri(uri)) => Keys::Remote(RemoteJwks {
                uri: parse_jwks_uri(uri).map_err(|p| FieldError::new("jwks_uri", p))?,
                fetch_timeout: (rule.jwks_fetch_timeout_ms > 0)
                    .then(|| Duration::from_millis(u64::from(rule.jwks_fetch_timeout_ms))),
            }),
        };
        let payload_header = if rule.output_payload_to_header.is_empty() {
            None
        } else {
            Some(
                header_name(&rule.output_payload_to_header)
                    .map_err(|p| FieldError::new("output_payload_to_header", p))?,
            )
        };
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, entry)| claim_header(entry, i))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            issuer: rule.issuer.clone(),
            audiences: rule
                .audiences
                .iter()
                .map(|a| normalise_audience(a).to_owned())
                .collect(),
            keys,
            locations: locations(rule)?,
            payload_header,
            forward_original_token: rule.forward_original_token,
            claim_headers,
        })
    }

    /// Empty rule audiences: not checked. Otherwise one of the token's must be listed.
    pub(crate) fn accepts_audiences(&self, token_audiences: &[String]) -> bool {
        self.audiences.is_empty()
            || token_audiences
                .iter()
                .any(|aud| self.audiences.iter().any(|a| a == normalise_audience(aud)))
    }
}

fn locations(rule: &pb::JwtRule) -> Result<Vec<Location>, FieldError> {
    if rule.from_headers.is_empty() && rule.from_params.is_empty() {
        return Ok(vec![
            Location::Header {
                name: DEFAULT_HEADER,
                prefix: DEFAULT_PREFIX.to_owned(),
            },
            Location::Param(DEFAULT_PARAM.to_owned()),
        ]);
    }
    let mut locations = Vec::with_capacity(rule.from_headers.len() + rule.from_params.len());
    for (i, header) in rule.from_headers.iter().enumerate() {
        let name = header_name(&header.name)
            .map_err(|p| FieldError::new(format!("from_headers[{i}].name"), p))?;
        locations.push(Location::Header {
            name,
            prefix: header.prefix.clone(),
        });
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            return Err(FieldError::new(
                format!("from_params[{i}]"),
                RuleProblem::Empty,
            ));
        }
        locations.push(Location::Param(param.clone()));
    }
    Ok(locations)
}

fn claim_header(entry: &pb::ClaimToHeader, i: usize) -> Result<ClaimHeader, FieldError> {
    let header = header_name(&entry.header)
        .map_err(|p| FieldError::new(format!("output_claim_to_headers[{i}].header"), p))?;
    if entry.claim.split('.').any(str::is_empty) {
        return Err(FieldError::new(
            format!("output_claim_to_headers[{i}].claim"),
            RuleProblem::Empty,
        ));
    }
    Ok(ClaimHeader {
        header,
        path: entry.claim.split('.').map(str::to_owned).collect(),
    })
}

fn header_name(name: &str) -> Result<HeaderName, RuleProblem> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| RuleProblem::BadHeaderName {
        name: name.to_owned(),
    })
}

fn parse_jwks_uri(text: &str) -> Result<Uri, RuleProblem> {
    let bad = || RuleProblem::BadUri {
        uri: text.to_owned(),
    };
    let uri: Uri = text.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let has_host = uri.host().is_some_and(|h| !h.is_empty());
    // Credentials in the authority would end up in logs and the Host header.
    let has_userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !scheme_ok || !has_host || has_userinfo {
        return Err(bad());
    }
    Ok(uri)
}

/// Envoy compares audiences without an `http://` or `https://` scheme and without one
/// trailing `/`, so `https://api.example.com/` in a rule matches `api.example.com` in a token.
pub(crate) fn normalise_audience(audience: &str) -> &str {
    let rest = audience
        .strip_prefix("http://")
        .or_else(|| audience.strip_prefix("https://"))
        .unwrap_or(audience);
    rest.strip_suffix('/').unwrap_or(rest)
}
