//! Workloads, services and policies this node knows, held as an immutable
//! [`Snapshot`] the data path reads without locks.
//!
//! - [`model`]: the plain Rust values (`Workload`, `Service`, …) every source builds.
//! - [`local`]: the local config file (upstream's `LOCAL_XDS_PATH` YAML) and its validation.
//! - [`snapshot`]: one loaded view with its lookup indexes.
//! - [`resolve`]: the pure routing decision for an outbound destination.
//! - [`directory`]: the swap point, and the task that follows the file.
//!
//! Sources validate everything up front, so lookups never fail on bad data: they answer
//! `None` or [`Resolution::Passthrough`].

pub mod directory;
pub mod from_xds;
pub mod local;
pub mod model;
pub mod resolve;
mod scalars;
pub mod snapshot;
pub mod xds_feed;

pub use directory::{Directory, UpdateStatus, watch_file};
pub use from_xds::{FromAddress, InvalidResource, XdsState};
pub use local::{InvalidReason, LocalConfig, LocalConfigError, MAX_LOCAL_CONFIG_BYTES};
pub use model::{
    GatewayAddress, GatewayDestination, HealthPolicy, HealthStatus, IdentityError,
    LoadBalancerMode, LoadBalancing, Locality, LocalityScope, NamespacedHostname, NetworkAddress,
    PortMap, Service, TunnelProtocol, Workload, WorkloadType,
};
pub use resolve::{Resolution, RoundRobin, choose, eligible_endpoints, random_pick};
pub use snapshot::Snapshot;

#[cfg(test)]
mod tests;
