//! Tests for `state`: file parsing and validation, indexes and routing, the directory and its
//! file watcher. Shared fixtures live here.

mod directory;
mod local;
mod resolve;

use super::{LocalConfig, Snapshot};

/// Upstream ztunnel's local config example, verbatim.
const UPSTREAM_EXAMPLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE          # HBONE | TCP
  node: local
  network: ""
  services:                # required by upstream ({} when empty): "ns/hostname" -> {servicePort: targetPort}
    "default/example.com":
      80: 8080
policies:
  - action: Allow
    rules:
    - - - notDestinationPorts: [9999]
    name: deny-9999
    namespace: default
    scope: Namespace
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
    - /127.10.0.1          # "network/ip"
  ports:
    80: 8080
  subjectAltNames:
   - spiffe://cluster.local/ns/default/sa/local
"#;

fn parse(yaml: &str) -> LocalConfig {
    yaml.parse()
        .unwrap_or_else(|e| panic!("fixture must parse: {e}\n{yaml}"))
}

fn snapshot(yaml: &str) -> Snapshot {
    parse(yaml).into_snapshot()
}
