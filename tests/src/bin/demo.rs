//! `make demo`: a small storefront on two nodes, meshed by the real node agents and ztunnels,
//! told as a short story of what the mesh did and how we know. Needs root (it creates network
//! namespaces); removes everything it made when it ends, whatever happened.
//!
//! The cast and their policies are in [`e2e::storefront`]; the runbooks' commands run against
//! the same mesh (tests/tests/operate.rs). Step 6, the waypoint's HTTP policy, is in `l7`.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a demo talks to its reader and stops at the first surprise

#[path = "demo/l7.rs"]
mod l7;

use std::process::{Command, ExitCode};

use e2e::pcap::Capture;
use e2e::storefront::{MARKER, PORT, Storefront, order};
use e2e::topology::NodeId;

/// The control plane's port (CA and xDS): its own TLS, not an application's traffic.
const CONTROL_PLANE_PORT: u16 = 15012;

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

async fn story() -> usize {
    let mut n = Narrator { surprises: 0 };
    n.say("== A storefront on two nodes ==");
    let mut shop = Storefront::with_waypoint("demo");
    let (n1, n2) = (shop.node1, shop.node2);
    n.say(&format!(
        "node1: web {} (mesh), legacy {} (not in the mesh)\nnode2: api {} (mesh, STRICT, only web may call), catalog {} (mesh, PERMISSIVE), outsider {} (mesh, namespace partner)",
        shop.web.ip(), shop.legacy.ip(), shop.api.ip(), shop.catalog.ip(), shop.outsider.ip()
    ));
    n.say(
        "Starting the control plane on node1 (Kubernetes-style YAML -> xDS, and the CA), then on\n\
         each node the node agent (capture rules + ZDS) and ztunnel (in-pod mode, configuration\n\
         over xDS, certificates from the control plane's CA)...",
    );
    shop.start().await;
    let (web, legacy, api, catalog, outsider) = (
        shop.web.clone(),
        shop.legacy.clone(),
        shop.api.clone(),
        shop.catalog.clone(),
        shop.outsider.clone(),
    );
    let listening = web.netns().exec_output("ss", &["-Htln"]);
    n.check(
        listening.contains(":15001") && listening.contains(":15008"),
        "ztunnel listens on 15001/15006/15008 inside web's own network namespace",
    );

    n.say("\n1. web calls api with plain TCP, as it always did.");
    let dir = shop.mesh.world.dir().to_owned();
    let wire = Capture::start(
        shop.mesh.cluster.node(n1).netns(),
        shop.mesh.cluster.inter_node_iface(n1, n2),
        &dir,
    )
    .await;
    let delivered = order(&web, api.addr(PORT)).await;
    let recorded = wire.stop().await;
    n.check(
        delivered == Some(true),
        "the order reached api and came back byte for byte",
    );
    // node2's ztunnel may still be fetching its pods' certificates from the control plane on
    // node1 (TLS to 15012) while the order crosses: that is not the order's traffic.
    let segments: Vec<_> = recorded
        .tcp_segments()
        .into_iter()
        .filter(|s| s.payload_len > 0)
        .filter(|s| s.src.port() != CONTROL_PLANE_PORT && s.dst.port() != CONTROL_PLANE_PORT)
        .collect();
    n.check(
        !segments.is_empty()
            && segments
                .iter()
                .all(|s| s.src.port() == 15008 || s.dst.port() == 15008),
        &format!(
            "on the wire between the nodes: {} data segments of the call, all HBONE (mTLS to port 15008)",
            segments.len()
        ),
    );
    n.check(
        !recorded.contains(MARKER),
        "the order number never appeared in clear on the wire",
    );
    let seen = shop.peers_of("api");
    n.check(
        seen.len() == 1 && seen[0].ip() == web.ip(),
        &format!("api saw the call come from web's own address {}", web.ip()),
    );
    let verified = [
        "inbound connection complete",
        "spiffe://cluster.local/ns/storefront/sa/web",
    ];
    shop.mesh.ztunnel(n2).wait_for_lines(&verified, 1).await;
    n.check(
        shop.mesh.ztunnel(n2).count(&verified) == 1
            && shop.mesh
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
        "but catalog serves it over mTLS (its policy against partner is still dry-run: counted, not enforced)",
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
        shop.peers_of("api").len() == 1,
        "api's application saw only web's call",
    );
    n.check(
        shop.peers_of("catalog").len() == 2,
        "catalog's application saw outsider's and legacy's calls",
    );

    n.say("\n4. What ztunnel on node2 recorded:");
    // Each line is written as its connection closes, just after the client saw the end.
    shop.mesh
        .ztunnel(n2)
        .wait_for_line("inbound plaintext connection complete")
        .await;
    let node2 = shop.mesh.ztunnel(n2);
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

    n.say("\n5. What an operator sees (the commands of docs/runbooks/observability.md).");
    operator_view(&mut n, &shop);

    n.say("\n6. api becomes HTTP-aware: a waypoint for Service storefront/api.");
    l7::story(&mut n, &mut shop).await;

    n.say("\nTearing down: stopping processes, deleting namespaces.");
    let names = shop.mesh.cluster.netns_names();
    drop(shop);
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

/// Runs `program` in `node`'s namespace, as an operator on that node would: `(succeeded, stdout)`.
fn on_node(shop: &Storefront, node: NodeId, program: &str, args: &[String]) -> (bool, String) {
    let netns = shop.mesh.cluster.node(node).netns().name().to_owned();
    match Command::new("ip")
        .args(["netns", "exec", &netns, program])
        .args(args)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(err) => (false, format!("cannot run {program}: {err}")),
    }
}

/// A sample line with only the labels in `keep` (the others are `…`).
fn elide_labels(line: &str, keep: &[&str]) -> String {
    let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
        return line.to_owned();
    };
    let all: Vec<&str> = line[open + 1..close].split("\",").collect();
    let labels: Vec<&str> = all
        .iter()
        .copied()
        .filter(|pair| keep.iter().any(|k| pair.starts_with(&format!("{k}=\""))))
        .collect();
    let elided = if labels.len() < all.len() { ",…" } else { "" };
    let mut kept = labels.join("\",");
    if !kept.is_empty() && !kept.ends_with('"') {
        kept.push('"');
    }
    format!("{}{{{kept}{elided}}}{}", &line[..open], &line[close + 1..])
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}

/// Step 5: node2's `/metrics` and `/config_dump`, then both rollout reports over both nodes.
fn operator_view(n: &mut Narrator, shop: &Storefront) {
    let curl = |path: &str| {
        on_node(
            shop,
            shop.node2,
            "curl",
            &[
                "-sS".to_owned(),
                "--max-time".to_owned(),
                "5".to_owned(),
                format!("http://localhost:{path}"),
            ],
        )
    };
    let (_, metrics) = curl("15020/metrics");
    let excerpt: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            (l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains("destination_workload=\"catalog\""))
                || l.starts_with("ztunnel_certificates{")
        })
        .collect();
    // The labels a reader of this step needs.
    let kept = [
        "state",
        "reporter",
        "source_workload",
        "destination_workload",
        "response_flags",
        "connection_security_policy",
    ];
    let shown: Vec<String> = excerpt.iter().map(|l| elide_labels(l, &kept)).collect();
    n.say(&format!(
        "   curl localhost:15020/metrics (node2, excerpt; labels elided to the ones that matter here):\n{}",
        indent(&shown.join("\n"))
    ));
    n.check(
        excerpt.iter().any(|l| {
            l.contains("connection_security_policy=\"none\"")
                && l.contains("source_workload=\"legacy\"")
        }),
        "legacy's plaintext to catalog is counted with connection_security_policy=\"none\"",
    );
    let (_, dump) = curl("15000/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
    let mut lines = Vec::new();
    for w in dump["workloads"].as_array().into_iter().flatten() {
        lines.push(format!(
            "workload    {}/{} {} {}",
            w["namespace"].as_str().unwrap_or("?"),
            w["name"].as_str().unwrap_or("?"),
            w["protocol"].as_str().unwrap_or("?"),
            w["status"].as_str().unwrap_or("?")
        ));
    }
    for p in dump["policies"].as_array().into_iter().flatten() {
        lines.push(format!(
            "policy      {}/{} {} {} dryRun={}",
            p["namespace"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?"),
            p["action"].as_str().unwrap_or("?"),
            p["scope"].as_str().unwrap_or("?"),
            p["dryRun"]
        ));
    }
    for c in dump["certificates"].as_array().into_iter().flatten() {
        lines.push(format!(
            "certificate {} {} expires {}",
            c["identity"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["certChain"][0]["expirationTime"].as_str().unwrap_or("?")
        ));
    }
    n.say(&format!(
        "   curl localhost:15000/config_dump (node2, summarized):\n{}",
        indent(&lines.join("\n"))
    ));
    n.check(
        lines.iter().filter(|l| l.starts_with("workload")).count() == 5
            && lines.iter().any(|l| l.contains("storefront/catalog-no-partner") && l.contains("dryRun=true"))
            && lines.iter().filter(|l| l.starts_with("certificate") && l.contains("Available")).count() == 3,
        "node2's ztunnel knows all 5 workloads, the dry-run policy, and holds certificates for its 3 pods",
    );
    let ztunnels: Vec<String> = [shop.node1, shop.node2]
        .iter()
        .map(|&node| format!("{}:15020", shop.mesh.cluster.node(node).gateway()))
        .collect();
    let controlplane = e2e::binary("controlplane").display().to_string();
    for (kind, expect, fact) in [
        (
            "plaintext",
            "legacy/legacy -> storefront/catalog (1)",
            "the report names legacy -> catalog as what STRICT on storefront would break",
        ),
        (
            "dry-run",
            "storefront/catalog-no-partner",
            "the dry-run report shows catalog-no-partner would have denied outsider's call",
        ),
    ] {
        let mut args = vec!["report".to_owned(), kind.to_owned()];
        args.extend(ztunnels.iter().cloned());
        let (ok, out) = on_node(shop, shop.node2, &controlplane, &args);
        n.say(&format!(
            "   controlplane report {kind} {}:\n{}",
            ztunnels.join(" "),
            indent(&out)
        ));
        n.check(ok && out.contains(expect), fact);
    }
}
