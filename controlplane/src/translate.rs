//! Computes, from a [`Cluster`], the resources istiod would send ztunnel: `istio.workload.Address`
//! (one per pod with an IP and per non-ExternalName Service, xds.md §4) and
//! `istio.security.Authorization` (AuthorizationPolicies and the PeerAuthentication-derived
//! policies, xds.md §5, policy.md), and for waypoints the project's own `mesh.waypoint.v1`
//! L7Authorization and JwtAuthentication (policies with `targetRefs`), keyed by the resource names istiod uses (xds.md §2.7).
//!
//! Pure and deterministic: the same cluster gives the same resources, field for field and in the
//! same order (every collection is sorted), so a version derived from the encoded bytes changes
//! only when the content does.
//!
//! Choices where the specification leaves one, or where istiod's behaviour cannot apply:
//! - Enrollment: istiod marks a pod HBONE only once istio-cni has annotated it
//!   `ambient.istio.io/redirection: enabled`. There is no CNI behind a file, so the enablement
//!   rule istio-cni applies (ambient namespace or pod label, pod not labelled `none`, no host
//!   network, no sidecar) is taken as "capture complete" (xds.md §4.2).
//! - Pods: every pod that has an IP and has not finished (phase Succeeded/Failed) is sent, as
//!   istiod does, so a Pending pod that already has an IP is sent too.
//! - AUDIT and CUSTOM policies are not sent, as istiod does not send them: AUDIT never changes
//!   a verdict, and a CUSTOM provider is consulted (failing closed, policy.md §7) only by the
//!   waypoint.
//! - Dry-run policies are always sent with `dry_run` set, as istiod does with
//!   `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true` (policy.md §5.4).
//! - PeerAuthentication: a port declared STRICT refuses plaintext in every combination
//!   (policy.md §7; the `peer_authn` module names the two cases where istiod's output accepts
//!   plaintext the YAML refuses).
//! - Not modelled: Nodes (so no `locality`), EndpointSlices of selector-less Services,
//!   WorkloadEntry/ServiceEntry, GatewayClass objects (a Gateway without an
//!   `istio.io/waypoint-for` label serves `service` traffic, the `istio-waypoint` class default),
//!   canary (weighted) waypoints, and the implicit waypoint ALLOW (off by default in istiod).

mod authz;
mod peer_authn;
mod services;
mod waypoint_policy;
mod waypoints;
mod workloads;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use mesh::identity::TrustDomain;
use xds_proto::istio::security::Authorization;
use xds_proto::istio::workload::Address;
use xds_proto::mesh::waypoint::v1::{JwtAuthentication, L7Authorization};

use crate::k8s::{AuthorizationAction, Cluster, ObjectRef};

/// Cluster id used in workload uids and `cluster_id` when none is configured (istiod
/// `CLUSTER_ID`).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Mesh trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// DNS suffix of service hostnames (`<name>.<ns>.svc.<suffix>`).
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// Namespace whose policies apply mesh-wide (MeshConfig `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The mesh-wide settings translation depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Cluster id: the first part of workload uids, and `Workload.cluster_id`.
    pub cluster_id: String,
    /// Mesh trust domain; workload identities are `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub trust_domain: TrustDomain,
    /// DNS suffix of service hostnames.
    pub domain_suffix: String,
    /// Root namespace: its policies apply to the whole mesh.
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            // Not input: the constant is lower-case letters and a dot (tested in `tests`).
            trust_domain: TrustDomain::parse(DEFAULT_TRUST_DOMAIN)
                .expect("DEFAULT_TRUST_DOMAIN is a valid trust domain"),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.to_owned(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

/// The resources for ztunnel, keyed by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Workloads by uid, Services by `<namespace>/<hostname>`.
    pub addresses: BTreeMap<String, Address>,
    /// Policies by `<namespace>/<name>`.
    pub authorizations: BTreeMap<String, Authorization>,
    /// Waypoint (targetRefs) AuthorizationPolicies by `<namespace>/<name>`.
    pub l7_authorizations: BTreeMap<String, L7Authorization>,
    /// Waypoint (targetRefs) RequestAuthentications by `<namespace>/<name>`.
    pub jwt_authentications: BTreeMap<String, JwtAuthentication>,
}

/// Something istiod would report in an object's status: a policy not sent to ztunnel, or
/// sent with parts it cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The object concerned.
    pub object: ObjectRef,
    /// What happened.
    pub kind: NoteKind,
}

/// What a [`Note`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteKind {
    /// A policy with `targetRefs`: enforced by a waypoint, never sent to ztunnel.
    WaypointOnly,
    /// An action ztunnel does not support (AUDIT, CUSTOM): not sent.
    UnsupportedAction(AuthorizationAction),
    /// ALLOW rules using fields ztunnel cannot evaluate were dropped whole, so the policy
    /// allows less than written (policy.md §2.5).
    AllowRulesDropped {
        /// Indices of the dropped rules.
        rules: Vec<usize>,
        /// The fields (or condition keys) found.
        found: Vec<String>,
    },
    /// DENY rules were sent without the fields ztunnel cannot evaluate (policy.md §2.5).
    DenyFieldsRemoved {
        /// The fields (or condition keys) found.
        found: Vec<String>,
        /// Whether no rule of the policy can fire any more at ztunnel.
        no_effect: bool,
    },
    /// A `targetRefs` entry no waypoint honours (a ServiceEntry, a GatewayClass outside the
    /// root namespace, another kind): ignored.
    UnsupportedTarget(String),
    /// A CUSTOM policy bound to a waypoint: no external authorizer is reachable from it, so
    /// the policy is enforced as DENY (fail closed, policy.md §7).
    CustomFailsClosed,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = &self.object;
        match &self.kind {
            NoteKind::WaypointOnly => {
                write!(
                    f,
                    "{object}: has targetRefs; enforced by waypoints, not ztunnel"
                )
            }
            NoteKind::UnsupportedAction(action) => write!(
                f,
                "{object}: ztunnel does not support the {} action; not sent",
                action.as_str()
            ),
            NoteKind::AllowRulesDropped { rules, found } => write!(
                f,
                "{object}: ztunnel does not support HTTP attributes (found: {}); rules {rules:?} \
                 dropped, so it allows less",
                found.join(", ")
            ),
            NoteKind::UnsupportedTarget(target) => {
                write!(
                    f,
                    "{object}: targetRefs entry {target} is not supported; ignored"
                )
            }
            NoteKind::CustomFailsClosed => write!(
                f,
                "{object}: CUSTOM at a waypoint has no reachable provider; matching requests are \
                 denied"
            ),
            NoteKind::DenyFieldsRemoved { found, no_effect } => {
                let outcome = if *no_effect {
                    "has no enforceable rules at ztunnel and will have no effect"
                } else {
                    "enforced without the HTTP attributes, so it denies more"
                };
                write!(
                    f,
                    "{object}: ztunnel does not support HTTP attributes (found: {}); {outcome}",
                    found.join(", ")
                )
            }
        }
    }
}

/// Translates `cluster`, logging each [`Note`] (istiod's status messages) at info level.
pub fn translate(cluster: &Cluster, options: &Options) -> Resources {
    let (resources, notes) = translate_with_notes(cluster, options);
    for note in &notes {
        tracing::info!(object = %note.object, detail = %note, "not enforced as written at ztunnel");
    }
    resources
}

/// Translates `cluster` and returns the [`Note`]s instead of logging them.
pub fn translate_with_notes(cluster: &Cluster, options: &Options) -> (Resources, Vec<Note>) {
    let mut notes = Vec::new();
    let policies = authz::convert_all(cluster, &options.root_namespace, &mut notes);
    let peer_authn = peer_authn::PeerAuthn::new(cluster, &options.root_namespace);
    let mut authorizations = policies.resources;
    for policy in peer_authn.authorizations() {
        authorizations.insert(format!("{}/{}", policy.namespace, policy.name), policy);
    }
    let context = workloads::Context {
        options,
        cluster,
        services: services::ServiceIndex::new(cluster, &options.domain_suffix),
        waypoints: waypoints::Waypoints::new(cluster, &options.domain_suffix),
        selector_policies: &policies.selector_policies,
        peer_authn: &peer_authn,
    };
    let mut addresses = BTreeMap::new();
    for pod in cluster.pods() {
        if let Some((uid, workload)) = workloads::workload(pod, &context) {
            addresses.insert(uid, workload);
        }
    }
    for service in cluster.services() {
        if let Some((key, address)) = services::service(service, &context) {
            addresses.insert(key, address);
        }
    }
    let waypoint = waypoint_policy::convert_all(cluster, &options.root_namespace, &mut notes);
    let resources = Resources {
        addresses,
        authorizations,
        l7_authorizations: waypoint.authorizations,
        jwt_authentications: waypoint.authentications,
    };
    (resources, notes)
}
