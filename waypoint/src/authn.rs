//! JWT request authentication (RequestAuthentication `jwtRules`). PLACEHOLDER until the real
//! module lands: accepts no tokens.

use xds_proto::mesh::waypoint::v1 as pb;

/// Validated rules.
#[derive(Default)]
pub struct JwtRules {
    count: usize,
}

/// Why rules were refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid jwt rule")]
pub struct InvalidJwtRule;

impl JwtRules {
    /// Validates rules.
    pub fn from_xds(rules: &[pb::JwtRule]) -> Result<Self, InvalidJwtRule> {
        Ok(Self { count: rules.len() })
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Authenticator settings.
#[derive(Debug, Clone, Default)]
pub struct AuthnSettings;

/// Validates tokens.
pub struct Authenticator;

impl Authenticator {
    /// A new authenticator.
    pub fn new(_settings: AuthnSettings) -> Self {
        Self
    }
    /// Authenticates.
    pub async fn authenticate(
        &self,
        _rules: &JwtRules,
        _request: &mut http::request::Parts,
    ) -> Outcome {
        Outcome::NoToken
    }
}

/// The result.
pub enum Outcome {
    /// No token.
    NoToken,
    /// A valid token.
    Authenticated(Authenticated),
    /// A bad token.
    Refused(Refusal),
}

/// A valid token.
pub struct Authenticated {
    /// iss
    pub issuer: String,
    /// sub
    pub subject: String,
    /// iss/sub
    pub principal: String,
    /// aud
    pub audiences: Vec<String>,
    /// azp
    pub presenter: Option<String>,
    /// payload
    pub claims: serde_json::Value,
}

/// A refusal.
#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refusal;

impl Refusal {
    /// Status.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::UNAUTHORIZED
    }
    /// Body.
    pub fn body(&self) -> &'static str {
        "Jwt verification fails"
    }
}
