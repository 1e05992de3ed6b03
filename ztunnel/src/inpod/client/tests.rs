//! The ZDS client against a scripted node agent over a real `SOCK_SEQPACKET` socket, with real
//! namespace descriptors (this process's own namespace stands in for a pod's, so the pod
//! listeners bind on loopback port 0). Every malformed or out-of-order request must be answered
//! with an error ack naming it, cost only that connection, and leave the other pods served.
//! Entering a namespace needs CAP_SYS_ADMIN: run as root, as CI does.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use mesh::hbone::pool::{Pool, PoolSettings};
use mesh::identity::{CaLimits, CertStore, LocalCa, RefreshPolicy};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::run;
use crate::capture::netns::HostNetns;
use crate::capture::zds::transport::{Connection, Listener};
use crate::capture::zds::{PodInfo, Request, decode_ack, decode_hello, encode_request};
use crate::inpod::pods::PodProxies;
use crate::proxy::{Inputs, Listeners};
use crate::state::Directory;

const WAIT: Duration = Duration::from_secs(20);

struct Agent {
    listener: Listener,
    proxies: Arc<PodProxies>,
    ready: watch::Receiver<bool>,
    stop: CancellationToken,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Agent {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the ZDS client tests enter network namespaces: run them as root"
    );
    let dir = std::env::temp_dir().join(format!("zds-client-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("zds.sock");
    let listener = Listener::bind(&path).unwrap();
    let ca = LocalCa::generate_root(
        "cluster.local",
        Duration::from_secs(3600),
        CaLimits::default(),
    )
    .unwrap();
    let certs = CertStore::new(Arc::new(ca), RefreshPolicy::default(), Handle::current());
    let pool = Pool::new(PoolSettings::default(), certs.clone());
    let inputs = Arc::new(Inputs::new(
        Arc::new(Directory::default()),
        certs,
        pool,
        String::new(),
        "node".into(),
        "cluster".into(),
        Arc::new(ztunnel_metrics()),
    ));
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners {
        outbound: loopback,
        inbound_plaintext: loopback,
        inbound: loopback,
        reuse_port: false,
    };
    let host = Arc::new(HostNetns::open().unwrap());
    let proxies = Arc::new(PodProxies::new(
        inputs,
        host,
        listeners,
        Duration::from_millis(100),
        Handle::current(),
    ));
    let (ready_tx, ready) = watch::channel(false);
    let stop = CancellationToken::new();
    tokio::spawn(run(path, Arc::clone(&proxies), ready_tx, stop.clone()));
    Agent {
        listener,
        proxies,
        ready,
        stop,
        _dir: TempDir(dir),
    }
}

impl Agent {
    /// Accepts ztunnel's next connection and checks its hello.
    async fn accept(&self) -> Connection {
        let conn = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("ztunnel did not (re)connect")
            .unwrap();
        let hello = tokio::time::timeout(WAIT, conn.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decode_hello(&hello.bytes), Ok(1), "hello first, version V1");
        conn
    }

    fn running(&self) -> Vec<String> {
        self.proxies.running_uids()
    }
}

fn info(name: &str) -> PodInfo {
    PodInfo {
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
    }
}

fn add(uid: &str) -> Vec<u8> {
    encode_request(&Request::Add {
        uid: uid.into(),
        info: Some(info(uid)),
    })
    .unwrap()
}

/// Sends a raw record (with this process's netns as descriptor when `with_fd`) and returns the
/// ack's error text (`None` for success).
async fn send(conn: &Connection, record: &[u8], with_fd: bool) -> Option<String> {
    let netns = File::open("/proc/self/ns/net").unwrap();
    let fd = with_fd.then(|| netns.as_fd());
    conn.send(record, fd).await.unwrap();
    let answer = tokio::time::timeout(WAIT, conn.recv())
        .await
        .unwrap()
        .unwrap();
    decode_ack(&answer.bytes).unwrap()
}

/// After a nack that ends the connection, ztunnel closes its end.
async fn assert_closed(conn: &Connection) {
    let next = tokio::time::timeout(WAIT, conn.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.bytes.is_empty(),
        "ztunnel kept talking after a fatal nack"
    );
}

fn snapshot_sent() -> Vec<u8> {
    encode_request(&Request::SnapshotSent).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_cost_only_their_connection_and_other_pods_stay_up() {
    let mut agent = start().await;

    let conn = agent.accept().await;
    assert_eq!(send(&conn, &add("pod-a"), true).await, None);
    assert!(!*agent.ready.borrow(), "not ready before the snapshot ends");
    assert_eq!(send(&conn, &snapshot_sent(), false).await, None);
    tokio::time::timeout(WAIT, agent.ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.running(), ["pod-a"]);

    // Not a protobuf at all.
    let nack = send(&conn, b"\xff\xff\xff", false).await.unwrap();
    assert!(nack.starts_with("failure to read message : "), "{nack}");
    assert_closed(&conn).await;

    assert_eq!(
        agent.running(),
        ["pod-a"],
        "a bad record must not touch other pods"
    );

    // An add without its namespace.
    let conn = agent.accept().await;
    let nack = send(&conn, &add("pod-b"), false).await.unwrap();
    assert!(
        nack.contains("add for pod-b carries no netns descriptor"),
        "{nack}"
    );
    assert_closed(&conn).await;

    assert_eq!(
        agent.running(),
        ["pod-a"],
        "a bad record must not touch other pods"
    );

    // A descriptor on a del.
    let conn = agent.accept().await;
    let del = encode_request(&Request::Del {
        uid: "pod-a".into(),
    })
    .unwrap();
    let nack = send(&conn, &del, true).await.unwrap();
    assert!(nack.contains("descriptor(s) on a del record"), "{nack}");
    assert_closed(&conn).await;

    assert_eq!(
        agent.running(),
        ["pod-a"],
        "a bad record must not touch other pods"
    );

    // A record over the size limit.
    let conn = agent.accept().await;
    let nack = send(&conn, &[0x1a; 2000], false).await.unwrap();
    assert!(nack.contains("larger than 1024 bytes"), "{nack}");
    assert_closed(&conn).await;

    assert_eq!(
        agent.running(),
        ["pod-a"],
        "a bad record must not touch other pods"
    );

    // Out of order: a second end of snapshot; keep after the snapshot.
    let conn = agent.accept().await;
    let keep = encode_request(&Request::Keep {
        uid: "pod-a".into(),
    })
    .unwrap();
    assert_eq!(send(&conn, &keep, false).await, None);
    assert_eq!(send(&conn, &snapshot_sent(), false).await, None);
    let nack = send(&conn, &snapshot_sent(), false).await.unwrap();
    assert!(
        nack.starts_with("failure to process message : snapshot_sent received twice"),
        "{nack}"
    );
    assert_closed(&conn).await;
    let conn = agent.accept().await;
    assert_eq!(send(&conn, &snapshot_sent(), false).await, None);
    let nack = send(&conn, &keep, false).await.unwrap();
    assert!(
        nack.contains("keep for pod-a after the snapshot ended"),
        "{nack}"
    );
    assert_closed(&conn).await;
    // That empty snapshot did not name pod-a: reconciled away. Everything before it kept it.
    assert!(
        agent.running().is_empty(),
        "pod-a should be stopped by the empty snapshot"
    );

    // After all that, ztunnel still enrolls pods normally.
    let conn = agent.accept().await;
    assert_eq!(send(&conn, &add("pod-c"), true).await, None);
    assert_eq!(send(&conn, &snapshot_sent(), false).await, None);
    assert_eq!(agent.running(), ["pod-c"]);
    // Re-adding the same pod in the same namespace changes nothing.
    assert_eq!(send(&conn, &add("pod-c"), true).await, None);
    assert_eq!(agent.running(), ["pod-c"]);
    let del = encode_request(&Request::Del {
        uid: "pod-c".into(),
    })
    .unwrap();
    assert_eq!(send(&conn, &del, false).await, None);
    assert!(agent.running().is_empty());
    agent.stop.cancel();
}

fn ztunnel_metrics() -> crate::metrics::Metrics {
    crate::metrics::Metrics::default()
}
