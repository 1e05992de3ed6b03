//! JWT request authentication: RequestAuthentication `jwtRules` applied the way Envoy's
//! `jwt_authn` filter applies them when Istio configures it, so a request gets the verdict (and
//! the 401/403 body) it would get from an upstream waypoint.
//!
//! One request runs in phases: find a token where the rules say ([`extract`]), read it without
//! trusting it ([`token`]), pick the rules for its issuer and location, check its lifetime and
//! audience, get the issuer's keys (inline, or the remote cache in [`jwks`]), verify the
//! signature ([`keys`]), then edit the request head. Envoy's order is kept (time and audience
//! before keys) so the same token fails with the same body.
//!
//! More than one token in a request: the first location (in rule order, headers before params
//! within a rule) that holds one decides, and only that token is validated. Envoy with Istio's
//! `requires_any` would try each; a client that sends two different tokens is rare enough that
//! the simpler rule wins.
//!
//! This module knows no policy: [`Authenticated`] carries what authorization matches on.

mod extract;
mod fetch;
mod jwks;
mod keys;
mod outcome;
mod rules;
mod token;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::crypto::CryptoProvider;

pub use fetch::{FetchError, MAX_JWKS_BODY};
pub use keys::JwksError;
pub use outcome::{Authenticated, Malformed, Outcome, Refusal};
pub use rules::{InvalidJwtRule, JwtRules, RuleProblem};

use jwks::RemoteKeys;
use rules::{Keys, Location, Rule};
use token::{Jwt, Lifetime};

/// Limit of one JWKS fetch when the rule sets no `jwks_fetch_timeout_ms`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Age after which fetched keys are refreshed (in the background; the old keys keep serving).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// Shortest gap between two fetch attempts of one URI, so an unreachable JWKS server costs one
/// attempt per interval rather than one per request.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Tolerance on `exp` and `nbf`, Envoy's default.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Trust roots for `https` JWKS URIs when neither the settings nor `SSL_CERT_FILE` name a file.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the [`Authenticator`] fetches remote keys and judges token lifetimes.
#[derive(Debug, Clone)]
pub struct AuthnSettings {
    /// Limit of one JWKS fetch when the rule sets none.
    pub fetch_timeout: Duration,
    /// Age after which fetched keys are refreshed.
    pub refresh_interval: Duration,
    /// Shortest gap between two fetch attempts of one URI.
    pub retry_interval: Duration,
    /// Tolerance on `exp` and `nbf`.
    pub clock_skew: Duration,
    /// PEM bundle of roots for `https` JWKS URIs; `None`: the file `SSL_CERT_FILE` names, else
    /// [`DEFAULT_CA_FILE`], read at the first `https` fetch.
    pub ca_file: Option<PathBuf>,
}

impl Default for AuthnSettings {
    fn default() -> Self {
        Self {
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            clock_skew: DEFAULT_CLOCK_SKEW,
            ca_file: None,
        }
    }
}

/// Validates tokens against [`JwtRules`]. Cheap to clone: clones share the remote key cache.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    clock_skew: Duration,
    remote: RemoteKeys,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("clock_skew", &self.inner.clock_skew)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with an empty key cache.
    pub fn new(settings: AuthnSettings) -> Self {
        // jsonwebtoken picks its provider from crate features and would panic at the first
        // verification if a future feature change left it two or none; pinning aws-lc-rs here
        // (ignored when one is installed already) keeps that out of the request path.
        if CryptoProvider::try_get_default().is_none() {
            let _already_installed =
                jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        }
        Self {
            inner: Arc::new(Inner {
                clock_skew: settings.clock_skew,
                remote: RemoteKeys::new(&settings),
            }),
        }
    }

    /// Starts fetching, in the background, the remote keys of `rules` that were never fetched,
    /// so the first request with a token does not wait for them. Without a tokio runtime it
    /// does nothing (the first request fetches instead).
    pub fn prefetch(&self, rules: &JwtRules) {
        for rule in rules.iter() {
            if let Keys::Remote(remote) = &rule.keys {
                self.inner.remote.prefetch(remote);
            }
        }
    }

    /// Looks for a token where the rules say, validates it, and edits the request head: removes
    /// the token (header or query parameter) unless `forward_original_token`, and adds
    /// `output_payload_to_header` (the token's base64url payload, as Envoy does) and
    /// `output_claim_to_headers`. The head is only edited when the token is accepted.
    pub async fn authenticate(
        &self,
        rules: &JwtRules,
        request: &mut http::request::Parts,
    ) -> Outcome {
        let Some(found) = extract::find(rules.locations(), request) else {
            return Outcome::NoToken;
        };
        match self.validate(rules, found.location, &found.token).await {
            Ok((rule, jwt)) => {
                if !rule.forward_original_token {
                    extract::remove(found.location, request);
                }
                extract::write_outputs(rule, &jwt, &mut request.headers);
                Outcome::Authenticated(jwt.into_authenticated())
            }
            Err(refusal) => Outcome::Refused(refusal),
        }
    }

    async fn validate<'r>(
        &self,
        rules: &'r JwtRules,
        location: &Location,
        token: &str,
    ) -> Result<(&'r Rule, Jwt), Refusal> {
        let jwt = Jwt::parse(token).map_err(|problem| Refusal::Malformed {
            location: location.to_string(),
            problem,
        })?;
        // Several rules may share an issuer (say, with different audiences): the token is
        // accepted when one of them accepts it, and refused with the first one's reason.
        let candidates = rules.for_token(location, &jwt.issuer);
        let mut first_refusal = None;
        for rule in candidates {
            match self.check(rule, &jwt).await {
                Ok(()) => return Ok((rule, jwt)),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| Refusal::UnknownIssuer {
            location: location.to_string(),
            issuer: jwt.issuer.clone(),
        }))
    }

    async fn check(&self, rule: &Rule, jwt: &Jwt) -> Result<(), Refusal> {
        let skew = self.inner.clock_skew.as_secs();
        let now = unix_now();
        match jwt.lifetime(now, skew) {
            Lifetime::Valid => {}
            Lifetime::NotYetValid { not_before } => {
                return Err(Refusal::NotYetValid {
                    issuer: jwt.issuer.clone(),
                    not_before,
                    now,
                    skew,
                });
            }
            Lifetime::Expired { expires } => {
                return Err(Refusal::Expired {
                    issuer: jwt.issuer.clone(),
                    expires,
                    now,
                    skew,
                });
            }
        }
        if !rule.accepts_audiences(&jwt.audiences) {
            return Err(Refusal::AudienceNotAllowed {
                issuer: jwt.issuer.clone(),
                audiences: jwt.audiences.clone(),
                allowed: rule.audiences.clone(),
            });
        }
        let keys =
            match &rule.keys {
                Keys::Inline(keys) => Arc::clone(keys),
                Keys::Remote(remote) => self.inner.remote.keys(remote).await.map_err(|cause| {
                    Refusal::JwksUnavailable {
                        issuer: jwt.issuer.clone(),
                        uri: remote.uri.to_string(),
                        cause,
                    }
                })?,
            };
        keys.verify(jwt)
            .map_err(|failure| failure.into_refusal(jwt))
    }
}

/// Seconds since the epoch; a clock before 1970 reads as 0, which only makes `nbf` stricter.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
