//! What ztunnel and the waypoint share: SPIFFE identities and their certificates
//! ([`identity`]), the mutual-TLS configurations HBONE runs on ([`tls`]), and the mesh's
//! workloads, services and policies as xDS or the local file describe them ([`state`]): both
//! proxies route by the same index, so it lives here rather than in either binary.
//!
//! This crate knows nothing of pods, network namespaces or HTTP routing; those belong to the
//! binaries that use it.

#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod control;
pub mod errors;
pub mod grpc;
pub mod hbone;
pub mod identity;
pub mod policy;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod xds;
