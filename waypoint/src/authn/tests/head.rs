//! Where tokens are looked for, how an accepted token edits the request head, and which rules
//! `from_xds` rejects.

use super::*;

#[tokio::test]
async fn without_a_token_the_request_is_not_refused() {
    let rules = rules(&[world_rule()]);
    let cases = [
        ("no header", head("/v1/pay", &[])),
        (
            "another scheme",
            head("/v1/pay", &[("authorization", "Basic YTpi")]),
        ),
        (
            "empty bearer",
            head("/v1/pay", &[("authorization", "Bearer ")]),
        ),
        ("another parameter", head("/v1/pay?token=abc", &[])),
    ];
    for (name, mut request) in cases {
        let before = request.clone();
        let outcome = authenticate(&rules, &mut request).await;
        assert!(matches!(outcome, Outcome::NoToken), "{name}: {outcome:?}");
        assert_eq!(request.headers, before.headers, "{name}");
    }
    let token = Signer::trusted().sign(&claims());
    let outcome = authenticate(&JwtRules::default(), &mut bearer(&token)).await;
    assert!(matches!(outcome, Outcome::NoToken), "no rules: {outcome:?}");
}

#[tokio::test]
async fn from_headers_with_a_custom_prefix() {
    let custom = pb::JwtRule {
        from_headers: vec![pb::JwtHeader {
            name: "X-Jwt-Assertion".to_owned(),
            prefix: "Token ".to_owned(),
        }],
        ..world_rule()
    };
    let rules = rules(&[custom]);
    let token = Signer::trusted().sign(&claims());
    let mut request = head(
        "/v1/pay",
        &[
            ("x-jwt-assertion", &format!("token {token}")),
            ("x-other", "1"),
        ],
    );
    accepted(authenticate(&rules, &mut request).await);
    assert!(request.headers.get("x-jwt-assertion").is_none());
    assert_eq!(request.headers["x-other"], "1");

    // A rule with its own locations does not read the default ones.
    let outcome = authenticate(&rules, &mut bearer(&token)).await;
    assert!(matches!(outcome, Outcome::NoToken), "{outcome:?}");
}

#[tokio::test]
async fn from_params_removes_only_the_token_parameter() {
    let by_param = pb::JwtRule {
        from_params: vec!["token".to_owned()],
        ..world_rule()
    };
    let token = Signer::trusted().sign(&claims());
    let mut request = head(&format!("/v1/pay?a=1&token={token}&b=two"), &[]);
    accepted(authenticate(&rules(&[by_param]), &mut request).await);
    assert_eq!(request.uri, "/v1/pay?a=1&b=two");

    // The default locations include `access_token`; the last parameter leaves no `?`.
    let mut request = head(&format!("/v1/pay?access_token={token}"), &[]);
    accepted(authenticate(&rules(&[world_rule()]), &mut request).await);
    assert_eq!(request.uri, "/v1/pay");
}

#[tokio::test]
async fn forward_original_token_keeps_it() {
    let forward = pb::JwtRule {
        forward_original_token: true,
        ..world_rule()
    };
    let rules = rules(&[forward]);
    let token = Signer::trusted().sign(&claims());
    let mut request = bearer(&token);
    accepted(authenticate(&rules, &mut request).await);
    assert_eq!(request.headers["authorization"], format!("Bearer {token}"));

    let mut request = head(&format!("/v1/pay?access_token={token}"), &[]);
    accepted(authenticate(&rules, &mut request).await);
    assert_eq!(
        request.uri.query(),
        Some(format!("access_token={token}").as_str())
    );
}

#[tokio::test]
async fn payload_and_claims_are_written_to_headers() {
    let outputs = pb::JwtRule {
        output_payload_to_header: "x-jwt-payload".to_owned(),
        output_claim_to_headers: vec![
            pb::ClaimToHeader {
                header: "x-team".to_owned(),
                claim: "org.team".to_owned(),
            },
            pb::ClaimToHeader {
                header: "x-groups".to_owned(),
                claim: "groups".to_owned(),
            },
            pb::ClaimToHeader {
                header: "x-level".to_owned(),
                claim: "org.level".to_owned(),
            },
            pb::ClaimToHeader {
                header: "x-missing".to_owned(),
                claim: "nope".to_owned(),
            },
        ],
        ..world_rule()
    };
    let claims = claims_with(|c| {
        c.insert("groups".into(), json!(["finance", "eng"]));
        c.insert("org".into(), json!({"team": "payments", "level": 3}));
    });
    let token = Signer::trusted().sign(&claims);
    let mut request = head(
        "/v1/pay",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-team", "spoofed"),
            ("x-missing", "spoofed"),
        ],
    );
    accepted(authenticate(&rules(&[outputs]), &mut request).await);

    let payload = request.headers["x-jwt-payload"].to_str().unwrap();
    assert_eq!(
        payload,
        token.split('.').nth(1).unwrap(),
        "the payload as sent"
    );
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(decoded, claims);
    assert_eq!(request.headers["x-team"], "payments");
    assert_eq!(request.headers["x-groups"], "finance,eng");
    assert_eq!(request.headers["x-level"], "3");
    assert!(request.headers.get("x-missing").is_none());
}

#[tokio::test]
async fn a_rule_vouches_only_for_its_own_locations() {
    let other_issuer = pb::JwtRule {
        issuer: "https://other.example.com".to_owned(),
        from_headers: vec![pb::JwtHeader {
            name: "x-other-jwt".to_owned(),
            prefix: String::new(),
        }],
        ..rule(trusted_jwks())
    };
    let rules = rules(&[world_rule(), other_issuer]);
    // A token for the world's issuer, sent where only the other rule looks.
    let token = Signer::trusted().sign(&claims());
    let mut request = head("/v1/pay", &[("x-other-jwt", &token)]);
    let refusal = refused(authenticate(&rules, &mut request).await);
    assert_eq!(refusal.body(), "Jwt issuer is not configured", "{refusal}");
}

#[test]
fn bad_rules_are_rejected_naming_index_issuer_and_field() {
    let cases = [
        (
            pb::JwtRule {
                issuer: String::new(),
                ..world_rule()
            },
            "issuer",
        ),
        (
            pb::JwtRule {
                keys: None,
                ..world_rule()
            },
            "jwks",
        ),
        (rule("{not json".to_owned()), "jwks"),
        (
            rule(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.to_owned()),
            "jwks",
        ),
        (
            pb::JwtRule {
                keys: Some(pb::jwt_rule::Keys::JwksUri(
                    "ftp://keys.example.com/".to_owned(),
                )),
                ..world_rule()
            },
            "jwks_uri",
        ),
        (
            pb::JwtRule {
                from_headers: vec![pb::JwtHeader {
                    name: "bad header".to_owned(),
                    prefix: String::new(),
                }],
                ..world_rule()
            },
            "from_headers[0].name",
        ),
        (
            pb::JwtRule {
                from_params: vec![String::new()],
                ..world_rule()
            },
            "from_params[0]",
        ),
        (
            pb::JwtRule {
                output_claim_to_headers: vec![pb::ClaimToHeader {
                    header: "x-sub".to_owned(),
                    claim: "a..b".to_owned(),
                }],
                ..world_rule()
            },
            "output_claim_to_headers[0].claim",
        ),
    ];
    for (bad, field) in cases {
        let err = JwtRules::from_xds(&[world_rule(), bad.clone()]).unwrap_err();
        assert_eq!((err.index, err.field.as_str()), (1, field), "{err}");
        assert_eq!(err.issuer, bad.issuer);
        assert!(
            err.to_string().contains(&format!("{:?}", bad.issuer)),
            "{err}"
        );
    }
}

#[test]
fn inline_jwks_errors_explain_the_document() {
    let err = JwtRules::from_xds(&[rule(
        r#"{"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#.to_owned(),
    )])
    .unwrap_err();
    let line = mesh::errors::chain(&err);
    assert!(
        line.contains("https://auth.example.com")
            && line.contains("field jwks")
            && line.contains("none of its 1 keys is a usable signing key"),
        "{line}"
    );
}
