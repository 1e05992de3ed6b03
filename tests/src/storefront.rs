//! The storefront that `make demo` tells and the runbook test operates: two nodes, the real
//! control plane, node agents and ztunnels, echo servers in the pods, and a fixed morning of
//! traffic whose every outcome is known.
//!
//! Cast: `web` and `api` (the shop, in the mesh; api is STRICT and only web may call it),
//! `catalog` (in the mesh, PERMISSIVE, with a dry-run policy that would refuse the partner
//! namespace), `legacy` (a pod outside the mesh), `outsider` (in the mesh, namespace
//! `partner`).

use std::net::SocketAddr;

use crate::WAIT;
use crate::apps::{Behaviour, Server, checksum, exchange, payload};
use crate::mesh::Mesh;
use crate::topology::{NodeId, Pod};

/// Where every storefront app listens.
pub const PORT: u16 = 8080;
/// What an order carries; it must never be readable on the wire between nodes.
pub const MARKER: &[u8] = b"ORDER-4711-CARD-PAN";

/// What the platform team wrote: api takes mTLS only, and only from web; catalog is being
/// prepared for the same with a dry-run policy first.
pub const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-strict, namespace: storefront}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-only-web, namespace: storefront}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/storefront/sa/web\"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: catalog-no-partner
  namespace: storefront
  annotations: {istio.io/dry-run: \"true\"}
spec:
  selector: {matchLabels: {app: catalog}}
  action: DENY
  rules:
  - from:
    - source: {namespaces: [partner]}
";

/// The mesh, its pods, and the apps serving in them.
pub struct Storefront {
    /// Processes, namespaces and configuration.
    pub mesh: Mesh,
    /// web and legacy run here; so does the control plane.
    pub node1: NodeId,
    /// api, catalog and outsider run here.
    pub node2: NodeId,
    /// In the mesh, namespace storefront.
    pub web: Pod,
    /// Not in the mesh, namespace legacy.
    pub legacy: Pod,
    /// In the mesh, STRICT, only web may call.
    pub api: Pod,
    /// In the mesh, PERMISSIVE.
    pub catalog: Pod,
    /// In the mesh, namespace partner.
    pub outsider: Pod,
    servers: Vec<(String, Server)>,
}

/// What [`Storefront::morning`] observed, in the order it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Morning {
    /// `(from, to, outcome)` per order.
    pub orders: Vec<(&'static str, &'static str, Option<bool>)>,
}

/// The outcomes [`Storefront::morning`] must see.
pub const EXPECTED_MORNING: [(&str, &str, Option<bool>); 5] = [
    ("web", "api", Some(true)),
    ("outsider", "api", None),
    ("outsider", "catalog", Some(true)),
    ("legacy", "api", None),
    ("legacy", "catalog", Some(true)),
];

impl Storefront {
    /// Lays out the nodes and pods (nothing runs yet); namespaces are named after `test`.
    pub fn new(test: &str) -> Self {
        let mut mesh = Mesh::new(test);
        let (node1, node2) = (mesh.add_node("node1"), mesh.add_node("node2"));
        let web = mesh.add_pod(node1, "web", "storefront");
        let legacy = mesh.add_pod(node1, "legacy", "legacy");
        let api = mesh.add_pod(node2, "api", "storefront");
        let catalog = mesh.add_pod(node2, "catalog", "storefront");
        let outsider = mesh.add_pod(node2, "outsider", "partner");
        mesh.workload_mut("legacy").protocol = "TCP";
        for pod in [&web, &api, &catalog, &outsider] {
            mesh.enroll(pod);
        }
        Self {
            mesh,
            node1,
            node2,
            web,
            legacy,
            api,
            catalog,
            outsider,
            servers: Vec::new(),
        }
    }

    /// Starts the control plane on node1 with [`POLICIES`], the agents and ztunnels, and an
    /// echo server on [`PORT`] in api and catalog.
    pub async fn start(&mut self) {
        self.mesh.start_control_plane(self.node1, POLICIES).await;
        self.mesh.start().await;
        for pod in [&self.api, &self.catalog] {
            let server = Server::serve(pod.netns().listen(pod.addr(PORT)), Behaviour::Echo);
            self.servers.push((pod.name().to_owned(), server));
        }
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.mesh.cluster.pod(name)
    }

    /// Who connected to `app`'s server, as its application saw them.
    pub fn peers_of(&self, app: &str) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .find(|(name, _)| name == app)
            .map(|(_, server)| server.peers())
            .unwrap_or_default()
    }

    /// Sends each order of [`EXPECTED_MORNING`] once and reports what happened.
    pub async fn morning(&self) -> Morning {
        let mut orders = Vec::new();
        for (from, to, _) in EXPECTED_MORNING {
            let outcome = order(self.pod(from), self.pod(to).addr(PORT)).await;
            orders.push((from, to, outcome));
        }
        Morning { orders }
    }
}

/// Sends a marked order from `from` to `to`; `Some(true)` if it came back intact, `Some(false)`
/// if it came back damaged, `None` if the connection was refused.
pub async fn order(from: &Pod, to: SocketAddr) -> Option<bool> {
    let mut data = payload(32 * 1024, 7);
    data[..MARKER.len()].copy_from_slice(MARKER);
    let sent = checksum(&data);
    let result = tokio::time::timeout(WAIT, async {
        let stream = from.netns().connect(to).await?;
        exchange(stream, data).await
    })
    .await
    .ok()?;
    match result {
        Ok(back) if back.is_empty() => None,
        Ok(back) => Some(checksum(&back) == sent),
        Err(_) => None,
    }
}
