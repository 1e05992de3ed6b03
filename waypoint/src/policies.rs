//! The waypoint's policies from xDS (`mesh.waypoint.v1`): L7Authorization and
//! JwtAuthentication resources, validated on arrival (a bad one is NACKed with its reason and
//! the previous version keeps applying), then indexed by what they are bound to — this
//! waypoint's Gateway (everything it serves) or one Service (requests addressed to it).
//!
//! Requests read an immutable [`WaypointPolicies`] snapshot; a change swaps it whole, so one
//! request never sees half of an update.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use mesh::policy::{Authorization, PolicyTarget, TargetKind, TargetedPolicy};
use mesh::xds::{Delta, Rejection, XdsHandler};
use prost::Message;
use tracing::{debug, info};
use xds_proto::mesh::waypoint::v1 as pb;
use xds_proto::{JWT_AUTHENTICATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL};

use crate::authn::{Authenticator, JwtRules};

/// The class every waypoint Gateway has; root-namespace policies bound to it apply everywhere.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

/// Which Gateway this waypoint is, and the mesh's root namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    /// The Gateway's namespace (the waypoint pod's).
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    /// The root namespace (`istio-system` by default).
    pub root_namespace: String,
}

/// `(namespace, name)` of a Service.
pub type ServiceName = (String, String);

/// What applies to requests, by binding.
#[derive(Default)]
pub struct WaypointPolicies {
    gateway_authz: Vec<Authorization>,
    service_authz: HashMap<ServiceName, Vec<Authorization>>,
    gateway_jwt: Arc<JwtRules>,
    service_jwt: HashMap<ServiceName, Arc<JwtRules>>,
}

impl WaypointPolicies {
    /// The policies for a request to `service` (`None`: addressed to a workload): the Gateway's
    /// and the Service's.
    pub fn authorizations<'a>(
        &'a self,
        service: Option<&ServiceName>,
    ) -> impl Iterator<Item = &'a Authorization> + Clone {
        let by_service = service
            .and_then(|s| self.service_authz.get(s))
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.gateway_authz.iter().chain(by_service)
    }

    /// The JWT rules for a request to `service`: the Gateway's and the Service's together.
    pub fn jwt_rules(&self, service: Option<&ServiceName>) -> Arc<JwtRules> {
        service
            .and_then(|s| self.service_jwt.get(s))
            .unwrap_or(&self.gateway_jwt)
            .clone()
    }
}

/// Where the validated resources live and the current snapshot is published.
pub struct PolicyStore {
    gateway: GatewayRef,
    /// Remote JWKS of new rules are fetched as the rules arrive, not by the first request.
    authenticator: Option<Authenticator>,
    current: ArcSwap<WaypointPolicies>,
    resources: Mutex<Resources>,
}

#[derive(Default)]
struct Resources {
    authz: BTreeMap<String, TargetedPolicy>,
    authn: BTreeMap<String, (Vec<PolicyTarget>, Vec<pb::JwtRule>)>,
}

impl PolicyStore {
    /// An empty store for the waypoint of `gateway`; `authenticator` prefetches the remote
    /// keys of the rules it is given.
    pub fn new(gateway: GatewayRef, authenticator: Option<Authenticator>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            authenticator,
            current: ArcSwap::from_pointee(WaypointPolicies::default()),
            resources: Mutex::new(Resources::default()),
        })
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<WaypointPolicies> {
        self.current.load_full()
    }

    /// The xDS handler for one of the waypoint's types.
    pub fn handler(self: &Arc<Self>) -> Box<dyn XdsHandler> {
        Box::new(Feed(Arc::clone(self)))
    }

    /// Whether `target`, of a policy in `namespace`, is this waypoint's Gateway.
    fn binds_gateway(&self, namespace: &str, target: &PolicyTarget) -> bool {
        match target.kind {
            TargetKind::Gateway => {
                namespace == self.gateway.namespace && target.name == self.gateway.name
            }
            TargetKind::GatewayClass => {
                namespace == self.gateway.root_namespace && target.name == WAYPOINT_CLASS
            }
            TargetKind::Service => false,
        }
    }

    fn apply(&self, type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>> {
        let mut resources = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rejections = Vec::new();
        let authz = type_url == L7_AUTHORIZATION_TYPE_URL;
        for name in &delta.removed {
            if authz {
                resources.authz.remove(name);
            } else {
                resources.authn.remove(name);
            }
        }
        for added in delta.added {
            let bytes = added.resource.value.as_slice();
            let outcome = if authz {
                pb::L7Authorization::decode(bytes)
                    .map_err(|e| format!("not an L7Authorization: {e}"))
                    .and_then(|wire| TargetedPolicy::try_from(&wire).map_err(|e| e.to_string()))
                    .map(|policy| {
                        resources.authz.insert(added.name.clone(), policy);
                    })
            } else {
                decode_authn(bytes).map(|entry| {
                    resources.authn.insert(added.name.clone(), entry);
                })
            };
            match outcome {
                Ok(()) => debug!(name = added.name, type_url, "waypoint policy received"),
                Err(reason) => rejections.push(Rejection::new(added.name, reason)),
            }
        }
        match self.index(&resources) {
            Ok(policies) => {
                if let Some(authenticator) = &self.authenticator {
                    authenticator.prefetch(&policies.gateway_jwt);
                    for rules in policies.service_jwt.values() {
                        authenticator.prefetch(rules);
                    }
                }
                info!(
                    authorizations = resources.authz.len(),
                    authentications = resources.authn.len(),
                    "waypoint policies applied"
                );
                self.current.store(Arc::new(policies));
            }
            Err(rejection) => rejections.push(rejection),
        }
        if rejections.is_empty() {
            Ok(())
        } else {
            Err(rejections)
        }
    }

    fn index(&self, resources: &Resources) -> Result<WaypointPolicies, Rejection> {
        let mut out = WaypointPolicies::default();
        for policy in resources.authz.values() {
            let namespace = &policy.authorization.namespace;
            for target in &policy.targets {
                if self.binds_gateway(namespace, target) {
                    out.gateway_authz.push(policy.authorization.clone());
                } else if target.kind == TargetKind::Service {
                    out.service_authz
                        .entry((namespace.clone(), target.name.clone()))
                        .or_default()
                        .push(policy.authorization.clone());
                }
            }
        }
        let mut gateway_rules = Vec::new();
        let mut service_rules: HashMap<ServiceName, Vec<pb::JwtRule>> = HashMap::new();
        for (name, (targets, rules)) in &resources.authn {
            let namespace = name.split_once('/').map_or("", |(ns, _)| ns);
            for target in targets {
                if self.binds_gateway(namespace, target) {
                    gateway_rules.extend(rules.iter().cloned());
                } else if target.kind == TargetKind::Service {
                    service_rules
                        .entry((namespace.to_owned(), target.name.clone()))
                        .or_default()
                        .extend(rules.iter().cloned());
                }
            }
        }
        let build = |rules: &[pb::JwtRule]| {
            JwtRules::from_xds(rules)
                .map(Arc::new)
                .map_err(|e| Rejection::new("jwt rules", mesh::errors::chain(&e)))
        };
        out.gateway_jwt = build(&gateway_rules)?;
        for (service, mut rules) in service_rules {
            rules.extend(gateway_rules.iter().cloned());
            out.service_jwt.insert(service, build(&rules)?);
        }
        Ok(out)
    }
}

fn decode_authn(bytes: &[u8]) -> Result<(Vec<PolicyTarget>, Vec<pb::JwtRule>), String> {
    let wire = pb::JwtAuthentication::decode(bytes)
        .map_err(|e| format!("not a JwtAuthentication: {e}"))?;
    // Validated alone so the NACK names this resource, not the merged set.
    JwtRules::from_xds(&wire.rules).map_err(|e| mesh::errors::chain(&e))?;
    let targets = wire
        .targets
        .iter()
        .filter_map(|t| {
            let kind = match pb::policy_target::Kind::try_from(t.kind) {
                Ok(pb::policy_target::Kind::Gateway) => TargetKind::Gateway,
                Ok(pb::policy_target::Kind::Service) => TargetKind::Service,
                Ok(pb::policy_target::Kind::GatewayClass) => TargetKind::GatewayClass,
                _ => return None,
            };
            Some(PolicyTarget {
                kind,
                name: t.name.clone(),
            })
        })
        .collect();
    Ok((targets, wire.rules))
}

struct Feed(Arc<PolicyStore>);

impl XdsHandler for Feed {
    fn apply(&mut self, type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>> {
        debug_assert!(
            type_url == L7_AUTHORIZATION_TYPE_URL || type_url == JWT_AUTHENTICATION_TYPE_URL
        );
        self.0.apply(type_url, delta)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use mesh::xds::AddedResource;
    use prost::Message;
    use xds_proto::istio::security as l4;

    use super::*;

    fn store() -> Arc<PolicyStore> {
        let gateway = GatewayRef {
            namespace: "payments".to_owned(),
            name: "waypoint".to_owned(),
            root_namespace: "istio-system".to_owned(),
        };
        PolicyStore::new(gateway, None)
    }

    fn policy(
        namespace: &str,
        name: &str,
        kind: pb::policy_target::Kind,
        target: &str,
    ) -> pb::L7Authorization {
        pb::L7Authorization {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            targets: vec![pb::PolicyTarget {
                kind: kind.into(),
                name: target.to_owned(),
            }],
            action: l4::Action::Deny.into(),
            rules: vec![pb::L7Rule::default()],
            dry_run: false,
        }
    }

    fn added(name: &str, message: &impl Message) -> AddedResource {
        AddedResource {
            name: name.to_owned(),
            version: "1".to_owned(),
            resource: prost_types::Any {
                type_url: L7_AUTHORIZATION_TYPE_URL.to_owned(),
                value: message.encode_to_vec(),
            },
        }
    }

    fn names<'a>(policies: impl Iterator<Item = &'a Authorization>) -> Vec<String> {
        policies.map(|p| p.key().to_string()).collect()
    }

    #[test]
    fn policies_bind_to_this_gateway_its_class_or_one_service() {
        use pb::policy_target::Kind;
        let store = store();
        let resources = [
            policy("payments", "gw", Kind::Gateway, "waypoint"),
            policy("payments", "other-gw", Kind::Gateway, "another-waypoint"),
            policy(
                "storefront",
                "same-name-elsewhere",
                Kind::Gateway,
                "waypoint",
            ),
            policy("istio-system", "class", Kind::GatewayClass, WAYPOINT_CLASS),
            policy(
                "payments",
                "class-not-root",
                Kind::GatewayClass,
                WAYPOINT_CLASS,
            ),
            policy("payments", "api", Kind::Service, "api"),
        ];
        let delta = Delta {
            added: resources
                .iter()
                .map(|p| added(&format!("{}/{}", p.namespace, p.name), p))
                .collect(),
            removed: Vec::new(),
        };
        store.apply(L7_AUTHORIZATION_TYPE_URL, delta).unwrap();
        let current = store.load();
        let api = ("payments".to_owned(), "api".to_owned());
        let ledger = ("payments".to_owned(), "ledger".to_owned());
        let mut for_api = names(current.authorizations(Some(&api)));
        for_api.sort();
        assert_eq!(
            for_api,
            ["istio-system/class", "payments/api", "payments/gw"]
        );
        let mut for_ledger = names(current.authorizations(Some(&ledger)));
        for_ledger.sort();
        assert_eq!(for_ledger, ["istio-system/class", "payments/gw"]);
        // A Service of the same name in another namespace is another Service.
        let elsewhere = ("storefront".to_owned(), "api".to_owned());
        assert_eq!(current.authorizations(Some(&elsewhere)).count(), 2);
    }

    #[test]
    fn a_bad_resource_is_refused_and_the_rest_applies() {
        use pb::policy_target::Kind;
        let store = store();
        let good = policy("payments", "gw", Kind::Gateway, "waypoint");
        let mut bad = policy("payments", "bad", Kind::Gateway, "waypoint");
        bad.action = 7;
        let delta = Delta {
            added: vec![added("payments/gw", &good), added("payments/bad", &bad)],
            removed: Vec::new(),
        };
        let refused = store.apply(L7_AUTHORIZATION_TYPE_URL, delta).unwrap_err();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].name, "payments/bad");
        assert!(
            refused[0].reason.contains("unknown action 7"),
            "{}",
            refused[0].reason
        );
        assert_eq!(names(store.load().authorizations(None)), ["payments/gw"]);
        // Removal takes it away again.
        let delta = Delta {
            added: Vec::new(),
            removed: vec!["payments/gw".to_owned()],
        };
        store.apply(L7_AUTHORIZATION_TYPE_URL, delta).unwrap();
        assert_eq!(store.load().authorizations(None).count(), 0);
    }
}
