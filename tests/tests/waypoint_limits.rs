//! The waypoint's limits, end to end on the conformance world: an endpoint slower than
//! `REQUEST_TIMEOUT` gets the client a 504 from the waypoint (not a hung request), and a client
//! ztunnel beyond `MAX_CONNECTIONS` is refused and counted while the others keep being served.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::WAIT;
use e2e::authz_world::{AuthzWorld, WAYPOINT_POD, overlay, scrape_waypoint, sum_series};
use e2e::http::Reply;
use e2e::topology::Pod;
use tokio::time::timeout;

const CONFIG: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: payments\n  labels: {istio.io/use-waypoint: waypoint}\nspec:\n  clusterIP: 10.96.2.10\n  selector: {app: api}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: zz-sync-limits, namespace: payments}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{from: [{source: {namespaces: [\"zz-none\"]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: limits, namespace: zz-sync}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [\"zz-none\"]}}]}]}\n";

async fn get(from: &Pod, vip: SocketAddr, path: &str) -> Result<Reply, String> {
    let stream = timeout(WAIT, from.netns().connect(vip))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    timeout(WAIT, e2e::http::request(stream, "GET", path, &[]))
        .await
        .map_err(|_| "request timed out".to_owned())?
}

#[test]
fn request_timeout_and_connection_limit() {
    e2e::on_current_thread(async {
        let env = [
            ("REQUEST_TIMEOUT", "1s".to_owned()),
            ("MAX_CONNECTIONS", "2".to_owned()),
        ];
        let mut world = AuthzWorld::start("wplimits", &env).await;
        let text = overlay(&world.world_text, CONFIG);
        world.mesh.write_cluster_text(&text);
        for node in world.nodes.values() {
            world
                .mesh
                .ztunnel(*node)
                .wait_for_lines(&["xDS resources received", "zz-sync/limits"], 1)
                .await;
        }
        world
            .mesh
            .waypoint(WAYPOINT_POD)
            .wait_for_lines(&["waypoint policy received", "payments/zz-sync-limits"], 1)
            .await;
        let vip = SocketAddr::new(world.services["payments/api"].into(), 80);
        let (web, _) = &world.pods["storefront/web-0"];
        let (cart, _) = &world.pods["storefront/cart-0"];
        let (ops, _) = &world.pods["admin/ops-0"];

        // The app holds a lone `/gather/<key>/2/` request for 30 s; the waypoint gives up at 1 s.
        let started = Instant::now();
        let slow = get(web, vip, "/gather/slow/2/only").await.unwrap();
        let waited = started.elapsed();
        assert_eq!(slow.status.as_u16(), 504, "{}", slow.body);
        assert_eq!(slow.body, "upstream request timeout");
        assert!(
            waited < Duration::from_secs(20),
            "the waypoint's timeout answered, not the app's (after {waited:?})"
        );
        let fast = get(web, vip, "/v1/pay").await.unwrap();
        assert_eq!(fast.status.as_u16(), 200, "{}", fast.body);

        // web's ztunnel (node-a) holds one connection to the waypoint; cart's (node-b) the
        // second; ops's (node-a, another identity, so another pooled connection) is one too many.
        let cart_reply = get(cart, vip, "/v1/pay").await.unwrap();
        assert_eq!(cart_reply.status.as_u16(), 200, "{}", cart_reply.body);
        let refused = get(ops, vip, "/v1/pay").await;
        assert!(
            refused.as_ref().is_err() || refused.as_ref().is_ok_and(|r| r.status.as_u16() != 200),
            "a third client connection was served: {refused:?}"
        );
        world
            .mesh
            .waypoint(WAYPOINT_POD)
            .wait_for_lines(&["connection refused: the waypoint holds its maximum"], 1)
            .await;
        let again = get(web, vip, "/v1/pay").await.unwrap();
        assert_eq!(
            again.status.as_u16(),
            200,
            "the connections held are still served"
        );

        let scraped = scrape_waypoint(&world.waypoint_pod).await;
        // Counters without labels have no braces: read the line itself.
        let refused_total: f64 = scraped
            .lines()
            .find_map(|l| l.strip_prefix("waypoint_connections_refused_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(refused_total >= 1.0, "{scraped}");
        let timed_out = sum_series(
            &scraped,
            "istio_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")],
        );
        assert_eq!(timed_out, 1.0);
    });
}
