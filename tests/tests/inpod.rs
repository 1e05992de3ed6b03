//! In-pod mode end to end, as a cluster runs it: two nodes (network namespaces linked by veth),
//! pods in namespaces of their own on each node's bridge, and on every node the real node agent
//! (`ztunnel node-agent`: capture rules in each pod, ZDS socket) and the real ztunnel in in-pod
//! mode. Applications are unchanged: plain TCP to a pod IP or a service VIP. Every test checks
//! what crossed: bytes both ways, the source address the server saw, the identity the server's
//! ztunnel verified, and what a packet capture on the wire could read.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use e2e::apps::{Behaviour, Server, checksum, exchange};
use e2e::mesh::Mesh;
use e2e::pcap::{Capture, Recorded};
use e2e::topology::Pod;
use e2e::world::{STRICT_POLICY_NAME, Service};
use e2e::{WAIT, on_current_thread as run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const APP_PORT: u16 = 8080;
const DB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Written into every payload, often enough that each TCP segment carries some whole copies: if
/// a capture finds it, application bytes crossed that link in clear.
const MARKER: &[u8] = b"ZT-PLAINTEXT-MARKER";

/// `len` bytes: the marker every 256 bytes, position-dependent filler between.
fn marked_payload(len: usize, seed: u8) -> Vec<u8> {
    let mut data = e2e::apps::payload(len, seed);
    for chunk in data.chunks_mut(256) {
        let n = chunk.len().min(MARKER.len());
        chunk[..n].copy_from_slice(&MARKER[..n]);
    }
    data
}

/// Sends `data` from `pod` to `dst` and returns what came back, bounded in time.
async fn call(pod: &Pod, dst: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    timeout(WAIT, async {
        let stream = pod.netns().connect(dst).await?;
        exchange(stream, data).await
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "call {} -> {dst} did not finish within {WAIT:?}",
            pod.name()
        )
    })
}

/// Asserts an echo came back intact.
async fn assert_echo(pod: &Pod, dst: SocketAddr, len: usize, what: &str) {
    let data = marked_payload(len, (len % 251) as u8);
    let back = call(pod, dst, data.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(back.len(), data.len(), "{what}: echo length");
    assert_eq!(checksum(&back), checksum(&data), "{what}: echo checksum");
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Every segment that carried bytes was HBONE (to or from port 15008), no byte of the
/// application was readable, and the capture lost nothing (so "absent" means absent).
fn assert_only_hbone(recorded: &Recorded, what: &str) {
    assert_eq!(
        recorded.dropped_by_kernel(),
        Some(0),
        "{what}: capture dropped packets"
    );
    assert!(
        !recorded.contains(MARKER),
        "{what}: application bytes seen in clear"
    );
    let segments = recorded.tcp_segments();
    let carrying: Vec<_> = segments.iter().filter(|s| s.payload_len > 0).collect();
    assert!(
        !carrying.is_empty(),
        "{what}: capture saw no traffic at all"
    );
    for segment in carrying {
        assert!(
            segment.src.port() == 15008 || segment.dst.port() == 15008,
            "{what}: non-HBONE bytes on the wire: {segment:?}"
        );
    }
}

/// One echo round trip on an open connection.
async fn echo_on(stream: &mut tokio::net::TcpStream, seed: u8) {
    let data = marked_payload(2000, seed);
    stream.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data, "echo on the long-lived connection");
}

#[test]
fn pods_on_two_nodes_talk_over_mtls_and_the_wire_shows_only_hbone() {
    run(async {
        let mut mesh = Mesh::new("mtls");
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n1, "api", "shop");
        let db = mesh.add_pod(n2, "db", "shop");
        let db_service = Service {
            name: "db".into(),
            namespace: "shop".into(),
            vip: DB_VIP,
            ports: vec![(80, APP_PORT)],
            waypoint: None,
        };
        mesh.workload_mut("db")
            .services
            .push((db_service.key(), 80, APP_PORT));
        mesh.world.services.push(db_service);
        for pod in [&web, &api, &db] {
            mesh.enroll(pod);
        }
        mesh.start().await;
        let api_server = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        let db_server = Server::serve(db.netns().listen(db.addr(APP_PORT)), Behaviour::Echo);

        let dir = mesh.world.dir().to_owned();
        let node1 = mesh.cluster.node(n1).netns();
        let wire = Capture::start(node1, mesh.cluster.inter_node_iface(n1, n2), &dir).await;
        let same_node = Capture::start(node1, api.node_iface(), &dir).await;
        assert_echo(&web, api.addr(APP_PORT), 1, "same node, 1 byte").await;
        assert_echo(&web, api.addr(APP_PORT), 1 << 20, "same node, 1 MiB").await;
        assert_echo(&web, db.addr(APP_PORT), 1 << 20, "other node, 1 MiB").await;
        assert_echo(&web, at(DB_VIP, 80), 64 * 1024, "service VIP").await;
        assert_only_hbone(&wire.stop().await, "inter-node link");
        assert_only_hbone(&same_node.stop().await, "same-node veth");

        // The applications saw the client's own address, not a proxy's.
        assert_eq!(api_server.peers().len(), 2);
        assert_eq!(db_server.peers().len(), 2);
        for peer in api_server.peers().iter().chain(db_server.peers().iter()) {
            assert_eq!(peer.ip(), IpAddr::V4(web.ip()), "server saw {peer}");
        }
        // Each server-side ztunnel verified web's identity.
        let web_id = "src_identity=spiffe://cluster.local/ns/shop/sa/web";
        for node in [n1, n2] {
            let ztunnel = mesh.ztunnel(node);
            let served = ["inbound connection complete", web_id];
            ztunnel.wait_for_lines(&served, 2).await;
            assert_eq!(ztunnel.count(&served), 2, "node {}", node.number());
        }
    });
}

#[test]
fn plaintext_from_a_pod_outside_the_mesh_is_refused_by_strict_and_accepted_by_permissive() {
    run(async {
        let mut mesh = Mesh::new("plain");
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let api = mesh.add_pod(n1, "api", "shop");
        let vault = mesh.add_pod(n1, "vault", "secure");
        let legacy = mesh.add_pod(n2, "legacy", "legacy");
        mesh.workload_mut("vault")
            .policies
            .push(STRICT_POLICY_NAME.into());
        mesh.workload_mut("legacy").protocol = "TCP";
        mesh.enroll(&api);
        mesh.enroll(&vault);
        mesh.start().await;
        let api_server = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        let vault_server =
            Server::serve(vault.netns().listen(vault.addr(APP_PORT)), Behaviour::Echo);

        assert_echo(
            &legacy,
            api.addr(APP_PORT),
            10_000,
            "legacy -> permissive api",
        )
        .await;
        assert_eq!(api_server.peers()[0].ip(), IpAddr::V4(legacy.ip()));
        let refused = call(&legacy, vault.addr(APP_PORT), marked_payload(1000, 1)).await;
        if let Ok(back) = &refused {
            assert!(
                back.is_empty(),
                "strict vault answered {} bytes",
                back.len()
            );
        }
        assert!(
            vault_server.peers().is_empty(),
            "plaintext reached vault's app"
        );
        let legacy_src = format!("src={}:", legacy.ip());
        let accepted = ["inbound plaintext connection complete", &legacy_src];
        let refused = [
            "inbound plaintext connection refused",
            &legacy_src,
            "denied",
        ];
        let ztunnel = mesh.ztunnel(n1);
        ztunnel.wait_for_lines(&accepted, 1).await;
        ztunnel.wait_for_lines(&refused, 1).await;
        assert_eq!((ztunnel.count(&accepted), ztunnel.count(&refused)), (1, 1));
    });
}

#[test]
fn unenrolling_a_pod_restores_direct_traffic_and_closes_its_listeners() {
    run(async {
        let mut mesh = Mesh::new("unenrol");
        // Long enough for the checks made while web's connection drains.
        mesh.drain_timeout = "5s";
        mesh.unenroll_drain = "6s";
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n2, "api", "shop");
        mesh.enroll(&web);
        mesh.enroll(&api);
        mesh.start().await;
        let _api = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        assert_echo(&web, api.addr(APP_PORT), 4096, "enrolled").await;
        let mut open = timeout(WAIT, web.netns().connect(api.addr(APP_PORT)))
            .await
            .unwrap()
            .unwrap();
        timeout(WAIT, echo_on(&mut open, 1)).await.unwrap();

        mesh.unenroll(&web);
        mesh.wait_unenrolled(&web).await;
        // Listeners close at once; the open connection drains.
        mesh.ztunnel(n1)
            .wait_for_line("draining connections pod=shop/web")
            .await;
        let listening = web.netns().exec_output("ss", &["-Htln"]);
        assert!(
            !listening.contains(":15001") && !listening.contains(":15008"),
            "web's namespace still has ztunnel listeners:\n{listening}"
        );
        let redirects = web.netns().exec_output("iptables-save", &["-t", "nat"]);
        assert!(
            !redirects.contains("ISTIO_"),
            "web is still captured:\n{redirects}"
        );
        // The open connection keeps flowing while it drains...
        timeout(WAIT, echo_on(&mut open, 2)).await.unwrap();
        // ...within a bound: at the drain timeout it is closed.
        mesh.ztunnel(n1)
            .wait_for_line("drain timeout reached; closing remaining connections pod=shop/web")
            .await;
        let mut rest = Vec::new();
        let ended = timeout(WAIT, open.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the drained connection was never closed");
        mesh.ztunnel(n1)
            .wait_for_line("proxy stopped pod=shop/web")
            .await;
        // Then the rules it needed go too.
        mesh.agent(n1)
            .wait_for_line("drain over; remaining capture rules removed uid=uid-web")
            .await;
        let rules = web.netns().exec_output("iptables-save", &[]);
        assert!(
            !rules.contains("ISTIO_"),
            "capture rules left in web:\n{rules}"
        );
        let routes = web.netns().exec_output("ip", &["rule"]);
        assert!(
            !routes.contains("0x111"),
            "policy route left in web:\n{routes}"
        );

        let dir = mesh.world.dir().to_owned();
        let wire = Capture::start(
            mesh.cluster.node(n1).netns(),
            mesh.cluster.inter_node_iface(n1, n2),
            &dir,
        )
        .await;
        assert_echo(&web, api.addr(APP_PORT), 4096, "after un-enrolling").await;
        let recorded = wire.stop().await;
        assert!(
            recorded.contains(MARKER),
            "un-enrolled traffic should cross in clear (and the capture see it)"
        );
        // api is still in the mesh and permissive: it took web's plaintext on 15006.
        let web_src = format!("src={}:", web.ip());
        let plaintext = ["inbound plaintext connection complete", &web_src];
        mesh.ztunnel(n2).wait_for_lines(&plaintext, 1).await;
        assert_eq!(mesh.ztunnel(n2).count(&plaintext), 1);
    });
}

#[test]
fn a_restarted_ztunnel_reenrolls_every_pod_from_the_snapshot() {
    run(async {
        let mut mesh = Mesh::new("ztrestart");
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let web2 = mesh.add_pod(n1, "web2", "shop");
        let api = mesh.add_pod(n2, "api", "shop");
        for pod in [&web, &web2, &api] {
            mesh.enroll(pod);
        }
        mesh.start().await;
        let _api = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        assert_echo(&web, api.addr(APP_PORT), 4096, "before the restart").await;

        let stopped = mesh.stop_ztunnel(n1).await;
        assert_eq!(stopped.count(&["ztunnel stopped"]), 1, "clean shutdown");
        // Capture stays in place without ztunnel: the pod fails closed, never in clear.
        let while_down = call(&web, api.addr(APP_PORT), marked_payload(100, 2)).await;
        assert!(
            while_down.as_ref().map_or(true, Vec::is_empty),
            "traffic went around a stopped ztunnel"
        );

        mesh.start_ztunnel(n1).await;
        mesh.wait_enrolled(&web).await;
        mesh.wait_enrolled(&web2).await;
        assert_echo(&web, api.addr(APP_PORT), 4096, "web after the restart").await;
        assert_echo(&web2, api.addr(APP_PORT), 4096, "web2 after the restart").await;
        let web2 = [
            "inbound connection complete",
            "spiffe://cluster.local/ns/shop/sa/web2",
        ];
        mesh.ztunnel(n2).wait_for_lines(&web2, 1).await;
        assert_eq!(mesh.ztunnel(n2).count(&web2), 1);
    });
}

#[test]
fn a_restarted_node_agent_changes_no_rule_and_keeps_open_connections() {
    run(async {
        let mut mesh = Mesh::new("agentrestart");
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n2, "api", "shop");
        mesh.enroll(&web);
        mesh.enroll(&api);
        mesh.start().await;
        let _api = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);

        // A long-lived connection, open across the restart.
        let mut open = timeout(WAIT, web.netns().connect(api.addr(APP_PORT)))
            .await
            .unwrap()
            .unwrap();
        timeout(WAIT, echo_on(&mut open, 1)).await.unwrap();
        let rules_before = web.netns().exec_output("iptables-save", &[]);

        mesh.stop_agent(n1).await;
        mesh.start_agent(n1).await;
        mesh.agent(n1)
            .wait_for_line("capture rules installed uid=uid-web")
            .await;
        mesh.agent(n1).wait_for_line("snapshot acknowledged").await;
        assert_eq!(
            mesh.agent(n1).count(&[
                "capture rules installed",
                "uid-web",
                "already_in_place=true"
            ]),
            1,
            "the restarted agent found web's rules in place"
        );
        let rules_after = web.netns().exec_output("iptables-save", &[]);
        let ours = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("ISTIO_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(ours(&rules_after), ours(&rules_before), "rules changed");
        // ztunnel reconnected and kept web's proxy: the old connection still flows...
        timeout(WAIT, echo_on(&mut open, 2)).await.unwrap();
        // ...and new ones are still captured.
        assert_echo(&web, api.addr(APP_PORT), 4096, "new connection after").await;
        let ztunnel = mesh.ztunnel(n1);
        ztunnel
            .wait_for_lines(&["connected to the node agent"], 2)
            .await;
        assert_eq!(
            ztunnel.count(&["pod proxy started", "uid-web"]),
            1,
            "the re-sent snapshot did not restart web's proxy"
        );
    });
}

#[test]
fn nftables_rules_capture_like_iptables_and_leave_nothing_behind() {
    run(async {
        let mut mesh = Mesh::new("nft");
        mesh.rules = "nftables";
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n2, "api", "shop");
        mesh.enroll(&web);
        mesh.enroll(&api);
        mesh.start().await;
        let tables = web.netns().exec_output("nft", &["list", "tables"]);
        assert!(tables.contains("istio-ambient-nat"), "{tables}");
        let legacy = web.netns().exec_output("iptables-save", &[]);
        assert!(
            !legacy.contains("ISTIO_"),
            "iptables rules with --rules nftables:\n{legacy}"
        );
        let api_server = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        let dir = mesh.world.dir().to_owned();
        let wire = Capture::start(
            mesh.cluster.node(n1).netns(),
            mesh.cluster.inter_node_iface(n1, n2),
            &dir,
        )
        .await;
        assert_echo(&web, api.addr(APP_PORT), 256 * 1024, "nftables capture").await;
        assert_only_hbone(&wire.stop().await, "inter-node link (nftables)");
        assert_eq!(api_server.peers()[0].ip(), IpAddr::V4(web.ip()));

        mesh.unenroll(&web);
        mesh.agent(n1)
            .wait_for_line("drain over; remaining capture rules removed uid=uid-web")
            .await;
        let tables = web.netns().exec_output("nft", &["list", "tables"]);
        assert!(
            !tables.contains("istio-ambient"),
            "tables left behind:\n{tables}"
        );
        assert_echo(&web, api.addr(APP_PORT), 4096, "direct after un-enrolling").await;
    });
}

#[test]
fn a_pod_that_connects_before_its_workload_is_published_waits_for_it() {
    run(async {
        let mut mesh = Mesh::new("latewl");
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n2, "api", "shop");
        mesh.enroll(&web);
        mesh.enroll(&api);
        mesh.start().await;
        let _api = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        // The control plane has not published web yet (enrolled a moment before, as istiod
        // lags the CNI).
        let index = mesh
            .world
            .workloads
            .iter()
            .position(|w| w.name == "web")
            .unwrap();
        let web_workload = mesh.world.workloads.remove(index);
        mesh.write_config();
        mesh.ztunnel(n1)
            .wait_for_lines(&["local config applied"], 2)
            .await;
        let connecting = assert_echo(
            &web,
            api.addr(APP_PORT),
            4096,
            "connected while unpublished",
        );
        let publishing = async {
            mesh.ztunnel(n1)
                .wait_for_line("pod has no workload in the config yet; waiting")
                .await;
            mesh.world.workloads.push(web_workload);
            mesh.write_config();
        };
        tokio::join!(connecting, publishing);
    });
}

/// Upstream's ztunnel, when the shared folder beside the checkout has it.
fn upstream_ztunnel() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peers/ztunnel-upstream");
    path.exists().then_some(path)
}

#[test]
fn upstream_ztunnel_serves_pods_enrolled_by_our_node_agent() {
    let Some(upstream) = upstream_ztunnel() else {
        eprintln!("SKIPPED: ../shared/peers/ztunnel-upstream is absent; interop not tested");
        return;
    };
    run(async {
        let mut mesh = Mesh::new("interop");
        // Upstream's local-config parser has no `*` match; these pods need no policy.
        mesh.world.policies.clear();
        let (n1, n2) = (mesh.add_node("n1"), mesh.add_node("n2"));
        let web = mesh.add_pod(n1, "web", "shop");
        let api = mesh.add_pod(n1, "api", "shop");
        let db = mesh.add_pod(n2, "db", "shop");
        for pod in [&web, &api, &db] {
            mesh.workload_mut(pod.name()).trust_domain = Some("cluster.local".into());
            mesh.enroll(pod);
        }
        for node in [n1, n2] {
            mesh.start_agent(node).await;
            mesh.start_upstream_ztunnel(node, &upstream).await;
        }
        let api_server = Server::serve(api.netns().listen(api.addr(APP_PORT)), Behaviour::Echo);
        let db_server = Server::serve(db.netns().listen(db.addr(APP_PORT)), Behaviour::Echo);
        let dir = mesh.world.dir().to_owned();
        let wire = Capture::start(
            mesh.cluster.node(n1).netns(),
            mesh.cluster.inter_node_iface(n1, n2),
            &dir,
        )
        .await;
        assert_echo(&web, api.addr(APP_PORT), 256 * 1024, "upstream, same node").await;
        assert_echo(&web, db.addr(APP_PORT), 256 * 1024, "upstream, other node").await;
        assert_only_hbone(&wire.stop().await, "inter-node link under upstream ztunnel");
        for peer in api_server.peers().iter().chain(db_server.peers().iter()) {
            assert_eq!(peer.ip(), IpAddr::V4(web.ip()), "server saw {peer}");
        }
        let verified = [
            "connection complete",
            "src.identity=\"spiffe://cluster.local/ns/shop/sa/web\"",
            "dst.workload=\"db\"",
        ];
        mesh.ztunnel(n2).wait_for_lines(&verified, 1).await;

        // Our agent's del reaches upstream too: its listeners leave the pod.
        mesh.unenroll(&web);
        mesh.wait_unenrolled(&web).await;
        mesh.agent(n1)
            .wait_for_line("ztunnel acknowledged the removal uid=uid-web")
            .await;
        let listening = web.netns().exec_output("ss", &["-Htln"]);
        assert!(
            !listening.contains(":15001"),
            "upstream kept listening in an un-enrolled pod:\n{listening}"
        );
    });
}
