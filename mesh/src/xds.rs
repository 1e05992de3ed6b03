//! Delta ADS client: one `DeltaAggregatedResources` stream to the control plane carrying every
//! registered resource type (xds.md §2).
//!
//! The client knows no resource type. The caller registers, per type URL, a [`Subscription`] and
//! an [`XdsHandler`]; each response becomes one [`Delta`] for that handler, which applies what it
//! can and returns the resources it refuses. Refused resources are NACKed by name
//! (`error_detail`, `INVALID_ARGUMENT`), the rest are kept: one bad resource never blocks the
//! others. Only accepted versions are remembered, so a reconnect (which reports them in
//! `initial_resource_versions`) makes the server send refused resources again.
//!
//! The stream is reopened forever with backoff (xds.md §2.4). Handlers are not called while
//! disconnected, so the state they feed keeps serving the last good configuration.
//!
//! Transport is the caller's: a [`Connector`] returns a `tonic` channel (TLS, tokens and headers
//! included) for every new stream, so credentials can rotate between streams.

mod client;
mod metrics;
mod session;

use std::collections::BTreeSet;

pub use client::{
    AdsClient, CONNECT_TIMEOUT, ClientStats, Connector, FAILURE_BACKOFF, MAX_RESPONSE_BYTES,
    MetadataSource, OPEN_TIMEOUT, QUICK_RECONNECT, SEND_TIMEOUT,
};
pub use metrics::{TerminationReason, XdsMetrics};

/// Applies one response of a resource type to the caller's state.
pub trait XdsHandler: Send {
    /// Applies `delta` (of `type_url`) and returns `Err` with the resources it refused, having
    /// applied the rest. A refused name keeps its previous value in the caller's state.
    fn apply(&mut self, type_url: &str, delta: Delta) -> Result<(), Vec<Rejection>>;
}

/// One response's changes of one type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Resources added or changed. A name also listed in `removed` is not here (removal wins).
    pub added: Vec<AddedResource>,
    /// Names to forget.
    pub removed: Vec<String>,
}

/// A resource as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct AddedResource {
    /// The resource's key (e.g. a workload uid).
    pub name: String,
    /// Opaque version, echoed to the server on reconnect.
    pub version: String,
    /// The resource, its `type_url` checked against the response's.
    pub resource: prost_types::Any,
}

/// A resource a handler refused, and why; sent to the server in the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refused resource's name.
    pub name: String,
    /// Why, in words a person reading the control plane's log can act on.
    pub reason: String,
}

impl Rejection {
    /// A refusal of `name` because of `reason`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// What a type subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type. Readiness waits for the first accepted response.
    Wildcard,
    /// Only these names (on-demand); empty subscribes to nothing yet. Not part of readiness.
    Names(BTreeSet<String>),
}

/// Errors setting up a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsError {
    /// The node has no id; control planes refuse such a stream.
    #[error("node.id is empty; the control plane requires it")]
    MissingNodeId,
    /// A handler was registered with an empty type URL.
    #[error("a resource type needs a non-empty type URL")]
    EmptyTypeUrl,
    /// Two handlers were registered for one type.
    #[error("a handler for {0} is already registered")]
    DuplicateType(String),
}
