//! HBONE end to end inside one process over loopback TCP: the real pool, TLS and HTTP/2 on
//! both sides, an echo application behind the server.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use mesh::hbone::pool::{DialFuture, Dialer, Pool, PoolError, PoolKey, PoolSettings};
use mesh::hbone::server::{IncomingTunnel, serve_connection};
use mesh::hbone::{Authority, H2Settings, client::ClientError};
use mesh::identity::{CaLimits, CertStore, LocalCa, RefreshPolicy, SpiffeId, TrustDomain};
use mesh::tls::{self, TrustBundles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

struct PlainDialer;

impl Dialer for PlainDialer {
    fn dial<'a>(&'a self, key: &'a PoolKey) -> DialFuture<'a> {
        Box::pin(TcpStream::connect(key.destination))
    }
}

struct Mesh {
    ca: Arc<LocalCa>,
    server_addr: SocketAddr,
    server_id: SpiffeId,
    client_id: SpiffeId,
    accepted: Arc<AtomicUsize>,
    peers_seen: Arc<std::sync::Mutex<Vec<SpiffeId>>>,
    stop: CancellationToken,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::istio(
        &TrustDomain::parse("cluster.local").unwrap(),
        "storefront",
        sa,
    )
    .unwrap()
}

/// Where the port-7 application reports how its half-close went.
static HALF_CLOSES: std::sync::OnceLock<
    tokio::sync::mpsc::UnboundedSender<Result<Vec<u8>, String>>,
> = std::sync::OnceLock::new();

/// The tunnel's fate, decided per request by the authority's port, so one server covers every
/// case: 9 refuses with 401, 7 reads to the end then half-closes and reports, anything else
/// echoes.
async fn handle(tunnel: IncomingTunnel) {
    if matches!(tunnel.authority(), Authority::Addr(a) if a.port() == 9) {
        tunnel.reject(StatusCode::UNAUTHORIZED);
        return;
    }
    if matches!(tunnel.authority(), Authority::Addr(a) if a.port() == 7) {
        let mut stream = tunnel.accept(HeaderMap::new()).unwrap();
        let mut got = Vec::new();
        let read = stream.read_to_end(&mut got).await;
        let outcome = match read {
            Ok(_) => stream
                .shutdown()
                .await
                .map(|()| got)
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("read: {e}")),
        };
        if let Some(report) = HALF_CLOSES.get() {
            let _ = report.send(outcome);
        }
        return;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "baggage",
        HeaderValue::from_static("k8s.namespace.name=storefront"),
    );
    let stream = tunnel.accept(headers).unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    tokio::io::copy(&mut r, &mut w).await.unwrap();
    w.shutdown().await.unwrap();
}

async fn start() -> Mesh {
    let ca = Arc::new(
        LocalCa::generate_root(
            "cluster.local",
            Duration::from_secs(86400),
            CaLimits::default(),
        )
        .unwrap(),
    );
    let server_id = id("api");
    let server_cert = ca
        .issue_workload(&server_id, None, &tls::crypto_provider())
        .unwrap();
    let bundles = Arc::new(
        TrustBundles::single(server_id.trust_domain().clone(), server_cert.roots()).unwrap(),
    );
    let server_config = tls::server_config(&server_cert, bundles).unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let accepted = Arc::new(AtomicUsize::new(0));
    let peers_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (stop, accepted, peers_seen) = (stop.clone(), accepted.clone(), peers_seen.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (config, stop, peers_seen) =
                    (server_config.clone(), stop.clone(), peers_seen.clone());
                tokio::spawn(async move {
                    let (tls, peer) = tls::accept(config, tcp).await.unwrap();
                    peers_seen.lock().unwrap().push(peer);
                    let _ = serve_connection(tls, H2Settings::server(), stop, handle).await;
                });
            }
        });
    }
    Mesh {
        ca,
        server_addr,
        server_id,
        client_id: id("web"),
        accepted,
        peers_seen,
        stop,
    }
}

impl Mesh {
    fn pool(&self, settings: PoolSettings) -> Pool {
        let certs = CertStore::new(
            self.ca.clone(),
            RefreshPolicy::default(),
            tokio::runtime::Handle::current(),
        );
        Pool::new(settings, certs)
    }

    fn key(&self) -> PoolKey {
        PoolKey::new(
            self.client_id.clone(),
            None,
            self.server_addr,
            vec![self.server_id.clone()],
        )
    }
}

/// A deterministic payload whose every byte depends on its position.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

async fn echo_through(pool: &Pool, key: &PoolKey, data: &[u8]) -> Vec<u8> {
    let authority = Authority::Addr("10.0.0.2:8080".parse().unwrap());
    let stream = pool
        .open(key, &authority, HeaderMap::new(), &PlainDialer)
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let to_send = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.unwrap();
        // Half-close: the echo server sees EOF, finishes, and closes its side.
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_both_ways_at_every_size_and_the_server_sees_the_client_identity() {
    let mesh = start().await;
    let pool = mesh.pool(PoolSettings::default());
    timeout(TEST_TIMEOUT, async {
        for len in [1, 64 * 1024, 16 * 1024 * 1024] {
            let data = payload(len);
            let back = echo_through(&pool, &mesh.key(), &data).await;
            assert_eq!(back.len(), data.len(), "length at {len}");
            assert!(back == data, "content differs at size {len}");
        }
    })
    .await
    .unwrap();
    assert_eq!(
        pool.connections_opened(),
        1,
        "sequential tunnels reuse one connection"
    );
    assert_eq!(
        *mesh.peers_seen.lock().unwrap(),
        vec![mesh.client_id.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_share_a_bounded_number_of_connections() {
    let mesh = start().await;
    let pool = mesh.pool(PoolSettings {
        max_streams_per_connection: 100,
        ..PoolSettings::default()
    });
    let key = mesh.key();
    let data = Arc::new(payload(4096));
    let mut tasks = Vec::new();
    // Each tunnel stays open until all 200 are open, so they are truly concurrent.
    let all_open = Arc::new(tokio::sync::Barrier::new(200));
    for _ in 0..200 {
        let (pool, key, data, all_open) =
            (pool.clone(), key.clone(), data.clone(), all_open.clone());
        tasks.push(tokio::spawn(async move {
            let authority = Authority::Addr("10.0.0.2:8080".parse().unwrap());
            let stream = pool
                .open(&key, &authority, HeaderMap::new(), &PlainDialer)
                .await
                .unwrap();
            all_open.wait().await;
            let (mut r, mut w) = tokio::io::split(stream);
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            back == *data
        }));
    }
    timeout(TEST_TIMEOUT, async {
        for task in tasks {
            assert!(task.await.unwrap(), "a tunnel's echo differed");
        }
    })
    .await
    .unwrap();
    assert_eq!(
        pool.connections_opened(),
        2,
        "200 streams at 100 per connection"
    );
    assert_eq!(
        mesh.accepted.load(Ordering::SeqCst),
        2,
        "the server saw two connections"
    );
}

#[tokio::test]
async fn refusals_reach_the_client_as_statuses() {
    let mesh = start().await;
    let pool = mesh.pool(PoolSettings::default());
    let denied = Authority::Addr("10.0.0.2:9".parse().unwrap());
    match pool
        .open(&mesh.key(), &denied, HeaderMap::new(), &PlainDialer)
        .await
    {
        Err(PoolError::Hbone {
            cause: ClientError::Status(status),
            ..
        }) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    // A client of ours that breaks protocol: GET instead of CONNECT, and a bad authority.
    let cert = mesh
        .ca
        .issue_workload(&mesh.client_id, None, &tls::crypto_provider())
        .unwrap();
    let bundles = Arc::new(
        TrustBundles::single(mesh.client_id.trust_domain().clone(), cert.roots()).unwrap(),
    );
    let config = tls::client_config(&cert, bundles, vec![mesh.server_id.clone()]).unwrap();
    let tcp = TcpStream::connect(mesh.server_addr).await.unwrap();
    let (tls, _) = tls::connect(config, LOCALHOST, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    // Not CONNECT; CONNECT without a port; CONNECT to a host with a character we refuse.
    for (method, uri) in [
        (Method::GET, "http://10.0.0.2:8080/"),
        (Method::CONNECT, "example.com"),
        (Method::CONNECT, "exa~mple.com:80"),
    ] {
        let mut request = Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.parse().unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _stream) = ready.send_request(request, false).unwrap();
        let response = timeout(TEST_TIMEOUT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} {uri}");
    }
}

/// A client that sends and then withdraws (drops its stream: RST_STREAM CANCEL) leaves the
/// server nothing to half-close: the server's shutdown is a clean end, not a relay error.
#[tokio::test]
async fn a_peer_that_withdrew_leaves_nothing_to_half_close() {
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    HALF_CLOSES.set(report).unwrap();
    let mesh = start().await;
    let pool = mesh.pool(PoolSettings::default());
    let authority = Authority::Addr("10.0.0.2:7".parse().unwrap());
    let mut stream = pool
        .open(&mesh.key(), &authority, HeaderMap::new(), &PlainDialer)
        .await
        .unwrap();
    // What was queued but not yet sent goes with the reset, as unsent bytes go with a TCP RST:
    // only the clean end is asserted, not how much arrived first.
    stream.write_all(b"hello").await.unwrap();
    drop(stream);
    let outcome = timeout(TEST_TIMEOUT, reports.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        outcome.is_ok(),
        "the server's half-close failed: {outcome:?}"
    );
}
