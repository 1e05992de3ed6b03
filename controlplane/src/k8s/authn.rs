//! `security.istio.io` `PeerAuthentication` (mTLS modes, policy.md §4) and
//! `RequestAuthentication` (JWT rules, policy.md §3). RequestAuthentication is only kept as
//! structured data for the waypoint: ztunnel ignores it.

use std::collections::BTreeMap;

use super::attachment::{Attachment, TargetRef, read_attachment, read_selector};
use super::core_v1::one_of;
use super::error::{FieldError, Problem};
use super::meta::{Labels, ObjectMeta};
use super::yaml::{Cursor, Fields};

/// A PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// Metadata (`creationTimestamp` decides which of two policies of one level wins).
    pub meta: ObjectMeta,
    /// `spec.selector.matchLabels`; `None` for a namespace- or mesh-wide policy.
    pub selector: Option<Labels>,
    /// `spec.mtls.mode`; `Unset` when absent.
    pub mode: MtlsMode,
    /// `spec.portLevelMtls`: workload (container) port → mode.
    pub port_level: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthentication {
    /// Whether the policy has a selector with labels (else it is namespace- or mesh-wide; an
    /// empty selector counts as none, as istiod reads it).
    pub fn has_workload_selector(&self) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|labels| !labels.is_empty())
    }
}

/// An mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Inherit from the parent level (PERMISSIVE when nothing is inherited).
    Unset,
    /// Plaintext accepted (HBONE stays on in ambient).
    Disable,
    /// Plaintext and mTLS accepted.
    Permissive,
    /// Plaintext refused.
    Strict,
}

const MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

fn read_mode(fields: &Fields<'_>) -> Result<MtlsMode, FieldError> {
    fields.deny_unknown(&["mode"])?;
    let mode = fields.with("mode", |c| {
        one_of(c, MODES).map(|mode| match mode {
            "DISABLE" => MtlsMode::Disable,
            "PERMISSIVE" => MtlsMode::Permissive,
            "STRICT" => MtlsMode::Strict,
            _ => MtlsMode::Unset,
        })
    })?;
    Ok(mode.unwrap_or(MtlsMode::Unset))
}

impl PeerAuthentication {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        let spec = object
            .with("spec", Cursor::mapping)?
            .unwrap_or_else(|| Fields::empty(object.path().field("spec")));
        spec.deny_unknown(&["selector", "mtls", "portLevelMtls"])?;
        let selector = spec.with("selector", read_selector)?;
        let mode = match spec.with("mtls", Cursor::mapping)? {
            Some(mtls) => read_mode(&mtls)?,
            None => MtlsMode::Unset,
        };
        let mut port_level = BTreeMap::new();
        if let Some(ports) = spec.with("portLevelMtls", Cursor::mapping)? {
            for (key, value) in ports.entries()? {
                let port = key
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| value.path().error(Problem::NotPort(key.clone())))?;
                port_level.insert(port, read_mode(&value.mapping()?)?);
            }
        }
        let policy = Self {
            meta,
            selector,
            mode,
            port_level,
        };
        if !policy.port_level.is_empty() && !policy.has_workload_selector() {
            return Err(spec
                .path()
                .field("portLevelMtls")
                .error(Problem::PortLevelWithoutSelector));
        }
        Ok(policy)
    }
}

/// Most `jwtRules` Istio accepts.
pub const MAX_JWT_RULES: usize = 4096;

/// A RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthentication {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `spec.selector.matchLabels` (ignored by waypoints).
    pub selector: Option<Labels>,
    /// `spec.targetRefs` (with a legacy `spec.targetRef` folded in).
    pub target_refs: Vec<TargetRef>,
    /// `spec.jwtRules`.
    pub jwt_rules: Vec<JwtRule>,
}

/// One `jwtRules` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRule {
    /// `issuer`: must equal the token's `iss`.
    pub issuer: String,
    /// `audiences`: the token's `aud` must contain one; empty = no check.
    pub audiences: Vec<String>,
    /// `jwksUri`.
    pub jwks_uri: Option<String>,
    /// `jwks`: inline JWKS JSON.
    pub jwks: Option<String>,
    /// `fromHeaders`.
    pub from_headers: Vec<JwtHeader>,
    /// `fromParams`.
    pub from_params: Vec<String>,
    /// `fromCookies`.
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<String>,
    /// `outputClaimToHeaders`.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
    /// `timeout`, as written (e.g. `5s`).
    pub timeout: Option<String>,
    /// `spaceDelimitedClaims`.
    pub space_delimited_claims: Vec<String>,
}

/// A header a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    pub prefix: Option<String>,
}

/// A claim copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name (dot-nested).
    pub claim: String,
}

const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
    "timeout",
    "spaceDelimitedClaims",
];

impl RequestAuthentication {
    pub(crate) fn read(meta: ObjectMeta, object: &Fields<'_>) -> Result<Self, FieldError> {
        let spec = object
            .with("spec", Cursor::mapping)?
            .unwrap_or_else(|| Fields::empty(object.path().field("spec")));
        spec.deny_unknown(&["selector", "targetRef", "targetRefs", "jwtRules"])?;
        let Attachment {
            selector,
            target_refs,
        } = read_attachment(&spec)?;
        let jwt_rules = spec.list("jwtRules", read_jwt_rule)?;
        if jwt_rules.len() > MAX_JWT_RULES {
            return Err(spec.path().field("jwtRules").error(Problem::TooMany {
                max: MAX_JWT_RULES,
                found: jwt_rules.len(),
            }));
        }
        Ok(Self {
            meta,
            selector,
            target_refs,
            jwt_rules,
        })
    }
}

fn read_jwt_rule(cursor: &Cursor<'_>) -> Result<JwtRule, FieldError> {
    let fields = cursor.mapping()?;
    fields.deny_unknown(JWT_RULE_FIELDS)?;
    if fields.has("jwks") && fields.has("jwksUri") {
        return Err(fields
            .path()
            .field("jwks")
            .error(Problem::Exclusive("jwks", "jwksUri")));
    }
    let name = |c: &Cursor<'_>| c.non_empty_str().map(str::to_owned);
    Ok(JwtRule {
        issuer: fields.require("issuer", name)?,
        audiences: fields.strings("audiences")?,
        jwks_uri: fields.opt_name("jwksUri")?,
        jwks: fields.opt_name("jwks")?,
        from_headers: fields.list("fromHeaders", |c| {
            let header = c.mapping()?;
            header.deny_unknown(&["name", "prefix"])?;
            Ok(JwtHeader {
                name: header.require("name", name)?,
                prefix: header.opt_str("prefix")?,
            })
        })?,
        from_params: fields.strings("fromParams")?,
        from_cookies: fields.strings("fromCookies")?,
        output_payload_to_header: fields.opt_name("outputPayloadToHeader")?,
        output_claim_to_headers: fields.list("outputClaimToHeaders", |c| {
            let entry = c.mapping()?;
            entry.deny_unknown(&["header", "claim"])?;
            Ok(ClaimToHeader {
                header: entry.require("header", name)?,
                claim: entry.require("claim", name)?,
            })
        })?,
        forward_original_token: fields.flag("forwardOriginalToken")?,
        timeout: fields.opt_name("timeout")?,
        space_delimited_claims: fields.strings("spaceDelimitedClaims")?,
    })
}
