//! The shared authorization conformance world (`../shared/conformance/authz/world.yaml`) as a
//! running mesh: its pods as network namespaces at their own addresses on their nodes, enrolled
//! as the world says, echo-or-HTTP applications on their container ports, our control plane
//! serving the world, and the world's waypoint pod running the real `waypoint` binary.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use tokio::time::timeout;

use crate::WAIT;
use crate::apps::{Behaviour, Server};
use crate::mesh::Mesh;
use crate::topology::{NodeId, Pod};

/// Where the suite lives.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/authz")
}

/// The waypoint of world.yaml: `payments/waypoint`, run by pod `waypoint-0`.
pub const WAYPOINT_POD: &str = "waypoint-0";

/// What the runner needs of a world pod.
#[derive(Debug, Clone)]
pub struct WorldPod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node name.
    pub node: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Container ports.
    pub ports: Vec<u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// The pods, services (`ns/name` -> VIP) and ambient namespaces of world.yaml.
pub fn read_world(text: &str) -> (Vec<WorldPod>, BTreeMap<String, Ipv4Addr>, Vec<String>) {
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
pub fn object_key(document: &str) -> Option<(String, String, String)> {
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
pub fn overlay(world: &str, config: &str) -> String {
    let replaced: std::collections::BTreeSet<_> =
        config.split("\n---\n").filter_map(object_key).collect();
    let kept: Vec<&str> = world
        .split("\n---\n")
        .filter(|doc| object_key(doc).is_none_or(|key| !replaced.contains(&key)))
        .collect();
    format!("{}\n---\n{config}", kept.join("\n---\n"))
}

/// The world, running.
pub struct AuthzWorld {
    /// The mesh (processes, namespaces).
    pub mesh: Mesh,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeId>,
    /// Application pods by `namespace/name`.
    pub pods: BTreeMap<String, (Pod, WorldPod)>,
    /// The pod the waypoint runs in.
    pub waypoint_pod: Pod,
    /// Service VIPs by `namespace/name`.
    pub services: BTreeMap<String, Ipv4Addr>,
    /// world.yaml as read.
    pub world_text: String,
    /// The applications (they stop when dropped).
    pub servers: Vec<Server>,
}

impl AuthzWorld {
    /// Starts the world; `test` names its namespaces; `waypoint_env` adds environment variables
    /// to the waypoint (e.g. its OTLP collector).
    pub async fn start(test: &str, waypoint_env: &[(&str, String)]) -> Self {
        Self::start_with(test, waypoint_env, None).await
    }

    /// [`AuthzWorld::start`] with upstream's ztunnel (`binary`) instead of ours on node `node`.
    pub async fn start_with(
        test: &str,
        waypoint_env: &[(&str, String)],
        upstream: Option<(&str, &std::path::Path)>,
    ) -> Self {
        let world_text = std::fs::read_to_string(shared().join("world.yaml")).unwrap();
        let (world_pods, services, ambient) = read_world(&world_text);
        let mut mesh = Mesh::new(test);
        let mut nodes: BTreeMap<String, NodeId> = BTreeMap::new();
        for pod in &world_pods {
            if !nodes.contains_key(&pod.node) {
                nodes.insert(pod.node.clone(), mesh.add_node(&pod.node));
            }
        }
        let mut pods = BTreeMap::new();
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
        for (name, node) in &nodes {
            mesh.start_agent(*node).await;
            match upstream {
                Some((upstream_node, binary)) if upstream_node == name => {
                    mesh.start_upstream_ztunnel(*node, binary).await;
                }
                _ => mesh.start_ztunnel(*node).await,
            }
        }
        let waypoint_pod = waypoint_pod.expect("world.yaml has the waypoint pod");
        mesh.start_waypoint_with(
            &waypoint_pod,
            "payments",
            "waypoint",
            "waypoint",
            waypoint_env,
        )
        .await;
        let mut servers = Vec::new();
        for (pod, world_pod) in pods.values() {
            for port in &world_pod.ports {
                servers.push(Server::serve(
                    pod.netns().listen(pod.addr(*port)),
                    Behaviour::EchoOrHttp,
                ));
            }
        }
        Self {
            mesh,
            nodes,
            pods,
            waypoint_pod,
            services,
            world_text,
            servers,
        }
    }
}

/// The waypoint's Prometheus text, fetched from inside its pod.
pub async fn scrape_waypoint(pod: &Pod) -> String {
    let reply = timeout(WAIT, async {
        let stream = pod.netns().connect(pod.addr(15020)).await.unwrap();
        crate::http::request(stream, "GET", "/metrics", &[]).await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    reply.body
}

/// The sum of `name`'s samples whose labels include every `(label, value)` of `want`.
pub fn sum_series(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
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
