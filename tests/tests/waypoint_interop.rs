//! Upstream's ztunnel as the client side of our waypoint: on node-a Istio's ztunnel (in-pod mode,
//! against our control plane), on node-b ours; a client on node-a calls a service that uses the
//! waypoint. The waypoint must see the client's identity as upstream presents it and enforce
//! its L7 policy; the request must reach the application through our ztunnel.
//! Skipped, with a message, when `../shared/peers/ztunnel-upstream` is absent.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: a panic is the failure report

use std::net::SocketAddr;

use e2e::WAIT;
use e2e::authz_world::{AuthzWorld, WAYPOINT_POD, overlay};
use tokio::time::timeout;

const CONFIG: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: payments\n  labels: {istio.io/use-waypoint: waypoint}\nspec:\n  clusterIP: 10.96.2.10\n  selector: {app: api}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: api-get-only, namespace: payments}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: api}]\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/storefront/sa/web\"]}\n    to:\n    - operation: {methods: [\"GET\"]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: interop, namespace: zz-sync}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [\"zz-none\"]}}]}]}\n";

#[test]
fn upstream_ztunnel_reaches_our_waypoint() {
    let upstream = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peers/ztunnel-upstream");
    if !upstream.exists() {
        eprintln!("SKIPPED: ../shared/peers/ztunnel-upstream is absent; interop not tested");
        return;
    }
    e2e::on_current_thread(async move {
        let mut world =
            AuthzWorld::start_with("wpinterop", &[], Some(("node-a", upstream.as_path()))).await;
        let text = overlay(&world.world_text, CONFIG);
        world.mesh.write_cluster_text(&text);
        // Ours (node-b) and the waypoint say when they have it; upstream's is given the time
        // its first successful request takes (the request below is retried until then).
        let node_b = world.nodes["node-b"];
        world
            .mesh
            .ztunnel(node_b)
            .wait_for_lines(&["xDS resources received", "zz-sync/interop"], 1)
            .await;
        world
            .mesh
            .waypoint(WAYPOINT_POD)
            .wait_for_lines(&["waypoint policy received", "payments/api-get-only"], 1)
            .await;

        let (web, _) = &world.pods["storefront/web-0"];
        let vip = SocketAddr::new(world.services["payments/api"].into(), 80);
        let send = |method: &'static str| async move {
            let stream = timeout(WAIT, web.netns().connect(vip)).await.ok()?.ok()?;
            timeout(WAIT, e2e::http::request(stream, method, "/v1/pay", &[]))
                .await
                .ok()?
                .ok()
        };
        // Upstream's ztunnel learns the service's waypoint from its own xDS stream: until then
        // it sends the request straight to an endpoint. Retry until the waypoint answers.
        let deadline = tokio::time::Instant::now() + WAIT;
        let get = loop {
            let before = world
                .mesh
                .waypoint(WAYPOINT_POD)
                .count(&["request complete"]);
            let reply = send("GET").await;
            let after = world
                .mesh
                .waypoint(WAYPOINT_POD)
                .count(&["request complete"]);
            if after > before {
                break reply.expect("the waypoint answered, so the client got a reply");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream's ztunnel never sent the request through the waypoint"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(get.status.as_u16(), 200, "{}", get.body);
        assert!(get.body.starts_with("GET /v1/pay"), "{}", get.body);
        let post = send("POST").await.expect("a reply to POST");
        assert_eq!(post.status.as_u16(), 403);
        assert_eq!(post.body, "RBAC: access denied");
        // The waypoint saw web's identity, as upstream's ztunnel presented it.
        let lines = world.mesh.waypoint(WAYPOINT_POD).lines();
        let denied = lines
            .iter()
            .find(|l| l.contains("request complete") && l.contains("method=POST"))
            .expect("the POST's access line");
        println!("{denied}");
        assert!(denied.contains("src.identity=spiffe://cluster.local/ns/storefront/sa/web"));
        assert!(denied.contains("status=403"));
    });
}
