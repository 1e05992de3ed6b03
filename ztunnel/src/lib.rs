//! The node agent: serves HBONE for the workloads it proxies, sends their outbound connections
//! over HBONE (or plain TCP where the destination is outside the mesh), and enforces L4
//! authorization on inbound connections.
//!
//! It terminates no user HTTP; that is the waypoint's job.

pub mod admin;
pub mod agent;
pub mod capture;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod proxy;
/// The workload and service index, shared with the waypoint (it lives in `mesh`).
pub use mesh::state;
