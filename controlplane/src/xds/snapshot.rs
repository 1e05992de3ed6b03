//! What the server serves: every resource by type and name, and the version of each.
//!
//! A version is a hash of the resource's encoded bytes, so it depends on content alone: two
//! control-plane processes (or one before and after a restart) give the same resource the same
//! version, and a client reconnecting with `initial_resource_versions` is sent only what really
//! changed. Encoding is deterministic because `xds-proto` generates maps as `BTreeMap`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use prost_types::Any;

/// Every resource the control plane serves, by type URL and then by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `type_url` → resource name → resource. Each `Any`'s own `type_url` should equal the key.
    pub resources: BTreeMap<String, BTreeMap<String, Any>>,
}

impl Snapshot {
    /// A snapshot holding `resources` (type URL → name → resource).
    pub fn new(resources: BTreeMap<String, BTreeMap<String, Any>>) -> Self {
        Self { resources }
    }

    /// Adds (or replaces) `resource` under `name`, filed under the resource's own type URL.
    pub fn insert(&mut self, name: impl Into<String>, resource: Any) {
        self.resources
            .entry(resource.type_url.clone())
            .or_default()
            .insert(name.into(), resource);
    }

    /// The resource of `type_url` named `name`, if any.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Any> {
        self.resources.get(type_url)?.get(name)
    }
}

/// The version of `resource`: FNV-1a (128 bit) of its protobuf encoding, in hex.
///
/// FNV is written out here rather than taken from a crate because the value must never change
/// with a dependency upgrade: clients keep versions across our restarts. 128 bits make an
/// accidental collision (which would hide a change from a reconnecting client) negligible.
pub fn resource_version(resource: &Any) -> String {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = resource
        .encode_to_vec()
        .iter()
        .fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u128::from(*byte)).wrapping_mul(PRIME)
        });
    format!("{hash:032x}")
}

/// A snapshot with the version of every resource computed once.
#[derive(Debug)]
pub(crate) struct VersionedSnapshot {
    snapshot: Arc<Snapshot>,
    versions: BTreeMap<String, BTreeMap<String, String>>,
}

impl VersionedSnapshot {
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        let versions = snapshot
            .resources
            .iter()
            .map(|(type_url, by_name)| {
                let versions = by_name
                    .iter()
                    .map(|(name, resource)| (name.clone(), resource_version(resource)))
                    .collect();
                (type_url.clone(), versions)
            })
            .collect();
        Self { snapshot, versions }
    }

    /// Name → version of every resource of `type_url` (empty for a type the snapshot lacks).
    pub(crate) fn versions(&self, type_url: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.versions.get(type_url).unwrap_or(&NONE)
    }

    pub(crate) fn resource(&self, type_url: &str, name: &str) -> Option<&Any> {
        self.snapshot.get(type_url, name)
    }
}

/// The versions of the latest snapshot, shared by every stream so that a push hashes each
/// resource once, not once per connected client.
#[derive(Debug, Default)]
pub(crate) struct VersionCache {
    latest: Mutex<Option<Arc<VersionedSnapshot>>>,
}

impl VersionCache {
    /// `snapshot` with its versions, computed now unless the cache holds this very snapshot.
    ///
    /// Identity is the `Arc`'s address: a published snapshot is immutable, and the cache holds
    /// the `Arc`, so the address cannot be reused by another snapshot while it is cached.
    pub(crate) fn versioned(&self, snapshot: Arc<Snapshot>) -> Arc<VersionedSnapshot> {
        {
            // A panic elsewhere cannot leave the cached value half-written (it is replaced
            // whole), so a poisoned lock is still safe to use.
            let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = latest.as_ref()
                && Arc::ptr_eq(&cached.snapshot, &snapshot)
            {
                return Arc::clone(cached);
            }
        }
        // Hashed outside the lock so other streams are not held up; two streams racing on a new
        // snapshot may both hash it, which costs time, not correctness.
        let versioned = Arc::new(VersionedSnapshot::new(snapshot));
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&versioned));
        versioned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn version_depends_on_content_only_and_is_pinned() {
        let a = any("type.googleapis.com/istio.workload.Address", b"\x0a\x02hi");
        // Pinned (computed independently of this code): a change here would make every
        // client re-download everything after an upgrade.
        assert_eq!(resource_version(&a), "5588af19adcf2efe53591749c1d3b549");
        assert_eq!(resource_version(&a), resource_version(&a.clone()));
        for other in [
            any("type.googleapis.com/istio.workload.Address", b"\x0a\x02ho"),
            any(
                "type.googleapis.com/istio.security.Authorization",
                b"\x0a\x02hi",
            ),
        ] {
            assert_ne!(resource_version(&a), resource_version(&other), "{other:?}");
        }
    }

    #[test]
    fn cache_reuses_versions_of_the_same_snapshot_only() {
        let mut snapshot = Snapshot::default();
        snapshot.insert("a", any("t", b"1"));
        let first = Arc::new(snapshot.clone());
        let cache = VersionCache::default();
        let one = cache.versioned(Arc::clone(&first));
        assert!(Arc::ptr_eq(&one, &cache.versioned(Arc::clone(&first))));
        snapshot.insert("a", any("t", b"2"));
        let two = cache.versioned(Arc::new(snapshot));
        assert!(!Arc::ptr_eq(&one, &two));
        assert_ne!(one.versions("t").get("a"), two.versions("t").get("a"));
        assert!(two.versions("missing").is_empty());
    }
}
