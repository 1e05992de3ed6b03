//! `authn` with real keys and real signatures: tokens are minted here with jsonwebtoken's
//! encoder, ES256 with the conformance suite's key pair, RS/PS/EdDSA with the fixtures in
//! `waypoint/tests/data/jwt`. Token locations, head edits and rule
//! validation are in `tests/head.rs`, remote JWKS in `tests/remote.rs`.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

mod head;
mod remote;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use http::request::Parts;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use xds_proto::mesh::waypoint::v1 as pb;

use super::*;

const ISSUER: &str = "https://auth.example.com";
const TRUSTED_KID: &str = "conformance-trusted-1";

fn conformance_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/authz/jwt")
        .join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

/// A private key and the header its tokens carry.
struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

impl Signer {
    fn trusted() -> Self {
        let pem = std::fs::read(conformance_file("trusted-key.pem")).unwrap();
        Self {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&pem).unwrap(),
            kid: Some(TRUSTED_KID.to_owned()),
        }
    }

    fn untrusted() -> Self {
        let pem = std::fs::read(conformance_file("untrusted-key.pem")).unwrap();
        Self {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&pem).unwrap(),
            kid: None,
        }
    }

    fn rsa(alg: Algorithm) -> Self {
        let pem = std::fs::read(fixture("rsa-key.pem")).unwrap();
        Self {
            alg,
            key: EncodingKey::from_rsa_pem(&pem).unwrap(),
            kid: Some("rsa-1".to_owned()),
        }
    }

    fn ed25519() -> Self {
        let pem = std::fs::read(fixture("ed25519-key.pem")).unwrap();
        Self {
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(&pem).unwrap(),
            kid: Some("ed-1".to_owned()),
        }
    }

    fn with_kid(mut self, kid: Option<&str>) -> Self {
        self.kid = kid.map(str::to_owned);
        self
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// The public half as a one-key JWKS (no `alg` when the key serves several).
    fn jwks(&self) -> String {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id.clone_from(&self.kid);
        if self.alg.family() == jsonwebtoken::AlgorithmFamily::Rsa {
            jwk.common.key_algorithm = None;
        }
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
    }
}

fn trusted_jwks() -> String {
    std::fs::read_to_string(conformance_file("trusted-jwks.json")).unwrap()
}

fn now() -> u64 {
    unix_now()
}

/// The conformance world's claims, valid for an hour.
fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": "payments", "exp": now() + 3600})
}

fn claims_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut claims = claims();
    if let Value::Object(map) = &mut claims {
        edit(map);
    }
    claims
}

fn rule(jwks: String) -> pb::JwtRule {
    pb::JwtRule {
        issuer: ISSUER.to_owned(),
        keys: Some(pb::jwt_rule::Keys::Jwks(jwks)),
        ..Default::default()
    }
}

/// The world's RequestAuthentication: trusted ES256 key, audience `payments`.
fn world_rule() -> pb::JwtRule {
    pb::JwtRule {
        audiences: vec!["payments".to_owned()],
        ..rule(trusted_jwks())
    }
}

fn rules(list: &[pb::JwtRule]) -> JwtRules {
    JwtRules::from_xds(list).unwrap()
}

fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> Parts {
    head("/v1/pay", &[("authorization", &format!("Bearer {token}"))])
}

async fn authenticate(rules: &JwtRules, head: &mut Parts) -> Outcome {
    Authenticator::new(AuthnSettings::default())
        .authenticate(rules, head)
        .await
}

fn accepted(outcome: Outcome) -> Authenticated {
    match outcome {
        Outcome::Authenticated(authenticated) => authenticated,
        other => panic!("expected Authenticated, got {other:?}"),
    }
}

fn refused(outcome: Outcome) -> Refusal {
    match outcome {
        Outcome::Refused(refusal) => refusal,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_es256_token_gives_principal_audiences_and_nested_claims() {
    let claims = claims_with(|c| {
        c.insert("aud".into(), json!(["payments", "ledger"]));
        c.insert("azp".into(), json!("web-app"));
        c.insert("groups".into(), json!(["finance", "eng"]));
        c.insert("org".into(), json!({"team": "payments", "level": 3}));
    });
    let token = Signer::trusted().sign(&claims);
    let mut request = bearer(&token);
    let got = accepted(authenticate(&rules(&[world_rule()]), &mut request).await);
    assert_eq!(
        got,
        Authenticated {
            issuer: ISSUER.to_owned(),
            subject: "alice".to_owned(),
            principal: "https://auth.example.com/alice".to_owned(),
            audiences: vec!["payments".to_owned(), "ledger".to_owned()],
            presenter: Some("web-app".to_owned()),
            claims: claims.clone(),
        }
    );
    assert_eq!(got.claims["org"]["team"], "payments");
    assert!(
        request.headers.get("authorization").is_none(),
        "the token is not forwarded by default"
    );
}

#[tokio::test]
async fn string_audience_is_a_one_element_list() {
    let token = Signer::trusted().sign(&claims());
    let got = accepted(authenticate(&rules(&[world_rule()]), &mut bearer(&token)).await);
    assert_eq!(got.audiences, vec!["payments".to_owned()]);
    assert_eq!(got.presenter, None);
}

#[tokio::test]
async fn refusals_have_envoys_status_and_body() {
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"a shared secret").unwrap(),
    )
    .unwrap();
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!("{}.{}.", encode(&json!({"alg": "none"})), encode(&claims()));
    let trusted = Signer::trusted();
    let cases = [
        (
            "untrusted key, no kid",
            Signer::untrusted().sign(&claims()),
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
        ),
        (
            "untrusted key posing with the trusted kid",
            Signer::untrusted()
                .with_kid(Some(TRUSTED_KID))
                .sign(&claims()),
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
        ),
        (
            "kid the JWKS does not have",
            Signer::untrusted()
                .with_kid(Some("conformance-untrusted-1"))
                .sign(&claims()),
            StatusCode::UNAUTHORIZED,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            "unknown issuer",
            trusted.sign(&claims_with(|c| {
                c.insert("iss".into(), json!("https://other.example.com"));
            })),
            StatusCode::UNAUTHORIZED,
            "Jwt issuer is not configured",
        ),
        (
            "no issuer",
            trusted.sign(&claims_with(|c| {
                c.remove("iss");
            })),
            StatusCode::UNAUTHORIZED,
            "Jwt issuer is not configured",
        ),
        (
            "expired an hour ago",
            trusted.sign(&claims_with(|c| {
                c.insert("exp".into(), json!(now() - 3600));
            })),
            StatusCode::UNAUTHORIZED,
            "Jwt is expired",
        ),
        (
            "not valid for another hour",
            trusted.sign(&claims_with(|c| {
                c.insert("nbf".into(), json!(now() + 3600));
            })),
            StatusCode::UNAUTHORIZED,
            "Jwt not yet valid",
        ),
        (
            "other audience",
            trusted.sign(&claims_with(|c| {
                c.insert("aud".into(), json!(["storefront"]));
            })),
            StatusCode::FORBIDDEN,
            "Audiences in Jwt are not allowed",
        ),
        (
            "no audience",
            trusted.sign(&claims_with(|c| {
                c.remove("aud");
            })),
            StatusCode::FORBIDDEN,
            "Audiences in Jwt are not allowed",
        ),
        (
            "HS256",
            hs256,
            StatusCode::UNAUTHORIZED,
            "Jwt header [alg] is not supported",
        ),
        (
            "alg none",
            alg_none,
            StatusCode::UNAUTHORIZED,
            "Jwt header [alg] is not supported",
        ),
        (
            "two sections",
            "abc.def".to_owned(),
            StatusCode::UNAUTHORIZED,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            "payload not JSON",
            format!(
                "{}.{}.c2ln",
                encode(&json!({"alg": "ES256"})),
                URL_SAFE_NO_PAD.encode("not json")
            ),
            StatusCode::UNAUTHORIZED,
            "Jwt payload is an invalid JSON",
        ),
        (
            "exp not a number",
            trusted.sign(&claims_with(|c| {
                c.insert("exp".into(), json!("tomorrow"));
            })),
            StatusCode::UNAUTHORIZED,
            "Jwt payload [exp] field is not an integer",
        ),
    ];
    let rules = rules(&[world_rule()]);
    for (name, token, status, body) in cases {
        let refusal = refused(authenticate(&rules, &mut bearer(&token)).await);
        assert_eq!(
            (refusal.status(), refusal.body()),
            (status, body),
            "{name}: {refusal}"
        );
    }
}

#[tokio::test]
async fn refusal_log_lines_name_the_issuer_and_the_failure() {
    let token = Signer::trusted().sign(&claims_with(|c| {
        c.insert("exp".into(), json!(1000));
    }));
    let line =
        refused(authenticate(&rules(&[world_rule()]), &mut bearer(&token)).await).to_string();
    assert!(
        line.contains(ISSUER) && line.contains("expired at 1000"),
        "{line}"
    );
}

#[tokio::test]
async fn clock_skew_of_a_minute_is_tolerated() {
    let trusted = Signer::trusted();
    let cases = [
        ("expired 30 s ago", json!({"exp": now() - 30})),
        ("valid from 30 s from now", json!({"nbf": now() + 30})),
        ("no exp at all", json!({"exp": null})),
        ("fractional exp", json!({"exp": (now() + 60) as f64 + 0.5})),
    ];
    let rules = rules(&[world_rule()]);
    for (name, edit) in cases {
        let claims = claims_with(|c| {
            for (key, value) in edit.as_object().unwrap() {
                if value.is_null() {
                    c.remove(key);
                } else {
                    c.insert(key.clone(), value.clone());
                }
            }
        });
        let outcome = authenticate(&rules, &mut bearer(&trusted.sign(&claims))).await;
        assert!(
            matches!(outcome, Outcome::Authenticated(_)),
            "{name}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn rsa_pss_and_eddsa_tokens_verify() {
    let cases = [
        Signer::rsa(Algorithm::RS256),
        Signer::rsa(Algorithm::RS512),
        Signer::rsa(Algorithm::PS256),
        Signer::ed25519(),
        Signer::ed25519().with_kid(None),
        Signer::trusted().with_kid(None),
    ];
    for signer in cases {
        let rules = rules(&[rule(signer.jwks())]);
        let token = signer.sign(&claims());
        let outcome = authenticate(&rules, &mut bearer(&token)).await;
        assert!(
            matches!(outcome, Outcome::Authenticated(_)),
            "{:?} kid {:?}: {outcome:?}",
            signer.alg,
            signer.kid
        );
        // An ES256 token from a key the JWKS does not hold is refused.
        let refusal =
            refused(authenticate(&rules, &mut bearer(&Signer::untrusted().sign(&claims()))).await);
        assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED, "{refusal}");
    }
}

#[tokio::test]
async fn a_key_with_an_alg_verifies_only_that_alg() {
    let rs256 = Signer::rsa(Algorithm::RS256);
    let mut jwk = Jwk::from_encoding_key(&rs256.key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("rsa-1".to_owned());
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
    let rules = rules(&[rule(jwks)]);
    accepted(authenticate(&rules, &mut bearer(&rs256.sign(&claims()))).await);
    let ps256 = Signer::rsa(Algorithm::PS256).sign(&claims());
    let refusal = refused(authenticate(&rules, &mut bearer(&ps256)).await);
    assert_eq!(
        refusal.body(),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[tokio::test]
async fn rules_sharing_an_issuer_accept_when_one_does() {
    let for_ledger = pb::JwtRule {
        audiences: vec!["ledger".to_owned()],
        ..rule(trusted_jwks())
    };
    let for_payments = pb::JwtRule {
        audiences: vec!["https://payments/".to_owned()],
        ..rule(trusted_jwks())
    };
    let rules = rules(&[for_ledger, for_payments]);
    // `https://payments/` matches `payments`, as Envoy normalises audiences.
    accepted(authenticate(&rules, &mut bearer(&Signer::trusted().sign(&claims()))).await);
    let other = Signer::trusted().sign(&claims_with(|c| {
        c.insert("aud".into(), json!("storefront"));
    }));
    let refusal = refused(authenticate(&rules, &mut bearer(&other)).await);
    assert!(
        matches!(&refusal, Refusal::AudienceNotAllowed { allowed, .. } if allowed == &["ledger"]),
        "the first rule's reason: {refusal}"
    );
}

#[test]
fn the_authenticator_and_its_future_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let authn = Authenticator::new(AuthnSettings::default());
    send_sync(&authn);
    let rules = JwtRules::default();
    let mut request = head("/", &[]);
    send(&authn.authenticate(&rules, &mut request));
}
