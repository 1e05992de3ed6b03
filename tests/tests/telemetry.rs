//! What operators see of a running ztunnel (dedicated mode, one private network namespace):
//! readiness on 15021, upstream's `istio_tcp_*` series on 15020 with the bytes that really
//! crossed, `connection_security_policy="none"` for plaintext accepted under PERMISSIVE, the
//! dry-run counter, open sockets, one access-log record per connection, and the admin port's
//! `/logging` and `/config_dump` (in the shape istioctl reads).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use e2e::apps::{Behaviour, Server, checksum, connect_from, exchange, payload};
use e2e::world::{Service, Workload, World};
use e2e::{WAIT, in_private_netns, install_capture};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WEB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const API: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const LEGACY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const API_VIP: Ipv4Addr = Ipv4Addr::new(127, 10, 0, 1);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// One HTTP/1.1 request; returns the status and the body.
async fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    timeout(WAIT, async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap();
        (status, body)
    })
    .await
    .unwrap_or_else(|_| panic!("{method} :{port}{path} did not answer within {WAIT:?}"))
}

/// The value of the one series of `family` whose labels include all of `labels`.
fn sample(metrics: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        matching.len() <= 1,
        "several {family} series match {labels:?}:\n{metrics}"
    );
    matching.first().copied()
}

/// Scrapes until `family{labels}` reaches `at_least` (byte counters may trail the close).
async fn wait_for_sample(family: &str, labels: &[(&str, &str)], at_least: f64) -> String {
    timeout(WAIT, async {
        loop {
            let (status, body) = http(15020, "GET", "/metrics").await;
            assert_eq!(status, 200);
            if sample(&body, family, labels).is_some_and(|v| v >= at_least) {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{family}{labels:?} never reached {at_least}"))
}

#[test]
fn metrics_access_log_readiness_and_admin_tell_what_crossed() {
    in_private_netns("telemetry", || async {
        let mut world = World::new("telemetry");
        let api_service = Service {
            name: "api".into(),
            namespace: "shop".into(),
            vip: API_VIP,
            ports: vec![(80, 8080)],
            waypoint: None,
        };
        let mut api = Workload::new("api", "shop", API);
        api.services.push((api_service.key(), 80, 8080));
        world.workloads = vec![Workload::new("web", "shop", WEB), api];
        world.services = vec![api_service];
        // A dry-run DENY on everything reaching api: counted, never enforced.
        world.policies.push(
            "- name: would-deny
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: true
  rules:
  - []
"
            .into(),
        );
        install_capture(&[WEB], &[API]);
        let _api = Server::start(at(API, 8080), Behaviour::Echo).await;
        // The usual soft default, under a higher hard limit: ztunnel must raise it itself.
        let (_, hard_files) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert!(
            hard_files > 1024,
            "this test needs a hard open-files limit above 1024"
        );
        setrlimit(Resource::RLIMIT_NOFILE, 1024, hard_files).unwrap();
        let mut ztunnel = world.start_ztunnel().await;
        let (status, body) = http(15021, "GET", "/healthz/ready").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        // Over HBONE through the service VIP: 3000 bytes each way.
        let data = payload(3000, 1);
        let stream = connect_from(IpAddr::V4(WEB), at(API_VIP, 80))
            .await
            .unwrap();
        let back = timeout(WAIT, exchange(stream, data.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(checksum(&back), checksum(&data));
        // Plaintext from outside the mesh, accepted under PERMISSIVE: 700 bytes each way.
        let data = payload(700, 2);
        let stream = connect_from(IpAddr::V4(LEGACY), at(API, 8080))
            .await
            .unwrap();
        let back = timeout(WAIT, exchange(stream, data.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(checksum(&back), checksum(&data));

        let inbound_mtls = [
            ("reporter", "destination"),
            ("source_workload", "web"),
            ("source_principal", "spiffe://cluster.local/ns/shop/sa/web"),
            ("destination_workload", "api"),
            ("destination_service", "api.shop.svc.cluster.local"),
            ("connection_security_policy", "mutual_tls"),
            ("response_flags", "-"),
        ];
        let metrics =
            wait_for_sample("istio_tcp_connections_closed_total", &inbound_mtls, 1.0).await;
        let metrics_again =
            wait_for_sample("istio_tcp_sent_bytes_total", &inbound_mtls, 3000.0).await;
        assert_eq!(
            sample(
                &metrics_again,
                "istio_tcp_received_bytes_total",
                &inbound_mtls
            ),
            Some(3000.0),
            "client -> server bytes, as the destination counted them"
        );
        assert_eq!(
            sample(
                &metrics,
                "istio_tcp_connections_opened_total",
                &inbound_mtls
            ),
            Some(1.0)
        );
        let outbound = [
            ("reporter", "source"),
            ("source_workload", "web"),
            ("destination_workload", "api"),
            ("destination_service", "api.shop.svc.cluster.local"),
            ("connection_security_policy", "mutual_tls"),
        ];
        let metrics = wait_for_sample("istio_tcp_received_bytes_total", &outbound, 3000.0).await;
        assert_eq!(
            sample(&metrics, "istio_tcp_received_bytes_total", &outbound),
            Some(3000.0)
        );
        let plaintext = [
            ("reporter", "destination"),
            ("source_workload", "unknown"),
            ("source_principal", "unknown"),
            ("destination_workload", "api"),
            ("connection_security_policy", "none"),
        ];
        let metrics = wait_for_sample("istio_tcp_sent_bytes_total", &plaintext, 700.0).await;
        assert_eq!(
            sample(&metrics, "istio_tcp_connections_closed_total", &plaintext),
            Some(1.0),
            "the plaintext connection the rollout report looks for"
        );
        // Both inbound connections met the dry-run DENY; neither was refused.
        assert_eq!(
            sample(
                &metrics,
                "istio_authz_dry_run_total",
                &[
                    ("authz_dry_run_action", "deny"),
                    ("authz_dry_run_result", "denied"),
                    ("policy", "shop/would-deny"),
                ]
            ),
            Some(2.0),
            "{metrics}"
        );
        assert!(
            metrics.contains("istio_build{component=\"ztunnel\""),
            "{metrics}"
        );
        assert!(metrics.contains("process_open_fds "), "{metrics}");
        // ztunnel raised the soft open-files limit it inherited (1024) to the hard one.
        assert!(
            metrics.contains(&format!("process_max_fds {hard_files}\n")),
            "process_max_fds is not the hard limit {hard_files}:\n{metrics}"
        );
        assert!(metrics.ends_with("# EOF\n"));

        // The access log: one record per connection, upstream's fields.
        let inbound_record = ztunnel
            .wait_for_lines(
                &[
                    " access connection complete",
                    "direction=\"inbound\"",
                    "src.identity=\"spiffe://cluster.local/ns/shop/sa/web\"",
                ],
                1,
            )
            .await
            .remove(0);
        for field in [
            "dst.hbone_addr=127.0.0.3:8080",
            "dst.service=\"api.shop.svc.cluster.local\"",
            "dst.workload=\"api\"",
            "bytes_sent=3000",
            "bytes_recv=3000",
        ] {
            assert!(
                inbound_record.contains(field),
                "{field} in {inbound_record}"
            );
        }
        let plaintext_record = ztunnel
            .wait_for_lines(&[" access connection complete", "src.addr=127.0.0.9:"], 1)
            .await
            .remove(0);
        assert!(
            !plaintext_record.contains("src.identity"),
            "no identity without mTLS: {plaintext_record}"
        );

        // The admin port: the log filter changes at run time, and a bad level is refused.
        let (status, body) = http(15000, "POST", "/logging?level=access=debug").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with(",access=debug\n"), "{body}");
        let (status, _) = http(15000, "POST", "/logging?level=loud").await;
        assert_eq!(status, 400);
        let (status, _) = http(15000, "GET", "/logging").await;
        assert_eq!(status, 405);
        let (status, body) = http(15000, "GET", "/config_dump").await;
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_config_dump(&dump);

        // Sockets are counted while they are open: 15001 at the source, and back to 0 after.
        let source = [("reporter", "source")];
        let held = connect_from(IpAddr::V4(WEB), at(API_VIP, 80))
            .await
            .unwrap();
        wait_for_sample("istio_tcp_sockets_open", &source, 1.0).await;
        let destination = [("reporter", "destination")];
        let metrics = wait_for_sample("istio_tcp_sockets_open", &destination, 1.0).await;
        assert_eq!(
            sample(&metrics, "istio_tcp_sockets_open", &source),
            Some(1.0),
            "{metrics}"
        );
        drop(held);
        timeout(WAIT, async {
            loop {
                let (_, body) = http(15020, "GET", "/metrics").await;
                if sample(&body, "istio_tcp_sockets_open", &source) == Some(0.0) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("istio_tcp_sockets_open{reporter=\"source\"} never went back to 0");
    });
}

/// `/config_dump` in the shape istioctl decodes (telemetry.md §c.3, §c.4): a wrong type on a key
/// it knows would make `istioctl ztunnel-config` fail outright.
fn assert_config_dump(dump: &serde_json::Value) {
    let workloads = dump["workloads"].as_array().expect("workloads[]");
    let uids: Vec<&str> = workloads
        .iter()
        .map(|w| w["uid"].as_str().expect("uid"))
        .collect();
    assert_eq!(
        uids,
        ["Kubernetes//Pod/shop/api", "Kubernetes//Pod/shop/web"],
        "sorted by uid: {dump}"
    );
    for workload in workloads {
        for key in ["name", "namespace", "protocol", "status", "networkMode"] {
            assert!(workload[key].is_string(), "{key}: {workload}");
        }
        let ips = workload["workloadIps"].as_array().expect("workloadIps[]");
        assert!(
            !ips.is_empty() && ips.iter().all(serde_json::Value::is_string),
            "{workload}"
        );
        assert_eq!(workload["protocol"], "HBONE", "{workload}");
        assert_eq!(workload["status"], "Healthy", "{workload}");
        assert!(workload["capacity"].is_u64(), "{workload}");
    }
    assert_eq!(workloads[0]["name"], "api");
    assert_eq!(
        workloads[0]["workloadIps"],
        serde_json::json!(["127.0.0.3"])
    );
    assert_eq!(
        workloads[0]["services"],
        serde_json::json!(["shop/api.shop.svc.cluster.local"])
    );

    let services = dump["services"].as_array().expect("services[]");
    assert_eq!(services.len(), 1, "{dump}");
    let api = &services[0];
    assert_eq!(api["hostname"], "api.shop.svc.cluster.local");
    assert_eq!(api["vips"], serde_json::json!(["/127.10.0.1"]));
    assert_eq!(api["ports"], serde_json::json!({"80": 8080}));
    assert_eq!(
        api["endpoints"]["Kubernetes//Pod/shop/api"],
        serde_json::json!({
            "workloadUid": "Kubernetes//Pod/shop/api", "port": {"80": 8080}, "status": "Healthy"
        })
    );

    // The world's STRICT stand-in (attached to no workload here) sorts first by `ns/name`.
    assert_eq!(
        dump["policies"],
        serde_json::json!([
            {
                "name": "istio_converted_static_strict", "namespace": "istio-system",
                "scope": "WorkloadSelector", "action": "Deny",
                "rules": [[[{"notPrincipals": [{"Presence": []}]}]]], "dryRun": false
            },
            {
                "name": "would-deny", "namespace": "shop", "scope": "Namespace", "action": "Deny",
                "rules": [[]], "dryRun": true
            }
        ])
    );
    assert!(dump["stagedServices"].is_object(), "{dump}");
    assert!(dump["version"]["version"].is_string(), "{dump}");
    assert!(dump["config"].is_object(), "{dump}");

    // Both ends of the HBONE exchange above needed a certificate, so both are held by now.
    let certificates = dump["certificates"].as_array().expect("certificates[]");
    let identities: Vec<&str> = certificates
        .iter()
        .map(|c| c["identity"].as_str().expect("identity"))
        .collect();
    assert_eq!(
        identities,
        [
            "spiffe://cluster.local/ns/shop/sa/api",
            "spiffe://cluster.local/ns/shop/sa/web"
        ],
        "{dump}"
    );
    for cert in certificates {
        assert_eq!(cert["state"], "Available", "{cert}");
        let chain = cert["certChain"].as_array().expect("certChain[]");
        assert!(!chain.is_empty(), "{cert}");
        for entry in chain.iter().chain(cert["rootCerts"].as_array().unwrap()) {
            let serial = entry["serialNumber"].as_str().expect("serialNumber");
            assert!(
                !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_digit()),
                "{entry}"
            );
            for key in ["pem", "validFrom", "expirationTime"] {
                assert!(entry[key].is_string(), "{key}: {entry}");
            }
            // base64 of "-----BEGIN CERTIFICATE-----".
            let pem = entry["pem"].as_str().unwrap_or_default();
            assert!(
                pem.starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"),
                "{entry}"
            );
        }
    }
}
