//! The known policies, and which of them apply to a destination workload (policy.md §2.2,
//! xds.md §5.5).
//!
//! Keyed by resource name in a sorted map so that the applicable list, and therefore the DENY
//! policy a denial names, is the same on every run and every node.

use std::collections::BTreeMap;

use super::model::{Authorization, PolicyKey, Scope};

/// Every known policy, keyed by `<namespace>/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    by_key: BTreeMap<PolicyKey, Authorization>,
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a policy under its own key; returns the policy it replaced.
    pub fn insert(&mut self, policy: Authorization) -> Option<Authorization> {
        self.by_key.insert(policy.key(), policy)
    }

    /// Removes the policy with resource name `key` (`<namespace>/<name>`).
    pub fn remove(&mut self, key: &str) -> Option<Authorization> {
        self.by_key.remove(key)
    }

    /// The policy with resource name `key`.
    pub fn get(&self, key: &str) -> Option<&Authorization> {
        self.by_key.get(key)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the set holds no policy.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// All policies, by key.
    pub fn iter(&self) -> impl Iterator<Item = &Authorization> {
        self.by_key.values()
    }
}

/// The policies that apply to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable<'a> {
    /// Applicable policies, each once, sorted by key.
    pub policies: Vec<&'a Authorization>,
    /// Names the workload lists that are not in the set (transient while xDS catches up); the
    /// caller should warn.
    pub unknown: Vec<String>,
}

/// Selects the policies for a workload in `workload_namespace` that lists
/// `workload_policy_names`: every GLOBAL policy, every NAMESPACE policy of that namespace, and
/// every listed policy whatever its scope (the control plane decides what to list).
pub fn applicable<'a>(
    all: &'a PolicySet,
    workload_namespace: &str,
    workload_policy_names: &[String],
) -> Applicable<'a> {
    let mut selected: BTreeMap<&'a PolicyKey, &'a Authorization> = all
        .by_key
        .iter()
        .filter(|(_, policy)| match policy.scope {
            Scope::Global => true,
            Scope::Namespace => policy.namespace == workload_namespace,
            Scope::WorkloadSelector | Scope::Targeted => false,
        })
        .collect();
    let mut unknown = Vec::new();
    for name in workload_policy_names {
        match all.by_key.get_key_value(name.as_str()) {
            Some((key, policy)) => {
                selected.insert(key, policy);
            }
            None => unknown.push(name.clone()),
        }
    }
    Applicable {
        policies: selected.into_values().collect(),
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Action;

    fn policy(namespace: &str, name: &str, scope: Scope) -> Authorization {
        Authorization {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action: Action::Allow,
            rules: Vec::new(),
            dry_run: false,
        }
    }

    fn set() -> PolicySet {
        let mut set = PolicySet::new();
        for p in [
            policy("istio-system", "mesh-wide", Scope::Global),
            policy("other", "odd-global", Scope::Global),
            policy("default", "ns-wide", Scope::Namespace),
            policy("prod", "ns-wide", Scope::Namespace),
            policy("default", "selected", Scope::WorkloadSelector),
            policy(
                "istio-system",
                "istio_converted_static_strict",
                Scope::WorkloadSelector,
            ),
        ] {
            assert_eq!(set.insert(p), None);
        }
        set
    }

    fn keys(applicable: &Applicable<'_>) -> Vec<String> {
        applicable
            .policies
            .iter()
            .map(|p| p.key().to_string())
            .collect()
    }

    struct Case {
        namespace: &'static str,
        listed: &'static [&'static str],
        want: &'static [&'static str],
        unknown: &'static [&'static str],
    }

    #[test]
    fn selects_global_namespace_and_listed() {
        let set = set();
        let cases = [
            Case {
                namespace: "default",
                listed: &[],
                want: &[
                    "default/ns-wide",
                    "istio-system/mesh-wide",
                    "other/odd-global",
                ],
                unknown: &[],
            },
            Case {
                namespace: "prod",
                listed: &[
                    "default/selected",
                    "istio-system/istio_converted_static_strict",
                ],
                want: &[
                    "default/selected",
                    "istio-system/istio_converted_static_strict",
                    "istio-system/mesh-wide",
                    "other/odd-global",
                    "prod/ns-wide",
                ],
                unknown: &[],
            },
            // Listed twice, or listed while already applying by scope: still evaluated once.
            Case {
                namespace: "default",
                listed: &["default/ns-wide", "default/selected", "default/selected"],
                want: &[
                    "default/ns-wide",
                    "default/selected",
                    "istio-system/mesh-wide",
                    "other/odd-global",
                ],
                unknown: &[],
            },
            // Unknown names (not yet received, or not a `ns/name`) are returned for a warning.
            Case {
                namespace: "empty",
                listed: &["default/gone", "selected"],
                want: &["istio-system/mesh-wide", "other/odd-global"],
                unknown: &["default/gone", "selected"],
            },
            // A listed NAMESPACE policy of another namespace applies: the list is authoritative.
            Case {
                namespace: "default",
                listed: &["prod/ns-wide"],
                want: &[
                    "default/ns-wide",
                    "istio-system/mesh-wide",
                    "other/odd-global",
                    "prod/ns-wide",
                ],
                unknown: &[],
            },
        ];
        for case in cases {
            let listed: Vec<String> = case.listed.iter().map(|s| (*s).to_owned()).collect();
            let got = applicable(&set, case.namespace, &listed);
            let context = format!("namespace {}, listed {listed:?}", case.namespace);
            assert_eq!(keys(&got), case.want, "{context}");
            assert_eq!(got.unknown, case.unknown, "{context}");
        }
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut set = set();
        let before = set.len();
        let mut replacement = policy("default", "ns-wide", Scope::Namespace);
        replacement.action = Action::Deny;
        assert!(set.insert(replacement).is_some());
        assert_eq!(set.len(), before);
        assert_eq!(
            set.get("default/ns-wide").map(|p| p.action),
            Some(Action::Deny)
        );
        assert!(set.remove("default/ns-wide").is_some());
        assert!(set.remove("default/ns-wide").is_none());
        assert_eq!(set.len(), before - 1);
        assert!(!set.is_empty());
        assert!(PolicySet::new().is_empty());
    }
}
