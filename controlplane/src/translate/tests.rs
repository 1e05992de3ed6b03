//! Tests of the translation: one table per rule of xds.md §4 (`workloads`, `services`) and §5
//! (`authz`, `peer_authn`), and the engine-level run of the shared conformance cases
//! (`conformance`).

#![allow(clippy::unwrap_used)]

mod authz;
mod conformance;
mod peer_authn;
mod services;
mod waypoint_policy;
mod workloads;

use xds_proto::istio::security as sec;
use xds_proto::istio::workload as pb;

use super::{Note, Options, Resources, translate_with_notes};
use crate::k8s::Cluster;

fn translate_yaml_with(text: &str, options: &Options) -> (Resources, Vec<Note>) {
    let cluster = Cluster::parse("test.yaml", text).unwrap();
    translate_with_notes(&cluster, options)
}

fn translate_yaml(text: &str) -> (Resources, Vec<Note>) {
    translate_yaml_with(text, &Options::default())
}

/// A Namespace document; `labels` is the inside of a YAML flow mapping.
fn namespace(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n"
    )
}

/// The ambient namespace `n`.
fn ambient_namespace() -> String {
    namespace("n", "istio.io/dataplane-mode: ambient")
}

/// A running, ready pod `ns/name` at `ip`, service account `sa`, container port `http` 8080.
fn pod(namespace: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}\n\
         spec:\n  serviceAccountName: sa\n  nodeName: node-a\n\
         \x20 containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]\n\
         status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
    )
}

fn workload<'r>(resources: &'r Resources, uid: &str) -> &'r pb::Workload {
    match resources.addresses.get(uid).and_then(|a| a.r#type.as_ref()) {
        Some(pb::address::Type::Workload(workload)) => workload,
        other => panic!("{uid}: not a workload: {other:?}"),
    }
}

fn service<'r>(resources: &'r Resources, key: &str) -> &'r pb::Service {
    match resources.addresses.get(key).and_then(|a| a.r#type.as_ref()) {
        Some(pb::address::Type::Service(service)) => service,
        other => panic!("{key}: not a service: {other:?}"),
    }
}

fn authorization<'r>(resources: &'r Resources, key: &str) -> &'r sec::Authorization {
    resources.authorizations.get(key).unwrap_or_else(|| {
        panic!(
            "{key} not sent; sent: {:?}",
            resources.authorizations.keys()
        )
    })
}

#[test]
fn default_options_are_istiods_defaults() {
    let options = Options::default();
    assert_eq!(options.cluster_id, "Kubernetes");
    assert_eq!(options.trust_domain.as_str(), "cluster.local");
    assert_eq!(options.domain_suffix, "cluster.local");
    assert_eq!(options.root_namespace, "istio-system");
}

/// The shared conformance folder.
fn shared_authz_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/authz")
}

#[test]
fn output_is_deterministic_whatever_the_document_order() {
    use prost::Message;
    let world = std::fs::read_to_string(shared_authz_dir().join("world.yaml")).unwrap();
    let mut documents: Vec<&str> = world.split("\n---\n").collect();
    let (forward, _) = translate_yaml(&world);
    documents.reverse();
    let (backward, _) = translate_yaml(&documents.join("\n---\n"));
    assert_eq!(forward, backward);
    let encoded = |r: &Resources| -> Vec<(String, Vec<u8>)> {
        r.addresses
            .iter()
            .map(|(k, v)| (k.clone(), v.encode_to_vec()))
            .chain(
                r.authorizations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.encode_to_vec())),
            )
            .collect()
    };
    assert_eq!(encoded(&forward), encoded(&backward));
    assert_eq!(encoded(&forward), encoded(&translate_yaml(&world).0));
    assert_eq!(
        forward.addresses.len(),
        8 + 4,
        "every pod with an IP and every service"
    );
}
