//! `make demo`: a small storefront on two nodes, meshed by the real node agents and ztunnels,
//! told as a short story of what the mesh did and how we know. Needs root (it creates network
//! namespaces); removes everything it made when it ends, whatever happened.
//!
//! Cast: `web` and `api` (the shop, in the mesh), `catalog` (in the mesh, permissive),
//! `legacy` (a pod outside the mesh), `outsider` (in the mesh with another identity).

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a demo talks to its reader and stops at the first surprise

use std::net::SocketAddr;
use std::process::ExitCode;

use e2e::WAIT;
use e2e::apps::{Behaviour, Server, checksum, exchange, payload};
use e2e::mesh::Mesh;
use e2e::pcap::Capture;
use e2e::topology::Pod;

const PORT: u16 = 8080;
const MARKER: &[u8] = b"ORDER-4711-CARD-PAN";

/// What the platform team wrote: api takes mTLS only, and only from web.
const API_POLICY: &str = "apiVersion: security.istio.io/v1
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
";

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        println!("make demo creates network namespaces: run it as root");
        return ExitCode::FAILURE;
    }
    e2e::echo_child_logs(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let surprises = runtime.block_on(story());
    println!();
    if surprises == 0 {
        println!("Every step went as the mesh promises. Namespaces and processes are gone.");
        ExitCode::SUCCESS
    } else {
        println!("{surprises} step(s) did not go as expected (see above).");
        ExitCode::FAILURE
    }
}

struct Narrator {
    surprises: usize,
}

impl Narrator {
    fn say(&self, text: &str) {
        println!("{text}");
    }

    fn check(&mut self, ok: bool, fact: &str) {
        if ok {
            println!("   ✓ {fact}");
        } else {
            println!("   ✗ NOT AS EXPECTED: {fact}");
            self.surprises += 1;
        }
    }
}

/// Sends a marked order from `from` to `to`; `Some(true)` if it came back intact, `Some(false)`
/// if it came back damaged, `None` if the connection was refused.
async fn order(from: &Pod, to: SocketAddr) -> Option<bool> {
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

async fn story() -> usize {
    let mut n = Narrator { surprises: 0 };
    n.say("== A storefront on two nodes ==");
    let mut mesh = Mesh::new("demo");
    let (n1, n2) = (mesh.add_node("node1"), mesh.add_node("node2"));
    let web = mesh.add_pod(n1, "web", "storefront");
    let legacy = mesh.add_pod(n1, "legacy", "legacy");
    let api = mesh.add_pod(n2, "api", "storefront");
    let catalog = mesh.add_pod(n2, "catalog", "storefront");
    let outsider = mesh.add_pod(n2, "outsider", "partner");
    mesh.workload_mut("legacy").protocol = "TCP";
    for pod in [&web, &api, &catalog, &outsider] {
        mesh.enroll(pod);
    }
    n.say(&format!(
        "node1: web {} (mesh), legacy {} (not in the mesh)\nnode2: api {} (mesh, STRICT, only web may call), catalog {} (mesh, PERMISSIVE), outsider {} (mesh, namespace partner)",
        web.ip(), legacy.ip(), api.ip(), catalog.ip(), outsider.ip()
    ));
    n.say(
        "Starting the control plane on node1 (Kubernetes-style YAML -> xDS, and the CA), then on\n\
         each node the node agent (capture rules + ZDS) and ztunnel (in-pod mode, configuration\n\
         over xDS, certificates from the control plane's CA)...",
    );
    mesh.start_control_plane(n1, API_POLICY).await;
    mesh.start().await;
    let api_server = Server::serve(api.netns().listen(api.addr(PORT)), Behaviour::Echo);
    let catalog_server = Server::serve(catalog.netns().listen(catalog.addr(PORT)), Behaviour::Echo);
    let listening = web.netns().exec_output("ss", &["-Htln"]);
    n.check(
        listening.contains(":15001") && listening.contains(":15008"),
        "ztunnel listens on 15001/15006/15008 inside web's own network namespace",
    );

    n.say("\n1. web calls api with plain TCP, as it always did.");
    let dir = mesh.world.dir().to_owned();
    let wire = Capture::start(
        mesh.cluster.node(n1).netns(),
        mesh.cluster.inter_node_iface(n1, n2),
        &dir,
    )
    .await;
    let delivered = order(&web, api.addr(PORT)).await;
    let recorded = wire.stop().await;
    n.check(
        delivered == Some(true),
        "the order reached api and came back byte for byte",
    );
    let segments: Vec<_> = recorded
        .tcp_segments()
        .into_iter()
        .filter(|s| s.payload_len > 0)
        .collect();
    n.check(
        !segments.is_empty()
            && segments
                .iter()
                .all(|s| s.src.port() == 15008 || s.dst.port() == 15008),
        &format!(
            "on the wire between the nodes: {} data segments, all HBONE (mTLS to port 15008)",
            segments.len()
        ),
    );
    n.check(
        !recorded.contains(MARKER),
        "the order number never appeared in clear on the wire",
    );
    let seen = api_server.peers();
    n.check(
        seen.len() == 1 && seen[0].ip() == web.ip(),
        &format!("api saw the call come from web's own address {}", web.ip()),
    );
    let verified = [
        "inbound connection complete",
        "spiffe://cluster.local/ns/storefront/sa/web",
    ];
    mesh.ztunnel(n2).wait_for_lines(&verified, 1).await;
    n.check(
        mesh.ztunnel(n2).count(&verified) == 1
            && mesh
                .control_plane()
                .count(&["certificate issued", "sa/web", "caller=ztunnel-node1"])
                == 1,
        "api's ztunnel verified the caller as spiffe://cluster.local/ns/storefront/sa/web, whose\n     certificate node1's ztunnel obtained from the CA on web's behalf",
    );

    n.say("\n2. outsider (spiffe://cluster.local/ns/partner/sa/outsider) calls api.");
    n.check(
        order(&outsider, api.addr(PORT)).await.is_none(),
        "refused: api allows only web's identity",
    );
    n.check(
        order(&outsider, catalog.addr(PORT)).await == Some(true),
        "but catalog, with no such policy, serves it over mTLS",
    );

    n.say("\n3. legacy, outside the mesh, sends plaintext.");
    n.check(
        order(&legacy, api.addr(PORT)).await.is_none(),
        "api is STRICT: plaintext refused before it reaches the app",
    );
    n.check(
        order(&legacy, catalog.addr(PORT)).await == Some(true),
        "catalog is PERMISSIVE: plaintext accepted (and counted, to show who still needs to move)",
    );
    n.check(
        api_server.peers().len() == 1,
        "api's application saw only web's call",
    );
    n.check(
        catalog_server.peers().len() == 2,
        "catalog's application saw outsider's and legacy's calls",
    );

    n.say("\n4. What ztunnel on node2 recorded:");
    // Each line is written as its connection closes, just after the client saw the end.
    mesh.ztunnel(n2)
        .wait_for_line("inbound plaintext connection complete")
        .await;
    let node2 = mesh.ztunnel(n2);
    node2
        .wait_for_lines(&["inbound connection complete"], 2)
        .await;
    let report = [
        (
            "HBONE connections served",
            node2.count(&["inbound connection complete"]),
        ),
        (
            "HBONE tunnels refused by policy",
            node2.count(&["inbound tunnel refused", "status=401"]),
        ),
        (
            "plaintext connections accepted",
            node2.count(&["inbound plaintext connection complete"]),
        ),
        (
            "plaintext connections refused",
            node2.count(&["inbound plaintext connection refused"]),
        ),
    ];
    for (what, value) in report {
        n.say(&format!("   {what:<34} {value}"));
    }
    n.check(
        report.map(|(_, v)| v) == [2, 1, 1, 1],
        "2 served, 1 denied by policy, 1 plaintext accepted, 1 refused",
    );

    n.say("\nTearing down: stopping processes, deleting namespaces.");
    let names = mesh.cluster.netns_names();
    drop(mesh);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    n.check(
        names.iter().all(|name| !left.contains(name.as_str())),
        &format!("{} namespaces removed", names.len()),
    );
    n.surprises
}
