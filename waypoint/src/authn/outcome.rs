//! What authentication concludes about one request, and the status and body a refusal gets:
//! both decided here, in one exhaustive `match` each, with Envoy's texts.

use std::sync::Arc;

use http::StatusCode;

use super::fetch::FetchError;

/// The verdict on one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No token in any place a rule names: unauthenticated but not refused.
    NoToken,
    /// A token was presented and accepted.
    Authenticated(Authenticated),
    /// A token was presented and failed.
    Refused(Refusal),
}

/// What a validated token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// `iss`.
    pub issuer: String,
    /// `sub`; empty when the token has none.
    pub subject: String,
    /// `<iss>/<sub>`: what `requestPrincipals` matches.
    pub principal: String,
    /// The token's `aud` (string or list).
    pub audiences: Vec<String>,
    /// `azp`, when present.
    pub presenter: Option<String>,
    /// The whole payload, for `request.auth.claims[...]`.
    pub claims: serde_json::Value,
}

/// Why a presented token was refused. `Display` is the log line; [`Refusal::body`] is what the
/// client is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The token is not a well-formed JWT.
    #[error("token in {location} is malformed: {problem}")]
    Malformed {
        /// Where the token was found.
        location: String,
        /// What is wrong with it.
        problem: Malformed,
    },
    /// No rule has the token's issuer for the place the token was found.
    #[error("token in {location} has issuer {issuer:?}, which no rule for that location names")]
    UnknownIssuer {
        /// Where the token was found.
        location: String,
        /// The token's `iss` (empty when it has none).
        issuer: String,
    },
    /// `exp` (plus the clock skew) is in the past.
    #[error("token from {issuer:?} expired at {expires} (now {now}, clock skew {skew}s)")]
    Expired {
        /// The token's `iss`.
        issuer: String,
        /// `exp`, seconds since the epoch.
        expires: u64,
        /// The waypoint's clock, seconds since the epoch.
        now: u64,
        /// Tolerance applied, in seconds.
        skew: u64,
    },
    /// `nbf` (minus the clock skew) is in the future.
    #[error("token from {issuer:?} not valid before {not_before} (now {now}, clock skew {skew}s)")]
    NotYetValid {
        /// The token's `iss`.
        issuer: String,
        /// `nbf`, seconds since the epoch.
        not_before: u64,
        /// The waypoint's clock, seconds since the epoch.
        now: u64,
        /// Tolerance applied, in seconds.
        skew: u64,
    },
    /// None of the token's audiences is one the rule accepts.
    #[error("token from {issuer:?} has audiences {audiences:?}, none of {allowed:?}")]
    AudienceNotAllowed {
        /// The token's `iss`.
        issuer: String,
        /// The token's `aud`.
        audiences: Vec<String>,
        /// The rule's audiences (normalised: no scheme, no trailing `/`).
        allowed: Vec<String>,
    },
    /// No key of the issuer's JWKS fits the token's `kid` and `alg`.
    #[error("token from {issuer:?} (alg {alg}, kid {kid:?}): no key in the JWKS fits")]
    NoMatchingKey {
        /// The token's `iss`.
        issuer: String,
        /// The token's `kid`.
        kid: Option<String>,
        /// The token's `alg`.
        alg: String,
    },
    /// Keys fit, but none verifies the signature.
    #[error("token from {issuer:?} (alg {alg}, kid {kid:?}): signature verifies with no key")]
    BadSignature {
        /// The token's `iss`.
        issuer: String,
        /// The token's `kid`.
        kid: Option<String>,
        /// The token's `alg`.
        alg: String,
    },
    /// The issuer's keys are remote and have never been fetched.
    #[error("token from {issuer:?}: JWKS {uri} never fetched")]
    JwksUnavailable {
        /// The token's `iss`.
        issuer: String,
        /// The rule's `jwks_uri`.
        uri: String,
        /// The last fetch's failure.
        #[source]
        cause: Arc<FetchError>,
    },
}

/// How a token is malformed; `Display` is jwt_verify_lib's text for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not three dot-separated sections.
    NotThreeSections,
    /// The header is not base64url.
    HeaderBase64,
    /// The header is not a JSON object.
    HeaderJson,
    /// The header has no string `alg`.
    AlgMissing,
    /// `alg` is not one the waypoint verifies (HS*, `none`, ...).
    AlgNotSupported,
    /// `kid` is not a string.
    KidNotString,
    /// The payload is not base64url.
    PayloadBase64,
    /// The payload is not a JSON object.
    PayloadJson,
    /// `iss` is not a string.
    IssNotString,
    /// `sub` is not a string.
    SubNotString,
    /// `aud` is neither a string nor a list of strings.
    AudNotStringOrList,
    /// `exp` is not a non-negative number.
    ExpNotInteger,
    /// `nbf` is not a non-negative number.
    NbfNotInteger,
    /// The signature is not base64url.
    SignatureBase64,
}

impl Refusal {
    /// 401, except an audience mismatch: 403, as Envoy answers.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::AudienceNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::Malformed { .. }
            | Self::UnknownIssuer { .. }
            | Self::Expired { .. }
            | Self::NotYetValid { .. }
            | Self::NoMatchingKey { .. }
            | Self::BadSignature { .. }
            | Self::JwksUnavailable { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    /// The response body Envoy sends for this failure.
    pub fn body(&self) -> &'static str {
        match self {
            Self::Malformed { problem, .. } => problem.text(),
            Self::UnknownIssuer { .. } => "Jwt issuer is not configured",
            Self::Expired { .. } => "Jwt is expired",
            Self::NotYetValid { .. } => "Jwt not yet valid",
            Self::AudienceNotAllowed { .. } => "Audiences in Jwt are not allowed",
            Self::NoMatchingKey { .. } => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::BadSignature { .. } => "Jwt verification fails",
            Self::JwksUnavailable { .. } => "Jwks remote fetch is failed",
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

impl std::error::Error for Malformed {}

impl Malformed {
    fn text(self) -> &'static str {
        match self {
            Self::NotThreeSections => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::HeaderBase64 => "Jwt header is an invalid Base64url encoded",
            Self::HeaderJson => "Jwt header is an invalid JSON",
            Self::AlgMissing => "Jwt header [alg] field is required and must be a string",
            Self::AlgNotSupported => "Jwt header [alg] is not supported",
            Self::KidNotString => "Jwt header [kid] field is not a string",
            Self::PayloadBase64 => "Jwt payload is an invalid Base64url encoded",
            Self::PayloadJson => "Jwt payload is an invalid JSON",
            Self::IssNotString => "Jwt payload [iss] field is not a string",
            Self::SubNotString => "Jwt payload [sub] field is not a string",
            Self::AudNotStringOrList => "Jwt payload [aud] field is not a string or string list",
            Self::ExpNotInteger => "Jwt payload [exp] field is not an integer",
            Self::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Self::SignatureBase64 => "Jwt signature is an invalid Base64url encoded",
        }
    }
}
