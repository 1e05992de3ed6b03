//! Pod → Workload (xds.md §4.1, §4.2, §4.5, §5.5).

use mesh::identity::TrustDomain;
use xds_proto::istio::workload as pb;

use super::super::Options;
use super::{ambient_namespace, namespace, pod, translate_yaml, translate_yaml_with, workload};

const UID: &str = "Kubernetes//Pod/n/p";

#[test]
fn enrollment_decides_the_tunnel_protocol() {
    let hbone = pb::TunnelProtocol::Hbone as i32;
    let none = pb::TunnelProtocol::None as i32;
    // (namespace labels, pod labels, pod annotations, hostNetwork) → (protocol, native)
    let cases: &[(&str, &str, &str, bool, i32, bool)] = &[
        (
            "istio.io/dataplane-mode: ambient",
            "",
            "",
            false,
            hbone,
            false,
        ),
        ("", "", "", false, none, false),
        (
            "",
            "istio.io/dataplane-mode: ambient",
            "",
            false,
            hbone,
            false,
        ),
        (
            "istio.io/dataplane-mode: ambient",
            "istio.io/dataplane-mode: none",
            "",
            false,
            none,
            false,
        ),
        (
            "istio.io/dataplane-mode: ambient",
            "",
            "",
            true,
            none,
            false,
        ),
        (
            "istio.io/dataplane-mode: ambient",
            "",
            "sidecar.istio.io/status: '{}'",
            false,
            none,
            false,
        ),
        // istio-cni's annotation is trusted as is, as istiod does.
        (
            "",
            "",
            "ambient.istio.io/redirection: enabled",
            false,
            hbone,
            false,
        ),
        (
            "",
            "networking.istio.io/tunnel: 'tcp,http'",
            "",
            false,
            hbone,
            true,
        ),
    ];
    for (ns_labels, pod_labels, annotations, host_network, protocol, native) in cases {
        let text = format!(
            "{}apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n, labels: {{{pod_labels}}}, \
             annotations: {{{annotations}}}}}\nspec: {{hostNetwork: {host_network}}}\n\
             status: {{podIP: 10.0.0.1, phase: Running}}\n",
            namespace("n", ns_labels)
        );
        let (resources, _) = translate_yaml(&text);
        let got = workload(&resources, UID);
        let context = format!(
            "ns {{{ns_labels}}} pod {{{pod_labels}}} {{{annotations}}} host {host_network}"
        );
        assert_eq!(got.tunnel_protocol, *protocol, "{context}");
        assert_eq!(got.native_tunnel, *native, "{context}");
        let mode = if *host_network {
            pb::NetworkMode::HostNetwork
        } else {
            pb::NetworkMode::Standard
        };
        assert_eq!(got.network_mode, mode as i32, "{context}");
    }
}

#[test]
fn only_live_pods_with_an_ip_are_sent() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: running, namespace: n}\nstatus: {podIP: 10.0.0.1, phase: Running}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: n}\nstatus: {podIP: 10.0.0.2, phase: Pending}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: n}\nstatus: {podIP: 10.0.0.3, phase: Succeeded}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: failed, namespace: n}\nstatus: {podIP: 10.0.0.4, phase: Failed}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: no-ip, namespace: n}\nstatus: {phase: Running}\n";
    let (resources, _) = translate_yaml(text);
    let uids: Vec<&str> = resources.addresses.keys().map(String::as_str).collect();
    // istiod sends every non-terminal pod with an IP, Pending ones included.
    assert_eq!(
        uids,
        ["Kubernetes//Pod/n/pending", "Kubernetes//Pod/n/running"]
    );
}

#[test]
fn identity_location_and_telemetry_fields() {
    let text = format!(
        "{}apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-7d4b9-x2x1\n  namespace: n\n\
         \x20 labels: {{app: web, version: v1, pod-template-hash: 7d4b9}}\n\
         \x20 ownerReferences: [{{kind: ReplicaSet, name: web-7d4b9, controller: true}}]\n\
         spec: {{nodeName: node-b}}\n\
         status: {{podIPs: [{{ip: 10.0.0.1}}, {{ip: 'fd00::1'}}], phase: Running, conditions: [{{type: Ready, status: 'True'}}]}}\n",
        ambient_namespace()
    );
    let (resources, _) = translate_yaml(&text);
    let got = workload(&resources, "Kubernetes//Pod/n/web-7d4b9-x2x1");
    let want = pb::Workload {
        uid: "Kubernetes//Pod/n/web-7d4b9-x2x1".to_owned(),
        name: "web-7d4b9-x2x1".to_owned(),
        namespace: "n".to_owned(),
        addresses: vec![
            vec![10, 0, 0, 1],
            "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
        ],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "default".to_owned(),
        node: "node-b".to_owned(),
        canonical_name: "web".to_owned(),
        canonical_revision: "v1".to_owned(),
        workload_type: pb::WorkloadType::Pod as i32,
        workload_name: "web".to_owned(),
        cluster_id: "Kubernetes".to_owned(),
        ..pb::Workload::default()
    };
    assert_eq!(got, &want);
}

#[test]
fn names_labels_and_status_fall_back_as_istiod_does() {
    let text = format!(
        "{}apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: n\n\
         \x20 labels: {{service.istio.io/workload-name: wl, app.kubernetes.io/name: k8s-name, app: app}}\n\
         \x20 deletionTimestamp: '2024-01-01T00:00:00Z'\n\
         status: {{podIP: 10.0.0.1, phase: Running, conditions: [{{type: Ready, status: 'True'}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\n  namespace: n\n\
         \x20 ownerReferences: [{{kind: Job, name: nightly-1, controller: true}}]\n\
         status: {{podIP: 10.0.0.2, phase: Running}}\n",
        ambient_namespace()
    );
    let (resources, _) = translate_yaml(&text);
    let p = workload(&resources, UID);
    assert_eq!(p.workload_name, "wl");
    assert_eq!(p.canonical_name, "k8s-name");
    assert_eq!(p.canonical_revision, "latest");
    assert_eq!(
        p.status,
        pb::WorkloadStatus::Unhealthy as i32,
        "being deleted"
    );
    let q = workload(&resources, "Kubernetes//Pod/n/q");
    assert_eq!(
        (q.workload_name.as_str(), q.canonical_name.as_str()),
        ("nightly-1", "nightly-1")
    );
    assert_eq!(q.status, pb::WorkloadStatus::Unhealthy as i32, "not Ready");
}

#[test]
fn cluster_id_and_trust_domain_are_parameters() {
    let options = Options {
        cluster_id: "east".to_owned(),
        trust_domain: TrustDomain::parse("example.org").unwrap(),
        ..Options::default()
    };
    let text = format!("{}{}", ambient_namespace(), pod("n", "p", "", "10.0.0.1"));
    let (resources, _) = translate_yaml_with(&text, &options);
    let got = workload(&resources, "east//Pod/n/p");
    assert_eq!(got.cluster_id, "east");
    assert_eq!(got.trust_domain, "example.org");
    let (resources, _) = translate_yaml(&text);
    assert_eq!(
        workload(&resources, UID).trust_domain,
        "",
        "cluster.local is left empty"
    );
}

#[test]
fn services_selecting_the_pod_give_its_port_map() {
    let text = format!(
        "{}{}{}{}\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: n}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}, {{port: 81, targetPort: grpc}}, {{port: 82}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: other, namespace: n}}\n\
         spec: {{selector: {{app: other}}, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: all, namespace: n}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: m}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n",
        ambient_namespace(),
        pod("n", "p", "app: web, tier: front", "10.0.0.1"),
        namespace("m", ""),
        pod("m", "q", "app: other", "10.0.0.2"),
    );
    let (resources, _) = translate_yaml(&text);
    let got = &workload(&resources, UID).services;
    let port = |service_port, target_port| pb::Port {
        service_port,
        target_port,
        app_protocol: 0,
    };
    let want = [(
        "n/web.n.svc.cluster.local".to_owned(),
        // The named `grpc` target is not a port of this pod: omitted for it.
        pb::PortList {
            ports: vec![port(80, 8080), port(82, 82)],
        },
    )]
    .into();
    assert_eq!(
        got, &want,
        "same namespace, selector ⊆ labels; a selector-less service has no endpoints"
    );
    assert!(
        workload(&resources, "Kubernetes//Pod/m/q")
            .services
            .is_empty()
    );
}

#[test]
fn selector_policies_of_the_namespace_and_root_are_listed() {
    let policy = |namespace: &str, name: &str, selector: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec: {{{selector}}}\n---\n"
        )
    };
    let text = [
        ambient_namespace(),
        pod("n", "p", "app: api, version: v1", "10.0.0.1"),
        policy("n", "z-match", "selector: {matchLabels: {app: api}}"),
        policy(
            "n",
            "a-match",
            "selector: {matchLabels: {app: api, version: v1}}",
        ),
        policy(
            "n",
            "mismatch",
            "selector: {matchLabels: {app: api, version: v2}}",
        ),
        policy("n", "namespace-wide", ""),
        policy("other", "elsewhere", "selector: {matchLabels: {app: api}}"),
        policy(
            "istio-system",
            "root-match",
            "selector: {matchLabels: {version: v1}}",
        ),
        policy("istio-system", "root-wide", ""),
        policy(
            "n",
            "waypoint-only",
            "targetRefs: [{kind: Service, name: api}]",
        ),
        policy(
            "n",
            "audit",
            "selector: {matchLabels: {app: api}}, action: AUDIT",
        ),
    ]
    .concat();
    let (resources, _) = translate_yaml(&text);
    assert_eq!(
        workload(&resources, UID).authorization_policies,
        ["istio-system/root-match", "n/a-match", "n/z-match"],
        "scoped policies apply by scope, unsent ones are never listed"
    );
}
