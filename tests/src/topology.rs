//! A small multi-host cluster made of named network namespaces: nodes joined by point-to-point
//! links, and pods attached to their node's bridge.
//!
//! Ambient mode's data path crosses real hops (pod veth, node, wire, other node, pod veth), and
//! the mesh tests need to run a ztunnel per node and look at each hop's packets. Every address
//! lives inside namespaces this module creates, so no test traffic can reach the host or beyond.
//!
//! Addressing: node `k` (1, 2, ...) owns `10.<k>.0.0/24`, with its bridge `br0` at `10.<k>.0.1`
//! and its pods from `10.<k>.0.2` up. The link between nodes `a < b` is the `p`-th link created,
//! a veth pair numbered `10.255.<p>.1/30` on `a` and `10.255.<p>.2/30` on `b`; each node routes
//! every other node's pod range over the direct link to it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::netns::Netns;

/// Identifies a node of a [`Cluster`]: its number `k`, which is also the second octet of its
/// pod range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u8);

impl NodeId {
    /// The node's number `k` (1-based).
    pub fn number(self) -> u8 {
        self.0
    }
}

/// A node: a namespace that routes between its pods' bridge and the other nodes.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    name: String,
    netns: Netns,
    links: Vec<(NodeId, String)>,
    next_host: u8,
}

impl Node {
    /// Its id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The name given to [`Cluster::add_node`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace, where its ztunnel and node agent run.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.id.0, 0, 1)
    }

    /// The interface of this node on its link to `peer`, where inter-node traffic is captured.
    pub fn link_to(&self, peer: NodeId) -> &str {
        self.links
            .iter()
            .find(|(id, _)| *id == peer)
            .map(|(_, iface)| iface.as_str())
            .unwrap_or_else(|| panic!("node {} has no link to node {}", self.id.0, peer.0))
    }
}

/// A pod: its own namespace with `eth0` bridged on its node. Cheap to clone; every clone refers
/// to the same namespace, which the [`Cluster`] deletes when it is dropped.
#[derive(Debug, Clone)]
pub struct Pod(Arc<PodInner>);

#[derive(Debug)]
struct PodInner {
    name: String,
    node: NodeId,
    ip: Ipv4Addr,
    node_iface: String,
    netns: Netns,
}

impl Pod {
    /// The name given to [`Cluster::add_pod`].
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The pod IP, on `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.0.ip
    }

    /// `ip():port`, for listening and connecting.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.0.ip), port)
    }

    /// The pod's namespace, where its applications run.
    pub fn netns(&self) -> &Netns {
        &self.0.netns
    }

    /// The node it runs on.
    pub fn node(&self) -> NodeId {
        self.0.node
    }

    /// The node-side end of its veth (in the node's namespace, a port of `br0`): every packet
    /// of the pod passes there, including same-node traffic that never reaches a link.
    pub fn node_iface(&self) -> &str {
        &self.0.node_iface
    }
}

/// Nodes and pods of one test; everything is deleted on drop, pods first.
#[derive(Debug)]
pub struct Cluster {
    test: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    links: u8,
}

impl Cluster {
    /// An empty cluster. `test` prefixes every namespace name, so it must differ between tests
    /// that run at the same time in one process.
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_owned(),
            nodes: Vec::new(),
            pods: Vec::new(),
            links: 0,
        }
    }

    /// Adds a node with its bridge, linked to (and routed to and from) every existing node.
    pub fn add_node(&mut self, name: &str) -> NodeId {
        self.assert_new_name(name);
        let k = u8::try_from(self.nodes.len() + 1)
            .ok()
            .filter(|k| *k < 255)
            .expect("at most 254 nodes: node k owns 10.<k>.0.0/24 and 10.255/16 is for links");
        let id = NodeId(k);
        let netns = Netns::create(&format!("{}-{name}", self.test));
        sysctls(&netns, &["net.ipv4.ip_forward=1"]);
        let ns = netns.name();
        ipn(ns, "link add br0 type bridge");
        ipn(ns, &format!("addr add 10.{k}.0.1/24 dev br0"));
        ipn(ns, "link set br0 up");
        let mut node = Node {
            id,
            name: name.to_owned(),
            netns,
            links: Vec::new(),
            next_host: 2,
        };
        for peer in &mut self.nodes {
            self.links += 1;
            link(peer, &mut node, self.links);
        }
        self.nodes.push(node);
        id
    }

    /// Adds a pod on `node`: `eth0` with the next free address of the node's range, default
    /// route via the node's bridge.
    pub fn add_pod(&mut self, node: NodeId, name: &str) -> Pod {
        let (netns, n, node_iface) = self.plug_pod(node, name);
        let ip = Ipv4Addr::new(10, node.0, 0, n);
        let host = self.node(node);
        let (node_ns, pod_ns) = (host.netns.name(), netns.name());
        ipn(node_ns, &format!("link set {node_iface} master br0 up"));
        ipn(pod_ns, &format!("addr add {ip}/24 dev eth0"));
        ipn(pod_ns, "link set eth0 up");
        ipn(pod_ns, &format!("route add default via {}", host.gateway()));
        self.register_pod(name, node, ip, node_iface, netns)
    }

    /// Adds a pod on `node` with a given address outside the node's range (as a CNI that
    /// routes per pod does): `ip/32` on `eth0`, the node's bridge address as an on-link gateway
    /// (the node answers ARP for its own addresses on any interface), a host route on the node
    /// and one on every other node via the link to it. For worlds whose addresses are fixed in
    /// advance (the conformance world).
    pub fn add_pod_at(&mut self, node: NodeId, name: &str, ip: Ipv4Addr) -> Pod {
        let (netns, _, node_iface) = self.plug_pod(node, name);
        let host = self.node(node);
        let (node_ns, pod_ns) = (host.netns.name(), netns.name());
        ipn(node_ns, &format!("link set {node_iface} up"));
        ipn(node_ns, &format!("route add {ip}/32 dev {node_iface}"));
        ipn(pod_ns, &format!("addr add {ip}/32 dev eth0"));
        ipn(pod_ns, "link set eth0 up");
        let gateway = host.gateway();
        ipn(
            pod_ns,
            &format!("route add default via {gateway} dev eth0 onlink"),
        );
        for other in self.nodes.iter().filter(|other| other.id != node) {
            if let Some((_, iface)) = other.links.iter().find(|(peer, _)| *peer == node) {
                let via = link_peer_address(&other.netns, iface);
                ipn(other.netns.name(), &format!("route add {ip}/32 via {via}"));
            }
        }
        self.register_pod(name, node, ip, node_iface, netns)
    }

    /// The part every pod shares: its namespace, the next host number on `node`, and a veth
    /// pair whose pod end is `eth0` and whose node end (returned) is named after that number —
    /// unique per node, and a capture target that says which pod it belongs to.
    fn plug_pod(&mut self, node: NodeId, name: &str) -> (Netns, u8, String) {
        self.assert_new_name(name);
        let netns = Netns::create(&format!("{}-{name}", self.test));
        // Before eth0 arrives, so that it inherits the namespace defaults.
        sysctls(&netns, &[]);
        let host = self.node_mut(node);
        let n = host.next_host;
        assert!(n < 255, "node {} is full", node.0);
        host.next_host += 1;
        let node_iface = format!("vpod{n}");
        ipn(
            host.netns.name(),
            &format!(
                "link add {node_iface} type veth peer name eth0 netns {}",
                netns.name()
            ),
        );
        (netns, n, node_iface)
    }

    fn register_pod(
        &mut self,
        name: &str,
        node: NodeId,
        ip: Ipv4Addr,
        node_iface: String,
        netns: Netns,
    ) -> Pod {
        let pod = Pod(Arc::new(PodInner {
            name: name.to_owned(),
            node,
            ip,
            node_iface,
            netns,
        }));
        self.pods.push(pod.clone());
        pod
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {}", id.0))
    }

    /// All nodes, in creation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The interface of `node` on its link to `peer` (see [`Node::link_to`]).
    pub fn inter_node_iface(&self, node: NodeId, peer: NodeId) -> &str {
        self.node(node).link_to(peer)
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no pod {name:?}"))
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Names of every namespace of the cluster, as `ip netns list` shows them.
    pub fn netns_names(&self) -> Vec<String> {
        let pods = self.pods.iter().map(|p| p.netns().name().to_owned());
        let nodes = self.nodes.iter().map(|n| n.netns.name().to_owned());
        pods.chain(nodes).collect()
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {}", id.0))
    }

    /// Nodes and pods share the namespace name space of the test.
    fn assert_new_name(&self, name: &str) {
        let taken =
            self.nodes.iter().any(|n| n.name == name) || self.pods.iter().any(|p| p.name() == name);
        assert!(!taken, "{name:?} is already a node or pod of this cluster");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Explicitly, not by dropping: a test may still hold `Pod` clones, and the namespaces
        // must go with the cluster anyway. Pods first, so no veth end outlives its bridge.
        for pod in &self.pods {
            pod.netns().delete();
        }
        for node in &self.nodes {
            node.netns.delete();
        }
    }
}

/// Joins nodes `a` and `b` with the `p`-th link: a veth pair, a /30 and a route each way.
fn link(a: &mut Node, b: &mut Node, p: u8) {
    assert!(p < 255, "too many inter-node links");
    let (a_iface, b_iface) = (format!("tonode{}", b.id.0), format!("tonode{}", a.id.0));
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 255, p, 1), Ipv4Addr::new(10, 255, p, 2));
    let b_ns = b.netns.name();
    ipn(
        a.netns.name(),
        &format!("link add {a_iface} type veth peer name {b_iface} netns {b_ns}"),
    );
    link_end(a, &a_iface, a_ip, b.id, b_ip);
    link_end(b, &b_iface, b_ip, a.id, a_ip);
    a.links.push((b.id, a_iface));
    b.links.push((a.id, b_iface));
}

/// Addresses one end of a link and routes the peer node's pod range over it.
/// The address of the other end of `iface` (a /30 link): ours with the last bit flipped.
fn link_peer_address(netns: &Netns, iface: &str) -> Ipv4Addr {
    let shown = netns.exec_output("ip", &["-4", "-o", "addr", "show", "dev", iface]);
    let own: Ipv4Addr = shown
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address on {iface}: {shown}"));
    let [a, b, c, d] = own.octets();
    Ipv4Addr::new(a, b, c, d ^ 3)
}

fn link_end(node: &Node, iface: &str, own: Ipv4Addr, peer: NodeId, via: Ipv4Addr) {
    let ns = node.netns.name();
    ipn(ns, &format!("addr add {own}/30 dev {iface}"));
    ipn(ns, &format!("link set {iface} up"));
    ipn(ns, &format!("route add 10.{}.0.0/24 via {via}", peer.0));
}

/// Sets `extra` and relaxes the namespace's defaults, which every interface created in it
/// afterwards inherits (`lo` already exists, so it is set too). Reverse-path filtering goes
/// off: a transparent proxy answers from the client pod's address over `lo`, and receives
/// traffic for addresses that are not routed back the way it came, both of which strict
/// rp_filter drops. IPv6 duplicate-address detection goes off: it only delays bring-up here.
fn sysctls(netns: &Netns, extra: &[&str]) {
    let mut settings: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    for scope in ["all", "default", "lo"] {
        settings.push(format!("net.ipv4.conf.{scope}.rp_filter=0"));
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            settings.push(format!("net.ipv6.conf.{scope}.accept_dad=0"));
        }
    }
    let mut args = vec!["-q", "-w"];
    args.extend(settings.iter().map(String::as_str));
    netns.exec("sysctl", &args);
}

/// `ip -n <netns> <command>`: configures a namespace without a process inside it. Words are
/// split on whitespace; namespace and interface names never contain any.
fn ipn(netns: &str, command: &str) {
    let mut args = vec!["-n", netns];
    args.extend(command.split_whitespace());
    crate::run("ip", &args);
}
