//! The shared authorization conformance cases (`../shared/conformance/authz`), enforced at
//! ztunnel end to end: the world's pods as network namespaces at their own addresses on nodes
//! `node-a` and `node-b`, echo servers on their container ports, the real node agent and
//! ztunnel on each node, our control plane serving world + case YAML; each request is a real
//! connection whose fate is compared with the case's verdict.
//!
//! The world's waypoint pod runs the real `waypoint` binary (its own identity from the CA, its
//! configuration over xDS); waypoint cases send real HTTP requests (with tokens minted from the
//! suite's keys) through client ztunnel -> waypoint -> destination ztunnel -> application, and
//! read the verdict from the status code. `AUTHZ_CASES` names another cases file in the same
//! format.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: a panic is the failure report; the runner reports per request

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use e2e::WAIT;
use e2e::apps::{checksum, exchange, payload};
use e2e::authz_world::{AuthzWorld, WAYPOINT_POD, overlay, scrape_waypoint, shared, sum_series};
use e2e::topology::Pod;
use serde::Deserialize;
use tokio::time::timeout;

#[derive(Deserialize)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    point: String,
    #[serde(default)]
    config: String,
    requests: Vec<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    from: String,
    to: String,
    expect: String,
    #[serde(default)]
    dry_run: Option<String>,
    #[serde(default)]
    http: Option<HttpRequest>,
}

#[derive(Deserialize)]
struct HttpRequest {
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    jwt: Option<Jwt>,
}

#[derive(Deserialize)]
struct Jwt {
    key: String,
    claims: serde_json::Value,
    #[serde(default)]
    expired: bool,
}

/// An ES256 token over `jwt.claims`, valid for an hour (or expired an hour ago), signed with
/// the suite's trusted or untrusted key; the trusted key's JWKS names it `conformance-trusted-1`.
fn mint(jwt: &Jwt) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = jwt.claims.clone();
    let exp = if jwt.expired { now - 3600 } else { now + 3600 };
    claims["exp"] = serde_json::json!(exp);
    claims["iat"] = serde_json::json!(now - 60);
    let pem = std::fs::read(shared().join(format!("jwt/{}-key.pem", jwt.key))).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("conformance-trusted-1".to_owned());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// What became of one HTTP request, as the README's verdict table reads a status.
async fn http_attempt(from: &Pod, to: SocketAddr, http: &HttpRequest) -> String {
    let mut headers: Vec<(String, String)> = http
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(jwt) = &http.jwt {
        headers.push(("authorization".to_owned(), format!("Bearer {}", mint(jwt))));
    }
    let result = timeout(WAIT, async {
        let stream = from.netns().connect(to).await.map_err(|e| e.to_string())?;
        e2e::http::request(stream, &http.method, &http.path, &headers).await
    })
    .await
    .unwrap_or_else(|_| panic!("{} -> {to} did not finish within {WAIT:?}", from.name()));
    match result {
        Ok(reply) => match reply.status.as_u16() {
            200 if reply.body.starts_with(&format!("{} ", http.method)) => "allow".to_owned(),
            403 if reply.body == "RBAC: access denied"
                || reply.body == "Audiences in Jwt are not allowed" =>
            {
                "deny".to_owned()
            }
            401 => "unauthenticated".to_owned(),
            503 => "unavailable".to_owned(),
            other => format!("status {other} ({:?})", reply.body),
        },
        Err(err) => format!("failed: {err}"),
    }
}

/// What became of one connection: echoed intact, or refused (no byte back).
async fn attempt(from: &Pod, to: SocketAddr) -> &'static str {
    let data = payload(4096, 5);
    let result = timeout(WAIT, async {
        let stream = from.netns().connect(to).await?;
        exchange(stream, data.clone()).await
    })
    .await
    .unwrap_or_else(|_| panic!("{} -> {to} did not finish within {WAIT:?}", from.name()));
    match result {
        Ok(back) if back.is_empty() => "deny",
        Ok(back) if checksum(&back) == checksum(&data) => "allow",
        Ok(_) => "corrupted",
        Err(_) => "deny",
    }
}

#[test]
fn authorization_cases_hold_at_ztunnel_end_to_end() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_cases());
}

async fn run_cases() {
    let cases_path =
        std::env::var_os("AUTHZ_CASES").map_or_else(|| shared().join("cases.yaml"), PathBuf::from);
    let cases: CaseFile =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&cases_path).unwrap()).unwrap();
    let AuthzWorld {
        mut mesh,
        nodes,
        pods,
        waypoint_pod,
        services,
        world_text,
        servers: _servers,
    } = AuthzWorld::start("authz", &[]).await;

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    // (client identity, status) -> requests the waypoint answered, to check its metrics by.
    let mut through_waypoint: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for (index, case) in cases.cases.iter().enumerate() {
        let why_skip = match case.point.as_str() {
            "ztunnel" | "waypoint" => None,
            _ => Some("unknown enforcement point"),
        };
        if let Some(why) = why_skip {
            for (i, request) in case.requests.iter().enumerate() {
                println!(
                    "{} #{i}: expected {}, skipped: {why}",
                    case.name, request.expect
                );
                skipped += 1;
            }
            continue;
        }
        // Marker policies that match nobody change no verdict, and tell when every ztunnel
        // (one in a namespace without pods) and the waypoint (one bound to its Gateway) has
        // this case's configuration.
        let marker = format!("zz-sync/case-{index}");
        let waypoint_marker = format!("payments/zz-sync-case-{index}");
        let text = format!(
            "{}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: case-{index}, namespace: zz-sync}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [\"zz-none\"]}}}}]}}]}}\n\
             ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: zz-sync-case-{index}, namespace: payments}}\nspec: {{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}], action: DENY, rules: [{{from: [{{source: {{namespaces: [\"zz-none\"]}}}}]}}]}}\n",
            overlay(&world_text, &case.config)
        );
        mesh.write_cluster_text(&text);
        for node in nodes.values() {
            mesh.ztunnel(*node)
                .wait_for_lines(&["xDS resources received", &marker], 1)
                .await;
        }
        mesh.waypoint(WAYPOINT_POD)
            .wait_for_lines(&["waypoint policy received", &waypoint_marker], 1)
            .await;
        for (i, request) in case.requests.iter().enumerate() {
            let (from, _) = &pods[&request.from];
            // The destination's node, when the request names a pod: where a dry-run report is.
            let (target, destination_node) = match request.to.strip_prefix("service/") {
                Some(service) => {
                    let (key, port) = service.rsplit_once(':').unwrap();
                    let vip = SocketAddr::new(IpAddr::V4(services[key]), port.parse().unwrap());
                    (vip, None)
                }
                None => {
                    let (key, port) = request.to.rsplit_once(':').unwrap();
                    let pod = &pods[key].0;
                    (pod.addr(port.parse().unwrap()), Some(pod.node()))
                }
            };
            let dry_run_needle = format!("src={}", from.ip());
            let report = ["dry-run verdict", dry_run_needle.as_str()];
            let at_waypoint = case.point == "waypoint" && destination_node.is_none();
            let dry_before = match (at_waypoint, destination_node) {
                (true, _) => Some(mesh.waypoint(WAYPOINT_POD).count(&report)),
                (false, Some(n)) => Some(mesh.ztunnel(n).count(&report)),
                (false, None) => None,
            };
            let observed = match &request.http {
                Some(http) => http_attempt(from, target, http).await,
                None => attempt(from, target).await.to_owned(),
            };
            if request.http.is_some() && at_waypoint {
                let (_, world_pod) = &pods[&request.from];
                let code = match observed.as_str() {
                    "allow" => "200",
                    "deny" => "403",
                    "unauthenticated" => "401",
                    _ => "other",
                };
                let principal = format!(
                    "spiffe://cluster.local/ns/{}/sa/{}",
                    world_pod.namespace, world_pod.service_account
                );
                *through_waypoint.entry((principal, code)).or_default() += 1;
            }
            let mut ok = observed == request.expect;
            let mut dry_note = String::new();
            if let Some(want) = &request.dry_run {
                let word = if want == "deny" {
                    "verdict=\"deny\""
                } else {
                    "verdict=\"allow\""
                };
                // Written before the verdict reached the client, but read through a pipe: wait
                // for it rather than look once.
                let seen = match (at_waypoint, destination_node, dry_before) {
                    (true, _, Some(before)) => {
                        let process = mesh.waypoint(WAYPOINT_POD);
                        let lines = process.wait_for_lines(&report, before + 1).await;
                        lines.last().is_some_and(|l| l.contains(word))
                    }
                    (false, Some(node), Some(before)) => {
                        let lines = mesh.ztunnel(node).wait_for_lines(&report, before + 1).await;
                        lines.last().is_some_and(|l| l.contains(word))
                    }
                    _ => false,
                };
                dry_note = format!(
                    ", dry-run expected {want}: {}",
                    if seen { "reported" } else { "NOT reported" }
                );
                ok &= seen;
            }
            println!(
                "{} #{i}: {} -> {}: expected {}, observed {observed}{dry_note}{}",
                case.name,
                request.from,
                request.to,
                request.expect,
                if ok { "" } else { "  <-- FAILED" }
            );
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    // Every request the waypoint answered is one `istio_requests_total` increment, labelled with
    // the client's identity and the status it got.
    let scraped = scrape_waypoint(&waypoint_pod).await;
    for ((principal, code), want) in &through_waypoint {
        let got = sum_series(
            &scraped,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("source_principal", principal),
                ("response_code", code),
                ("destination_service", "api.payments.svc.cluster.local"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        let verdict = if got == *want as f64 {
            ""
        } else {
            "  <-- FAILED"
        };
        println!(
            "istio_requests_total{{source_principal={principal}, response_code={code}}}: {got}, requests sent {want}{verdict}"
        );
        if !verdict.is_empty() {
            failed += 1;
        }
    }
    assert!(
        !through_waypoint.is_empty(),
        "no request went through the waypoint"
    );
    // The dry-run DENY of wp-dry-run-deny matched once (GET /admin) and is counted as such.
    if cases.cases.iter().any(|c| c.name == "wp-dry-run-deny") {
        let counted = sum_series(
            &scraped,
            "istio_authz_dry_run_total",
            &[
                ("reporter", "waypoint"),
                ("authz_dry_run_action", "deny"),
                ("authz_dry_run_result", "denied"),
                ("policy", "payments/dry-deny-admin"),
            ],
        );
        let verdict = if counted == 1.0 { "" } else { "  <-- FAILED" };
        println!(
            "istio_authz_dry_run_total{{policy=payments/dry-deny-admin, deny, denied}}: {counted}, matches 1{verdict}"
        );
        if !verdict.is_empty() {
            failed += 1;
        }
    }
    println!(
        "conformance at ztunnel and waypoint: {passed} passed, {failed} failed, {skipped} skipped"
    );
    assert_eq!(
        failed, 0,
        "{failed} request(s) did not get their verdict (see the lines above)"
    );
    assert!(passed > 0, "no case ran");
}
