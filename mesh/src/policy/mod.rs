//! Istio L4 authorization as the destination ztunnel enforces it (policy.md §2.2–2.5, §5).
//!
//! Policies arrive as xDS `istio.security.Authorization` resources or from the local
//! configuration file; both are validated into one typed [`Authorization`] model so the
//! evaluator never sees wire or YAML quirks. [`applicable`] picks the policies of one
//! destination workload from a [`PolicySet`], and [`evaluate`] decides a connection from its
//! L4 attributes. Knows no sockets, pods or HTTP; callers fill [`ConnectionAttrs`] and do the
//! logging and counting from the returned [`Decision`].

mod error;
mod eval;
mod from_xds;
mod local;
mod matching;
mod model;
mod request;
mod set;

#[cfg(test)]
mod fixtures;

pub use error::{FieldPath, InvalidPolicy, Problem};
pub use eval::{
    AllowSetOutcome, Checked, ConnectionAttrs, Decision, DenyReason, DryRunCount, DryRunReport,
    Verdict, evaluate, evaluate_request,
};
pub use local::LocalPolicy;
pub use model::{
    Action, Authorization, Clause, Match, PolicyKey, PolicyTarget, Rule, Scope,
    ServiceAccountMatch, StringMatch, TargetKind, TargetedPolicy,
};
pub use request::{
    BadTemplate, ClaimMatch, HeaderMatch, PathMatch, PathTemplate, RequestAttrs, RequestAuth,
    RequestMatch,
};
pub use set::{Applicable, PolicySet, applicable};
