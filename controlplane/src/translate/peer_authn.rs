//! PeerAuthentication → the DENY policies istiod sends ztunnel, and which of them each workload
//! lists (xds.md §5.6, policy.md §4).
//!
//! Plaintext is refused by a DENY on "no principal" (`not_principals: [presence]`, written ¬P).
//! One static policy, `<root>/istio_converted_static_strict`, is sent whenever any
//! PeerAuthentication exists and listed by every workload whose effective mode is STRICT; a
//! workload policy with `portLevelMtls` that changes the outcome becomes
//! `<ns>/converted_peer_authentication_<name>`, listed instead.
//!
//! Levels: mesh (root namespace, no selector), namespace (own namespace, no selector), workload
//! (own non-root namespace, selector matching the pod; root-namespace selectors are ignored).
//! Within a level the oldest `creationTimestamp` wins (absent counts as oldest, as Go's zero
//! time does), then the smaller name. `UNSET` inherits from the level above.
//!
//! Two deliberate differences from istiod, both where its output accepts plaintext that the
//! YAML refuses (policy.md §7):
//! - a STRICT port of a PERMISSIVE/DISABLE workload under a STRICT mesh policy, with no (or an
//!   UNSET) namespace policy: istiod's condition skips the port's rule and emits nothing; here
//!   the rule is emitted.
//! - a PERMISSIVE/DISABLE port of an UNSET workload whose STRICT mode comes from the mesh
//!   through an explicitly UNSET namespace policy: istiod lists the converted policy but
//!   builds it empty (not sent), so every port accepts plaintext; here the exemption is built
//!   as when the namespace policy is absent.
//!
//! Kept from istiod: a DISABLE port of an UNSET workload under a STRICT parent does not cause
//! the converted policy to be listed, so that port stays STRICT (refusing more, not less).

use std::collections::BTreeMap;

use xds_proto::istio::security as pb;
use xds_proto::istio::security::string_match::MatchType;

use crate::k8s::{Cluster, MtlsMode, PeerAuthentication, Pod, selects};

/// Name of the static STRICT policy, in the root namespace.
pub(super) const STATIC_STRICT_NAME: &str = "istio_converted_static_strict";
/// Prefix of a converted port-level policy's name.
pub(super) const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// The PeerAuthentications of a cluster, sorted into levels.
#[derive(Debug)]
pub(super) struct PeerAuthn<'a> {
    root_namespace: &'a str,
    any: bool,
    mesh: Option<&'a PeerAuthentication>,
    namespaces: BTreeMap<&'a str, &'a PeerAuthentication>,
    workload_level: Vec<&'a PeerAuthentication>,
}

/// The precedence key: oldest first, then by name.
fn age(policy: &PeerAuthentication) -> (Option<&crate::k8s::Timestamp>, &str) {
    (
        policy.meta.creation_timestamp.as_ref(),
        policy.meta.name.as_str(),
    )
}

fn keep_oldest<'a>(slot: &mut Option<&'a PeerAuthentication>, candidate: &'a PeerAuthentication) {
    if slot.is_none_or(|current| age(candidate) < age(current)) {
        *slot = Some(candidate);
    }
}

impl<'a> PeerAuthn<'a> {
    pub(super) fn new(cluster: &'a Cluster, root_namespace: &'a str) -> Self {
        let mut mesh = None;
        let mut namespaces: BTreeMap<&str, Option<&PeerAuthentication>> = BTreeMap::new();
        let mut workload_level = Vec::new();
        let mut any = false;
        for policy in cluster.peer_authentications() {
            any = true;
            let namespace = policy.meta.namespace.as_str();
            match (policy.has_workload_selector(), namespace == root_namespace) {
                (false, true) => keep_oldest(&mut mesh, policy),
                (false, false) => keep_oldest(namespaces.entry(namespace).or_default(), policy),
                (true, false) => workload_level.push(policy),
                // Selector policies in the root namespace are ignored (policy.md §4.1).
                (true, true) => {}
            }
        }
        Self {
            root_namespace,
            any,
            mesh,
            namespaces: namespaces
                .into_iter()
                .filter_map(|(ns, policy)| policy.map(|p| (ns, p)))
                .collect(),
            workload_level,
        }
    }

    fn namespace_mode(&self, namespace: &str) -> Option<MtlsMode> {
        self.namespaces.get(namespace).map(|p| p.mode)
    }

    /// Whether the mode a workload inherits from its namespace and the mesh is STRICT.
    fn parent_is_strict(&self, namespace: &str) -> bool {
        match self.namespace_mode(namespace) {
            Some(mode) if mode != MtlsMode::Unset => mode == MtlsMode::Strict,
            _ => self.mesh.map(|p| p.mode) == Some(MtlsMode::Strict),
        }
    }

    /// The policies to send: the static STRICT one (if any PeerAuthentication exists) and each
    /// converted port-level one.
    pub(super) fn authorizations(&self) -> Vec<pb::Authorization> {
        let mut out = Vec::new();
        if self.any {
            out.push(pb::Authorization {
                name: STATIC_STRICT_NAME.to_owned(),
                namespace: self.root_namespace.to_owned(),
                scope: pb::Scope::WorkloadSelector.into(),
                action: pb::Action::Deny.into(),
                rules: vec![pb::Rule {
                    clauses: vec![no_principal_clause()],
                }],
                dry_run: false,
                extensions: Vec::new(),
            });
        }
        out.extend(self.workload_level.iter().filter_map(|p| self.converted(p)));
        out
    }

    /// The converted form of a workload policy with port-level modes, if it has any rule.
    fn converted(&self, policy: &PeerAuthentication) -> Option<pb::Authorization> {
        if policy.port_level.is_empty() {
            return None;
        }
        let mode = policy.mode;
        let inherits_strict = mode == MtlsMode::Strict
            || (mode == MtlsMode::Unset && self.parent_is_strict(&policy.meta.namespace));
        let (mut rules, exemptions) = port_rules(policy, inherits_strict);
        let exempted = !exemptions.is_empty();
        let mut clauses = Vec::new();
        if mode == MtlsMode::Strict {
            clauses.push(no_principal_clause());
        }
        clauses.extend(exemptions);
        if mode == MtlsMode::Strict && !exempted {
            // Every port STRICT: the static policy says it all.
            return None;
        }
        if exempted && self.parent_is_strict(&policy.meta.namespace) {
            // The inherited STRICT mode, merged in so the static policy need not be listed.
            clauses.push(no_principal_clause());
        }
        if !clauses.is_empty() {
            rules.push(pb::Rule { clauses });
        }
        if rules.is_empty() {
            return None;
        }
        Some(pb::Authorization {
            name: format!("{CONVERTED_PREFIX}{}", policy.meta.name),
            namespace: policy.meta.namespace.clone(),
            scope: pb::Scope::WorkloadSelector.into(),
            action: pb::Action::Deny.into(),
            rules,
            dry_run: false,
            extensions: Vec::new(),
        })
    }

    /// The workload-level policy that applies to `pod`, if any.
    fn workload_policy(&self, pod: &Pod) -> Option<&'a PeerAuthentication> {
        let mut oldest = None;
        for policy in &self.workload_level {
            let selected = policy
                .selector
                .as_ref()
                .is_some_and(|selector| selects(selector, &pod.meta.labels));
            if policy.meta.namespace == pod.meta.namespace && selected {
                keep_oldest(&mut oldest, policy);
            }
        }
        oldest
    }

    /// The PeerAuthentication-derived policy names `pod` lists (sorted).
    pub(super) fn policy_names(&self, pod: &Pod) -> Vec<String> {
        let namespace = pod.meta.namespace.as_str();
        // The root namespace's own no-selector policy is the mesh policy, not a namespace one.
        let mut strict = self.parent_is_strict(namespace);
        let mut converted = None;
        if let Some(policy) = self.workload_policy(pod) {
            let has_port =
                |wanted: &[MtlsMode]| policy.port_level.values().any(|m| wanted.contains(m));
            let key = || {
                format!(
                    "{}/{CONVERTED_PREFIX}{}",
                    policy.meta.namespace, policy.meta.name
                )
            };
            match policy.mode {
                MtlsMode::Strict => {
                    strict = true;
                    if has_port(&[MtlsMode::Permissive, MtlsMode::Disable]) {
                        converted = Some(key());
                        strict = false;
                    }
                }
                MtlsMode::Permissive | MtlsMode::Disable => {
                    strict = false;
                    if has_port(&[MtlsMode::Strict]) {
                        converted = Some(key());
                    }
                }
                MtlsMode::Unset if strict => {
                    // istiod counts PERMISSIVE ports only here (see the module doc).
                    if has_port(&[MtlsMode::Permissive]) {
                        converted = Some(key());
                        strict = false;
                    }
                }
                MtlsMode::Unset => {
                    if has_port(&[MtlsMode::Strict]) {
                        converted = Some(key());
                    }
                }
            }
        }
        let mut names = Vec::new();
        if strict {
            names.push(format!("{}/{STATIC_STRICT_NAME}", self.root_namespace));
        }
        names.extend(converted);
        names.sort();
        names
    }
}

/// Per port: a rule refusing plaintext on each STRICT port the workload's own mode does not
/// already cover, and an exempting clause for each PERMISSIVE/DISABLE port of a workload that
/// is STRICT (itself or by inheritance).
fn port_rules(
    policy: &PeerAuthentication,
    inherits_strict: bool,
) -> (Vec<pb::Rule>, Vec<pb::Clause>) {
    let mut rules = Vec::new();
    let mut exemptions = Vec::new();
    for (port, port_mode) in &policy.port_level {
        let port = u32::from(*port);
        match port_mode {
            // Already refused by the workload's own STRICT mode.
            MtlsMode::Strict if inherits_strict => {}
            MtlsMode::Strict => rules.push(pb::Rule {
                clauses: vec![pb::Clause {
                    matches: vec![pb::Match {
                        not_principals: vec![presence()],
                        destination_ports: vec![port],
                        ..pb::Match::default()
                    }],
                }],
            }),
            MtlsMode::Permissive | MtlsMode::Disable if inherits_strict => {
                exemptions.push(pb::Clause {
                    matches: vec![pb::Match {
                        not_destination_ports: vec![port],
                        ..pb::Match::default()
                    }],
                });
            }
            // Not STRICT under a non-STRICT workload: nothing to refuse.
            MtlsMode::Permissive | MtlsMode::Disable | MtlsMode::Unset => {}
        }
    }
    (rules, exemptions)
}

fn presence() -> pb::StringMatch {
    pb::StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}

/// A clause matching connections without a peer identity (¬P).
fn no_principal_clause() -> pb::Clause {
    pb::Clause {
        matches: vec![pb::Match {
            not_principals: vec![presence()],
            ..pb::Match::default()
        }],
    }
}
