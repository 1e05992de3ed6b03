#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::IpAddr;
use std::time::Duration;

use mesh::identity::SpiffeId;
use mesh::policy::PolicyKey;

use super::*;
use crate::state::LocalConfig;

const API_UID: &str = "Kubernetes//Pod/shop/api";

const WORKLOADS: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/web
  name: web
  namespace: shop
  serviceAccount: web
  workloadIps: ["10.0.0.2"]
  protocol: HBONE
  node: a
  services: {}
- uid: Kubernetes//Pod/shop/other
  name: other
  namespace: shop
  serviceAccount: other
  workloadIps: ["10.0.0.4"]
  protocol: HBONE
  node: a
  services: {}
"#;

const API: &str = r#"- uid: Kubernetes//Pod/shop/api
  name: api
  namespace: shop
  serviceAccount: api
  workloadIps: ["10.0.0.3"]
  protocol: HBONE
  node: a
  services: {}
"#;

const DENY_WEB: &str = r#"- name: deny-web
  namespace: shop
  scope: Namespace
  action: Deny
  rules:
  - - - principals: ["cluster.local/ns/shop/sa/web"]
"#;

const DRY_RUN_DENY_ALL: &str = r#"- name: would-deny-all
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: true
  rules:
  - - - principals: ["*"]
"#;

const ALLOW_OTHER: &str = r#"- name: only-other
  namespace: shop
  scope: Namespace
  action: Allow
  rules:
  - - - principals: ["cluster.local/ns/shop/sa/other"]
"#;

const STRICT: &str = r#"- name: strict
  namespace: shop
  scope: Namespace
  action: Deny
  rules:
  - - - notPrincipals: ["*"]
"#;

/// The config with api present (or not) and these policies.
fn snapshot(with_api: bool, policies: &[&str]) -> Snapshot {
    let mut yaml = WORKLOADS.to_owned();
    if with_api {
        yaml.push_str(API);
    }
    yaml.push_str("services: []\npolicies:");
    if policies.is_empty() {
        yaml.push_str(" []\n");
    } else {
        yaml.push('\n');
        for policy in policies {
            yaml.push_str(policy);
        }
    }
    LocalConfig::parse(&yaml, "test").unwrap().into_snapshot()
}

fn attrs(source_ip: &str, sa: Option<&str>) -> ConnectionAttrs {
    ConnectionAttrs {
        source_identity: sa
            .map(|sa| SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).unwrap()),
        source_ip: source_ip.parse().unwrap(),
        destination_ip: "10.0.0.3".parse::<IpAddr>().unwrap(),
        destination_port: 8080,
    }
}

/// A directory at generation 0 without policies, and api's workload in it.
fn directory() -> (Arc<Directory>, Arc<Workload>) {
    let directory = Arc::new(Directory::new(snapshot(true, &[])));
    let api = directory.load().workload(API_UID).unwrap();
    (directory, api)
}

fn register(
    tracked: &Tracked,
    directory: &Directory,
    api: &Arc<Workload>,
    attrs: ConnectionAttrs,
    protocol: Protocol,
) -> Registration {
    tracked
        .register(directory, 0, Arc::clone(api), attrs, protocol)
        .unwrap()
}

#[tokio::test]
async fn a_new_deny_closes_only_the_connections_it_denies() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    let other = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.4", Some("other")),
        Protocol::Hbone,
    );
    assert_eq!(tracked.len(), 2);

    directory.replace(snapshot(true, &[DENY_WEB]));
    assert_eq!(tracked.recheck(&directory.load()).await, 1);
    assert!(web.is_closed(), "web's tunnel is denied now");
    assert!(!other.is_closed(), "other is still allowed");

    // A second pass over the same state closes nothing more, and logs nothing twice.
    assert_eq!(tracked.recheck(&directory.load()).await, 0);
    assert_eq!(tracked.len(), 2, "entries stay until their connection ends");
    drop(web);
    assert_eq!(tracked.len(), 1);
    drop(other);
    assert_eq!(tracked.len(), 0, "closed connections leave nothing behind");
}

#[tokio::test]
async fn a_dry_run_policy_never_closes() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    directory.replace(snapshot(true, &[DRY_RUN_DENY_ALL]));
    assert_eq!(tracked.recheck(&directory.load()).await, 0);
    assert!(!web.is_closed());
}

#[tokio::test]
async fn an_allow_set_that_no_longer_matches_closes() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    let other = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.4", Some("other")),
        Protocol::Hbone,
    );
    directory.replace(snapshot(true, &[ALLOW_OTHER]));
    assert_eq!(tracked.recheck(&directory.load()).await, 1);
    assert!(web.is_closed());
    assert!(!other.is_closed());
}

#[tokio::test]
async fn strict_closes_plaintext_and_keeps_mtls() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let plaintext = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.9", None),
        Protocol::Plaintext,
    );
    let tunnel = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    directory.replace(snapshot(true, &[STRICT]));
    assert_eq!(tracked.recheck(&directory.load()).await, 1);
    assert!(plaintext.is_closed());
    assert!(!tunnel.is_closed());
}

#[tokio::test]
async fn a_destination_gone_from_the_config_closes_its_connections() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    directory.replace(snapshot(false, &[]));
    assert_eq!(tracked.recheck(&directory.load()).await, 1);
    assert!(web.is_closed());
}

#[tokio::test]
async fn a_connection_authorized_before_a_change_is_checked_as_it_registers() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    // Authorized at generation 0; the DENY arrived (and its pass ran) before it registered.
    directory.replace(snapshot(true, &[DENY_WEB]));
    assert_eq!(tracked.recheck(&directory.load()).await, 0);
    let refused = tracked.register(
        &directory,
        0,
        Arc::clone(&api),
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    assert_eq!(
        refused.unwrap_err(),
        CloseReason::Denied(DenyReason::DeniedBy(PolicyKey::new("shop", "deny-web")))
    );
    assert_eq!(tracked.len(), 0, "a refused connection is not tracked");
    // Authorized on the same stale generation, a client the change still allows registers.
    let other = tracked.register(
        &directory,
        0,
        Arc::clone(&api),
        attrs("10.0.0.4", Some("other")),
        Protocol::Hbone,
    );
    assert!(!other.unwrap().is_closed());
}

#[tokio::test]
async fn the_follower_closes_on_each_new_generation_and_stops_with_the_directory() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let follower = tokio::spawn(tracked.follow(&directory));
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    let other = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.4", Some("other")),
        Protocol::Hbone,
    );
    // A refused update changes nothing.
    directory.record_rejection(&"bad file");
    directory.replace(snapshot(true, &[DENY_WEB]));
    tokio::time::timeout(Duration::from_secs(10), web.closed())
        .await
        .expect("the follower closed web's connection");
    assert!(!other.is_closed());

    directory.replace(snapshot(false, &[]));
    tokio::time::timeout(Duration::from_secs(10), other.closed())
        .await
        .expect("the follower closed the connection to the removed workload");

    // The follower holds neither the directory nor the registry alive.
    drop(directory);
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower stops once the directory is gone")
        .unwrap();
}

#[tokio::test]
async fn a_closed_registration_stops_its_relay_at_once() {
    let (directory, api) = directory();
    let tracked = Tracked::new();
    let web = register(
        &tracked,
        &directory,
        &api,
        attrs("10.0.0.2", Some("web")),
        Protocol::Hbone,
    );
    // Two idle duplex pipes: the relay would wait forever.
    let (mut downstream, _client) = tokio::io::duplex(64);
    let (mut upstream, _app) = tokio::io::duplex(64);
    let relay = web.relay(&mut downstream, &mut upstream);
    directory.replace(snapshot(true, &[DENY_WEB]));
    let current = directory.load();
    let (ended, closed) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), relay),
        tracked.recheck(&current)
    );
    assert_eq!(closed, 1);
    assert!(ended.unwrap().is_none(), "the relay ended as closed");
}

#[test]
fn close_reasons_name_the_policy_or_the_workload() {
    let denied = CloseReason::Denied(DenyReason::DeniedBy(PolicyKey::new("payments", "deny-web")));
    assert_eq!(
        denied.to_string(),
        "policy payments/deny-web no longer allows it"
    );
    let no_allow = CloseReason::Denied(DenyReason::NoAllowMatched {
        allow_policies: vec![PolicyKey::new("payments", "only-web")],
    });
    assert_eq!(
        no_allow.to_string(),
        "allow policies exist, but none allows it any more (checked payments/only-web)"
    );
    let gone = CloseReason::WorkloadGone(API_UID.to_owned());
    assert_eq!(
        gone.to_string(),
        "destination workload Kubernetes//Pod/shop/api is no longer in the config"
    );
    let dst = "10.0.0.3:8080".parse().unwrap();
    assert!(matches!(
        denied.into_error(dst),
        ConnectionError::Denied(DenyReason::DeniedBy(_))
    ));
    assert!(matches!(
        gone.into_error(dst),
        ConnectionError::UnknownDestination(addr) if addr == dst
    ));
}
