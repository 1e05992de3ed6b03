//! JWKS documents and signature checks. The crypto is jsonwebtoken's (aws-lc-rs); this module
//! decides which keys a token may be checked with, as Envoy's jwt_verify_lib does: a key whose
//! `kid` differs from the token's is skipped, as is one whose `alg` (when set) or type does
//! not fit the token's `alg`.

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::outcome::Refusal;
use super::token::Jwt;

/// Why a JWKS document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON at all.
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but without a `keys` list.
    #[error("no \"keys\" list")]
    NoKeysList,
    /// No key is a signing key of a supported kind (RSA, EC P-256 or P-384, Ed25519).
    #[error("none of its {total} keys is a usable signing key (RSA, EC P-256/P-384, Ed25519)")]
    NoUsableKey {
        /// Keys in the document.
        total: usize,
    },
}

/// The usable keys of one JWKS.
#[derive(Debug)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Self::P256 => alg == Algorithm::ES256,
            Self::P384 => alg == Algorithm::ES384,
            Self::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// Why no key accepted a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyFailure {
    /// No key fits the token's `kid` and `alg`.
    NoMatchingKey,
    /// Some keys fit; none verifies the signature.
    BadSignature,
}

impl VerifyFailure {
    pub(crate) fn into_refusal(self, jwt: &Jwt) -> Refusal {
        let (issuer, kid, alg) = (jwt.issuer.clone(), jwt.kid.clone(), jwt.alg_name());
        match self {
            Self::NoMatchingKey => Refusal::NoMatchingKey { issuer, kid, alg },
            Self::BadSignature => Refusal::BadSignature { issuer, kid, alg },
        }
    }
}

impl KeySet {
    /// Keys the waypoint cannot use (encryption keys, HMAC secrets, other curves, malformed
    /// entries) are skipped, as Envoy skips them; a document left with none is an error.
    pub(crate) fn parse(document: &[u8]) -> Result<Self, JwksError> {
        let value: Value = serde_json::from_slice(document).map_err(JwksError::NotJson)?;
        let Some(Value::Array(entries)) = value.get("keys") else {
            return Err(JwksError::NoKeysList);
        };
        let keys: Vec<Key> = entries.iter().filter_map(Key::from_json).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                total: entries.len(),
            });
        }
        Ok(Self { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn verify(&self, jwt: &Jwt) -> Result<(), VerifyFailure> {
        let mut fitting = self.keys.iter().filter(|key| key.fits(jwt)).peekable();
        if fitting.peek().is_none() {
            return Err(VerifyFailure::NoMatchingKey);
        }
        if fitting.any(|key| key.verifies(jwt)) {
            Ok(())
        } else {
            Err(VerifyFailure::BadSignature)
        }
    }
}

impl Key {
    fn from_json(entry: &Value) -> Option<Self> {
        let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        let (kind, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => (
                KeyKind::Rsa,
                DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()?,
            ),
            AlgorithmParameters::EllipticCurve(ec) => {
                let kind = match ec.curve {
                    EllipticCurve::P256 => KeyKind::P256,
                    EllipticCurve::P384 => KeyKind::P384,
                    // P-521 (ES512) is not among the algorithms the waypoint verifies.
                    _ => return None,
                };
                (kind, DecodingKey::from_ec_components(&ec.x, &ec.y).ok()?)
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => (
                KeyKind::Ed25519,
                DecodingKey::from_ed_components(&okp.x).ok()?,
            ),
            // HMAC secrets (the waypoint refuses HS* tokens), other curves, unknown types.
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            // An `alg` that is not a supported signing algorithm (RSA-OAEP, ...) marks a key
            // this waypoint must not verify with.
            Some(alg) => Some(Algorithm::try_from(alg).ok().filter(|a| kind.fits(*a))?),
        };
        Some(Self {
            kid: jwk.common.key_id.clone(),
            alg,
            kind,
            key,
        })
    }

    fn fits(&self, jwt: &Jwt) -> bool {
        let kid_fits = match (&jwt.kid, &self.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            _ => true,
        };
        kid_fits && self.alg.is_none_or(|alg| alg == jwt.alg) && self.kind.fits(jwt.alg)
    }

    fn verifies(&self, jwt: &Jwt) -> bool {
        // Installed by `Authenticator::new`; without one nothing verifies (fail closed).
        let Some(provider) = CryptoProvider::try_get_default() else {
            return false;
        };
        let Ok(verifier) = (provider.verifier_factory)(&jwt.alg, &self.key) else {
            return false;
        };
        verifier
            .verify(jwt.signing_input.as_bytes(), &jwt.signature)
            .is_ok()
    }
}
