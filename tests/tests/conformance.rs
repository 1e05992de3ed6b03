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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use e2e::WAIT;
use e2e::apps::{Behaviour, Server, checksum, exchange, payload};
use e2e::mesh::Mesh;
use e2e::topology::{NodeId, Pod};
use serde::Deserialize;
use tokio::time::timeout;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/authz")
}

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

/// The waypoint of world.yaml: `payments/waypoint`, run by pod `waypoint-0`.
const WAYPOINT_POD: &str = "waypoint-0";

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

/// What the runner needs of a world pod.
#[derive(Debug, Clone)]
struct WorldPod {
    name: String,
    namespace: String,
    service_account: String,
    node: String,
    ip: Ipv4Addr,
    ports: Vec<u16>,
    labels: BTreeMap<String, String>,
}

/// The pods, services (`ns/name` -> VIP) and ambient namespaces of world.yaml.
fn read_world(text: &str) -> (Vec<WorldPod>, BTreeMap<String, Ipv4Addr>, Vec<String>) {
    let (mut pods, mut services, mut ambient) = (Vec::new(), BTreeMap::new(), Vec::new());
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = serde_yaml_ng::Value::deserialize(document).unwrap();
        let s = |v: &serde_yaml_ng::Value| v.as_str().unwrap_or_default().to_owned();
        let meta = &doc["metadata"];
        match doc["kind"].as_str() {
            Some("Namespace")
                if doc["metadata"]["labels"]["istio.io/dataplane-mode"].as_str()
                    == Some("ambient") =>
            {
                ambient.push(s(&meta["name"]));
            }
            Some("Pod") => {
                let ports = doc["spec"]["containers"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_sequence().cloned().unwrap_or_default())
                    .filter_map(|p| {
                        p["containerPort"]
                            .as_u64()
                            .and_then(|p| u16::try_from(p).ok())
                    })
                    .collect();
                let labels = meta["labels"]
                    .as_mapping()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (s(k), s(v)))
                    .collect();
                pods.push(WorldPod {
                    name: s(&meta["name"]),
                    namespace: s(&meta["namespace"]),
                    service_account: s(&doc["spec"]["serviceAccountName"]),
                    node: s(&doc["spec"]["nodeName"]),
                    ip: s(&doc["status"]["podIP"]).parse().unwrap(),
                    ports,
                    labels,
                });
            }
            Some("Service") => {
                let key = format!("{}/{}", s(&meta["namespace"]), s(&meta["name"]));
                services.insert(key, s(&doc["spec"]["clusterIP"]).parse().unwrap());
            }
            _ => {}
        }
    }
    (pods, services, ambient)
}

/// `(kind, namespace, name)` of a YAML document.
fn object_key(document: &str) -> Option<(String, String, String)> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(document).ok()?;
    let s = |v: &serde_yaml_ng::Value| v.as_str().unwrap_or_default().to_owned();
    Some((
        s(&doc["kind"]),
        s(&doc["metadata"]["namespace"]),
        s(&doc["metadata"]["name"]),
    ))
}

/// The world with the case's documents added; a case object with the kind, namespace and name
/// of a world object replaces it (README: case format).
fn overlay(world: &str, config: &str) -> String {
    let replaced: std::collections::BTreeSet<_> =
        config.split("\n---\n").filter_map(object_key).collect();
    let kept: Vec<&str> = world
        .split("\n---\n")
        .filter(|doc| object_key(doc).is_none_or(|key| !replaced.contains(&key)))
        .collect();
    format!("{}\n---\n{config}", kept.join("\n---\n"))
}

/// The waypoint's Prometheus text, fetched from inside its pod.
async fn scrape_waypoint(pod: &Pod) -> String {
    let reply = timeout(WAIT, async {
        let stream = pod.netns().connect(pod.addr(15020)).await.unwrap();
        e2e::http::request(stream, "GET", "/metrics", &[]).await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    reply.body
}

/// The sum of `name`'s samples whose labels include every `(label, value)` of `want`.
fn sum_series(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter(|(labels, _)| {
            want.iter().all(|(k, v)| {
                let pair = format!("{k}=\"{v}\"");
                labels.split(',').any(|kv| kv == pair)
            })
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
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
    let world_text = std::fs::read_to_string(shared().join("world.yaml")).unwrap();
    let (world_pods, services, ambient) = read_world(&world_text);

    let mut mesh = Mesh::new("authz");
    let mut nodes: BTreeMap<String, NodeId> = BTreeMap::new();
    for pod in &world_pods {
        if !nodes.contains_key(&pod.node) {
            nodes.insert(pod.node.clone(), mesh.add_node(&pod.node));
        }
    }
    let mut pods: BTreeMap<String, (Pod, WorldPod)> = BTreeMap::new();
    let mut servers = Vec::new();
    let mut waypoint_pod = None;
    for world_pod in &world_pods {
        let pod = mesh.add_pod_at(
            nodes[&world_pod.node],
            &world_pod.name,
            &world_pod.namespace,
            &world_pod.service_account,
            world_pod.ip,
        );
        let enrolled = ambient.contains(&world_pod.namespace)
            && world_pod
                .labels
                .get("istio.io/dataplane-mode")
                .map(String::as_str)
                != Some("none");
        if enrolled {
            mesh.enroll(&pod);
        }
        // The waypoint's pod runs the waypoint, not an application.
        if world_pod.name == WAYPOINT_POD {
            mesh.add_ca_caller(&pod, &world_pod.namespace, &world_pod.service_account);
            waypoint_pod = Some(pod);
            continue;
        }
        pods.insert(
            format!("{}/{}", world_pod.namespace, world_pod.name),
            (pod, world_pod.clone()),
        );
    }
    let first = nodes["node-a"];
    mesh.start_control_plane_with(first, &world_text).await;
    mesh.start().await;
    let waypoint_pod = waypoint_pod.expect("world.yaml has the waypoint pod");
    mesh.start_waypoint(&waypoint_pod, "payments", "waypoint", "waypoint")
        .await;
    for (pod, world_pod) in pods.values() {
        for port in &world_pod.ports {
            servers.push(Server::serve(
                pod.netns().listen(pod.addr(*port)),
                Behaviour::EchoOrHttp,
            ));
        }
    }

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
    println!(
        "conformance at ztunnel and waypoint: {passed} passed, {failed} failed, {skipped} skipped"
    );
    assert_eq!(
        failed, 0,
        "{failed} request(s) did not get their verdict (see the lines above)"
    );
    assert!(passed > 0, "no case ran");
}
