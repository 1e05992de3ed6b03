//! A compact JWS read before it is trusted: its issuer picks the rules, its `kid` and `alg`
//! pick the keys. Each way of being malformed maps to the text jwt_verify_lib gives it.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::outcome::{Authenticated, Malformed};

/// Base64url as JWTs use it; padding tolerated, as jwt_verify_lib tolerates it.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An unverified token.
#[derive(Debug)]
pub(crate) struct Jwt {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// Empty when the token has none (no rule has an empty issuer, so it matches none).
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) presenter: Option<String>,
    pub(crate) expires: Option<u64>,
    pub(crate) not_before: Option<u64>,
    pub(crate) claims: Value,
    /// `header.payload`, what the signature covers.
    pub(crate) signing_input: String,
    /// The payload section as sent: what `output_payload_to_header` forwards.
    pub(crate) payload_base64: String,
    pub(crate) signature: Vec<u8>,
}

/// Where `now` falls in a token's validity window (with the clock skew applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    Valid,
    NotYetValid { not_before: u64 },
    Expired { expires: u64 },
}

impl Jwt {
    pub(crate) fn parse(token: &str) -> Result<Self, Malformed> {
        let mut sections = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            sections.next(),
            sections.next(),
            sections.next(),
            sections.next(),
        ) else {
            return Err(Malformed::NotThreeSections);
        };
        let head = json_object(header, Malformed::HeaderBase64, Malformed::HeaderJson)?;
        let alg = match head.get("alg") {
            Some(Value::String(alg)) => supported_alg(alg).ok_or(Malformed::AlgNotSupported)?,
            _ => return Err(Malformed::AlgMissing),
        };
        let kid = optional_string(&head, "kid").map_err(|()| Malformed::KidNotString)?;

        let body = json_object(payload, Malformed::PayloadBase64, Malformed::PayloadJson)?;
        let issuer = optional_string(&body, "iss").map_err(|()| Malformed::IssNotString)?;
        let subject = optional_string(&body, "sub").map_err(|()| Malformed::SubNotString)?;
        let audiences = audiences(&body).ok_or(Malformed::AudNotStringOrList)?;
        let expires = optional_time(&body, "exp").map_err(|()| Malformed::ExpNotInteger)?;
        let not_before = optional_time(&body, "nbf").map_err(|()| Malformed::NbfNotInteger)?;
        // `azp` is only reported, never checked, so a non-string one is ignored.
        let presenter = optional_string(&body, "azp").ok().flatten();

        let signature = BASE64URL
            .decode(signature)
            .map_err(|_| Malformed::SignatureBase64)?;
        Ok(Self {
            alg,
            kid,
            issuer: issuer.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            audiences,
            presenter,
            expires,
            not_before,
            claims: Value::Object(body),
            signing_input: format!("{header}.{payload}"),
            payload_base64: payload.to_owned(),
            signature,
        })
    }

    /// Envoy's checks: `nbf` first, then `exp`; an `exp` of 0 counts as none, and a token
    /// without `exp` never expires.
    pub(crate) fn lifetime(&self, now: u64, skew: u64) -> Lifetime {
        if let Some(not_before) = self.not_before
            && now.saturating_add(skew) < not_before
        {
            return Lifetime::NotYetValid { not_before };
        }
        match self.expires {
            Some(expires) if expires != 0 && now > expires.saturating_add(skew) => {
                Lifetime::Expired { expires }
            }
            _ => Lifetime::Valid,
        }
    }

    pub(crate) fn alg_name(&self) -> String {
        format!("{:?}", self.alg)
    }

    pub(crate) fn into_authenticated(self) -> Authenticated {
        Authenticated {
            principal: format!("{}/{}", self.issuer, self.subject),
            issuer: self.issuer,
            subject: self.subject,
            audiences: self.audiences,
            presenter: self.presenter,
            claims: self.claims,
        }
    }
}

/// The algorithms Istio's waypoint (Envoy) verifies with public keys. HMAC and `none` are
/// refused outright: a RequestAuthentication never carries a shared secret.
fn supported_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn json_object(
    section: &str,
    bad_base64: Malformed,
    bad_json: Malformed,
) -> Result<Map<String, Value>, Malformed> {
    let bytes = BASE64URL.decode(section).map_err(|_| bad_base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_json),
    }
}

fn optional_string(map: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(()),
    }
}

/// `aud` as a string or a list of strings; absent: none. `None`: any other shape.
fn audiences(map: &Map<String, Value>) -> Option<Vec<String>> {
    match map.get("aud") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(aud)) => Some(vec![aud.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Some(_) => None,
    }
}

/// A NumericDate. jwt_verify_lib reads it as a double and truncates, so `1700000000.5` is
/// accepted as `1700000000`; negative, non-finite or too large values are refused.
fn optional_time(map: &Map<String, Value>, name: &str) -> Result<Option<u64>, ()> {
    let Some(value) = map.get(name) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(());
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(whole));
    }
    match number.as_f64() {
        // Range-checked in the guard, so the cast only drops the fraction.
        Some(seconds) if seconds.is_finite() && (0.0..1.8e19).contains(&seconds) => {
            Ok(Some(seconds.trunc() as u64))
        }
        _ => Err(()),
    }
}
