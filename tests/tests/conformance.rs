//! The shared authorization conformance cases (`../shared/conformance/authz`), enforced at
//! ztunnel end to end: the world's pods as network namespaces at their own addresses on nodes
//! `node-a` and `node-b`, echo servers on their container ports, the real node agent and
//! ztunnel on each node, our control plane serving world + case YAML; each request is a real
//! connection whose fate is compared with the case's verdict.
//!
//! Waypoint cases (and ztunnel cases that need a waypoint) are skipped, with the reason, until
//! the waypoint exists. `AUTHZ_CASES` names another cases file in the same format.

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
    for world_pod in &world_pods {
        // The waypoint's pod has no application; waypoint cases are skipped.
        if world_pod
            .labels
            .contains_key("gateway.networking.k8s.io/gateway-name")
        {
            continue;
        }
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
        pods.insert(
            format!("{}/{}", world_pod.namespace, world_pod.name),
            (pod, world_pod.clone()),
        );
    }
    let first = nodes["node-a"];
    mesh.start_control_plane_with(first, &world_text).await;
    mesh.start().await;
    for (pod, world_pod) in pods.values() {
        for port in &world_pod.ports {
            servers.push(Server::serve(
                pod.netns().listen(pod.addr(*port)),
                Behaviour::Echo,
            ));
        }
    }

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (index, case) in cases.cases.iter().enumerate() {
        let why_skip = if case.point != "ztunnel" {
            Some("waypoint cases need the waypoint (not built yet)")
        } else if case.config.contains("use-waypoint") {
            Some("needs the waypoint (not built yet)")
        } else {
            None
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
        // A marker policy in a namespace without pods changes no verdict, and tells when every
        // ztunnel has this case's configuration.
        let marker = format!("zz-sync/case-{index}");
        let text = format!(
            "{world_text}\n---\n{}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: case-{index}, namespace: zz-sync}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [\"zz-none\"]}}}}]}}]}}\n",
            case.config
        );
        mesh.write_cluster_text(&text);
        for node in nodes.values() {
            mesh.ztunnel(*node)
                .wait_for_lines(&["xDS resources received", &marker], 1)
                .await;
        }
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
            let dry_before = destination_node.map(|n| mesh.ztunnel(n).count(&report));
            let observed = attempt(from, target).await;
            let mut ok = observed == request.expect;
            let mut dry_note = String::new();
            if let Some(want) = &request.dry_run {
                let word = if want == "deny" {
                    "verdict=\"deny\""
                } else {
                    "verdict=\"allow\""
                };
                let seen = match (destination_node, dry_before) {
                    (Some(node), Some(before)) => {
                        // Written before the verdict reached the client, but read through a
                        // pipe: wait for it rather than look once.
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
    println!("conformance at ztunnel: {passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!(
        failed, 0,
        "{failed} request(s) did not get their verdict (see the lines above)"
    );
    assert!(passed > 0, "no case ran");
}
