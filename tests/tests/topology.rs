//! Checks of the multi-host support code itself: named namespaces, the two-node cluster's
//! routing, and packet capture. The mesh tests rely on a capture that *can* see clear text
//! (they will assert it sees none), so here plaintext must be seen, on the right hop only.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use e2e::WAIT;
use e2e::apps::{Behaviour, Server, checksum, exchange, payload};
use e2e::netns::Netns;
use e2e::pcap::{Capture, PcapError, Recorded, Segment};
use e2e::topology::{Cluster, Pod};
use tokio::time::timeout;

const PORT: u16 = 7000;
const SAME_NODE_MARKER: &[u8] = b"plaintext-same-node-7d1e";
const CROSS_NODE_MARKER: &[u8] = b"plaintext-cross-node-4b9a";

/// Sends `data` from a socket in `client`'s namespace and returns the echo, bounded in time.
async fn call(client: &Pod, dst: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    timeout(WAIT, async {
        let stream = client.netns().connect(dst).await?;
        exchange(stream, data).await
    })
    .await
    .unwrap_or_else(|_| panic!("{} -> {dst} did not finish within {WAIT:?}", client.name()))
    .unwrap_or_else(|e| panic!("{} -> {dst}: {e}", client.name()))
}

/// The marker first, where the first data segment starts, so one frame holds it whole.
fn marked(marker: &[u8], len: usize, seed: u8) -> Vec<u8> {
    let mut data = marker.to_vec();
    data.extend(payload(len, seed));
    data
}

fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn scratch(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("e2e-topology-{test}-{}", std::process::id()))
}

/// Payload bytes of the segments between `client` and the server, per direction; panics on a
/// payload segment of any other connection.
fn payload_per_direction(segments: &[Segment], client: &Pod, server: SocketAddr) -> (usize, usize) {
    let server = match server {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("pods are IPv4"),
    };
    let (mut to_server, mut to_client) = (0, 0);
    for s in segments.iter().filter(|s| s.payload_len > 0) {
        if s.dst == server && *s.src.ip() == client.ip() {
            to_server += s.payload_len;
        } else if s.src == server && *s.dst.ip() == client.ip() {
            to_client += s.payload_len;
        } else {
            panic!("unexpected payload segment {s:?}");
        }
    }
    (to_server, to_client)
}

#[tokio::test(flavor = "current_thread")]
async fn pods_reach_each_other_on_and_across_nodes_and_captures_see_the_right_hop() {
    let dir = scratch("routing");
    let mut cluster = Cluster::new("routing");
    let (n1, n2) = (cluster.add_node("node1"), cluster.add_node("node2"));
    let server = cluster.add_pod(n1, "server");
    let neighbour = cluster.add_pod(n1, "neighbour");
    let remote = cluster.add_pod(n2, "remote");
    assert_eq!(server.ip().octets(), [10, 1, 0, 2]);
    assert_eq!(neighbour.ip().octets(), [10, 1, 0, 3]);
    assert_eq!(remote.ip().octets(), [10, 2, 0, 2]);
    let names = cluster.netns_names();
    let listed = netns_list();
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} in {listed:?}"
    );

    let node1 = cluster.node(n1).netns();
    let link = cluster.inter_node_iface(n1, n2);
    // What a transparent proxy in a pod will need; the mesh tests exercise it.
    for (netns, iface) in [
        (server.netns(), "all"),
        (server.netns(), "lo"),
        (server.netns(), "eth0"),
        (node1, neighbour.node_iface()),
        (node1, link),
    ] {
        let key = format!("net.ipv4.conf.{iface}.rp_filter");
        let value = netns.exec_output("sysctl", &["-n", &key]);
        assert_eq!(value.trim(), "0", "{key} in {}", netns.name());
    }

    let echo = Server::serve(server.netns().listen(server.addr(PORT)), Behaviour::Echo);
    let wire = Capture::start(node1, link, &dir).await;
    let veth = Capture::start(node1, neighbour.node_iface(), &dir).await;
    let wire_file = wire.path().to_owned();
    let mut sent = Vec::new();
    for (client, marker, seed) in [
        (&neighbour, SAME_NODE_MARKER, 1),
        (&remote, CROSS_NODE_MARKER, 2),
    ] {
        let data = marked(marker, 256 * 1024, seed);
        let back = call(client, server.addr(PORT), data.clone()).await;
        assert_eq!(back.len(), data.len(), "echo length to {}", client.name());
        assert_eq!(
            checksum(&back),
            checksum(&data),
            "echo to {}",
            client.name()
        );
        sent.push(data.len());
    }
    let (wire, veth) = (wire.stop().await, veth.stop().await);

    let peers: Vec<IpAddr> = echo.peers().iter().map(SocketAddr::ip).collect();
    assert_eq!(
        peers,
        vec![IpAddr::V4(neighbour.ip()), IpAddr::V4(remote.ip())],
        "the server saw each client's pod IP, not a node's"
    );
    for recorded in [&wire, &veth] {
        assert_eq!(recorded.link_type(), 1, "veths capture as Ethernet");
        assert_eq!(recorded.dropped_by_kernel(), Some(0), "a complete capture");
    }
    assert!(
        veth.contains(SAME_NODE_MARKER),
        "same-node plaintext on the pod's veth"
    );
    assert!(
        !veth.contains(CROSS_NODE_MARKER),
        "cross-node traffic never touches it"
    );
    assert!(
        wire.contains(CROSS_NODE_MARKER),
        "cross-node plaintext on the link"
    );
    assert!(
        !wire.contains(SAME_NODE_MARKER),
        "same-node traffic stays off the link"
    );
    for (recorded, client, len) in [(&veth, &neighbour, sent[0]), (&wire, &remote, sent[1])] {
        let segments = recorded.tcp_segments();
        let (up, down) = payload_per_direction(&segments, client, server.addr(PORT));
        // At least: a retransmission would be counted twice.
        assert!(
            up >= len && down >= len,
            "{}: saw {up}/{down} of {len} bytes",
            client.name()
        );
        let ports = recorded.payload_ports();
        assert!(ports.contains(&PORT), "{ports:?}");
        let handshake = segments.iter().any(|s| s.flags & 0x12 == 0x02);
        assert!(handshake, "{}: the SYN was captured", client.name());
    }

    // What a killed tcpdump leaves: the last record cut short.
    let bytes = std::fs::read(&wire_file).unwrap();
    let cut = Recorded::parse(&bytes[..bytes.len() - 1]).unwrap();
    assert!(cut.truncated());
    assert_eq!(cut.frames().len(), wire.frames().len() - 1);

    drop((server, neighbour, remote));
    drop(cluster);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} left in {listed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn netns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn enter_moves_the_thread_in_and_always_back() {
    let own = Path::new("/proc/thread-self/ns/net");
    let before = netns_inode(own);
    let netns = Netns::create("enter-probe");
    assert!(
        netns
            .name()
            .starts_with(&format!("mt{}-", std::process::id()))
    );
    let inside = netns.enter(|| netns_inode(own));
    assert_eq!(inside, netns_inode(&netns.path()));
    assert_ne!(inside, before);
    assert_eq!(netns_inode(own), before, "back after enter");

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        netns.enter(|| panic!("inside"));
    }));
    assert!(panicked.is_err());
    assert_eq!(netns_inode(own), before, "back after a panic inside enter");

    let lo = netns.exec_output("ip", &["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "lo is up: {lo}");
    let name = netns.name().to_owned();
    drop(netns);
    assert!(!netns_list().contains(&name));
}

#[test]
fn namespaces_of_dead_test_processes_are_swept() {
    // Above the kernel's largest possible pid, so never a live process.
    let stale = "mt4194999-stale";
    e2e::run("ip", &["netns", "add", stale]);
    let _fresh = Netns::create("sweeper");
    assert!(
        !netns_list().iter().any(|n| n == stale),
        "stale netns removed"
    );
}

/// An Ethernet frame with IPv4 and TCP from 10.1.0.3:40000 to 10.1.0.2:7000, padded to the
/// Ethernet minimum as a NIC would.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend([0x08, 0x00]);
    let total = u16::try_from(40 + data.len()).unwrap().to_be_bytes();
    f.extend([0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend([10, 1, 0, 3, 10, 1, 0, 2]);
    f.extend(40000u16.to_be_bytes());
    f.extend(PORT.to_be_bytes());
    f.extend([0; 8]);
    f.extend([0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(data);
    f.resize(f.len().max(60), 0);
    f
}

/// A classic pcap file of `frames`, in the given byte order.
fn pcap_file(frames: &[Vec<u8>], big_endian: bool, link_type: u32) -> Vec<u8> {
    let w = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::new();
    out.extend(w(0xa1b2_c3d4));
    out.extend(if big_endian {
        [0, 2, 0, 4]
    } else {
        [2, 0, 4, 0]
    });
    for v in [0, 0, 262_144, link_type] {
        out.extend(w(v));
    }
    for f in frames {
        let len = u32::try_from(f.len()).unwrap();
        for v in [1, 0, len, len] {
            out.extend(w(v));
        }
        out.extend(f);
    }
    out
}

#[test]
fn pcap_parsing_finds_segments_and_survives_any_truncation() {
    let frames = vec![frame(b"hi"), frame(b"hello, world")];
    for big_endian in [false, true] {
        let file = pcap_file(&frames, big_endian, 1);
        let recorded = Recorded::parse(&file).unwrap();
        assert!(!recorded.truncated());
        let segments = recorded.tcp_segments();
        let lens: Vec<usize> = segments.iter().map(|s| s.payload_len).collect();
        assert_eq!(lens, vec![2, 12], "padding is not payload");
        assert_eq!(
            segments[0].src,
            "10.1.0.3:40000".parse::<SocketAddrV4>().unwrap()
        );
        assert_eq!(
            recorded.payload_ports().into_iter().collect::<Vec<_>>(),
            vec![PORT, 40000]
        );
        assert!(recorded.contains(b"lo, wo") && !recorded.contains(b"absent"));

        let boundaries = [24, 24 + 16 + frames[0].len(), file.len()];
        for cut in 0..=file.len() {
            match Recorded::parse(&file[..cut]) {
                Err(PcapError::NoHeader) => assert!(cut < 24),
                Err(e) => panic!("cut at {cut}: {e}"),
                Ok(r) => {
                    assert!(cut >= 24);
                    assert_eq!(r.truncated(), !boundaries.contains(&cut), "cut at {cut}");
                    assert!(r.tcp_segments().len() <= 2);
                }
            }
        }
    }
    // Linux "cooked" v2 capture: 20-byte header, protocol first.
    let mut sll2 = vec![0x08, 0x00];
    sll2.resize(20, 0);
    sll2.extend_from_slice(&frame(b"cooked")[14..]);
    let recorded = Recorded::parse(&pcap_file(&[sll2], false, 276)).unwrap();
    assert_eq!(recorded.tcp_segments()[0].payload_len, 6);
    let pcapng = [0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0];
    assert!(matches!(
        Recorded::parse(&pcapng),
        Err(PcapError::BadMagic(_))
    ));
}
