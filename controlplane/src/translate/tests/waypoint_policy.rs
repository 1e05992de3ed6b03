//! Waypoint resources: what a targetRefs policy becomes, checked through `mesh::policy` (the
//! waypoint's engine) so the test asserts verdicts, not field layouts.

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use mesh::identity::SpiffeId;
use mesh::policy::{
    ConnectionAttrs, RequestAttrs, RequestAuth, TargetKind, TargetedPolicy, evaluate_request,
};

use super::super::NoteKind;
use super::translate_yaml;

fn policy_yaml(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: payments}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: api}}]\n{spec}"
    )
}

fn converted(spec: &str) -> TargetedPolicy {
    let (resources, _) = translate_yaml(&policy_yaml(spec));
    let wire = resources
        .l7_authorizations
        .get("payments/p")
        .unwrap_or_else(|| panic!("not sent to waypoints:\n{spec}"));
    TargetedPolicy::try_from(wire).unwrap()
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    client: &'a str,
    auth: Option<RequestAuth>,
}

fn allowed(policy: &TargetedPolicy, req: &Req<'_>) -> bool {
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let conn = ConnectionAttrs {
        source_identity: Some(SpiffeId::parse(req.client).unwrap()),
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5)),
        destination_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 2, 10)),
        destination_port: 80,
    };
    let request = RequestAttrs {
        method: req.method,
        path: req.path,
        host: "api.payments.svc.cluster.local",
        headers: &headers,
        remote_ip: conn.source_ip,
        auth: req.auth.as_ref(),
    };
    evaluate_request([&policy.authorization], &conn, &request)
        .verdict
        .is_allow()
}

const WEB: &str = "spiffe://cluster.local/ns/storefront/sa/web";
const CART: &str = "spiffe://cluster.local/ns/storefront/sa/cart";

fn get(path: &str) -> Req<'_> {
    Req {
        method: "GET",
        path,
        headers: &[],
        client: WEB,
        auth: None,
    }
}

fn token(sub: &str, claims: serde_json::Value) -> Option<RequestAuth> {
    Some(RequestAuth {
        issuer: "https://auth.example.com".to_owned(),
        subject: sub.to_owned(),
        audiences: vec!["payments".to_owned()],
        presenter: None,
        claims,
    })
}

#[test]
fn targets_are_kept_and_ztunnel_gets_nothing() {
    let (resources, notes) = translate_yaml(&policy_yaml("  rules: [{}]\n"));
    assert!(resources.authorizations.is_empty());
    assert_eq!(
        notes.iter().map(|n| n.kind.clone()).collect::<Vec<_>>(),
        vec![NoteKind::WaypointOnly]
    );
    let policy = converted("  rules: [{}]\n");
    assert_eq!(policy.targets.len(), 1);
    assert_eq!(policy.targets[0].kind, TargetKind::Service);
    assert_eq!(policy.targets[0].name, "api");
}

#[test]
fn operations_match_methods_and_path_prefixes() {
    let policy = converted(
        "  rules:\n  - to:\n    - operation: {methods: [\"GET\", \"HEAD\"], paths: [\"/v1/*\"]}\n",
    );
    assert!(allowed(&policy, &get("/v1/pay")));
    assert!(!allowed(&policy, &get("/v1")));
    assert!(!allowed(&policy, &get("/admin")));
    let post = Req {
        method: "POST",
        ..get("/v1/pay")
    };
    assert!(!allowed(&policy, &post));
}

#[test]
fn path_templates_reach_the_waypoint_as_templates() {
    let policy = converted(
        "  rules:\n  - to:\n    - operation: {paths: [\"/v1/{*}/items\", \"/static/{**}\", \"/exact\"]}\n",
    );
    assert!(allowed(&policy, &get("/v1/7/items")));
    assert!(!allowed(&policy, &get("/v1/7/8/items")));
    assert!(allowed(&policy, &get("/static/css/site.css")));
    assert!(allowed(&policy, &get("/exact")));
    // `{*}` is not a glob outside a template's segment rules: no literal braces survive.
    assert!(!allowed(&policy, &get("/v1/{*}/items/x")));
}

#[test]
fn source_and_operation_are_anded() {
    let policy = converted(
        "  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/storefront/sa/web\"]}\n    to:\n    - operation: {paths: [\"/v1/*\"]}\n",
    );
    assert!(allowed(&policy, &get("/v1/pay")));
    assert!(!allowed(&policy, &get("/admin")));
    let cart = Req {
        client: CART,
        ..get("/v1/pay")
    };
    assert!(!allowed(&policy, &cart));
}

#[test]
fn when_conditions_read_headers_and_claims() {
    let headers = converted(
        "  rules:\n  - when:\n    - {key: \"request.headers[X-Env]\", values: [\"prod\"]}\n",
    );
    let with = |h: &'static [(&'static str, &'static str)]| Req {
        headers: h,
        ..get("/v1/pay")
    };
    assert!(allowed(&headers, &with(&[("x-env", "prod")])));
    assert!(!allowed(&headers, &with(&[("x-env", "staging")])));
    assert!(!allowed(&headers, &get("/v1/pay")));

    let claims = converted(
        "  rules:\n  - when:\n    - {key: \"request.auth.claims[groups]\", values: [\"finance\"]}\n  - when:\n    - {key: \"request.auth.claims[org][team]\", values: [\"payments\"]}\n",
    );
    let authed = |auth| Req {
        auth,
        ..get("/v1/pay")
    };
    let groups = serde_json::json!({"groups": ["finance", "eng"]});
    let nested = serde_json::json!({"org": {"team": "payments"}});
    let neither = serde_json::json!({"groups": ["eng"]});
    assert!(allowed(&claims, &authed(token("alice", groups))));
    assert!(allowed(&claims, &authed(token("carol", nested))));
    assert!(!allowed(&claims, &authed(token("bob", neither))));
    assert!(!allowed(&claims, &get("/v1/pay")));
}

#[test]
fn request_principals_need_a_validated_token() {
    let policy = converted(
        "  rules:\n  - from:\n    - source: {requestPrincipals: [\"https://auth.example.com/alice\"]}\n",
    );
    let authed = |auth| Req {
        auth,
        ..get("/v1/pay")
    };
    assert!(allowed(
        &policy,
        &authed(token("alice", serde_json::json!({})))
    ));
    assert!(!allowed(
        &policy,
        &authed(token("bob", serde_json::json!({})))
    ));
    assert!(!allowed(&policy, &get("/v1/pay")));
}

#[test]
fn custom_fails_closed_and_audit_is_not_sent() {
    let (resources, notes) = translate_yaml(&policy_yaml(
        "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n",
    ));
    let custom = TargetedPolicy::try_from(&resources.l7_authorizations["payments/p"]).unwrap();
    assert!(!allowed(&custom, &get("/")));
    assert!(notes.iter().any(|n| n.kind == NoteKind::CustomFailsClosed));
    let (resources, _) = translate_yaml(&policy_yaml("  action: AUDIT\n  rules: [{}]\n"));
    assert!(resources.l7_authorizations.is_empty());
}

#[test]
fn request_authentication_with_target_refs_reaches_waypoints() {
    let text = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
                metadata: {name: jwt, namespace: payments}\nspec:\n\
                \x20 targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n\
                \x20 jwtRules:\n  - issuer: https://auth.example.com\n    jwksUri: https://auth.example.com/jwks\n    timeout: 3s\n    fromHeaders: [{name: x-token, prefix: \"Token \"}]\n";
    let (resources, _) = translate_yaml(text);
    let authn = &resources.jwt_authentications["payments/jwt"];
    assert_eq!(authn.rules.len(), 1);
    let rule = &authn.rules[0];
    assert_eq!(rule.issuer, "https://auth.example.com");
    assert_eq!(rule.jwks_fetch_timeout_ms, 3000);
    assert_eq!(rule.from_headers[0].prefix, "Token ");
}
