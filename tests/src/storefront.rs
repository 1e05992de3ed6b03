//! The storefront that `make demo` tells and the runbook test operates: two nodes, the real
//! control plane, node agents and ztunnels, echo servers in the pods, and a fixed morning of
//! traffic whose every outcome is known.
//!
//! Cast: `web` and `api` (the shop, in the mesh; api is STRICT and only web may call it),
//! `catalog` (in the mesh, PERMISSIVE, with a dry-run policy that would refuse the partner
//! namespace), `legacy` (a pod outside the mesh), `outsider` (in the mesh, namespace
//! `partner`).
//!
//! [`Storefront::with_waypoint`] adds a waypoint pod on node2 for the L7 chapter of the demo:
//! [`Storefront::open_waypoint`] then gives Service `storefront/api` a waypoint and the HTTP
//! policies of [`l7_config`]. Without it the storefront is exactly the L4 one.

use std::net::{Ipv4Addr, SocketAddr};

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

/// The waypoint's name: its Gateway, its pod and its service account (namespace storefront).
pub const WAYPOINT: &str = "waypoint";
/// Service `storefront/api`'s address (given in [`l7_config`]).
pub const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The port Service api serves HTTP on (to the app's [`PORT`]).
pub const API_HTTP_PORT: u16 = 80;
/// Service api's hostname.
pub const API_HOST: &str = "api.storefront.svc.cluster.local";
/// The issuer and audience of the tokens the waypoint accepts.
pub const ISSUER: &str = "https://auth.example.com";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "storefront";
/// The conformance suite's trusted JWKS (its key signs the tokens that should pass), relative
/// to [`crate::authz_world::shared`].
pub const TRUSTED_JWKS: &str = "jwt/trusted-jwks.json";
/// The policies [`l7_config`] sends the waypoint (namespace storefront).
pub const WAYPOINT_POLICIES: [&str; 3] = ["api-orders-read", "api-admin-ops", "storefront-jwt"];

/// What the platform team adds to give api HTTP policy: the waypoint (its pod on `node` at
/// `waypoint_ip`, its Service, its Gateway), Service api labelled to use it, and
/// - `api-orders-read` (bound to Service api): web may `GET /orders/*`;
/// - `api-admin-ops` (bound to Service api): `/admin/*` needs a token whose `groups` claim
///   contains `ops`;
/// - `storefront-jwt` (bound to the Gateway): tokens of [`ISSUER`] for [`AUDIENCE`], signed by
///   a key of `jwks` (a JWKS document);
/// - `api-from-waypoint` (ztunnel, selector app: api): the waypoint's identity may reach api,
///   next to `api-only-web` (the waypoint has checked web's requests itself).
pub fn l7_config(node: &str, waypoint_ip: Ipv4Addr, jwks: &str) -> String {
    // One line of JSON, inside YAML single quotes (JSON has none of its own).
    let jwks = serde_json::from_str::<serde_json::Value>(jwks)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| panic!("the JWKS is not JSON: {e}"));
    let gateway_ref = "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}";
    let service_ref = "{kind: Service, group: \"\", name: api}";
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: waypoint, namespace: storefront}}
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint
  namespace: storefront
  uid: uid-waypoint
  labels: {{gateway.networking.k8s.io/gateway-name: waypoint, gateway.istio.io/managed: istio.io-mesh-controller, istio.io/dataplane-mode: none}}
spec: {{serviceAccountName: waypoint, nodeName: {node}, containers: [{{name: waypoint, image: waypoint}}]}}
status: {{podIP: {waypoint_ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: storefront
  labels: {{gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {{clusterIP: 10.96.0.20, selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}, ports: [{{name: mesh, port: 15008, targetPort: 15008}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: storefront, labels: {{istio.io/waypoint-for: service}}}}
spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: storefront, labels: {{istio.io/use-waypoint: waypoint}}}}
spec: {{clusterIP: {API_VIP}, selector: {{app: api}}, ports: [{{name: http, port: {API_HTTP_PORT}, targetPort: {PORT}}}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-orders-read, namespace: storefront}}
spec:
  targetRefs: [{service_ref}]
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [\"cluster.local/ns/storefront/sa/web\"]}}
    to:
    - operation: {{methods: [GET], paths: [\"/orders/*\"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-admin-ops, namespace: storefront}}
spec:
  targetRefs: [{service_ref}]
  action: ALLOW
  rules:
  - to:
    - operation: {{paths: [\"/admin/*\"]}}
    when:
    - {{key: \"request.auth.claims[groups]\", values: [ops]}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: storefront-jwt, namespace: storefront}}
spec:
  targetRefs: [{gateway_ref}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-from-waypoint, namespace: storefront}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [\"cluster.local/ns/storefront/sa/waypoint\"]}}
"
    )
}

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
    /// The waypoint's pod (node2, not enrolled), with [`Storefront::with_waypoint`] only.
    pub waypoint: Option<Pod>,
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
            waypoint: None,
            servers: Vec::new(),
        }
    }

    /// [`Storefront::new`] plus a pod for api's waypoint on node2 (identity
    /// `storefront/waypoint`, allowed to ask the CA for its own certificate). Nothing about it
    /// is configured until [`Storefront::open_waypoint`]; api's application answers HTTP too.
    pub fn with_waypoint(test: &str) -> Self {
        let mut shop = Self::new(test);
        let pod = shop.mesh.cluster.add_pod(shop.node2, WAYPOINT);
        shop.mesh.add_ca_caller(&pod, "storefront", WAYPOINT);
        shop.waypoint = Some(pod);
        shop
    }

    /// Starts the control plane on node1 with [`POLICIES`], the agents and ztunnels, and an
    /// echo server on [`PORT`] in api and catalog.
    pub async fn start(&mut self) {
        self.mesh.start_control_plane(self.node1, POLICIES).await;
        self.mesh.start().await;
        for pod in [&self.api, &self.catalog] {
            // Orders are echoed either way; HTTP is answered only when api may get a waypoint.
            let behaviour = if self.waypoint.is_some() && pod.name() == "api" {
                Behaviour::EchoOrHttp
            } else {
                Behaviour::Echo
            };
            let server = Server::serve(pod.netns().listen(pod.addr(PORT)), behaviour);
            self.servers.push((pod.name().to_owned(), server));
        }
    }

    /// Gives Service `storefront/api` its waypoint: writes [`POLICIES`] and [`l7_config`] as
    /// the control plane's configuration, waits until node1's ztunnel routes the Service through
    /// the waypoint and node2's admits the waypoint's identity, starts the waypoint and waits
    /// until it has received and applied every policy of [`WAYPOINT_POLICIES`]. Needs
    /// [`Storefront::with_waypoint`].
    pub async fn open_waypoint(&mut self) {
        let pod = self
            .waypoint
            .clone()
            .expect("open_waypoint needs Storefront::with_waypoint");
        let jwks = std::fs::read_to_string(crate::authz_world::shared().join(TRUSTED_JWKS))
            .unwrap_or_else(|e| panic!("{TRUSTED_JWKS}: {e}"));
        let node = self.mesh.cluster.node(self.node2).name().to_owned();
        let l7 = l7_config(&node, pod.ip(), &jwks);
        self.mesh
            .write_cluster_yaml(&format!("{POLICIES}---\n{l7}"));
        let service = format!("storefront/{API_HOST}");
        self.mesh
            .ztunnel(self.node1)
            .wait_for_lines(&["xDS resources received", &service], 1)
            .await;
        self.mesh
            .ztunnel(self.node2)
            .wait_for_lines(
                &["xDS resources received", "storefront/api-from-waypoint"],
                1,
            )
            .await;
        self.mesh
            .start_waypoint(&pod, "storefront", WAYPOINT, WAYPOINT)
            .await;
        let waypoint = self.mesh.waypoint(WAYPOINT);
        for name in WAYPOINT_POLICIES {
            let name = format!("storefront/{name}");
            waypoint
                .wait_for_lines(&["waypoint policy received", &name], 1)
                .await;
        }
        // Logged once the policies it received are in force: both ALLOWs and the JWT rules.
        let applied = [
            "waypoint policies applied",
            "authorizations=2",
            "authentications=1",
        ];
        waypoint.wait_for_lines(&applied, 1).await;
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
