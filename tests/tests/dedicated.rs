//! The whole ztunnel data path on one host: workloads on loopback addresses of a private network
//! namespace, iptables capture as in dedicated mode, one ztunnel process serving them all.
//! Every test checks what crossed: bytes (by checksum, both ways), the addresses the server saw,
//! verdicts, and the identity ztunnel recorded.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use e2e::apps::{Behaviour, Server, checksum, connect_from, exchange, payload};
use e2e::world::{STRICT_POLICY_NAME, Service, Workload, World};
use e2e::{Process, WAIT, established_on_local_port, in_private_netns, install_capture};
use tokio::time::timeout;

const WEB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const API: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const DB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const VAULT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const INTRUDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
const LEGACY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
const API_VIP: Ipv4Addr = Ipv4Addr::new(127, 10, 0, 1);

/// A storefront: web calls api (permissive) and vault (strict); db speaks plain TCP; outsider
/// has another trust domain; intruder is in the mesh but not allowed into vault's namespace
/// policy; legacy is not in the mesh at all.
fn storefront(test: &str) -> World {
    let mut world = World::new(test);
    let api_service = Service {
        name: "api".into(),
        namespace: "shop".into(),
        vip: API_VIP,
        ports: vec![(80, 8080)],
        waypoint: None,
    };
    let mut api = Workload::new("api", "shop", API);
    api.services.push((api_service.key(), 80, 8080));
    let mut vault = Workload::new("vault", "secure", VAULT);
    vault.policies.push(STRICT_POLICY_NAME.into());
    let mut outsider = Workload::new("outsider", "partner", OUTSIDER);
    outsider.trust_domain = Some("partner.example".into());
    let mut db = Workload::new("db", "shop", DB);
    db.protocol = "TCP";
    world.workloads = vec![
        Workload::new("web", "shop", WEB),
        api,
        vault,
        outsider,
        db,
        Workload::new("intruder", "shop", INTRUDER),
    ];
    world.services = vec![api_service];
    // Only web may reach the secure namespace.
    world.policies.push(
        "- name: only-web
  namespace: secure
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [\"cluster.local/ns/shop/sa/web\"]
"
        .into(),
    );
    install_capture(&[WEB, OUTSIDER, INTRUDER], &[API, VAULT]);
    world
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Sends `data` from `source` to `dst` and returns what came back, bounded in time.
async fn call(source: Ipv4Addr, dst: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    timeout(WAIT, async {
        let stream = connect_from(IpAddr::V4(source), dst).await?;
        exchange(stream, data).await
    })
    .await
    .unwrap_or_else(|_| panic!("call {source} -> {dst} did not finish within {WAIT:?}"))
}

/// A refused connection: it may be accepted by the capture listener, but it carries nothing back.
fn assert_refused(result: &std::io::Result<Vec<u8>>, what: &str) {
    if let Ok(back) = result {
        assert!(
            back.is_empty(),
            "{what}: expected refusal, got {} bytes back",
            back.len()
        );
    }
}

fn logged(ztunnel: &Process, needles: &[&str]) -> bool {
    ztunnel
        .lines()
        .iter()
        .any(|line| needles.iter().all(|n| line.contains(n)))
}

#[test]
fn bytes_cross_intact_both_ways_and_the_server_sees_the_client() {
    in_private_netns("bytes_intact", || async {
        let world = storefront("bytes_intact");
        let api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;
        for (len, seed) in [(1, 1), (64 * 1024, 2), (64 * 1024 * 1024, 3)] {
            let data = payload(len, seed);
            let back = call(WEB, at(API, 8080), data.clone()).await.unwrap();
            assert_eq!(back.len(), len, "length of the echo of {len} bytes");
            assert_eq!(
                checksum(&back),
                checksum(&data),
                "checksum of the echo of {len} bytes"
            );
        }
        // Through the service VIP: translated 80 -> 8080 by the client side.
        let data = payload(10_000, 4);
        let back = call(WEB, at(API_VIP, 80), data.clone()).await.unwrap();
        assert_eq!(checksum(&back), checksum(&data));

        let peers = api.peers();
        assert_eq!(peers.len(), 4);
        assert!(
            peers.iter().all(|p| p.ip() == IpAddr::V4(WEB)),
            "app saw {peers:?}"
        );
        ztunnel.wait_for_line("inbound connection complete").await;
        assert!(
            logged(
                &ztunnel,
                &[
                    "inbound connection complete",
                    "spiffe://cluster.local/ns/shop/sa/web"
                ]
            ),
            "ztunnel recorded the client's SPIFFE identity"
        );
    });
}

#[test]
fn half_close_reaches_the_server_and_the_reply_still_arrives() {
    in_private_netns("half_close", || async {
        let world = storefront("half_close");
        let _api = Server::start(at(API, 9090), Behaviour::ReplyAfterEof).await;
        let _ztunnel = world.start_ztunnel().await;
        let back = call(WEB, at(API, 9090), payload(1000, 5)).await.unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), "got 1000 bytes");
    });
}

#[test]
fn concurrent_connections_share_few_hbone_connections() {
    in_private_netns("concurrency", || async {
        let world = storefront("concurrency");
        let _api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let _ztunnel = world.start_ztunnel().await;
        let mut open = Vec::new();
        for _ in 0..200 {
            open.push(connect_from(IpAddr::V4(WEB), at(API, 8080)).await.unwrap());
        }
        // Every client connection is open and tunnelled once its first echo is back.
        let ready = Arc::new(tokio::sync::Barrier::new(201));
        let mut tasks = Vec::new();
        for (i, stream) in open.into_iter().enumerate() {
            let ready = ready.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = stream;
                let probe = payload(64, u8::try_from(i % 251).unwrap());
                stream.write_all(&probe).await.unwrap();
                let mut first = vec![0u8; 64];
                stream.read_exact(&mut first).await.unwrap();
                assert_eq!(first, probe);
                ready.wait().await;
                ready.wait().await;
                let rest = payload(4096, 7);
                let back = exchange(stream, rest.clone()).await.unwrap();
                checksum(&back) == checksum(&rest)
            }));
        }
        timeout(WAIT, ready.wait()).await.unwrap();
        let hbone_connections = established_on_local_port(15008);
        timeout(WAIT, ready.wait()).await.unwrap();
        for task in tasks {
            assert!(
                timeout(WAIT, task).await.unwrap().unwrap(),
                "an echo differed"
            );
        }
        assert_eq!(
            hbone_connections, 2,
            "200 tunnels at 100 streams per connection"
        );
    });
}

#[test]
fn policy_sees_the_client_identity() {
    in_private_netns("identity_policy", || async {
        let world = storefront("identity_policy");
        let vault = Server::start(at(VAULT, 8200), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;
        let data = payload(2048, 8);
        let back = call(WEB, at(VAULT, 8200), data.clone()).await.unwrap();
        assert_eq!(checksum(&back), checksum(&data), "web is allowed");
        let refused = call(INTRUDER, at(VAULT, 8200), data).await;
        assert_refused(&refused, "intruder");
        ztunnel.wait_for_line("inbound tunnel refused").await;
        assert!(logged(
            &ztunnel,
            &[
                "inbound tunnel refused",
                "spiffe://cluster.local/ns/shop/sa/intruder",
                "401"
            ]
        ));
        let reached: Vec<IpAddr> = vault.peers().iter().map(SocketAddr::ip).collect();
        assert_eq!(
            reached,
            vec![IpAddr::V4(WEB)],
            "only web reached the application"
        );
    });
}

#[test]
fn another_trust_domain_is_refused() {
    in_private_netns("trust_domain", || async {
        let world = storefront("trust_domain");
        let api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;
        let refused = call(OUTSIDER, at(API, 8080), payload(100, 9)).await;
        assert_refused(&refused, "partner.example workload");
        ztunnel.wait_for_line("outbound connection failed").await;
        assert!(logged(
            &ztunnel,
            &["outbound connection failed", "trust domain"]
        ));
        assert!(api.peers().is_empty(), "the application was never reached");
    });
}

#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    in_private_netns("strict_permissive", || async {
        let world = storefront("strict_permissive");
        let vault = Server::start(at(VAULT, 8200), Behaviour::Echo).await;
        let api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;

        let refused = call(LEGACY, at(VAULT, 8200), payload(100, 10)).await;
        assert_refused(&refused, "plaintext to a STRICT workload");
        ztunnel
            .wait_for_line("inbound plaintext connection refused")
            .await;
        assert!(
            vault.peers().is_empty(),
            "STRICT: the application was never reached"
        );

        let data = payload(5000, 11);
        let back = call(LEGACY, at(API, 8080), data.clone()).await.unwrap();
        assert_eq!(
            checksum(&back),
            checksum(&data),
            "PERMISSIVE: plaintext passes"
        );
        assert_eq!(
            api.peers()[0].ip(),
            IpAddr::V4(LEGACY),
            "the app sees the real client"
        );
    });
}

#[test]
fn passthrough_and_plain_tcp_destinations_are_reached_directly() {
    in_private_netns("passthrough", || async {
        let world = storefront("passthrough");
        let external = Server::start(at(EXTERNAL, 7000), Behaviour::Echo).await;
        let db = Server::start(at(DB, 5432), Behaviour::Echo).await;
        let _ztunnel = world.start_ztunnel().await;
        for (what, dst, server) in [
            ("outside the mesh", at(EXTERNAL, 7000), &external),
            ("TCP workload", at(DB, 5432), &db),
        ] {
            let data = payload(30_000, 12);
            let back = call(WEB, dst, data.clone()).await.unwrap();
            assert_eq!(checksum(&back), checksum(&data), "{what}");
            assert_eq!(
                server.peers()[0].ip(),
                IpAddr::V4(WEB),
                "{what}: source kept"
            );
        }
        assert_eq!(established_on_local_port(15008), 0, "no HBONE was used");
    });
}

#[test]
fn sigterm_lets_open_connections_finish_then_exits_cleanly() {
    in_private_netns("drain", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let world = storefront("drain");
        let _api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;
        let data = payload(256 * 1024, 13);
        let (first, second) = data.split_at(data.len() / 2);
        let mut stream = connect_from(IpAddr::V4(WEB), at(API, 8080)).await.unwrap();
        stream.write_all(first).await.unwrap();
        let mut echoed = vec![0u8; first.len()];
        timeout(WAIT, stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();

        ztunnel.send_sigterm();
        ztunnel.wait_for_line("draining connections").await;
        // The connection opened before SIGTERM keeps working while the agent drains.
        let rest = timeout(WAIT, exchange(stream, second.to_vec()))
            .await
            .unwrap()
            .unwrap();
        echoed.extend_from_slice(&rest);
        assert_eq!(
            checksum(&echoed),
            checksum(&data),
            "the draining connection stayed intact"
        );

        let status = ztunnel.wait_exit().await;
        assert!(status.success(), "ztunnel exited with {status}");
        assert!(
            !logged(&ztunnel, &["drain timeout reached"]),
            "the connection finished before the deadline, nothing was cut"
        );
    });
}

#[test]
fn config_changes_apply_to_new_connections_without_a_restart() {
    in_private_netns("reload", || async {
        let mut world = storefront("reload");
        let api_index = world
            .workloads
            .iter()
            .position(|w| w.name == "api")
            .unwrap();
        world.workloads[api_index]
            .policies
            .push(STRICT_POLICY_NAME.into());
        let api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;
        let refused = call(LEGACY, at(API, 8080), payload(100, 14)).await;
        assert_refused(&refused, "plaintext while api is STRICT");

        // Every workload goes PERMISSIVE: the STRICT policy is no longer attached.
        for workload in &mut world.workloads {
            workload.policies.retain(|p| p != STRICT_POLICY_NAME);
        }
        world.write();
        ztunnel.wait_for_line("generation=2").await;
        let data = payload(3000, 15);
        let back = call(LEGACY, at(API, 8080), data.clone()).await.unwrap();
        assert_eq!(
            checksum(&back),
            checksum(&data),
            "plaintext passes after the change"
        );

        // A broken file is refused and the last good state keeps serving.
        std::fs::write(world.config_path(), "workloads: [{uid: }]\n").unwrap();
        ztunnel.wait_for_line("local config rejected").await;
        let back = call(LEGACY, at(API, 8080), data.clone()).await.unwrap();
        assert_eq!(
            checksum(&back),
            checksum(&data),
            "last good state still serves"
        );
        assert_eq!(
            api.peers().len(),
            2,
            "only the two permitted calls reached the app"
        );
    });
}

#[test]
fn a_policy_change_closes_the_open_connections_it_no_longer_allows() {
    in_private_netns("recheck", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        /// One echo round trip on an open connection, bounded in time.
        async fn echo(stream: &mut tokio::net::TcpStream, seed: u8, what: &str) {
            let probe = payload(512, seed);
            let mut back = vec![0u8; probe.len()];
            timeout(WAIT, async {
                stream.write_all(&probe).await?;
                stream.read_exact(&mut back).await
            })
            .await
            .unwrap_or_else(|_| panic!("{what}: no echo within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: echo failed: {e}"));
            assert_eq!(back, probe, "{what}: echo intact");
        }

        /// The connection is cut (reset, not a clean end that would pass for a complete
        /// answer) without another byte, bounded in time.
        async fn closed(stream: &mut tokio::net::TcpStream, what: &str) {
            let mut byte = [0u8; 1];
            match timeout(WAIT, stream.read(&mut byte)).await {
                Err(_) => panic!("{what}: still open {WAIT:?} after the policy change"),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Ok(Err(e)) => panic!("{what}: ended with {e}, expected a reset"),
                Ok(Ok(0)) => panic!("{what}: ended cleanly; a cut connection must be reset"),
                Ok(Ok(n)) => panic!("{what}: {n} unexpected byte(s) instead of the close"),
            }
        }

        let mut world = storefront("recheck");
        let api = Server::start(at(API, 8080), Behaviour::Echo).await;
        let mut ztunnel = world.start_ztunnel().await;

        // Three long-lived connections to api: two mesh clients over HBONE, one plaintext.
        let mut web = connect_from(IpAddr::V4(WEB), at(API, 8080)).await.unwrap();
        let mut intruder = connect_from(IpAddr::V4(INTRUDER), at(API, 8080))
            .await
            .unwrap();
        let mut legacy = connect_from(IpAddr::V4(LEGACY), at(API, 8080))
            .await
            .unwrap();
        echo(&mut web, 20, "web before the change").await;
        echo(&mut intruder, 21, "intruder before the change").await;
        echo(&mut legacy, 22, "legacy before the change").await;
        assert_eq!(api.peers().len(), 3, "all three reached the application");

        // A DENY for web's principal on every workload of the namespace.
        world.policies.push(
            "- name: deny-web
  namespace: shop
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [\"cluster.local/ns/shop/sa/web\"]
"
            .into(),
        );
        world.write();
        closed(&mut web, "web after the DENY").await;
        let line = ztunnel
            .wait_for_line("connection closed: policy shop/deny-web no longer allows it")
            .await;
        for needle in [
            "src=127.0.0.2",
            "src_identity=spiffe://cluster.local/ns/shop/sa/web",
            "dst=127.0.0.3:8080",
            "protocol=HBONE",
        ] {
            assert!(
                line.contains(needle),
                "the close line names {needle}: {line}"
            );
        }
        // The whole pass over that generation is done before the others are judged.
        ztunnel
            .wait_for_lines(&["open inbound connections re-checked", "generation=2"], 1)
            .await;
        assert_eq!(
            ztunnel.count(&["connection closed:"]),
            1,
            "only web was closed"
        );
        echo(&mut intruder, 23, "intruder after the DENY").await;
        echo(&mut legacy, 24, "legacy after the DENY").await;

        // api goes STRICT: the plaintext connection has no identity, the tunnel keeps one.
        let api_index = world
            .workloads
            .iter()
            .position(|w| w.name == "api")
            .unwrap();
        world.workloads[api_index]
            .policies
            .push(STRICT_POLICY_NAME.into());
        world.write();
        closed(&mut legacy, "plaintext after STRICT").await;
        let line = ztunnel
            .wait_for_line(&format!(
                "connection closed: policy {STRICT_POLICY_NAME} no longer allows it"
            ))
            .await;
        for needle in [
            "src=127.0.0.9",
            "src_identity=none",
            "dst=127.0.0.3:8080",
            "protocol=plaintext",
        ] {
            assert!(
                line.contains(needle),
                "the close line names {needle}: {line}"
            );
        }
        ztunnel
            .wait_for_lines(&["open inbound connections re-checked", "generation=3"], 1)
            .await;
        assert_eq!(
            ztunnel.count(&["connection closed:"]),
            2,
            "then only legacy"
        );
        echo(&mut intruder, 25, "intruder after STRICT").await;

        // New connections follow the new policies too; the allowed one still ends cleanly.
        let refused = call(WEB, at(API, 8080), payload(100, 26)).await;
        assert_refused(&refused, "a new connection from web");
        intruder.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(WAIT, intruder.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(
            rest.is_empty(),
            "nothing left over on intruder's connection"
        );
        ztunnel
            .wait_for_lines(
                &[
                    "inbound connection complete",
                    "spiffe://cluster.local/ns/shop/sa/intruder",
                ],
                1,
            )
            .await;
    });
}
