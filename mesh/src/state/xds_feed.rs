//! Following the control plane: the delta xDS client hands each Address and Authorization
//! delta to [`XdsState`], and every applied change publishes a new [`Snapshot`] to the
//! [`Directory`] the data path reads. A resource that does not decode or validate is refused by
//! name (the client NACKs it) while the rest of its response is applied; while the control
//! plane is away the last applied state keeps being served.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::xds::{Delta, Rejection, XdsHandler};
use prost::Message;
use tracing::{debug, info, warn};
use xds_proto::istio::security::Authorization;
use xds_proto::istio::workload::Address;

use super::directory::Directory;
use super::from_xds::XdsState;

/// `type_url` of `istio.workload.Address`.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// `type_url` of `istio.security.Authorization`.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// What both handlers share: the delivered resources and where their snapshots go.
pub struct XdsFeed {
    state: Mutex<XdsState>,
    directory: Arc<Directory>,
}

impl XdsFeed {
    /// A feed publishing to `directory`.
    pub fn new(directory: Arc<Directory>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(XdsState::new()),
            directory,
        })
    }

    /// The handler for `type_url` (one of [`ADDRESS_TYPE`], [`AUTHORIZATION_TYPE`]).
    pub fn handler(self: &Arc<Self>, type_url: &str) -> Box<dyn XdsHandler> {
        Box::new(TypeHandler {
            addresses: type_url == ADDRESS_TYPE,
            feed: Arc::clone(self),
        })
    }

    fn state(&self) -> MutexGuard<'_, XdsState> {
        // Every edit is a whole apply; a panic elsewhere cannot leave half of one behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct TypeHandler {
    addresses: bool,
    feed: Arc<XdsFeed>,
}

fn decode<M: Message + Default>(
    delta: Delta,
    rejections: &mut Vec<Rejection>,
) -> (Vec<(String, M)>, Vec<String>) {
    let mut added = Vec::with_capacity(delta.added.len());
    for resource in delta.added {
        match M::decode(resource.resource.value.as_slice()) {
            Ok(message) => added.push((resource.name, message)),
            Err(err) => rejections.push(Rejection::new(
                resource.name,
                format!("does not decode: {err}"),
            )),
        }
    }
    (added, delta.removed)
}

impl XdsHandler for TypeHandler {
    fn apply(&mut self, type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>> {
        let mut rejections = Vec::new();
        let (added, removed) = (delta.added.len(), delta.removed.len());
        // Names only at debug: a full push can hold thousands.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let names: Vec<&str> = delta.added.iter().map(|r| r.name.as_str()).collect();
            debug!(type_url, added = ?names, removed = ?delta.removed, "xDS resources received");
        }
        let refused = {
            let mut state = self.feed.state();
            let refused = if self.addresses {
                let (added, removed) = decode::<Address>(delta, &mut rejections);
                state.apply_addresses(added, removed)
            } else {
                let (added, removed) = decode::<Authorization>(delta, &mut rejections);
                state.apply_authorizations(added, removed)
            };
            let generation = self.feed.directory.replace(state.snapshot());
            info!(
                type_url,
                added,
                removed,
                refused = refused.len(),
                generation,
                "xDS update applied"
            );
            refused
        };
        for (name, invalid) in refused {
            warn!(type_url, resource = %name, error = %invalid, "xDS resource refused; its last good version stays");
            rejections.push(Rejection::new(name, invalid.detail()));
        }
        if rejections.is_empty() {
            Ok(())
        } else {
            Err(rejections)
        }
    }
}
