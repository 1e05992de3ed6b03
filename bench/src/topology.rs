//! The one-host topology every path is measured in: two workloads on loopback addresses of a
//! private namespace, the same iptables capture the end-to-end tests install, and the local
//! config file both agents read.
//!
//! - the mesh client `127.0.0.2` is captured as a source: its connections go to the agent's
//!   outbound listener (15001), over HBONE to the server's inbound (15008), then to the app;
//! - the direct client `127.0.0.9` is not captured, and the server `127.0.0.3` is not a capture
//!   destination, so the direct path really is plain loopback TCP to the same server sockets.
//!
//! Both workloads use the same service account. Upstream ztunnel in dedicated mode serves one
//! workload identity (`PROXY_WORKLOAD_INFO`) and presents it on both its outbound and inbound
//! side; with one shared identity a single agent per namespace carries the full mesh path for
//! both binaries, and the TLS work is the same as with two identities.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use e2e::world::{Workload, World};

/// The server workload: sink and echo applications listen here.
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// A workload in the mesh whose connections are captured.
pub(crate) const MESH_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// A client outside the mesh: its connections reach the server untouched.
pub(crate) const DIRECT_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
/// The throughput sink's port.
pub(crate) const SINK_PORT: u16 = 8001;
/// The echo's port (request/response and connection rate).
pub(crate) const ECHO_PORT: u16 = 8002;
/// The HTTP application's port.
pub(crate) const HTTP_PORT: u16 = 8003;
/// The VIP of the HTTP service the waypoint path addresses.
pub(crate) const HTTP_VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
/// The waypoint's pod address.
pub(crate) const WAYPOINT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The waypoint's HBONE port: not 15008, which ztunnel holds in the same namespace.
pub(crate) const WAYPOINT_PORT: u16 = 15009;
/// The agent's captured-outbound listener.
pub(crate) const OUTBOUND_PORT: u16 = 15001;
/// The agent's HBONE listener.
pub(crate) const HBONE_PORT: u16 = 15008;

/// Namespace of both workloads.
pub(crate) const NAMESPACE: &str = "bench";
/// Name of the client workload (the one upstream's dedicated mode acts for).
pub(crate) const CLIENT_NAME: &str = "client";
/// The service account both workloads run as.
pub(crate) const SERVICE_ACCOUNT: &str = "bench";

/// Installs the capture rules in the current namespace and returns the world whose config the
/// agent reads; keep it alive while the agent runs (its directory is removed on drop).
pub(crate) fn install(name: &str) -> World {
    let mut world = World::new(name);
    world.workloads = [(CLIENT_NAME, MESH_CLIENT), ("server", SERVER)]
        .into_iter()
        .map(|(workload, ip)| {
            let mut w = Workload::new(workload, NAMESPACE, ip);
            w.service_account = SERVICE_ACCOUNT.to_owned();
            // Stated explicitly: upstream's default for a local config is an empty domain.
            w.trust_domain = Some("cluster.local".to_owned());
            w
        })
        .collect();
    // No policy attached: the benchmark measures the data path, not the authorization engine.
    world.policies.clear();
    e2e::install_capture(&[MESH_CLIENT], &[]);
    world
}

/// [`install`], plus the HTTP service: reached through the waypoint when `waypoint` is set
/// (which then is a workload of the config, as its pod would be).
pub(crate) fn install_http(name: &str, waypoint: bool) -> World {
    let mut world = install(name);
    let service = e2e::world::Service {
        name: "http".to_owned(),
        namespace: NAMESPACE.to_owned(),
        vip: HTTP_VIP,
        ports: vec![(80, HTTP_PORT)],
        waypoint: waypoint.then_some((WAYPOINT, WAYPOINT_PORT)),
    };
    for w in &mut world.workloads {
        if w.ip == SERVER {
            w.services.push((service.key(), 80, HTTP_PORT));
        }
    }
    if waypoint {
        let mut w = Workload::new("waypoint-0", NAMESPACE, WAYPOINT);
        w.service_account = "waypoint".to_owned();
        w.trust_domain = Some("cluster.local".to_owned());
        world.workloads.push(w);
    }
    world.services.push(service);
    world
}

/// `ip:port` as a socket address.
pub(crate) fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}
