//! Service → Service (xds.md §4.4) and waypoint binding (xds.md §4.3).

use xds_proto::istio::workload as pb;
use xds_proto::istio::workload::gateway_address::Destination;
use xds_proto::istio::workload::load_balancing::{HealthPolicy, Mode, Scope};

use super::{namespace, pod, service, translate_yaml, workload};

fn service_doc(namespace: &str, name: &str, labels: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}\n\
         spec: {{{spec}}}\n---\n"
    )
}

#[test]
fn service_fields() {
    let text = service_doc(
        "n",
        "api",
        "",
        "clusterIPs: [10.96.0.1, 'fd00::1'], selector: {app: api}, \
         ports: [{name: http, port: 80, targetPort: http}, {name: grpc-api, port: 9090, targetPort: 9090}, \
         {name: db, port: 3306}]",
    );
    let (resources, _) = translate_yaml(&text);
    let got = service(&resources, "n/api.n.svc.cluster.local");
    let port = |service_port, target_port, protocol: pb::AppProtocol| pb::Port {
        service_port,
        target_port,
        app_protocol: protocol as i32,
    };
    let want = pb::Service {
        name: "api".to_owned(),
        namespace: "n".to_owned(),
        hostname: "api.n.svc.cluster.local".to_owned(),
        addresses: vec![
            pb::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
                length: None,
            },
            pb::NetworkAddress {
                network: String::new(),
                address: "fd00::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec(),
                length: None,
            },
        ],
        ports: vec![
            // A named target is resolved per endpoint: 0 here.
            port(80, 0, pb::AppProtocol::Http11),
            port(9090, 9090, pb::AppProtocol::Grpc),
            port(3306, 3306, pb::AppProtocol::Tcp),
        ],
        ip_families: pb::IpFamilies::Dual as i32,
        canonical: true,
        ..pb::Service::default()
    };
    assert_eq!(got, &want);
}

#[test]
fn app_protocol_from_app_protocol_or_port_name() {
    let cases: &[(&str, pb::AppProtocol)] = &[
        ("{name: http, port: 8000}", pb::AppProtocol::Http11),
        ("{name: HTTP-web, port: 8000}", pb::AppProtocol::Http11),
        ("{name: http2, port: 8000}", pb::AppProtocol::Http2),
        ("{name: https, port: 8000}", pb::AppProtocol::Tls),
        ("{name: tls-x, port: 8000}", pb::AppProtocol::Tls),
        ("{name: tcp-db, port: 8000}", pb::AppProtocol::Tcp),
        ("{name: web, port: 8000}", pb::AppProtocol::Unknown),
        (
            "{name: web, port: 8000, appProtocol: grpc}",
            pb::AppProtocol::Grpc,
        ),
        (
            "{name: http, port: 8000, appProtocol: tcp}",
            pb::AppProtocol::Tcp,
        ),
        ("{name: web, port: 53}", pb::AppProtocol::Tcp),
        ("{name: web, port: 27017}", pb::AppProtocol::Tcp),
        (
            "{name: http, port: 8000, protocol: UDP}",
            pb::AppProtocol::Unknown,
        ),
    ];
    for (port, want) in cases {
        let (resources, _) =
            translate_yaml(&service_doc("n", "s", "", &format!("ports: [{port}]")));
        let got = service(&resources, "n/s.n.svc.cluster.local").ports[0].app_protocol;
        assert_eq!(got, *want as i32, "{port}");
    }
}

#[test]
fn load_balancing_and_ip_families() {
    let lb = |preference: Vec<Scope>, mode: Mode, health: HealthPolicy| {
        Some(pb::LoadBalancing {
            routing_preference: preference.into_iter().map(|s| s as i32).collect(),
            mode: mode as i32,
            health_policy: health as i32,
        })
    };
    let zone = vec![Scope::Network, Scope::Region, Scope::Zone];
    let cases: Vec<(&str, Option<pb::LoadBalancing>, pb::IpFamilies)> = vec![
        ("clusterIP: 10.96.0.1", None, pb::IpFamilies::Ipv4Only),
        ("clusterIP: None", None, pb::IpFamilies::Automatic),
        ("ipFamilies: [IPv6]", None, pb::IpFamilies::Ipv6Only),
        (
            "internalTrafficPolicy: Local, trafficDistribution: PreferClose",
            lb(vec![Scope::Node], Mode::Strict, HealthPolicy::OnlyHealthy),
            pb::IpFamilies::Automatic,
        ),
        (
            "trafficDistribution: PreferClose",
            lb(zone.clone(), Mode::Failover, HealthPolicy::OnlyHealthy),
            pb::IpFamilies::Automatic,
        ),
        (
            "trafficDistribution: PreferSameNode, publishNotReadyAddresses: true",
            lb(
                vec![
                    Scope::Network,
                    Scope::Region,
                    Scope::Zone,
                    Scope::Subzone,
                    Scope::Node,
                ],
                Mode::Failover,
                HealthPolicy::AllowAll,
            ),
            pb::IpFamilies::Automatic,
        ),
        (
            "publishNotReadyAddresses: true",
            lb(vec![], Mode::UnspecifiedMode, HealthPolicy::AllowAll),
            pb::IpFamilies::Automatic,
        ),
    ];
    for (spec, want_lb, want_families) in cases {
        let (resources, _) = translate_yaml(&service_doc("n", "s", "", spec));
        let got = service(&resources, "n/s.n.svc.cluster.local");
        assert_eq!(got.load_balancing, want_lb, "{spec}");
        assert_eq!(got.ip_families, want_families as i32, "{spec}");
    }
    // The annotation stands in for trafficDistribution, on the Service or its namespace.
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: n, annotations: \
         {{networking.istio.io/traffic-distribution: PreferSameZone}}}}\n---\n{}",
        service_doc("n", "s", "", "")
    );
    let (resources, _) = translate_yaml(&text);
    let want = lb(zone, Mode::Failover, HealthPolicy::OnlyHealthy);
    assert_eq!(
        service(&resources, "n/s.n.svc.cluster.local").load_balancing,
        want
    );
}

#[test]
fn external_name_services_are_not_sent() {
    let (resources, _) = translate_yaml(&service_doc("n", "s", "", "type: ExternalName"));
    assert!(resources.addresses.is_empty());
}

/// The conformance world's waypoint: Gateway `payments/waypoint` for services, its pod and
/// its managed Service, plus a pod and a service to bind.
fn waypoint_world(gateway_labels: &str, listener: &str, extra: &str) -> String {
    format!(
        "{}{}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: waypoint, namespace: payments, labels: {{{gateway_labels}}}, \
         annotations: {{ambient.istio.io/waypoint-inbound-binding: PROXY/15088}}}}\n\
         spec: {{gatewayClassName: istio-waypoint, listeners: [{listener}]}}\n---\n\
         {}{}{}",
        namespace("payments", "istio.io/dataplane-mode: ambient"),
        pod(
            "payments",
            "waypoint-0",
            "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none",
            "10.0.0.100",
        ),
        service_doc(
            "payments",
            "waypoint",
            "gateway.istio.io/managed: istio.io-mesh-controller, istio.io/use-waypoint: waypoint",
            "clusterIP: 10.96.0.100, selector: {gateway.networking.k8s.io/gateway-name: waypoint}, ports: [{port: 15008}]",
        ),
        pod("payments", "api-0", "app: api", "10.0.0.1"),
        extra,
    )
}

const HBONE_LISTENER: &str = "{name: mesh, port: 15008, protocol: HBONE}";

fn hostname_waypoint(namespace: &str, hostname: &str) -> Option<pb::GatewayAddress> {
    Some(pb::GatewayAddress {
        destination: Some(Destination::Hostname(pb::NamespacedHostname {
            namespace: namespace.to_owned(),
            hostname: hostname.to_owned(),
        })),
        hbone_mtls_port: 15008,
    })
}

#[test]
fn waypoint_binding() {
    let api = |labels: &str| {
        service_doc(
            "payments",
            "api",
            labels,
            "clusterIP: 10.96.0.1, selector: {app: api}",
        )
    };
    let wp = hostname_waypoint("payments", "waypoint.payments.svc.cluster.local");
    let cases: Vec<(String, Option<pb::GatewayAddress>, &str)> = vec![
        (
            waypoint_world("", HBONE_LISTENER, &api("istio.io/use-waypoint: waypoint")),
            wp.clone(),
            "service label",
        ),
        (
            waypoint_world("", HBONE_LISTENER, &api("")),
            None,
            "no label",
        ),
        (
            waypoint_world(
                "",
                HBONE_LISTENER,
                &api("istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: other"),
            ),
            None,
            "no such gateway in the other namespace",
        ),
        (
            waypoint_world(
                "istio.io/waypoint-for: workload",
                HBONE_LISTENER,
                &api("istio.io/use-waypoint: waypoint"),
            ),
            None,
            "a workload waypoint takes no service traffic",
        ),
        (
            waypoint_world(
                "istio.io/waypoint-for: all",
                HBONE_LISTENER,
                &api("istio.io/use-waypoint: waypoint"),
            ),
            wp.clone(),
            "all",
        ),
        (
            waypoint_world(
                "",
                "{name: mesh, port: 15008, protocol: HTTP}",
                &api("istio.io/use-waypoint: waypoint"),
            ),
            None,
            "no HBONE listener",
        ),
    ];
    for (text, want, context) in cases {
        let (resources, _) = translate_yaml(&text);
        let got = &service(&resources, "payments/api.payments.svc.cluster.local").waypoint;
        assert_eq!(got, &want, "{context}");
        let own = &service(&resources, "payments/waypoint.payments.svc.cluster.local").waypoint;
        assert_eq!(
            own, &None,
            "{context}: the waypoint's own service never uses a waypoint"
        );
    }
}

#[test]
fn namespace_binding_admission_and_opt_out() {
    let other = |ns_labels: &str, svc_labels: &str, listener: &str| {
        waypoint_world(
            "",
            listener,
            &format!(
                "{}{}",
                namespace("other", ns_labels),
                service_doc("other", "s", svc_labels, "clusterIP: 10.96.0.2")
            ),
        )
    };
    let bound = "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: payments";
    let all =
        "{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}";
    let selected = "{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector, \
                    selector: {matchLabels: {team: pay}}}}}";
    let wp = hostname_waypoint("payments", "waypoint.payments.svc.cluster.local");
    let cases: Vec<(String, Option<pb::GatewayAddress>, &str)> = vec![
        (
            other(bound, "", HBONE_LISTENER),
            None,
            "Same admits only payments",
        ),
        (
            other(bound, "", all),
            wp.clone(),
            "All, via the namespace label",
        ),
        (
            other(bound, "istio.io/use-waypoint: none", all),
            None,
            "the service opts out",
        ),
        (
            other(&format!("{bound}, team: pay"), "", selected),
            wp.clone(),
            "Selector matches",
        ),
        (other(bound, "", selected), None, "Selector does not match"),
    ];
    for (text, want, context) in cases {
        let (resources, _) = translate_yaml(&text);
        let got = &service(&resources, "other/s.other.svc.cluster.local").waypoint;
        assert_eq!(got, &want, "{context}");
    }
}

#[test]
fn waypoint_status_address_and_pods() {
    let status = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ip-wp, namespace: payments}\n\
                  spec: {gatewayClassName: istio-waypoint, listeners: [{name: m, port: 15008, protocol: HBONE}]}\n\
                  status: {addresses: [{value: 10.96.0.9}]}\n---\n";
    let workload_wp = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                       metadata: {name: wl-wp, namespace: payments, labels: {istio.io/waypoint-for: workload}}\n\
                       spec: {gatewayClassName: istio-waypoint, listeners: [{name: m, port: 15008, protocol: HBONE}]}\n\
                       status: {addresses: [{type: Hostname, value: wl.example}, {value: 10.96.0.8}]}\n---\n";
    let text = format!(
        "{}{status}{workload_wp}{}{}",
        waypoint_world("", HBONE_LISTENER, ""),
        service_doc(
            "payments",
            "s",
            "istio.io/use-waypoint: ip-wp",
            "clusterIP: 10.96.0.3"
        ),
        pod(
            "payments",
            "bound-0",
            "istio.io/use-waypoint: wl-wp",
            "10.0.0.3"
        ),
    );
    let (resources, _) = translate_yaml(&text);
    let ip_form = Some(pb::GatewayAddress {
        destination: Some(Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 9],
            length: None,
        })),
        hbone_mtls_port: 15008,
    });
    assert_eq!(
        service(&resources, "payments/s.payments.svc.cluster.local").waypoint,
        ip_form
    );
    let bound = workload(&resources, "Kubernetes//Pod/payments/bound-0");
    assert_eq!(
        bound.waypoint,
        hostname_waypoint("payments", "wl.example"),
        "a Hostname status wins"
    );
    let waypoint_pod = workload(&resources, "Kubernetes//Pod/payments/waypoint-0");
    assert_eq!(waypoint_pod.waypoint, None);
    assert_eq!(
        waypoint_pod.tunnel_protocol,
        pb::TunnelProtocol::None as i32
    );
    assert_eq!(
        waypoint_pod.application_tunnel,
        Some(pb::ApplicationTunnel {
            protocol: pb::application_tunnel::Protocol::Proxy as i32,
            port: 15088,
        })
    );
    let api = workload(&resources, "Kubernetes//Pod/payments/api-0");
    assert_eq!(
        api.waypoint, None,
        "a service waypoint is not a workload waypoint"
    );
}

#[test]
fn ingress_use_waypoint_from_service_or_namespace() {
    let text = format!(
        "{}{}{}",
        namespace("n", "istio.io/ingress-use-waypoint: 'true'"),
        service_doc("n", "a", "", ""),
        service_doc("n", "b", "istio.io/ingress-use-waypoint: 'false'", ""),
    );
    let (resources, _) = translate_yaml(&text);
    assert!(service(&resources, "n/a.n.svc.cluster.local").ingress_use_waypoint);
    assert!(!service(&resources, "n/b.n.svc.cluster.local").ingress_use_waypoint);
}
