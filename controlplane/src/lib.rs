//! The control plane: reads Istio-format YAML (the objects a cluster would have), computes the
//! resources istiod would send ztunnel, serves them over delta ADS, and runs the workload CA —
//! so a whole mesh runs on one machine and ztunnel cannot tell it from istiod.
//!
//! [`k8s`] reads and validates the YAML; [`translate`] computes `istio.workload.Address` and
//! `istio.security.Authorization` resources; [`xds`] serves them; [`ca`] signs certificates;
//! [`serve`] puts both on one TLS listener. [`report`] reads what the ztunnels counted, for the
//! permissive-to-strict and dry-run rollout reports.

pub mod ca;
pub mod k8s;
pub mod report;
pub mod serve;
pub mod source;
pub mod translate;
pub mod xds;
