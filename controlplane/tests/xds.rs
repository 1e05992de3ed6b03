//! The delta ADS server (`controlplane::xds`) and client (`mesh::xds`) against each other over
//! real loopback TCP: initial sync, pushes of changes only, NACKs, a server restart and several
//! clients. Every wait is for a condition, bounded by [`WAIT`].

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::xds::{
    DeltaAdsServer, ServerStats, Snapshot, resource_version, serve_with_incoming,
};
use mesh::xds::{AdsClient, ClientStats, Connector, Delta, Rejection, Subscription, XdsHandler};
use prost::Message;
use prost_types::Any;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::transport::server::TcpIncoming;
use xds_proto::envoy::config::core::v3::Node;
use xds_proto::istio::security::Authorization;
use xds_proto::istio::workload::{Address, Workload, address};
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// Upper bound of every wait; a condition not met by then fails the test.
const WAIT: Duration = Duration::from_secs(10);

fn workload(uid: &str, generation: u32) -> Any {
    let address = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_owned(),
            name: uid.rsplit('/').next().unwrap().to_owned(),
            namespace: "storefront".to_owned(),
            canonical_revision: format!("v{generation}"),
            ..Default::default()
        })),
    };
    Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: address.encode_to_vec(),
    }
}

fn policy(name: &str, action: i32) -> Any {
    let policy = Authorization {
        name: name.to_owned(),
        namespace: "storefront".to_owned(),
        action,
        ..Default::default()
    };
    Any {
        type_url: AUTHORIZATION_TYPE_URL.to_owned(),
        value: policy.encode_to_vec(),
    }
}

/// A snapshot from (name, resource) pairs.
fn snapshot(resources: &[(&str, Any)]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (name, resource) in resources {
        snapshot.insert(*name, resource.clone());
    }
    snapshot
}

/// Logs of both sides in the test's output (shown when it fails), `RUST_LOG` to see more.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

async fn wait_for<T: std::fmt::Debug>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    condition: impl FnMut(&T) -> bool,
) {
    let waited = tokio::time::timeout(WAIT, rx.wait_for(condition))
        .await
        .map(|result| result.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => panic!("{what}: the sender is gone"),
        Err(_) => panic!("{what}: not within {WAIT:?}; last value {:?}", *rx.borrow()),
    }
}

/// A running server on a loopback port.
struct ControlPlane {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stats: watch::Receiver<ServerStats>,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
}

impl ControlPlane {
    async fn start(addr: SocketAddr, initial: Snapshot) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (snapshots, receiver) = watch::channel(Arc::new(initial));
        let shutdown = CancellationToken::new();
        let server = DeltaAdsServer::new(receiver, shutdown.clone());
        let stats = server.stats();
        let serving = tokio::spawn(async move {
            serve_with_incoming(server, TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await
                .unwrap();
        });
        Self {
            addr,
            snapshots,
            stats,
            shutdown,
            serving,
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.serving)
            .await
            .unwrap()
            .unwrap();
    }
}

/// What a handler was given, shared with the test.
#[derive(Default)]
struct Record {
    deltas: Vec<(String, Delta)>,
    /// Names refused, with the reason the handler gives.
    refuse: BTreeMap<String, String>,
}

struct Recorder(Arc<Mutex<Record>>);

impl XdsHandler for Recorder {
    fn apply(&mut self, type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>> {
        let mut record = self.0.lock().unwrap();
        let refused: Vec<Rejection> = delta
            .added
            .iter()
            .filter_map(|added| {
                let reason = record.refuse.get(&added.name)?;
                Some(Rejection::new(&added.name, reason))
            })
            .collect();
        record.deltas.push((type_url.to_owned(), delta));
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused)
        }
    }
}

/// A running client.
struct Client {
    record: Arc<Mutex<Record>>,
    ready: watch::Receiver<bool>,
    stats: watch::Receiver<ClientStats>,
    shutdown: CancellationToken,
    running: JoinHandle<()>,
}

fn connector(addr: SocketAddr) -> impl Connector {
    move || {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        async move { endpoint.connect().await }
    }
}

fn node(index: u8) -> Node {
    Node {
        id: format!(
            "ztunnel~10.244.{index}.2~ztunnel-{index}.istio-system~istio-system.svc.cluster.local"
        ),
        ..Default::default()
    }
}

impl Client {
    /// A client of `addr` for node `index`, subscribed to `types` in that order.
    fn start(
        addr: SocketAddr,
        index: u8,
        types: Vec<(&str, Subscription)>,
        refuse: &[(&str, &str)],
    ) -> Self {
        let record = Arc::new(Mutex::new(Record {
            refuse: refuse
                .iter()
                .map(|(name, why)| ((*name).to_owned(), (*why).to_owned()))
                .collect(),
            ..Default::default()
        }));
        let mut client =
            AdsClient::new(node(index), format!("http://{addr}"), connector(addr)).unwrap();
        for (type_url, subscription) in types {
            client
                .register(
                    type_url,
                    subscription,
                    Box::new(Recorder(Arc::clone(&record))),
                )
                .unwrap();
        }
        let shutdown = CancellationToken::new();
        let (ready, stats) = (client.ready(), client.stats());
        let running = tokio::spawn(client.run(shutdown.clone()));
        Self {
            record,
            ready,
            stats,
            shutdown,
            running,
        }
    }

    fn wildcard(addr: SocketAddr, index: u8) -> Self {
        let types = vec![
            (ADDRESS_TYPE_URL, Subscription::Wildcard),
            (AUTHORIZATION_TYPE_URL, Subscription::Wildcard),
        ];
        Self::start(addr, index, types, &[])
    }

    /// Waits until `count` responses were answered (ACK or NACK).
    async fn wait_answered(&mut self, count: u64) {
        wait_for(
            &mut self.stats,
            &format!("{count} responses answered"),
            |s| s.acks + s.nacks >= count,
        )
        .await;
    }

    /// Deltas received since the last call, as (type, added names, removed names).
    fn take_deltas(&self) -> Vec<(&'static str, Vec<String>, Vec<String>)> {
        let deltas = std::mem::take(&mut self.record.lock().unwrap().deltas);
        deltas
            .into_iter()
            .map(|(type_url, delta)| {
                let kind = if type_url == ADDRESS_TYPE_URL {
                    "address"
                } else {
                    "authorization"
                };
                let mut added: Vec<String> =
                    delta.added.into_iter().map(|added| added.name).collect();
                added.sort();
                (kind, added, delta.removed)
            })
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.running)
            .await
            .unwrap()
            .unwrap();
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

const W1: &str = "Kubernetes//Pod/storefront/web-1";
const W2: &str = "Kubernetes//Pod/storefront/web-2";
const W3: &str = "Kubernetes//Pod/storefront/web-3";
const W4: &str = "Kubernetes//Pod/storefront/web-4";
const P1: &str = "storefront/allow-web";
const P2: &str = "storefront/deny-debug";

fn mesh_of_three() -> Vec<(&'static str, Any)> {
    vec![
        (W1, workload(W1, 1)),
        (W2, workload(W2, 1)),
        (W3, workload(W3, 1)),
        (P1, policy(P1, 0)),
        (P2, policy(P2, 1)),
    ]
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn initial_sync_then_only_changes_and_removals() {
    init_logs();
    let resources = mesh_of_three();
    let server = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let mut client = Client::wildcard(server.addr, 1);

    wait_for(&mut client.ready, "client ready", |ready| *ready).await;
    client.wait_answered(2).await;
    assert_eq!(
        client.take_deltas(),
        [
            ("address", names(&[W1, W2, W3]), vec![]),
            ("authorization", names(&[P1, P2]), vec![])
        ]
    );
    let mut server_stats = server.stats.clone();
    wait_for(&mut server_stats, "server counted the first ACKs", |s| {
        s.acks == 2
    })
    .await;
    let mut changed = resources.clone();
    changed[1].1 = workload(W2, 2);
    changed.retain(|(name, _)| *name != P1);
    server.publish(snapshot(&changed));
    client.wait_answered(4).await;
    assert_eq!(
        client.take_deltas(),
        [
            ("address", names(&[W2]), vec![]),
            ("authorization", vec![], names(&[P1]))
        ]
    );
    assert_eq!(
        *client.stats.borrow(),
        ClientStats {
            connect_attempts: 1,
            streams_opened: 1,
            responses: 4,
            acks: 4,
            nacks: 0
        }
    );
    wait_for(&mut server_stats, "server counted the ACKs", |s| {
        s.acks == 4
    })
    .await;
    assert_eq!(server_stats.borrow().streams_open, 1);

    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn versions_are_content_hashes() {
    init_logs();
    let resources = mesh_of_three();
    let server = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let mut client = Client::wildcard(server.addr, 1);
    client.wait_answered(2).await;
    let deltas = std::mem::take(&mut client.record.lock().unwrap().deltas);
    let by_name: BTreeMap<&str, &Any> = resources.iter().map(|(name, any)| (*name, any)).collect();
    let received: Vec<_> = deltas.iter().flat_map(|(_, delta)| &delta.added).collect();
    assert_eq!(received.len(), resources.len());
    for added in received {
        let sent = by_name[added.name.as_str()];
        assert_eq!(added.version, resource_version(sent), "{}", added.name);
        assert_eq!(&added.resource, sent, "{}", added.name);
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn refused_resource_is_nacked_by_name_and_not_resent_until_it_changes() {
    init_logs();
    let resources = mesh_of_three();
    let server = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let types = vec![
        (ADDRESS_TYPE_URL, Subscription::Wildcard),
        (AUTHORIZATION_TYPE_URL, Subscription::Wildcard),
    ];
    let mut client = Client::start(server.addr, 1, types, &[(P2, "invalid CIDR length 33")]);

    client.wait_answered(2).await;
    let mut server_stats = server.stats.clone();
    wait_for(&mut server_stats, "server saw the NACK", |s| s.nacks == 1).await;
    let nack = server_stats.borrow().last_nack.clone().unwrap();
    assert_eq!(nack.node_id, node(1).id);
    assert_eq!(nack.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(nack.message, format!("{P2}: invalid CIDR length 33"));
    assert_eq!(
        (client.stats.borrow().acks, client.stats.borrow().nacks),
        (1, 1)
    );
    // Both were offered, the good one kept; a NACKed first response leaves the client not ready.
    assert_eq!(
        client.take_deltas(),
        [
            ("address", names(&[W1, W2, W3]), vec![]),
            ("authorization", names(&[P1, P2]), vec![])
        ]
    );
    assert!(!*client.ready.borrow());

    // Another resource changes: only it is pushed, the refused version is not sent again.
    let mut changed = resources.clone();
    changed[0].1 = workload(W1, 2);
    server.publish(snapshot(&changed));
    client.wait_answered(3).await;
    assert_eq!(client.take_deltas(), [("address", names(&[W1]), vec![])]);

    // The refused policy is fixed: now it is sent, accepted, and the client becomes ready.
    client.record.lock().unwrap().refuse.clear();
    changed[4].1 = policy(P2, 0);
    server.publish(snapshot(&changed));
    client.wait_answered(4).await;
    assert_eq!(
        client.take_deltas(),
        [("authorization", names(&[P2]), vec![])]
    );
    wait_for(&mut client.ready, "client ready", |ready| *ready).await;
    assert_eq!(server.stats.borrow().nacks, 1);

    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn restarted_server_sends_only_the_difference() {
    init_logs();
    let resources = mesh_of_three();
    let first = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let addr = first.addr;
    let mut client = Client::wildcard(addr, 1);
    client.wait_answered(2).await;
    client.take_deltas();
    first.stop().await;

    // The new process serves a partly changed mesh on the same port: W2 changed, W3 gone, W4 new.
    let mut changed = resources.clone();
    changed[1].1 = workload(W2, 2);
    changed.retain(|(name, _)| *name != W3);
    changed.push((W4, workload(W4, 1)));
    let second = ControlPlane::start(addr, snapshot(&changed)).await;
    client.wait_answered(4).await;
    assert!(client.stats.borrow().streams_opened >= 2);
    // Authorization did not change: its initial reply was empty, so its handler was not called.
    assert_eq!(
        client.take_deltas(),
        [("address", names(&[W2, W4]), names(&[W3]))]
    );
    let mut second_stats = second.stats.clone();
    wait_for(&mut second_stats, "second server counted both ACKs", |s| {
        s.acks == 2
    })
    .await;
    assert_eq!(second_stats.borrow().responses_sent, 2);
    assert!(*client.ready.borrow(), "readiness survives the disconnect");

    client.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn three_clients_at_once_and_cleanup_on_disconnect() {
    init_logs();
    let resources = mesh_of_three();
    let server = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let mut clients: Vec<Client> = (1..=3)
        .map(|index| Client::wildcard(server.addr, index))
        .collect();
    for client in &mut clients {
        wait_for(&mut client.ready, "client ready", |ready| *ready).await;
        client.wait_answered(2).await;
        client.take_deltas();
    }
    let mut server_stats = server.stats.clone();
    wait_for(&mut server_stats, "three streams open", |s| {
        s.streams_open == 3
    })
    .await;

    let mut changed = resources.clone();
    changed[2].1 = workload(W3, 2);
    server.publish(snapshot(&changed));
    for client in &mut clients {
        client.wait_answered(3).await;
        assert_eq!(client.take_deltas(), [("address", names(&[W3]), vec![])]);
    }

    for (stopped, client) in clients.into_iter().enumerate() {
        client.stop().await;
        wait_for(
            &mut server_stats,
            "stream of a stopped client closed",
            |s| s.streams_open == 2 - stopped,
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn explicit_names_get_only_those_and_unknown_names_are_removed() {
    init_logs();
    let resources = mesh_of_three();
    let server = ControlPlane::start(loopback(), snapshot(&resources)).await;
    let wanted: BTreeSet<String> = [W1, W4].iter().map(|name| (*name).to_owned()).collect();
    let mut client = Client::start(
        server.addr,
        1,
        vec![(ADDRESS_TYPE_URL, Subscription::Names(wanted))],
        &[],
    );
    // Readiness waits for wildcard types only, and there is none.
    wait_for(&mut client.ready, "client ready", |ready| *ready).await;
    client.wait_answered(1).await;
    assert_eq!(
        client.take_deltas(),
        [("address", names(&[W1]), names(&[W4]))]
    );

    // A change to an unsubscribed name is not pushed; W4 appearing is.
    let mut changed = resources.clone();
    changed[1].1 = workload(W2, 2);
    server.publish(snapshot(&changed));
    changed.push((W4, workload(W4, 1)));
    server.publish(snapshot(&changed));
    client.wait_answered(2).await;
    assert_eq!(client.take_deltas(), [("address", names(&[W4]), vec![])]);

    client.stop().await;
    server.stop().await;
}
