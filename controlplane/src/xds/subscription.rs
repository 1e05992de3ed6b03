//! One stream's subscription to one resource type, and what it must be sent.
//!
//! The server's model of the client is `held`: every name the client was sent (or said it holds in
//! `initial_resource_versions`) with that version. A push is the difference between the snapshot
//! and `held`, so only changes travel. A NACKed resource stays in `held` at the version the
//! client refused: resending the same bytes would be refused again, so it is sent next when its
//! content (and thus its version) changes.

use std::collections::{BTreeMap, BTreeSet};

use xds_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::MAX_NAMES_PER_TYPE;

/// The subscribe/unsubscribe name meaning "every resource of the type".
const WILDCARD: &str = "*";

/// A request that would make the stream's state exceed its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscriptionError {
    /// Too many explicitly subscribed or reported names.
    #[error("{type_url}: more than {limit} resource names subscribed or held")]
    TooManyNames {
        /// The type the names are of.
        type_url: String,
        /// [`MAX_NAMES_PER_TYPE`].
        limit: usize,
    },
}

/// Which names a reply must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything the stream is subscribed to.
    All,
    /// Only these names, just subscribed; the ones that do not exist are reported removed.
    Names(BTreeSet<String>),
}

/// What to send: resources to add or update (name and version), and names to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) upserts: Vec<(String, String)>,
    pub(crate) removed: Vec<String>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

/// The state of one type on one stream.
#[derive(Debug)]
pub(crate) struct TypeSubscription {
    type_url: String,
    wildcard: bool,
    /// Explicitly subscribed names (on-demand); bounded by [`MAX_NAMES_PER_TYPE`].
    names: BTreeSet<String>,
    /// What the client holds, name → version, as far as this server knows.
    held: BTreeMap<String, String>,
    last_nonce: Option<String>,
}

impl TypeSubscription {
    /// The subscription a type's first request on a stream asks for.
    ///
    /// Wildcard when the subscribe list is empty, or `*` is subscribed and not also unsubscribed
    /// (`*` in both is ztunnel's on-demand "nothing yet"). Names in `initial_resource_versions`
    /// are held, and on an explicit subscription they count as subscribed.
    pub(crate) fn from_initial(request: &DeltaDiscoveryRequest) -> Result<Self, SubscriptionError> {
        let subscribe = &request.resource_names_subscribe;
        let unsubscribe = &request.resource_names_unsubscribe;
        let star_unsubscribed = unsubscribe.iter().any(|name| name == WILDCARD);
        let wildcard = subscribe.is_empty()
            || (subscribe.iter().any(|name| name == WILDCARD) && !star_unsubscribed);
        let mut subscription = Self {
            type_url: request.type_url.clone(),
            wildcard,
            names: BTreeSet::new(),
            held: request.initial_resource_versions.clone(),
            last_nonce: None,
        };
        // A wildcard client legitimately holds the whole snapshot, however large; names it
        // holds that no longer exist are answered as removed. Only explicit lists are bounded.
        if !wildcard {
            subscription.check_bounds(subscription.held.len())?;
        }
        if !wildcard {
            subscription.names = subscription.held.keys().cloned().collect();
        }
        subscription.subscribe(subscribe, unsubscribe)?;
        Ok(subscription)
    }

    /// Applies a later request's subscription changes; returns what the reply must cover, or
    /// `None` if nothing new was asked for.
    pub(crate) fn update(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Result<Option<Scope>, SubscriptionError> {
        let was_wildcard = self.wildcard;
        let fresh = self.subscribe(subscribe, unsubscribe)?;
        if self.wildcard && !was_wildcard {
            return Ok(Some(Scope::All));
        }
        Ok((!fresh.is_empty()).then_some(Scope::Names(fresh)))
    }

    /// Records subscribe and unsubscribe lists; returns the explicit names newly subscribed.
    fn subscribe(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Result<BTreeSet<String>, SubscriptionError> {
        let mut fresh = BTreeSet::new();
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else if !self.names.contains(name) {
                self.check_bounds(self.names.len() + 1)?;
                self.names.insert(name.clone());
                fresh.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                fresh.remove(name);
            }
        }
        if !self.wildcard {
            // The client drops what it unsubscribed from; forget we sent it, so a later
            // subscribe sends it again.
            let names = &self.names;
            self.held.retain(|name, _| names.contains(name));
        }
        Ok(fresh)
    }

    fn check_bounds(&self, count: usize) -> Result<(), SubscriptionError> {
        if count > MAX_NAMES_PER_TYPE {
            return Err(SubscriptionError::TooManyNames {
                type_url: self.type_url.clone(),
                limit: MAX_NAMES_PER_TYPE,
            });
        }
        Ok(())
    }

    fn wants(&self, name: &str, current: &BTreeMap<String, String>) -> bool {
        current.contains_key(name) && (self.wildcard || self.names.contains(name))
    }

    /// The reply to the type's first request: everything subscribed the client lacks or holds at
    /// another version, its held names that no longer exist, and explicit names that do not.
    pub(crate) fn initial_changes(&self, current: &BTreeMap<String, String>) -> Changes {
        let mut changes = self.changes(current, &Scope::All);
        let reported: BTreeSet<&String> = changes.removed.iter().collect();
        let unknown: Vec<String> = self
            .names
            .iter()
            .filter(|name| !current.contains_key(*name) && !reported.contains(name))
            .cloned()
            .collect();
        changes.removed.extend(unknown);
        changes
    }

    /// What must be sent for `scope`, given the current name → version of the type.
    pub(crate) fn changes(&self, current: &BTreeMap<String, String>, scope: &Scope) -> Changes {
        let differs = |name: &String, version: &String| {
            self.held.get(name).is_none_or(|held| held != version)
        };
        match scope {
            Scope::All => {
                let subscribed = current.iter().filter(|(name, _)| self.wants(name, current));
                Changes {
                    upserts: subscribed
                        .filter(|(name, version)| differs(name, version))
                        .map(|(name, version)| (name.clone(), version.clone()))
                        .collect(),
                    removed: self
                        .held
                        .keys()
                        .filter(|name| !self.wants(name, current))
                        .cloned()
                        .collect(),
                }
            }
            Scope::Names(names) => {
                let mut changes = Changes::default();
                for name in names {
                    match current.get(name) {
                        Some(version) if differs(name, version) => {
                            changes.upserts.push((name.clone(), version.clone()));
                        }
                        Some(_) => {}
                        None => changes.removed.push(name.clone()),
                    }
                }
                changes
            }
        }
    }

    /// Records that `changes` went out in the response with `nonce`.
    pub(crate) fn record_sent(&mut self, changes: &Changes, nonce: String) {
        for (name, version) in &changes.upserts {
            self.held.insert(name.clone(), version.clone());
        }
        for name in &changes.removed {
            self.held.remove(name);
        }
        self.last_nonce = Some(nonce);
    }

    /// The nonce of the last response sent for this type; only a reply to it is current.
    pub(crate) fn last_nonce(&self) -> Option<&str> {
        self.last_nonce.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn initial(
        subscribe: &[&str],
        unsubscribe: &[&str],
        held: &[(&str, &str)],
    ) -> TypeSubscription {
        let request = DeltaDiscoveryRequest {
            type_url: "t".to_owned(),
            resource_names_subscribe: strings(subscribe),
            resource_names_unsubscribe: strings(unsubscribe),
            initial_resource_versions: versions(held),
            ..Default::default()
        };
        TypeSubscription::from_initial(&request).unwrap()
    }

    fn changes(upserts: &[(&str, &str)], removed: &[&str]) -> Changes {
        Changes {
            upserts: upserts
                .iter()
                .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
                .collect(),
            removed: strings(removed),
        }
    }

    #[test]
    fn initial_reply_per_request_shape() {
        let current = versions(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let cases: [(&str, TypeSubscription, Changes); 6] = [
            (
                "empty subscribe is wildcard",
                initial(&[], &[], &[]),
                changes(&[("a", "1"), ("b", "2"), ("c", "3")], &[]),
            ),
            (
                "star is wildcard",
                initial(&["*"], &[], &[]),
                changes(&[("a", "1"), ("b", "2"), ("c", "3")], &[]),
            ),
            (
                "star in both is nothing yet",
                initial(&["*"], &["*"], &[]),
                changes(&[], &[]),
            ),
            (
                "held versions skipped, vanished names removed",
                initial(&[], &[], &[("a", "1"), ("b", "old"), ("gone", "9")]),
                changes(&[("b", "2"), ("c", "3")], &["gone"]),
            ),
            (
                "explicit names, unknown ones removed",
                initial(&["a", "zz"], &[], &[]),
                changes(&[("a", "1")], &["zz"]),
            ),
            (
                "explicit: held names count as subscribed",
                initial(&["*"], &["*"], &[("b", "2"), ("gone", "1")]),
                changes(&[], &["gone"]),
            ),
        ];
        for (case, subscription, want) in cases {
            assert_eq!(subscription.initial_changes(&current), want, "{case}");
        }
    }

    #[test]
    fn pushes_only_differences_and_not_a_refused_version_again() {
        let mut subscription = initial(&[], &[], &[]);
        let first = versions(&[("a", "1"), ("b", "1")]);
        let sent = subscription.initial_changes(&first);
        subscription.record_sent(&sent, "n1".to_owned());
        assert_eq!(subscription.last_nonce(), Some("n1"));
        // Whether or not the client NACKed "b", the same version is not sent again.
        let second = versions(&[("b", "1"), ("c", "1")]);
        let push = subscription.changes(&second, &Scope::All);
        assert_eq!(push, changes(&[("c", "1")], &["a"]));
        subscription.record_sent(&push, "n2".to_owned());
        let third = versions(&[("b", "2"), ("c", "1")]);
        assert_eq!(
            subscription.changes(&third, &Scope::All),
            changes(&[("b", "2")], &[])
        );
    }

    #[test]
    fn explicit_subscribe_and_unsubscribe() {
        let current = versions(&[("a", "1"), ("b", "1")]);
        let mut subscription = initial(&["*"], &["*"], &[]);
        assert_eq!(
            subscription.update(&[], &[]).unwrap(),
            None,
            "ACK asks nothing"
        );
        let scope = subscription
            .update(&strings(&["a", "x"]), &[])
            .unwrap()
            .unwrap();
        let reply = subscription.changes(&current, &scope);
        assert_eq!(reply, changes(&[("a", "1")], &["x"]));
        subscription.record_sent(&reply, "n".to_owned());
        // "b" is not subscribed, so a change to it is not pushed; a change to "a" is.
        let next = versions(&[("a", "2"), ("b", "2")]);
        assert_eq!(
            subscription.changes(&next, &Scope::All),
            changes(&[("a", "2")], &[])
        );
        // After unsubscribing, "a" is forgotten: not removed by a push, resent on resubscribe.
        assert_eq!(subscription.update(&[], &strings(&["a"])).unwrap(), None);
        assert_eq!(subscription.changes(&next, &Scope::All), Changes::default());
        let scope = subscription.update(&strings(&["a"]), &[]).unwrap().unwrap();
        assert_eq!(
            subscription.changes(&next, &scope),
            changes(&[("a", "2")], &[])
        );
        // Subscribing to "*" later turns the stream into a wildcard one.
        assert_eq!(
            subscription.update(&strings(&["*"]), &[]).unwrap(),
            Some(Scope::All)
        );
    }

    #[test]
    fn refuses_more_names_than_the_bound() {
        let too_many: Vec<String> = (0..=MAX_NAMES_PER_TYPE).map(|i| i.to_string()).collect();
        let mut subscription = initial(&["*"], &["*"], &[]);
        let err = subscription.update(&too_many, &[]).unwrap_err();
        assert!(
            matches!(err, SubscriptionError::TooManyNames { .. }),
            "{err:?}"
        );
    }
}
