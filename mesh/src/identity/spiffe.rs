//! SPIFFE IDs: parsing and validation per the SPIFFE ID specification, plus the Istio shape
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Every identity that reaches authorization goes through [`SpiffeId::parse`], so a certificate
//! whose URI SAN is almost-but-not-quite a SPIFFE ID (upper-case trust domain, a port, a query,
//! `..` segments) is refused here instead of matching a policy by accident.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes, as the SPIFFE ID specification recommends for URIs.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain accepted, in bytes (the DNS name limit the specification points at).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID. Each variant names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("empty SPIFFE ID")]
    Empty,
    /// The input is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {len} bytes, more than the {MAX_SPIFFE_ID_LEN} allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input does not start with `spiffe://` (the scheme is case-sensitive).
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes, more than the {MAX_TRUST_DOMAIN_LEN} allowed")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
    },
    /// A `:` in the authority: SPIFFE IDs carry no port.
    #[error("SPIFFE ID must not carry a port")]
    Port,
    /// A `@` in the authority: SPIFFE IDs carry no user info.
    #[error("SPIFFE ID must not carry user info")]
    UserInfo,
    /// The trust domain holds a character outside `[a-z0-9.-_]`.
    #[error(
        "trust domain contains {0:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    /// A `?` anywhere: SPIFFE IDs carry no query.
    #[error("SPIFFE ID must not carry a query")]
    Query,
    /// A `#` anywhere: SPIFFE IDs carry no fragment.
    #[error("SPIFFE ID must not carry a fragment")]
    Fragment,
    /// `//` in the path, or a trailing `/`.
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    /// A path segment of `.` or `..`.
    #[error("SPIFFE ID path has a relative segment {0:?}")]
    DotSegment(String),
    /// A path segment holds a character outside `[a-zA-Z0-9.-_]`.
    #[error("SPIFFE ID path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    PathChar(char),
}

/// A validated SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a bare trust domain name (no scheme, no path).
    pub fn parse(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
        }
        for c in name.chars() {
            match c {
                'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
                ':' => return Err(SpiffeIdError::Port),
                '@' => return Err(SpiffeIdError::UserInfo),
                '?' => return Err(SpiffeIdError::Query),
                '#' => return Err(SpiffeIdError::Fragment),
                other => return Err(SpiffeIdError::TrustDomainChar(other)),
            }
        }
        Ok(Self(name.to_owned()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated SPIFFE ID: a trust domain and a (possibly empty) path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*` with every segment validated.
    path: String,
}

impl SpiffeId {
    /// Parses and validates `spiffe://<trust-domain>[/<path>]`.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        // Query and fragment are checked on the whole input first so that `spiffe://td?x` names
        // the query, not an odd trust-domain character.
        if input.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if input.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::parse(authority)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Builds the Istio workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn istio(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        // Each part must be one segment, or "a/b" as a namespace would forge another shape.
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: format!("/ns/{namespace}/sa/{service_account}"),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(namespace, service_account)` when the path has the Istio shape `/ns/<ns>/sa/<sa>`.
    pub fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path.strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The principal form used by Istio authorization policies: the ID without `spiffe://`,
    /// e.g. `cluster.local/ns/storefront/sa/web`.
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` always starts with '/' here; splitting leaves an empty first element to skip.
    path.split('/').skip(1).try_for_each(validate_segment)
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." | ".." => return Err(SpiffeIdError::DotSegment(segment.to_owned())),
        _ => {}
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(bad) => Err(SpiffeIdError::PathChar(bad)),
        None => Ok(()),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids_and_formats_them_back() {
        for input in [
            "spiffe://cluster.local/ns/storefront/sa/web",
            "spiffe://cluster.local",
            "spiffe://example-1.org_x/a/B/c.d-e_f",
            "spiffe://td/.hidden/..x",
        ] {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn rejects_each_broken_rule_by_name() {
        use SpiffeIdError as E;
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        let cases: Vec<(&str, E)> = vec![
            ("", E::Empty),
            ("http://cluster.local/ns/a/sa/b", E::WrongScheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", E::WrongScheme),
            ("spiffe:/cluster.local", E::WrongScheme),
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe:///ns/a", E::EmptyTrustDomain),
            (&long_td, E::TrustDomainTooLong { len: 256 }),
            (&long_id, E::TooLong { len: 2060 }),
            ("spiffe://cluster.local:8443/ns/a", E::Port),
            ("spiffe://user@cluster.local/ns/a", E::UserInfo),
            ("spiffe://Cluster.local/ns/a", E::TrustDomainChar('C')),
            ("spiffe://clu ster/ns/a", E::TrustDomainChar(' ')),
            ("spiffe://cluster.local/ns/a?x=1", E::Query),
            ("spiffe://cluster.local/ns/a#frag", E::Fragment),
            ("spiffe://cluster.local/ns//sa/b", E::EmptySegment),
            ("spiffe://cluster.local/ns/a/", E::EmptySegment),
            ("spiffe://cluster.local/", E::EmptySegment),
            (
                "spiffe://cluster.local/ns/../sa/b",
                E::DotSegment("..".into()),
            ),
            ("spiffe://cluster.local/./a", E::DotSegment(".".into())),
            ("spiffe://cluster.local/ns/a%20b", E::PathChar('%')),
            ("spiffe://cluster.local/ns/ä", E::PathChar('ä')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn istio_form_and_principal() {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let id = SpiffeId::istio(&td, "storefront", "web").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/storefront/sa/web"
        );
        assert_eq!(id.principal(), "cluster.local/ns/storefront/sa/web");
        assert_eq!(id.istio_parts(), Some(("storefront", "web")));
        assert_eq!(
            SpiffeId::istio(&td, "a/b", "c"),
            Err(SpiffeIdError::PathChar('/')),
            "a namespace with a slash must not produce a different identity shape"
        );
        assert_eq!(
            SpiffeId::istio(&td, "", "web"),
            Err(SpiffeIdError::EmptySegment)
        );
        for not_istio in [
            "spiffe://td",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
        ] {
            assert_eq!(
                SpiffeId::parse(not_istio).unwrap().istio_parts(),
                None,
                "{not_istio}"
            );
        }
    }
}
