#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;

use super::*;

fn auth(issuer: &str, subject: &str, claims: serde_json::Value) -> RequestAuth {
    RequestAuth {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        audiences: vec!["payments".to_owned()],
        presenter: Some("web-app".to_owned()),
        claims,
    }
}

fn attrs<'a>(headers: &'a HeaderMap, auth: Option<&'a RequestAuth>) -> RequestAttrs<'a> {
    RequestAttrs {
        method: "GET",
        path: "/v1/pay",
        host: "API.payments:80",
        headers,
        remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        auth,
    }
}

fn exact(v: &str) -> StringMatch {
    StringMatch::Exact(v.to_owned())
}

#[test]
fn request_principal_is_split_at_the_last_slash() {
    let cases = [
        (StringMatch::Presence, "https://a.example/x", "alice", true),
        (StringMatch::Presence, "https://a.example/x", "", false),
        (
            exact("https://a.example/x/alice"),
            "https://a.example/x",
            "alice",
            true,
        ),
        (
            exact("https://a.example/x/alice"),
            "https://a.example",
            "x/alice",
            false,
        ),
        // `*example/x/alice`: issuer suffix and exact subject.
        (
            StringMatch::Suffix("example/x/alice".to_owned()),
            "https://a.example/x",
            "alice",
            true,
        ),
        (
            StringMatch::Suffix("/alice".to_owned()),
            "anything",
            "alice",
            true,
        ),
        (
            StringMatch::Suffix("/alice".to_owned()),
            "anything",
            "malice",
            false,
        ),
        // `*ice`: any issuer, subject suffix.
        (
            StringMatch::Suffix("ice".to_owned()),
            "anything",
            "alice",
            true,
        ),
        // `https://a.example/x/al*`: exact issuer, subject prefix.
        (
            StringMatch::Prefix("https://a.example/x/al".to_owned()),
            "https://a.example/x",
            "alice",
            true,
        ),
        (
            StringMatch::Prefix("https://a.example/x/al".to_owned()),
            "https://b.example/x",
            "alice",
            false,
        ),
        // `https*`: issuer prefix, any subject.
        (
            StringMatch::Prefix("https".to_owned()),
            "https://a.example",
            "bob",
            true,
        ),
    ];
    for (pattern, issuer, subject, want) in cases {
        assert_eq!(
            request_principal_matches(&pattern, issuer, subject),
            want,
            "{pattern:?} against {issuer} / {subject}"
        );
    }
}

#[test]
fn claims_follow_nested_objects_and_lists() {
    let claims = serde_json::json!({
        "groups": ["finance", "eng"],
        "org": {"team": "payments"},
        "a.b": "literal",
        "admin": true,
    });
    let claim = |path: &[&str], value: &str| ClaimMatch {
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        value: exact(value),
    };
    assert!(claim_matches(&claim(&["groups"], "finance"), &claims));
    assert!(!claim_matches(&claim(&["groups"], "ops"), &claims));
    assert!(claim_matches(&claim(&["org", "team"], "payments"), &claims));
    assert!(!claim_matches(&claim(&["org"], "payments"), &claims));
    assert!(claim_matches(&claim(&["a.b"], "literal"), &claims));
    assert!(!claim_matches(&claim(&["a", "b"], "literal"), &claims));
    assert!(claim_matches(&claim(&["admin"], "true"), &claims));
    assert!(!claim_matches(&claim(&["missing"], "x"), &claims));
}

#[test]
fn headers_match_case_insensitively_by_name_and_joined_values() {
    let mut headers = HeaderMap::new();
    headers.append("x-env", "prod".parse().unwrap());
    headers.append("x-tags", "a".parse().unwrap());
    headers.append("x-tags", "b".parse().unwrap());
    let header = |name: &str, value: StringMatch| HeaderMatch {
        name: name.to_owned(),
        value,
    };
    assert!(header_matches(&header("x-env", exact("prod")), &headers));
    assert!(!header_matches(
        &header("x-env", exact("staging")),
        &headers
    ));
    assert!(header_matches(&header("x-tags", exact("a,b")), &headers));
    assert!(header_matches(
        &header("x-env", StringMatch::Presence),
        &headers
    ));
    assert!(!header_matches(
        &header("x-missing", StringMatch::Presence),
        &headers
    ));
}

#[test]
fn absent_attributes_fail_positives_and_pass_negatives() {
    let headers = HeaderMap::new();
    let request = attrs(&headers, None);
    let positive = RequestMatch {
        request_principals: vec![StringMatch::Presence],
        ..RequestMatch::default()
    };
    let negative = RequestMatch {
        not_request_principals: vec![StringMatch::Presence],
        ..RequestMatch::default()
    };
    assert!(!request_holds(&positive, Some(&request)));
    assert!(request_holds(&negative, Some(&request)));
    // No HTTP at all (ztunnel, TCP through a waypoint): the same rule.
    let methods = RequestMatch {
        methods: vec![exact("GET")],
        ..RequestMatch::default()
    };
    assert!(!request_holds(&methods, None));
    assert!(request_holds(&RequestMatch::default(), None));
}

#[test]
fn hosts_compare_in_lower_case_as_sent() {
    let headers = HeaderMap::new();
    let token = auth("https://a.example", "alice", serde_json::json!({}));
    let request = attrs(&headers, Some(&token));
    let hosts = |h: &str| RequestMatch {
        hosts: vec![exact(h)],
        ..RequestMatch::default()
    };
    assert!(request_holds(&hosts("api.payments:80"), Some(&request)));
    assert!(!request_holds(&hosts("api.payments"), Some(&request)));
    let all = RequestMatch {
        methods: vec![exact("GET")],
        paths: vec![PathMatch::String(StringMatch::Prefix("/v1/".to_owned()))],
        audiences: vec![exact("payments")],
        presenters: vec![exact("web-app")],
        remote_ips: vec!["10.0.0.0/24".parse().unwrap()],
        ..RequestMatch::default()
    };
    assert!(request_holds(&all, Some(&request)));
}

#[test]
fn path_templates() {
    let cases = [
        ("/v1/{*}", "/v1/pay", true),
        ("/v1/{*}", "/v1/", false),
        ("/v1/{*}", "/v1/pay/more", false),
        ("/v1/{*}/items", "/v1/7/items", true),
        ("/v1/{*}/items", "/v1/7/8/items", false),
        ("/v1/{**}", "/v1/", true),
        ("/v1/{**}", "/v1/a/b/c", true),
        ("/v1/{**}", "/v1", false),
        ("/v1/{**}/end", "/v1/a/b/end", true),
        ("/v1/{**}/end", "/v1//end", true),
        ("/v1/{**}/end", "/v1/a/b/ending", false),
        ("/{*}/{*}", "/a/b", true),
        ("/{*}/{*}", "/a/", false),
        ("/caf\u{e9}/{*}", "/caf\u{e9}/x", true),
    ];
    for (template, path, want) in cases {
        let parsed = PathTemplate::parse(template).unwrap();
        assert_eq!(parsed.matches(path), want, "{template} against {path}");
    }
    for bad in ["/a/x{*}", "/a/{**}/{*}", "/a/{**}/{**}", "/a/{*"] {
        assert!(PathTemplate::parse(bad).is_err(), "{bad}");
    }
}
