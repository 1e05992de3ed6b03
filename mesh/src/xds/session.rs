//! One resource type on the client side: the versions accepted so far, the requests that open a
//! stream, and turning a response into a handler call and its ACK or NACK (xds.md §2.1, §2.2).
//! No I/O here, so every rule is tested without a server.

use std::collections::{BTreeMap, BTreeSet};

use xds_proto::envoy::config::core::v3::Node;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use xds_proto::google::rpc;

use super::{AddedResource, Delta, Rejection, Subscription, XdsHandler};

/// `google.rpc.Code.INVALID_ARGUMENT`, the NACK's `error_detail.code`.
const INVALID_ARGUMENT: i32 = 3;

/// The subscribe/unsubscribe name meaning "every resource of the type".
const WILDCARD: &str = "*";

/// The answer to one response: the request to send, and whether it accepts everything.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reply {
    pub(super) request: DeltaDiscoveryRequest,
    pub(super) accepted: bool,
}

impl Reply {
    fn ack(type_url: String, nonce: String) -> Self {
        Self {
            request: DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                ..Default::default()
            },
            accepted: true,
        }
    }

    fn nack(type_url: String, nonce: String, rejections: &[Rejection]) -> Self {
        let message = rejections
            .iter()
            .map(|rejection| format!("{}: {}", rejection.name, rejection.reason))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            request: DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                error_detail: Some(rpc::Status {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                }),
                ..Default::default()
            },
            accepted: false,
        }
    }

    /// The ACK of a response of a type nobody registered: nothing to refuse (xds.md §1.1).
    pub(super) fn ack_unhandled(response: DeltaDiscoveryResponse) -> Self {
        Self::ack(response.type_url, response.nonce)
    }
}

/// A registered type: its handler and what it holds.
pub(super) struct TypeState {
    type_url: String,
    subscription: Subscription,
    handler: Box<dyn XdsHandler>,
    /// Accepted versions by name; reported on every new stream. Survives disconnects.
    versions: BTreeMap<String, String>,
    accepted_once: bool,
}

impl TypeState {
    pub(super) fn new(
        type_url: String,
        subscription: Subscription,
        handler: Box<dyn XdsHandler>,
    ) -> Self {
        Self {
            type_url,
            subscription,
            handler,
            versions: BTreeMap::new(),
            accepted_once: false,
        }
    }

    pub(super) fn type_url(&self) -> &str {
        &self.type_url
    }

    /// Whether readiness waits for this type: wildcard types only (xds.md §2.3).
    pub(super) fn gates_readiness(&self) -> bool {
        matches!(self.subscription, Subscription::Wildcard)
    }

    /// Whether a response of this type was ever accepted whole.
    pub(super) fn has_accepted(&self) -> bool {
        self.accepted_once
    }

    /// The type's first request on a new stream: the node, the subscription, and every version
    /// held, so the server sends only what changed.
    pub(super) fn initial_request(&self, node: &Node) -> DeltaDiscoveryRequest {
        let (subscribe, unsubscribe) = match &self.subscription {
            Subscription::Wildcard => (Vec::new(), Vec::new()),
            // Empty would mean wildcard; `*` subscribed and unsubscribed means nothing.
            Subscription::Names(names) if names.is_empty() => {
                (vec![WILDCARD.to_owned()], vec![WILDCARD.to_owned()])
            }
            Subscription::Names(names) => (names.iter().cloned().collect(), Vec::new()),
        };
        DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: self.type_url.clone(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: self.versions.clone(),
            ..Default::default()
        }
    }

    /// Hands `response` to the handler and records what it accepted.
    pub(super) fn apply(&mut self, response: DeltaDiscoveryResponse) -> Reply {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            nonce,
            removed_resources: removed,
            ..
        } = response;
        let removed_names: BTreeSet<&str> = removed.iter().map(String::as_str).collect();
        let mut rejections = Vec::new();
        let mut added = Vec::new();
        for resource in resources {
            if removed_names.contains(resource.name.as_str()) {
                continue;
            }
            match resource.resource {
                None => rejections.push(Rejection::new(
                    resource.name,
                    "the response names it but carries no resource",
                )),
                Some(any) if any.type_url != self.type_url => {
                    let reason = format!(
                        "resource of type {:?} in a response of type {}",
                        any.type_url, self.type_url
                    );
                    rejections.push(Rejection::new(resource.name, reason));
                }
                Some(any) => added.push(AddedResource {
                    name: resource.name,
                    version: resource.version,
                    resource: any,
                }),
            }
        }
        let offered: Vec<(String, String)> = added
            .iter()
            .map(|resource| (resource.name.clone(), resource.version.clone()))
            .collect();
        if !(added.is_empty() && removed.is_empty()) {
            let delta = Delta {
                added,
                removed: removed.clone(),
            };
            if let Err(refused) = self.handler.apply(&self.type_url, delta) {
                rejections.extend(refused);
            }
        }
        self.record_versions(offered, removed, &rejections);
        if rejections.is_empty() {
            self.accepted_once = true;
            Reply::ack(type_url, nonce)
        } else {
            Reply::nack(type_url, nonce, &rejections)
        }
    }

    /// Accepted versions are remembered and removed names forgotten; a refused name keeps the
    /// version it had, so a reconnect asks the server for it again.
    fn record_versions(
        &mut self,
        offered: Vec<(String, String)>,
        removed: Vec<String>,
        rejections: &[Rejection],
    ) {
        let refused: BTreeSet<&str> = rejections.iter().map(|r| r.name.as_str()).collect();
        for (name, version) in offered {
            if !refused.contains(name.as_str()) {
                self.versions.insert(name, version);
            }
        }
        for name in removed {
            if !refused.contains(name.as_str()) {
                self.versions.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use prost_types::Any;
    use xds_proto::envoy::service::discovery::v3::Resource;

    use super::*;

    const TYPE: &str = "type.googleapis.com/istio.security.Authorization";

    /// Records every delta and refuses the names it was told to.
    struct Recorder {
        refuse: BTreeSet<String>,
        seen: Arc<Mutex<Vec<Delta>>>,
    }

    impl XdsHandler for Recorder {
        fn apply(&mut self, _type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>> {
            let refused: Vec<Rejection> = delta
                .added
                .iter()
                .filter(|resource| self.refuse.contains(&resource.name))
                .map(|resource| Rejection::new(&resource.name, "invalid CIDR length 33"))
                .collect();
            self.seen.lock().unwrap().push(delta);
            if refused.is_empty() {
                Ok(())
            } else {
                Err(refused)
            }
        }
    }

    fn state(subscription: Subscription, refuse: &[&str]) -> (TypeState, Arc<Mutex<Vec<Delta>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Recorder {
            refuse: refuse.iter().map(|name| (*name).to_owned()).collect(),
            seen: Arc::clone(&seen),
        };
        (
            TypeState::new(TYPE.to_owned(), subscription, Box::new(handler)),
            seen,
        )
    }

    fn resource(name: &str, version: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            version: version.to_owned(),
            resource: Some(Any {
                type_url: TYPE.to_owned(),
                value: name.as_bytes().to_vec(),
            }),
            ..Default::default()
        }
    }

    fn response(nonce: &str, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: TYPE.to_owned(),
            nonce: nonce.to_owned(),
            resources,
            removed_resources: removed.iter().map(|name| (*name).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn node() -> Node {
        Node {
            id: "ztunnel~10.0.0.1~ztunnel-a.istio-system~istio-system.svc.cluster.local".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn accepted_response_is_acked_and_versions_reported_on_reconnect() {
        let (mut state, seen) = state(Subscription::Wildcard, &[]);
        let first = state.initial_request(&node());
        assert_eq!(first.node, Some(node()));
        assert!(
            first.resource_names_subscribe.is_empty() && first.initial_resource_versions.is_empty()
        );

        let reply = state.apply(response(
            "n1",
            vec![resource("ns/a", "1"), resource("ns/b", "1")],
            &[],
        ));
        assert!(reply.accepted && state.has_accepted());
        assert_eq!(reply.request.response_nonce, "n1");
        assert_eq!(reply.request.type_url, TYPE);
        assert_eq!(reply.request.error_detail, None);
        assert!(
            reply.request.node.is_none(),
            "only a type's first request carries the node"
        );

        state.apply(response("n2", vec![resource("ns/c", "1")], &["ns/a"]));
        let again = state.initial_request(&node());
        let held: Vec<(&str, &str)> = again
            .initial_resource_versions
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(held, [("ns/b", "1"), ("ns/c", "1")]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn refused_resources_are_nacked_by_name_and_the_rest_kept() {
        let (mut state, seen) = state(Subscription::Wildcard, &["ns/bad"]);
        let reply = state.apply(response(
            "n1",
            vec![
                resource("ns/good", "1"),
                resource("ns/bad", "1"),
                Resource {
                    name: "ns/empty".to_owned(),
                    ..Default::default()
                },
            ],
            &[],
        ));
        assert!(!reply.accepted);
        assert!(
            !state.has_accepted(),
            "a NACKed first response does not make the type ready"
        );
        let detail = reply.request.error_detail.unwrap();
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert_eq!(
            detail.message,
            "ns/empty: the response names it but carries no resource; ns/bad: invalid CIDR length 33"
        );
        assert_eq!(reply.request.response_nonce, "n1");
        // The handler saw the decodable resources; only the accepted one's version is kept.
        let names: Vec<String> = seen.lock().unwrap()[0]
            .added
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["ns/good", "ns/bad"]);
        let held: Vec<String> = state
            .initial_request(&node())
            .initial_resource_versions
            .into_keys()
            .collect();
        assert_eq!(held, ["ns/good"]);
    }

    #[test]
    fn a_refused_update_keeps_the_previous_version() {
        let (mut state, _) = state(Subscription::Wildcard, &["ns/a"]);
        state.versions.insert("ns/a".to_owned(), "1".to_owned());
        assert!(
            !state
                .apply(response("n", vec![resource("ns/a", "2")], &[]))
                .accepted
        );
        assert_eq!(state.versions.get("ns/a").map(String::as_str), Some("1"));
    }

    #[test]
    fn wrong_type_is_refused_and_removal_wins_over_an_upsert() {
        let (mut state, seen) = state(Subscription::Wildcard, &[]);
        let mut foreign = resource("ns/x", "1");
        if let Some(any) = foreign.resource.as_mut() {
            any.type_url = "type.googleapis.com/istio.workload.Address".to_owned();
        }
        let reply = state.apply(response(
            "n",
            vec![foreign, resource("ns/y", "1")],
            &["ns/y"],
        ));
        let message = reply.request.error_detail.unwrap().message;
        assert!(
            message.starts_with(
                "ns/x: resource of type \"type.googleapis.com/istio.workload.Address\""
            ),
            "{message}"
        );
        let seen = seen.lock().unwrap();
        assert!(seen[0].added.is_empty());
        assert_eq!(seen[0].removed, ["ns/y"]);
    }

    #[test]
    fn empty_response_is_acked_without_calling_the_handler() {
        let (mut state, seen) = state(Subscription::Wildcard, &[]);
        assert!(state.apply(response("n", Vec::new(), &[])).accepted);
        assert!(state.has_accepted());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn subscription_shapes_of_the_first_request() {
        let names =
            |list: &[&str]| Subscription::Names(list.iter().map(|n| (*n).to_owned()).collect());
        for (subscription, subscribe, unsubscribe, gates) in [
            (Subscription::Wildcard, &[][..], &[][..], true),
            (names(&[]), &["*"][..], &["*"][..], false),
            (
                names(&["/10.0.0.9", "ns/svc"]),
                &["/10.0.0.9", "ns/svc"][..],
                &[][..],
                false,
            ),
        ] {
            let (state, _) = state(subscription.clone(), &[]);
            let request = state.initial_request(&node());
            assert_eq!(
                request.resource_names_subscribe, subscribe,
                "{subscription:?}"
            );
            assert_eq!(
                request.resource_names_unsubscribe, unsubscribe,
                "{subscription:?}"
            );
            assert_eq!(state.gates_readiness(), gates, "{subscription:?}");
        }
    }
}
