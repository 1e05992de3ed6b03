//! Step 6 of the demo: Service api gets a waypoint, and with it HTTP-level policy: methods and
//! paths, JWTs and their claims, an access line and a counter per request.

use std::net::{IpAddr, SocketAddr};

use e2e::WAIT;
use e2e::authz_world::{shared, sum_series};
use e2e::http::Reply;
use e2e::storefront::{API_HTTP_PORT, API_VIP, AUDIENCE, ISSUER, Storefront, WAYPOINT};
use e2e::topology::Pod;
use tokio::time::timeout;

use super::{Narrator, elide_labels, indent};

/// The key id the suite's trusted JWKS names its key by (the forged token claims it too).
const KID: &str = "conformance-trusted-1";

/// An ES256 token from [`ISSUER`] for [`AUDIENCE`], subject `alice`, with `groups`, valid for
/// an hour, signed with the suite's `trusted` or `untrusted` key.
fn token(key: &str, groups: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "groups": groups,
        "iat": now - 60,
        "exp": now + 3600,
    });
    let pem = std::fs::read(shared().join(format!("jwt/{key}-key.pem"))).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// One HTTP/1.1 request from `from` to Service api (captured by its ztunnel, sent on to the
/// waypoint), on a connection of its own.
async fn call(from: &Pod, method: &str, path: &str, bearer: Option<&str>) -> Result<Reply, String> {
    let headers: Vec<(String, String)> = bearer
        .map(|t| ("authorization".to_owned(), format!("Bearer {t}")))
        .into_iter()
        .collect();
    let api = SocketAddr::new(IpAddr::V4(API_VIP), API_HTTP_PORT);
    timeout(WAIT, async {
        let stream = from.netns().connect(api).await.map_err(|e| e.to_string())?;
        e2e::http::request(stream, method, path, &headers).await
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {WAIT:?}")))
}

/// `-> 200 "GET /orders/4711" (server: ...)`: the status, the first line of the body, and for
/// the application's answers which endpoint gave it.
fn summary(reply: &Result<Reply, String>) -> String {
    match reply {
        Ok(r) => {
            let first = r.body.lines().next().unwrap_or_default();
            let server = r
                .body
                .lines()
                .find_map(|l| l.strip_prefix("server: "))
                .map(|s| format!(" (app at {s})"))
                .unwrap_or_default();
            format!("{} {first:?}{server}", r.status.as_u16())
        }
        Err(err) => format!("failed: {err}"),
    }
}

fn is(reply: &Result<Reply, String>, status: u16, body: impl Fn(&str) -> bool) -> bool {
    reply
        .as_ref()
        .is_ok_and(|r| r.status.as_u16() == status && body(&r.body))
}

/// The waypoint's Prometheus text, fetched from inside its pod ("" if it could not be).
async fn scrape(pod: &Pod) -> String {
    let reply = timeout(WAIT, async {
        let stream = pod
            .netns()
            .connect(pod.addr(15020))
            .await
            .map_err(|e| e.to_string())?;
        e2e::http::request(stream, "GET", "/metrics", &[]).await
    })
    .await;
    match reply {
        Ok(Ok(r)) if r.status.as_u16() == 200 => r.body,
        _ => String::new(),
    }
}

/// Step 6.
pub(crate) async fn story(n: &mut Narrator, shop: &mut Storefront) {
    let pod = shop
        .waypoint
        .clone()
        .expect("the demo's storefront has a waypoint pod");
    n.say(&format!(
        "   The platform team starts a waypoint on node2 (Gateway storefront/{WAYPOINT}, pod {},\n   \
         identity spiffe://cluster.local/ns/storefront/sa/{WAYPOINT}), labels Service api\n   \
         ({API_VIP}:{API_HTTP_PORT}) istio.io/use-waypoint: {WAYPOINT}, and writes the policies it enforces:\n     \
         api-orders-read    AuthorizationPolicy, targetRefs Service api: ALLOW web to GET /orders/*\n     \
         api-admin-ops      AuthorizationPolicy, targetRefs Service api: ALLOW /admin/*\n                        \
         when request.auth.claims[groups] contains ops\n     \
         storefront-jwt     RequestAuthentication, targetRefs Gateway {WAYPOINT}: tokens of\n                        \
         {ISSUER} for {AUDIENCE}, signed by the suite's trusted key\n   \
         and one for api's ztunnel, next to api-only-web:\n     \
         api-from-waypoint  AuthorizationPolicy, selector app=api: ALLOW the waypoint's identity\n                        \
         (it carries web's requests, having checked them itself)",
        pod.ip()
    ));
    shop.open_waypoint().await;
    n.say(
        "   Once node1's ztunnel sends Service api's traffic to the waypoint, node2's admits the\n   \
         waypoint, and the waypoint holds its three policies, web calls http://api/:",
    );
    let web = shop.web.clone();
    let trusted = token("trusted", &["ops"]);
    let forged = token("untrusted", &["ops"]);
    let requests: [(&str, &str, Option<&str>, &str); 5] = [
        ("GET", "/orders/4711", None, ""),
        ("POST", "/orders/4711", None, ""),
        ("GET", "/admin/stats", None, ""),
        (
            "GET",
            "/admin/stats",
            Some(&trusted),
            "token of the trusted key, groups [ops]",
        ),
        (
            "GET",
            "/admin/stats",
            Some(&forged),
            "same claims, signed by another key",
        ),
    ];
    let mut replies = Vec::new();
    for (method, path, bearer, about) in requests {
        let reply = call(&web, method, path, bearer).await;
        let about = if about.is_empty() {
            String::new()
        } else {
            format!("  ({about})")
        };
        n.say(&format!(
            "   {method:<4} {path:<13} -> {}{about}",
            summary(&reply)
        ));
        replies.push(reply);
    }
    n.check(
        is(&replies[0], 200, |b| b.starts_with("GET /orders/4711\n")),
        "GET /orders/4711 allowed: 200, and the body is api's own answer",
    );
    n.check(
        is(&replies[1], 403, |b| b == "RBAC: access denied"),
        "POST /orders/4711 denied at the waypoint: 403 \"RBAC: access denied\"",
    );
    n.check(
        is(&replies[2], 403, |b| b == "RBAC: access denied"),
        "/admin/stats without a token: 403 (no groups claim to match)",
    );
    n.check(
        is(&replies[3], 200, |b| b.starts_with("GET /admin/stats\n")),
        "/admin/stats with a valid token carrying groups [ops]: 200",
    );
    n.check(
        is(&replies[4], 401, |b| b == "Jwt verification fails"),
        "the forged token (signed with the untrusted key) is refused: 401, before any policy",
    );

    // Written as each response ends, but read through a pipe: wait for the line, not look once.
    let waypoint = shop.mesh.waypoint(WAYPOINT);
    let denied = ["request complete", "method=POST", "status=403"];
    let line = waypoint.wait_for_lines(&denied, 1).await.remove(0);
    let shown = line
        .find("request complete")
        .map_or(line.as_str(), |at| &line[at..]);
    n.say(&format!(
        "   The waypoint's access log, the denied POST:\n{}",
        indent(&wrap(shown, 88))
    ));
    n.check(
        line.contains("src.identity=spiffe://cluster.local/ns/storefront/sa/web")
            && line.contains("path=\"/orders/4711\"")
            && line.contains("storefront/api-orders-read"),
        "it names web's identity, the request, and the ALLOW policies it checked (none matched)",
    );
    waypoint
        .wait_for_lines(&["request complete", "status=403"], 2)
        .await;
    let metrics = scrape(&pod).await;
    let denied_count = sum_series(
        &metrics,
        "istio_requests_total",
        &[("reporter", "waypoint"), ("response_code", "403")],
    );
    let samples: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\""))
        .map(|l| {
            elide_labels(
                l,
                &[
                    "reporter",
                    "source_workload",
                    "destination_service",
                    "response_code",
                    "response_flags",
                ],
            )
        })
        .collect();
    n.say(&format!(
        "   The waypoint's {}:15020/metrics (labels elided to the ones that matter here):\n{}",
        pod.ip(),
        indent(&samples.join("\n"))
    ));
    n.check(
        denied_count == 2.0,
        &format!(
            "istio_requests_total{{response_code=\"403\"}} = {denied_count} at the waypoint: the 2 denied requests"
        ),
    );
}

/// `text` broken at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines.join("\n")
}
