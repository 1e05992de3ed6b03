//! The waypoint's data path end to end, with real clients: client pod -> its ztunnel ->
//! waypoint -> the endpoint's ztunnel -> application. One small world per test: client
//! `storefront/web-0` on node-a; Service `payments/api` (labelled to use the waypoint) with
//! `api-0` on node-a and `api-1` on node-b; the waypoint `payments/waypoint` in pod `waypoint-0`
//! on node-b. The applications say which endpoint answered and checksum what they received
//! (`e2e::http`), so every answer is checked for where it came from and what it carries.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::WAIT;
use e2e::apps::{Behaviour, Server, checksum, payload};
use e2e::http::{
    BYTES_SEED, ChannelBody, GrpcCall, HOST, grpc_start, http1_connect, http2_connect,
    raw_exchange, send1, send2,
};
use e2e::mesh::Mesh;
use e2e::topology::Pod;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 2, 10);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 10);
const API_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 20, 2, 10), Ipv4Addr::new(10, 20, 2, 11)];
const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 2, 100);
const WAYPOINT_POD: &str = "waypoint-0";
const CLIENT_IDENTITY: &str = "src.identity=spiffe://cluster.local/ns/storefront/sa/web";

/// The cluster, modelled on the conformance world (`shared/conformance/authz/world.yaml`),
/// then `extra` documents.
fn cluster(extra: &str) -> String {
    let pod = |name: &str, ns: &str, sa: &str, node: &str, ip: Ipv4Addr, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
             spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: app, image: echo}}]}}\n\
             status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
        )
    };
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: storefront, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: payments, labels: {istio.io/dataplane-mode: ambient}}\n---\n",
    );
    for (ns, sa) in [
        ("storefront", "web"),
        ("payments", "api"),
        ("payments", "waypoint"),
    ] {
        text.push_str(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n"
        ));
    }
    text.push_str(&pod(
        "web-0",
        "storefront",
        "web",
        "node-a",
        CLIENT_IP,
        "app: web",
    ));
    text.push_str(&pod(
        "api-0", "payments", "api", "node-a", API_IPS[0], "app: api",
    ));
    text.push_str(&pod(
        "api-1", "payments", "api", "node-b", API_IPS[1], "app: api",
    ));
    text.push_str(&pod(
        WAYPOINT_POD,
        "payments",
        "waypoint",
        "node-b",
        WAYPOINT_IP,
        "gateway.networking.k8s.io/gateway-name: waypoint, gateway.istio.io/managed: istio.io-mesh-controller, istio.io/dataplane-mode: none",
    ));
    text.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: payments, labels: {{istio.io/use-waypoint: waypoint}}}}\n\
         spec: {{clusterIP: {VIP}, selector: {{app: api}}, ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: grpc, port: 9090, targetPort: 9090}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: waypoint, namespace: payments, labels: {{gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}}}}\n\
         spec: {{clusterIP: 10.96.2.100, selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}, ports: [{{name: mesh, port: 15008, targetPort: 15008}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: payments, labels: {{istio.io/waypoint-for: service}}}}\n\
         spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n---\n"
    ));
    text.push_str(extra);
    text
}

/// A running world: the mesh (its Drop stops everything), the client pod, the servers.
struct World {
    mesh: Mesh,
    client: Pod,
    waypoint: Pod,
    _servers: Vec<Server>,
}

async fn world(test: &str) -> World {
    let mut mesh = Mesh::new(test);
    let (a, b) = (mesh.add_node("node-a"), mesh.add_node("node-b"));
    let client = mesh.add_pod_at(a, "web-0", "storefront", "web", CLIENT_IP);
    let apis = [
        mesh.add_pod_at(a, "api-0", "payments", "api", API_IPS[0]),
        mesh.add_pod_at(b, "api-1", "payments", "api", API_IPS[1]),
    ];
    let waypoint = mesh.add_pod_at(b, WAYPOINT_POD, "payments", "waypoint", WAYPOINT_IP);
    mesh.add_ca_caller(&waypoint, "payments", "waypoint");
    for pod in [&client, &apis[0], &apis[1]] {
        mesh.enroll(pod);
    }
    mesh.start_control_plane_with(a, &cluster("")).await;
    mesh.start().await;
    mesh.start_waypoint(&waypoint, "payments", "waypoint", "waypoint")
        .await;
    let mut servers = Vec::new();
    for pod in &apis {
        for port in [8080, 9090] {
            let listener = pod.netns().listen(pod.addr(port));
            servers.push(Server::serve(listener, Behaviour::EchoOrHttp));
        }
    }
    World {
        mesh,
        client,
        waypoint,
        _servers: servers,
    }
}

/// A connection from the client pod to the Service's `port` (captured by its ztunnel).
async fn connect(client: &Pod, port: u16) -> TcpStream {
    let vip = SocketAddr::new(IpAddr::V4(VIP), port);
    timeout(WAIT, client.netns().connect(vip))
        .await
        .unwrap_or_else(|_| panic!("connect to {vip} took over {WAIT:?}"))
        .unwrap_or_else(|e| panic!("connect to {vip}: {e}"))
}

/// `value` of the `name: value` line of an application's text answer.
fn field<'t>(text: &'t str, name: &str) -> &'t str {
    let prefix = format!("{name}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name:?} line in {text:?}"))
}

/// The endpoints a service answer may come from on `port`.
fn endpoints(port: u16) -> BTreeSet<String> {
    API_IPS.iter().map(|ip| format!("{ip}:{port}")).collect()
}

/// 1. Twenty requests on one kept-alive client connection: one tunnel at the waypoint, one
///    `request complete` line each, with the client's identity; both endpoints answer.
/// 4. 16 MiB up and 16 MiB down, over HTTP/1.1 and HTTP/2: checksums match both ways.
#[test]
fn http1_keep_alive_and_large_bodies() {
    e2e::on_current_thread(async {
        let mut w = world("wpka").await;
        let stream = connect(&w.client, 80).await;
        let local = stream.local_addr().unwrap();
        let mut sender = timeout(WAIT, http1_connect(stream)).await.unwrap().unwrap();
        let mut answered_by = BTreeSet::new();
        for i in 0..20 {
            let path = format!("/keepalive/{i}");
            let answer = timeout(WAIT, send1(&mut sender, "GET", &path, Bytes::new()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(answer.status, 200, "{path}: {}", answer.text());
            let text = answer.text();
            assert!(text.starts_with(&format!("GET {path}\n")), "{text}");
            assert_eq!(field(&text, "host"), HOST);
            answered_by.insert(field(&text, "server").to_owned());
        }
        assert_eq!(answered_by, endpoints(8080), "requests not spread");
        let waypoint = w.mesh.waypoint(WAYPOINT_POD);
        let src = format!("src.addr={local}");
        let lines = waypoint
            .wait_for_lines(&["request complete", &src, "/keepalive/"], 20)
            .await;
        assert_eq!(lines.len(), 20, "{lines:#?}");
        assert!(
            lines
                .iter()
                .all(|l| l.contains("status=200") && l.contains(CLIENT_IDENTITY)),
            "{lines:#?}"
        );
        let tunnels = waypoint.count(&["tunnel opened", &format!("src={local}")]);
        assert_eq!(tunnels, 1, "one client connection, one tunnel");

        let sent = Bytes::from(payload(16 << 20, 3));
        let n = 16 << 20;
        let expected = checksum(&payload(n, BYTES_SEED));
        let path = format!("/bytes/{n}");
        let h1 = timeout(WAIT, send1(&mut sender, "POST", &path, sent.clone()))
            .await
            .unwrap()
            .unwrap();
        let stream = connect(&w.client, 80).await;
        let h2 = timeout(WAIT, async {
            let sender = http2_connect::<Full<Bytes>>(stream).await?;
            send2(sender, "POST", &path, sent.clone()).await
        })
        .await
        .unwrap()
        .unwrap();
        for (version, answer) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
            assert_eq!(answer.status, 200, "{version}");
            assert_eq!(answer.header("x-body-bytes"), sent.len().to_string());
            let up = format!("{:016x}", checksum(&sent));
            assert_eq!(answer.header("x-body-checksum"), up, "{version} upload");
            assert_eq!(answer.body.len(), n, "{version} download length");
            assert_eq!(checksum(&answer.body), expected, "{version} download");
        }
    });
}

/// 2. Fifty requests at once on one HTTP/2 connection: the applications hold every answer
///    until all fifty have arrived, so they were all in flight together; each gets its own.
/// 3. gRPC on port 9090: a unary call, and a bidirectional stream in which message k+1 is
///    sent only after reply k came back (streamed, not buffered); `grpc-status: 0` each.
#[test]
fn http2_multiplexing_and_grpc_streaming() {
    e2e::on_current_thread(async {
        let mut w = world("wpmux").await;
        let stream = connect(&w.client, 80).await;
        let local = stream.local_addr().unwrap();
        let sender = timeout(WAIT, http2_connect::<Full<Bytes>>(stream))
            .await
            .unwrap()
            .unwrap();
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..50 {
            let sender = sender.clone();
            requests.spawn(async move {
                let path = format!("/gather/mux/50/{i}");
                (
                    path.clone(),
                    send2(sender, "GET", &path, Bytes::new()).await,
                )
            });
        }
        let answers = timeout(WAIT, requests.join_all()).await.unwrap();
        let mut answered_by = BTreeSet::new();
        for (path, answer) in answers {
            let answer = answer.unwrap_or_else(|e| panic!("{path}: {e}"));
            let text = answer.text();
            assert_eq!(answer.status, 200, "{path}: {text}");
            assert!(text.starts_with(&format!("GET {path}\n")), "{text}");
            answered_by.insert(field(&text, "server").to_owned());
        }
        assert_eq!(answered_by, endpoints(8080), "requests not spread");
        let waypoint = w.mesh.waypoint(WAYPOINT_POD);
        let src = format!("src.addr={local}");
        let lines = waypoint
            .wait_for_lines(&["request complete", &src, "status=200"], 50)
            .await;
        assert_eq!(lines.len(), 50, "{lines:#?}");
        let opened = [
            "tunnel opened",
            &format!("src={local}"),
            "protocol=\"HTTP/2\"",
        ];
        assert_eq!(
            waypoint.count(&opened),
            1,
            "one client connection, one tunnel"
        );

        let stream = connect(&w.client, 9090).await;
        let mut sender = timeout(WAIT, http2_connect::<ChannelBody>(stream))
            .await
            .unwrap()
            .unwrap();
        let mut unary = timeout(WAIT, grpc_start(&mut sender, "/test.Echo/Unary"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unary.headers["content-type"], "application/grpc");
        timeout(WAIT, unary.send(b"one and only"))
            .await
            .unwrap()
            .unwrap();
        unary.close_send();
        let reply = timeout(WAIT, unary.recv()).await.unwrap().unwrap();
        assert_eq!(reply.as_deref(), Some(&b"one and only"[..]));
        assert_grpc_ok(unary).await;

        let mut chat = timeout(WAIT, grpc_start(&mut sender, "/test.Echo/Chat"))
            .await
            .unwrap()
            .unwrap();
        for k in 0..8u8 {
            // Up to 100 KB: messages that span several HTTP/2 DATA frames.
            let message = payload(1 + usize::from(k) * 14_000, k);
            timeout(WAIT, chat.send(&message)).await.unwrap().unwrap();
            let reply = timeout(WAIT, chat.recv())
                .await
                .unwrap_or_else(|_| panic!("reply {k} not streamed back within {WAIT:?}"))
                .unwrap();
            assert_eq!(reply.as_deref(), Some(&message[..]), "reply {k}");
        }
        assert_grpc_ok(chat).await;
        let grpc = ["request complete", "/test.Echo/", "status=200"];
        waypoint_wait(&mut w, &grpc, 2).await;
    });
}

async fn assert_grpc_ok(call: GrpcCall) {
    let trailers = timeout(WAIT, call.finish()).await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
}

async fn waypoint_wait(w: &mut World, needles: &[&str], count: usize) -> Vec<String> {
    w.mesh
        .waypoint(WAYPOINT_POD)
        .wait_for_lines(needles, count)
        .await
}

/// A normal request on a new connection: 200 with the application's answer.
async fn assert_serving(client: &Pod, path: &str) {
    let stream = connect(client, 80).await;
    let answer = timeout(WAIT, async {
        let mut sender = http1_connect(stream).await?;
        send1(&mut sender, "GET", path, Bytes::new()).await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    assert!(answer.text().starts_with(&format!("GET {path}\n")));
}

/// 5. A client that goes away halfway through a chunked upload costs that request only.
/// 6. Malformed requests get 400 and cost their connection: a header line without a colon
///    (the connection is closed after the 400), a lower-case method.
#[test]
fn bad_clients_cost_their_connection_only() {
    e2e::on_current_thread(async {
        let mut w = world("wpbad").await;
        let opened = ["upstream tunnel opened"];
        let before = w.mesh.waypoint(WAYPOINT_POD).count(&opened);
        let mut stream = connect(&w.client, 80).await;
        let head =
            format!("POST /upload HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n");
        timeout(WAIT, async {
            stream.write_all(head.as_bytes()).await?;
            for chunk in payload(256 * 1024, 9).chunks(64 * 1024) {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.flush().await
        })
        .await
        .unwrap()
        .unwrap();
        // The waypoint has picked an endpoint and is forwarding: now the client vanishes.
        waypoint_wait(&mut w, &opened, before + 1).await;
        drop(stream);
        let ended = waypoint_wait(&mut w, &["request complete", "path=\"/upload\""], 1).await;
        println!("the abandoned upload, at the waypoint: {ended:?}");
        assert_serving(&w.client, "/after-abandoned-upload").await;

        let cases: [(&str, &[u8]); 2] = [
            (
                "header without a colon",
                b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header Without Colon\r\n\r\n",
            ),
            ("lower-case method", b"get /y HTTP/1.1\r\nHost: a\r\n\r\n"),
        ];
        for (what, raw) in cases {
            let mut stream = connect(&w.client, 80).await;
            let head = timeout(WAIT, raw_exchange(&mut stream, raw))
                .await
                .unwrap()
                .unwrap();
            assert!(head.starts_with("HTTP/1.1 400 "), "{what}: {head:?}");
            if what == "header without a colon" {
                // Nothing more comes, and the waypoint closes the connection.
                let mut rest = Vec::new();
                timeout(WAIT, stream.read_to_end(&mut rest))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: connection left open"))
                    .unwrap();
            }
            assert_serving(&w.client, &format!("/after/{}", what.replace(' ', "-"))).await;
        }
        let invalid = ["request complete", "method=get", "status=400"];
        waypoint_wait(&mut w, &invalid, 1).await;
        let waypoint = w.mesh.waypoint(WAYPOINT_POD);
        assert_eq!(waypoint.count(&["waypoint ready"]), 1, "restarted?");
        assert_eq!(waypoint.count(&["panicked"]), 0);
    });
}

/// What one request of the restart loop met.
#[derive(Debug)]
enum Outcome {
    Ok,
    Unavailable,
    Failed(String),
}

/// One GET of `path`, bounded by `limit`: 200 with the right body, 503, or a failure; any
/// other answer fails the test.
async fn attempt(client: &Pod, path: &str, limit: Duration) -> Outcome {
    let tried = timeout(limit, async {
        let vip = SocketAddr::new(IpAddr::V4(VIP), 80);
        let stream = client
            .netns()
            .connect(vip)
            .await
            .map_err(|e| e.to_string())?;
        let mut sender = http1_connect(stream).await?;
        send1(&mut sender, "GET", path, Bytes::new()).await
    })
    .await;
    match tried {
        Err(_) => Outcome::Failed("timed out".into()),
        Ok(Err(e)) => Outcome::Failed(e),
        Ok(Ok(answer)) if answer.status == 503 => Outcome::Unavailable,
        Ok(Ok(answer)) => {
            let text = answer.text();
            assert_eq!(answer.status, 200, "{path}: {text}");
            assert!(text.starts_with(&format!("GET {path}\n")), "{path}: {text}");
            Outcome::Ok
        }
    }
}

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: api-get-only, namespace: payments}\n\
    spec: {targetRefs: [{kind: Service, group: \"\", name: api}], action: ALLOW, rules: [{to: [{operation: {methods: [GET]}}]}]}\n";

/// POST is refused with Envoy's body, GET is served.
async fn assert_get_only(client: &Pod) {
    let stream = connect(client, 80).await;
    let mut sender = timeout(WAIT, http1_connect(stream)).await.unwrap().unwrap();
    let body = Bytes::from_static(b"a refused body");
    let post = timeout(WAIT, send1(&mut sender, "POST", "/pay", body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (post.status.as_u16(), post.text().as_str()),
        (403, "RBAC: access denied")
    );
    let get = timeout(WAIT, send1(&mut sender, "GET", "/pay", Bytes::new()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(get.status, 200, "{}", get.text());
    assert!(get.text().starts_with("GET /pay\n"));
}

/// 8. A Service-bound ALLOW for GET only: POST (200 before it) 403 `RBAC: access denied`,
///    GET 200.
/// 7. The waypoint stopped (SIGTERM) and started again while a client retries: every answer
///    is 200 with its own body or 503 or a connection failure, and a 200 comes within 10 s of
///    the new waypoint's readiness; the new waypoint enforces the policy from its first request.
#[test]
fn policy_and_restart() {
    e2e::on_current_thread(async {
        let mut w = world("wprst").await;
        // Without the policy, POST is served: the policy is what refuses it below.
        let stream = connect(&w.client, 80).await;
        let post = timeout(WAIT, async {
            let mut sender = http1_connect(stream).await?;
            send1(&mut sender, "POST", "/pay", Bytes::from_static(b"x")).await
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(post.status, 200, "{}", post.text());
        w.mesh.write_cluster_text(&cluster(POLICY));
        let policy = ["waypoint policy received", "payments/api-get-only"];
        waypoint_wait(&mut w, &policy, 1).await;
        assert_get_only(&w.client).await;
        let denied = [
            "request complete",
            "method=POST",
            "status=403",
            CLIENT_IDENTITY,
        ];
        waypoint_wait(&mut w, &denied, 1).await;

        let mut old = w.mesh.take_waypoint(WAYPOINT_POD);
        let status = old.terminate().await;
        assert!(status.success(), "waypoint exited with {status}");
        let client = w.client.clone();
        let (failed_tx, mut failed) = tokio::sync::watch::channel(0usize);
        let retrying = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            for i in 0.. {
                pace.tick().await;
                let outcome =
                    attempt(&client, &format!("/retry/{i}"), Duration::from_secs(5)).await;
                if let Outcome::Failed(why) = &outcome {
                    println!("attempt {i} failed: {why}");
                }
                let done = matches!(outcome, Outcome::Ok);
                if !done {
                    failed_tx.send_modify(|n| *n += 1);
                }
                outcomes.push(outcome);
                if done {
                    break;
                }
            }
            (Instant::now(), outcomes)
        });
        // The loop has met the waypoint down before the new one starts.
        timeout(WAIT, failed.wait_for(|n| *n > 0))
            .await
            .unwrap()
            .unwrap();
        w.mesh
            .start_waypoint(&w.waypoint, "payments", "waypoint", "waypoint")
            .await;
        let ready = Instant::now();
        let (served, outcomes) = timeout(WAIT, retrying).await.unwrap().unwrap();
        println!("while the waypoint restarted: {outcomes:?}");
        assert!(
            served.saturating_duration_since(ready) < Duration::from_secs(10),
            "no 200 within 10 s of the restart: {outcomes:?}"
        );
        assert!(matches!(outcomes.last(), Some(Outcome::Ok)));
        // The old one drained and stopped on its own; it served nothing after.
        assert_eq!(old.count(&["waypoint stopped"]), 1);
        assert_eq!(
            old.count(&["/retry/"]),
            0,
            "the old waypoint served a retry"
        );
        assert_get_only(&w.client).await;
    });
}

/// Concurrent first requests on one HTTP/2 client connection share one upstream tunnel per
/// endpoint (docs/waypoint.md: "tunnels are kept per client connection and endpoint").
#[test]
fn http2_requests_share_one_upstream_tunnel_per_endpoint() {
    e2e::on_current_thread(async {
        let mut w = world("wpshare").await;
        let stream = connect(&w.client, 80).await;
        let sender = timeout(WAIT, http2_connect::<Full<Bytes>>(stream))
            .await
            .unwrap()
            .unwrap();
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..20 {
            let sender = sender.clone();
            let path = format!("/gather/share/20/{i}");
            requests.spawn(async move { send2(sender, "GET", &path, Bytes::new()).await });
        }
        for answer in timeout(WAIT, requests.join_all()).await.unwrap() {
            assert_eq!(answer.unwrap().status, 200);
        }
        let opened = w
            .mesh
            .waypoint(WAYPOINT_POD)
            .count(&["upstream tunnel opened"]);
        assert!(opened <= 2, "{opened} upstream tunnels for 2 endpoints");
    });
}
